"""Fig. 7b, the number of exemplars: the average incremental accuracy of LUCIR and iCaRL (CNN and
NME) against R_per, the exemplars kept per old class."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .. import experiments as ex
from .. import plots
from ..display import checks_table, md, show, show_table
from .figure import Figure

NAME = "exemplar_count"
CLAIM = ("Fig. 7b (CIFAR-100, 5 phases): the more samples reserved, the better for both iCaRL and "
         "LUCIR, and LUCIR is above iCaRL for every number of samples.")


def plan(phases: int, memory_per_class: list, seeds: list, class_orders: list,
         config_overrides: dict) -> list[ex.PlannedRun]:
    """Fig. 7b: LUCIR and iCaRL for every R_per."""
    return [ex.PlannedRun(method, preset, o, variant=f"R_per={r}")
            for r in memory_per_class
            for o in ex.grid(seeds, class_orders, config_overrides, phases=phases, memory_per_class=r)
            for method, preset in (("LUCIR", "lucir"), ("iCaRL", "icarl"))]


def table(results: list[dict], setting: str) -> pd.DataFrame:
    return ex.tidy_curves(results, NAME, setting)


def plot(table: pd.DataFrame) -> plt.Figure:
    """Fig. 7b: average incremental accuracy against R_per, LUCIR and iCaRL, CNN and NME."""
    acc = table[table.metric == "acc"]
    per_run = acc.groupby(["curve", "memory_per_class", "run_dir"])["value"].mean().reset_index()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    order = [c for c in ex.MAIN_CURVES if c in set(per_run.curve)]
    sns.lineplot(data=per_run, x="memory_per_class", y="value", hue="curve", hue_order=order, marker="o",
                 errorbar="sd", palette=plots.PALETTE, ax=ax)
    ax.set_xticks(sorted(per_run.memory_per_class.unique()))
    ax.set_xlabel("exemplars per old class (R_per)")
    ax.set_ylabel("avg. incremental accuracy (%)")
    d = table.iloc[0] if len(table) else None
    ax.set_title(plots.title(d.dataset, d.phases) if d is not None else "")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def checks(t: pd.DataFrame) -> list[tuple]:
    """Fig. 7b: every curve grows with R_per, and LUCIR-CNN beats the better iCaRL curve at each R_per."""
    wide = ex.average_accuracy(t, ["memory_per_class", "curve"]).pivot(index="memory_per_class", columns="curve",
                                                                       values="ours")
    rows = []
    for curve in wide.columns:
        v = wide[curve].values
        rows.append((f"{curve} grows with R_per", " < ".join(f"{x:.2f}" for x in v), bool(np.all(np.diff(v) > 0))))
    for r, row in wide.iterrows():
        if {"LUCIR-CNN", "iCaRL-CNN", "iCaRL-NME"} <= set(row.index):
            best_icarl = max(row["iCaRL-CNN"], row["iCaRL-NME"])
            rows.append((f"R_per={r}: LUCIR-CNN > best iCaRL", f"{row['LUCIR-CNN']:.2f} vs {best_icarl:.2f}",
                         bool(row["LUCIR-CNN"] > best_icarl)))
    return rows


def section(t: pd.DataFrame) -> None:
    """Fig. 7b, the checks, and the averages per R_per."""
    show(plot(t))
    wide = ex.average_accuracy(t, ["memory_per_class", "curve"]).pivot(index="memory_per_class", columns="curve",
                                                                       values="ours")
    checks_table(checks(t))
    md("Average incremental accuracy (%) per R_per (the paper gives no numbers for Fig. 7b):")
    show_table(wide.reset_index())


def notebook_table(t: pd.DataFrame) -> pd.DataFrame:
    return ex.average_accuracy(t, ["memory_per_class", "curve"]).pivot(
        index="memory_per_class", columns="curve", values="ours").round(2)


figure = Figure(name=NAME, title="Number of exemplars (Fig. 7b)", label="Fig. 7b",
                heading="Number of exemplars per class (Fig. 7b)",
                claim=CLAIM, plan=plan, table=table, plot=plot, checks=checks, section=section,
                summary=notebook_table)
