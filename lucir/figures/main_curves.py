"""Fig. 5 and 6, the main curves: accuracy after each phase of LUCIR (CNN and NME classifiers),
iCaRL (CNN and NME) and joint training, per dataset and phase count, and their average
incremental accuracy beside the published numbers (lucir.published)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import experiments as ex
from .. import plots, published
from ..claims import compare_row, noise
from ..config import ConfigError
from ..display import checks_table, md, show, show_table
from .figure import Figure

NAME = "main_curves"
CLAIM = ("Fig. 5 and 6: LUCIR outperforms iCaRL by a large margin, in the accuracy curve and in the "
         "average incremental accuracy; with 10 phases the final accuracy of LUCIR-CNN beats iCaRL-NME "
         "by more than 6 points on CIFAR-100; LUCIR-CNN is better than or comparable to LUCIR-NME.")

MAIN_METHODS = {"lucir": "LUCIR", "icarl": "iCaRL"}


def plan(phases: list, joint_phases: list, seeds: list, class_orders: list,
         config_overrides: dict, lucir_overrides: dict,
         methods: list = tuple(MAIN_METHODS)) -> list[ex.PlannedRun]:
    """Fig. 5 / 6: LUCIR, iCaRL (or those of `methods`) and, where asked, joint training, for
    every phase count."""
    unknown = [m for m in methods if m not in MAIN_METHODS]
    if unknown or not methods:
        raise ConfigError(f"main curves: methods must be some of {', '.join(MAIN_METHODS)}, got {list(methods)}")
    plan = []
    for p in phases:
        for o in ex.grid(seeds, class_orders, config_overrides, phases=p):
            plan += [ex.PlannedRun(MAIN_METHODS[m], m, {**o, **lucir_overrides} if m == "lucir" else o) for m in methods]
            if p in joint_phases:
                plan.append(ex.PlannedRun("Joint", "joint", o))
    return plan


def table(results: list[dict], setting: str) -> pd.DataFrame:
    return ex.tidy_curves(results, NAME, setting)


def narrow(params: dict, select: dict) -> dict:
    """--select method=...: run only the selected ones of LUCIR and iCaRL, joint training only
    when `joint` is selected."""
    p = dict(params)
    if "method" in select:
        p["methods"] = [m for m in p.get("methods", []) if m in select["method"]]
        if "joint" not in select["method"]:
            p["joint_phases"] = []
    return p


# --------------------------------------------------------------------------- beside the published numbers
def main_curves_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Our average incremental accuracies (mean, std and number of runs) beside each published one
    (CIFAR-100 B50): one row per setting, phase count, curve and published source. A difference is
    given only where our setting is the paper's; `comparison` says what it means."""
    ours = ex.average_accuracy(table[table.curve.isin(ex.MAIN_CURVES)], ["setting", "dataset", "phases", "curve", "reduced"])
    pub = published.average_accuracy_table().assign(dataset="cifar100")
    out = ours.merge(pub, on=["dataset", "curve", "phases"], how="left")
    return ex.with_comparison(out, "ours", "ours_std").sort_values(
        ["setting", "phases", "curve", "source"],
        key=lambda s: s.map({c: i for i, c in enumerate(ex.MAIN_CURVES)}) if s.name == "curve" else s,
    ).reset_index(drop=True)


def headline_table(t: pd.DataFrame) -> pd.DataFrame:
    """The main-curves summary as the report and reports/<profile>/headline.csv show it."""
    out = main_curves_summary(t)
    out = out.assign(source=out.source.fillna("—"))
    cols = {"setting": "setting", "phases": "phases", "curve": "curve", "ours": "ours", "ours_std": "ours std",
            "runs": "runs", "source": "published source", "published": "published",
            "published_std": "published std", "ours - published": "ours - published", "comparison": "comparison"}
    return out[list(cols)].rename(columns=cols)


def with_std(mean: float, std: float) -> str:
    """'63.42', or '64.01 ± 0.91' where there is a spread."""
    if mean is None or pd.isna(mean):
        return "—"
    return f"{mean:.2f}" + ("" if std is None or pd.isna(std) else f" ± {std:.2f}")


def main_curves_display(t: pd.DataFrame) -> pd.DataFrame:
    """The main-curves summary as the report shows it: one row per phase count and curve, ours
    (mean ± std over runs) beside the paper's number and PODNet's re-run; a difference to the
    published numbers and its meaning only where our setting is the paper's."""
    summary = headline_table(t)
    rows = []
    for (setting, phases, curve), g in summary.groupby(["setting", "phases", "curve"], sort=False):
        first = g.iloc[0]
        by_source = g.set_index("published source")
        paper = by_source.loc[published.PAPER] if published.PAPER in by_source.index else None
        podnet = by_source.loc[published.PODNET] if published.PODNET in by_source.index else None
        row = {"setting": setting, "phases": phases, "curve": curve,
               "ours": with_std(first["ours"], first["ours std"] if first.runs > 1 else None), "runs": first.runs,
               "ours over": ex.spread_over(t[(t.setting == setting) & (t.phases == phases) & (t.curve == curve)]),
               "paper": with_std(paper.published, None) if paper is not None else "—",
               "PODNet re-run (3 orders)": (with_std(podnet.published, podnet["published std"])
                                            if podnet is not None else "—")}
        for name, ref in (("ours - paper", paper), ("ours - PODNet", podnet)):
            row[name] = ref["ours - published"] if ref is not None else np.nan
        reference = podnet if podnet is not None else paper
        row["comparison"] = reference.comparison if reference is not None else "no published number"
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out) and out["ours - paper"].isna().all() and out["ours - PODNet"].isna().all():
        out = out.drop(columns=["ours - paper", "ours - PODNet", "comparison"])  # reduced: nothing to compare
    if out.setting.nunique() <= 1:
        out = out.drop(columns=["setting"])
    return out


