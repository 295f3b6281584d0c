"""Fig. 8, the adaptive weight: LUCIR with the adaptive lambda of Eq. 7 against the fixed
lambda_base, CNN and NME, per phase count."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .. import experiments as ex
from .. import plots
from ..claims import noise
from ..display import checks_table, md, show, show_table
from .figure import Figure

NAME = "adaptive_weight"
CLAIM = ("Fig. 8 (CIFAR-100, 5 and 10 phases): the adaptive weight of Eq. 7 helps, more so for long "
         "sequences of classes.")


def plan(phases: list, seeds: list, class_orders: list,
         config_overrides: dict) -> list[ex.PlannedRun]:
    """Fig. 8: LUCIR with the adaptive lambda of Eq. 7 and with the fixed lambda_base."""
    return [ex.PlannedRun("LUCIR", "lucir", {**o, "adaptive_weight": aw}, variant=label)
            for p in phases for o in ex.grid(seeds, class_orders, config_overrides, phases=p)
            for aw, label in ((True, "adaptive lambda"), (False, "fixed lambda_base"))]


def table(results: list[dict], setting: str) -> pd.DataFrame:
    return ex.tidy_curves(results, NAME, setting)


def plot(table: pd.DataFrame) -> plt.Figure:
    """Fig. 8: adaptive lambda against fixed lambda_base; CNN solid, NME dashed."""
    data = table[table.metric == "acc"]
    keys = sorted(data.groupby(["dataset", "phases"]).groups)
    fig, axes = plots.panels(len(keys), width=4.6, height=3.8)
    for ax, (dataset, phases) in zip(axes, keys):
        d = data[(data.dataset == dataset) & (data.phases == phases)]
        plots.curves(ax, d, "variant", ["adaptive lambda", "fixed lambda_base"], style="classifier")
        ax.set_title(plots.title(dataset, phases))
    return fig


def checks(t: pd.DataFrame) -> list[tuple]:
    """Fig. 8: the adaptive lambda (Eq. 7) beats the fixed lambda_base, per phase count and classifier."""
    stats = ex.average_accuracy(t, ["phases", "classifier", "variant"])
    rows = []
    for (p, clf), g in stats.groupby(["phases", "classifier"]):
        mean, std = g.set_index("variant")["ours"], g.set_index("variant")["ours_std"]
        if {"adaptive lambda", "fixed lambda_base"} <= set(mean.index):
            d = mean["adaptive lambda"] - mean["fixed lambda_base"]
            rows.append((f"{p} phases, {clf}: adaptive > fixed", f"{d:+.2f}", bool(d > 0),
                         noise(mean["adaptive lambda"], std["adaptive lambda"], mean["fixed lambda_base"],
                               std["fixed lambda_base"], int(g.runs.min()))))
    return rows


def section(t: pd.DataFrame) -> None:
    """Fig. 8, the checks, and the averages of both weights."""
    show(plot(t))
    wide = ex.average_accuracy(t, ["phases", "classifier", "variant"]).pivot_table(
        index=["phases", "classifier"], columns="variant", values="ours")
    checks_table(checks(t))
    md("Average incremental accuracy (%) (the paper gives no numbers for Fig. 8):")
    show_table(wide.reset_index())


def notebook_table(t: pd.DataFrame) -> pd.DataFrame:
    return ex.average_accuracy(t, ["phases", "variant", "classifier"]).pivot(
        index=["phases", "classifier"], columns="variant", values="ours").round(2)


figure = Figure(name=NAME, title="Adaptive weight (Fig. 8)", label="Fig. 8",
                heading="Adaptive loss weight (Fig. 8)",
                claim=CLAIM, plan=plan, table=table, plot=plot, checks=checks, section=section,
                summary=notebook_table)
