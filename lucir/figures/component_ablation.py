"""Fig. 7a, the component ablation: the CNN accuracy of LUCIR built up one component at a time,
cosine normalisation (CN), the less-forget constraint (LC), inter-class separation (IS) and
class-balanced finetuning (CBF)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .. import experiments as ex
from .. import plots
from ..claims import compare_row
from ..config import ConfigError
from ..display import checks_table, md, show, show_table
from .figure import Figure

NAME = "component_ablation"
CLAIM = ("Fig. 7a (CIFAR-100, 5 phases): each component (CN, LC, IS) contributes; CBF has a relatively "
         "small effect on CIFAR-100.")


ABLATION_ROWS = (("CN", "cn"), ("CN+LC", "cn_lc"), ("CN+LC+IS", "cn_lc_is"), ("CN+LC+IS+CBF", "cn_lc_is_cbf"))


def plan(phases: int, seeds: list, class_orders: list, config_overrides: dict,
         rows: list | None = None) -> list[ex.PlannedRun]:
    """Fig. 7a: the rows CN, CN+LC, CN+LC+IS, CN+LC+IS+CBF (or those of them named in `rows`)."""
    known = dict(ABLATION_ROWS)
    unknown = [r for r in rows or [] if r not in known]
    if unknown:
        raise ConfigError(f"unknown ablation row '{unknown[0]}'; rows: {', '.join(known)}")
    chosen = [(name, preset) for name, preset in ABLATION_ROWS if rows is None or name in rows]
    return [ex.PlannedRun(name, preset, o) for o in ex.grid(seeds, class_orders, config_overrides, phases=phases)
            for name, preset in chosen]


def table(results: list[dict], setting: str) -> pd.DataFrame:
    return ex.tidy_curves(results, NAME, setting)


def plot(table: pd.DataFrame) -> plt.Figure:
    """Fig. 7a: CNN accuracy of CN, CN+LC, CN+LC+IS, CN+LC+IS+CBF."""
    data = table[(table.metric == "acc") & (table.classifier == "CNN")]
    keys = sorted(data.groupby(["dataset", "phases"]).groups)
    fig, axes = plots.panels(len(keys), width=5.2, height=3.8)
    for ax, (dataset, phases) in zip(axes, keys):
        d = data[(data.dataset == dataset) & (data.phases == phases)]
        plots.curves(ax, d, "method", [m for m in ("CN", "CN+LC", "CN+LC+IS", "CN+LC+IS+CBF") if m in set(d.method)])
        ax.set_title(f"{plots.title(dataset, phases)}, CNN")
    return fig


def checks(t: pd.DataFrame) -> list[tuple]:
    """Fig. 7a: each component added (CN, LC, IS) raises the CNN average; CBF changes it by under 1 point."""
    stats = ex.average_accuracy(t[t.classifier == "CNN"], ["method"]).set_index("method")
    avg, std, runs = stats["ours"], stats["ours_std"], int(stats.runs.min()) if len(stats) else 0
    order = [m for m, _ in ABLATION_ROWS if m in avg.index]
    rows = [compare_row(f"avg. {b} > {a}", b, a, avg, std, runs)
            for a, b in zip(order, order[1:]) if b != "CN+LC+IS+CBF"]
    if "CN+LC+IS+CBF" in avg.index and "CN+LC+IS" in avg.index:
        d = avg["CN+LC+IS+CBF"] - avg["CN+LC+IS"]
        rows.append(("CBF changes avg. by less than 1 point", f"{d:+.2f}", bool(abs(d) < 1)))
    return rows


def section(t: pd.DataFrame) -> None:
    """Fig. 7a, the checks, and the CNN averages of each row."""
    show(plot(t))
    cnn = t[t.classifier == "CNN"]
    checks_table(checks(t))
    table = ex.average_accuracy(cnn, ["method"]).merge(ex.final_accuracy(cnn, ["method"]), on=["method", "runs"],
                                                       suffixes=(" avg", " final"))
    order = [m for m, _ in ABLATION_ROWS if m in set(table.method)]
    table["method"] = pd.Categorical(table.method, order, ordered=True)
    table = table.sort_values("method").rename(columns={"ours avg": "avg. incremental", "ours_std avg": "std",
                                                        "ours final": "final", "ours_std final": "std (final)"})
    md("CNN accuracy (%): average incremental and after the last phase, mean and std over runs "
       "(the paper gives no numbers for Fig. 7a):")
    show_table(table[["method", "avg. incremental", "std", "final", "std (final)", "runs"]])


def notebook_table(t: pd.DataFrame) -> pd.DataFrame:
    cnn = t[t.classifier == "CNN"]
    return ex.average_accuracy(cnn, ["method"]).merge(ex.final_accuracy(cnn, ["method"]), on="method",
                                                      suffixes=(" avg", " final")).round(2)


figure = Figure(name=NAME, title="Component ablation (Fig. 7a)", label="Fig. 7a",
                heading="Component ablation: CN, LC, IS, CBF (Fig. 7a)",
                claim=CLAIM, plan=plan, table=table, plot=plot, checks=checks, section=section,
                summary=notebook_table)