# --------------------------------------------------------------------------- plot, checks, section
def plot(table: pd.DataFrame) -> plt.Figure:
    """Fig. 5 / 6: one panel per (dataset, phase count)."""
    data = table[(table.metric == "acc") & table.curve.isin(ex.MAIN_CURVES)]
    keys = sorted(data.groupby(["dataset", "phases"]).groups)
    fig, axes = plots.panels(len(keys))
    for ax, (dataset, phases) in zip(axes, keys):
        d = data[(data.dataset == dataset) & (data.phases == phases)]
        plots.curves(ax, d, "curve", [c for c in ex.MAIN_CURVES if c in set(d.curve)])
        ax.set_title(plots.title(dataset, phases))
    return fig


def checks(t: pd.DataFrame) -> list[tuple]:
    """The checks of Fig. 5/6's claims, per setting and phase count."""
    stats = ex.average_accuracy(t, ["setting", "phases", "curve"])
    final = ex.final_accuracy(t, ["setting", "phases", "curve"]).pivot_table(
        index=["setting", "phases"], columns="curve", values="ours")
    rows = []
    for (s, p), g in stats.groupby(["setting", "phases"]):
        mean, std = g.set_index("curve")["ours"], g.set_index("curve")["ours_std"]
        runs = int(g.runs.min())
        where = f"{s}, {p} phase{'s' if p != 1 else ''}"
        if {"LUCIR-CNN", "iCaRL-CNN"} <= set(mean.index):
            rows.append(compare_row(f"{where}: avg. LUCIR-CNN > iCaRL-CNN", "LUCIR-CNN", "iCaRL-CNN", mean, std, runs))
        if {"LUCIR-CNN", "iCaRL-NME"} <= set(mean.index):
            rows.append(compare_row(f"{where}: avg. LUCIR-CNN > iCaRL-NME", "LUCIR-CNN", "iCaRL-NME", mean, std, runs))
        if {"LUCIR-CNN", "LUCIR-NME"} <= set(mean.index):
            rows.append((f"{where}: avg. LUCIR-CNN above LUCIR-NME or within 1 point",
                         f"{mean['LUCIR-CNN']:.2f} vs {mean['LUCIR-NME']:.2f}",
                         bool(mean["LUCIR-CNN"] >= mean["LUCIR-NME"] - 1),
                         noise(mean["LUCIR-CNN"], std["LUCIR-CNN"], mean["LUCIR-NME"], std["LUCIR-NME"], runs)))
        f = final.loc[(s, p)]
        if p >= 10 and {"LUCIR-CNN", "iCaRL-NME"} <= set(f.dropna().index):
            rows.append((f"{where}: final LUCIR-CNN - iCaRL-NME > 6", f"{f['LUCIR-CNN'] - f['iCaRL-NME']:.2f}",
                         bool(f["LUCIR-CNN"] - f["iCaRL-NME"] > 6)))
    return rows


def section(t: pd.DataFrame) -> None:
    """Fig. 5/6 per setting, the checks, and ours beside the published numbers."""
    for setting, part in t.groupby("setting"):
        show(plot(part))
    checks_table(checks(t))
    reduced = bool(t.reduced.astype(bool).all())
    md("Average incremental accuracy (%), ours (mean ± std over runs) beside the published numbers "
       "(CIFAR-100, 50 base classes, 5 and 10 phases; sources in docs/protocol.md). `ours over` says what our ± "
       "is taken over; PODNet's ± is over 3 class orders, as the paper's 3 runs are (docs/protocol.md). "
       + ("Our setting is reduced from the paper's, so no difference to a published number is printed."
          if reduced else
          "A difference is printed only where our setting is the paper's; `comparison` (against PODNet's re-run "
          "where it exists, else the paper) calls it within the spread over seeds when it is at most twice "
          "sqrt(std_ours^2 + std_published^2)."))
    show_table(main_curves_display(t))


def notebook_table(t: pd.DataFrame) -> pd.DataFrame:
    return main_curves_display(t).set_index(["phases", "curve"])


figure = Figure(name=NAME, title="Main curves (Fig. 5, Fig. 6)", label="Fig. 5, 6",
                heading="Main curves: accuracy after each phase (Fig. 5, Fig. 6)",
                claim=CLAIM, plan=plan, table=table, plot=plot, checks=checks, section=section,
                summary=notebook_table, narrow=narrow)
