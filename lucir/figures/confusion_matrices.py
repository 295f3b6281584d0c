"""Fig. 9, the confusion matrices after one phase: iCaRL-CNN, iCaRL-NME, LUCIR-NME and LUCIR-CNN,
with the shares of old-class images predicted as new classes and the reverse."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import experiments as ex
from .. import published
from ..display import checks_table, md, show, show_table
from .figure import Figure

NAME = "confusion_matrices"
CLAIM = ("Fig. 9 (CIFAR-100, 1 phase): iCaRL-CNN tends to classify samples into new classes; the last "
         "three methods mitigate this and LUCIR-CNN is best (51.80, 59.13, 60.21, 62.34 %).")


CONFUSION_PANELS = ("iCaRL-CNN", "iCaRL-NME", "LUCIR-NME", "LUCIR-CNN")  # the order of Fig. 9
plan = ex.plan_one_phase_pair


def confusion_file(run_dir, phase: int, classifier: str) -> Path:
    name = f"confusion_phase{phase}.npy" if classifier.upper() == "CNN" else f"confusion_nme_phase{phase}.npy"
    return Path(run_dir) / name


def old_new_confusion(matrix: np.ndarray, n_old: int) -> dict:
    """Shares (%) of old-class test images predicted as some new class, and the reverse."""
    old, new = matrix[:n_old], matrix[n_old:]
    return {"old_as_new": 100 * old[:, n_old:].sum() / max(old.sum(), 1),
            "new_as_old": 100 * new[:, :n_old].sum() / max(new.sum(), 1)}


def table(results: list[dict], setting: str) -> pd.DataFrame:
    """The accuracy curves plus, at the last phase, the old/new confusion shares of each classifier."""
    table = ex.tidy_curves(results, NAME, setting)
    extra = []
    for r in results:
        last = r["metrics"]["phases"][-1]
        n_old = last["classes_seen"] - last["new_classes"]
        for clf in ("CNN", "NME"):
            matrix = np.load(confusion_file(r["run_dir"], last["phase"], clf))
            rows = table[(table.run_dir == str(r["run_dir"])) & (table.classifier == clf) & (table.metric == "acc")
                         & (table.phase == last["phase"])]
            for metric, value in old_new_confusion(matrix, n_old).items():
                extra.append({**rows.iloc[0].to_dict(), "metric": metric, "value": value})
    return pd.concat([table, pd.DataFrame(extra, columns=ex.TABLE_COLUMNS)], ignore_index=True)


def confusion_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Final accuracy and old/new confusion shares of the four panels of Fig. 9, beside the paper's."""
    last = ex.last_phase(table)
    wide = last[last.metric.isin(["acc", "old_as_new", "new_as_old"])].pivot_table(
        index=["setting", "curve", "reduced"], columns="metric", values="value").reset_index()
    wide["published acc"] = wide.curve.map(published.FINAL_ACCURACY_ONE_PHASE)
    wide = ex.with_comparison(wide, "acc", "acc_std", reference="published acc", reference_std="published acc std")
    wide["curve"] = pd.Categorical(wide.curve, CONFUSION_PANELS, ordered=True)
    return wide.sort_values(["setting", "curve"]).reset_index(drop=True)


def at_papers_setting(table: pd.DataFrame) -> list[str]:
    """One line per classifier of Fig. 9 run at the paper's own setting (nothing reduced): its
    final accuracy beside the paper's, with the difference, e.g. 'cifar100, LUCIR-CNN: 62.10;
    paper 62.34 (-0.24)'. A reduced setting gives none."""
    s = confusion_summary(table)
    return [f"{r.setting}, {r.curve}: {r.acc:.2f}; paper {r['published acc']:.2f} ({r['ours - published']:+.2f})"
            for _, r in s[s["ours - published"].notna()].iterrows()]


def plot(table: pd.DataFrame) -> plt.Figure:
    """Fig. 9: confusion matrices after the last phase, two by two in the paper's order, entries
    as log(1 + count) on one colour scale for all panels (the bar is labelled in counts). Rows are
    true classes, columns predicted ones, old classes first; dashed white lines mark the old/new
    boundary. Each title gives the overall accuracy and the share of old-class test images
    predicted as some new class (the bias Fig. 9 shows)."""
    last = ex.last_phase(table[table.metric == "acc"])
    panels = [c for c in CONFUSION_PANELS if c in set(last.curve)]
    rows = [last[last.curve == c].iloc[0] for c in panels]
    counts = [np.load(confusion_file(r.run_dir, int(r.phase), r.classifier)) for r in rows]
    top = float(np.log1p(max([int(c.max()) for c in counts] + [1])))
    ncols = min(2, len(panels)) or 1
    nrows = max(1, -(-len(panels) // 2))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols + 1.0, 4.2 * nrows), squeeze=False)
    image = None
    for ax, row, count in zip(axes.flat, rows, counts):
        n, n_old = len(count), last_old_classes(table, row.run_dir)
        image = ax.imshow(np.log1p(count), cmap="jet", vmin=0, vmax=top, interpolation="nearest")
        ax.grid(False)
        if 0 < n_old < n:
            for line in (ax.axhline, ax.axvline):
                line(n_old - 0.5, color="white", lw=1.3, ls="--")
            centres, names = [(n_old - 1) / 2, (n_old + n - 1) / 2], [f"old ({n_old})", f"new ({n - n_old})"]
        else:
            centres, names = [(n - 1) / 2], [f"all ({n})"]
        ax.set_xticks(centres, names)
        ax.set_yticks(centres, names, rotation=90, va="center")
        ax.tick_params(length=0, labelsize=10)
        ax.set_xlabel("predicted class", fontsize=10)
        ax.set_ylabel("true class", fontsize=10)
        letter = "abcd"[CONFUSION_PANELS.index(row.curve)]
        title = f"({letter}) {row.curve}: {row.value:.2f}%"
        if 0 < n_old < n:
            title += f"\nold predicted as new: {old_new_confusion(count, n_old)['old_as_new']:.1f}%"
        ax.set_title(title, fontsize=11)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if image is not None:
        ticks = [c for c in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if np.log1p(c) <= top + 1e-9]
        bar = fig.colorbar(image, ax=axes, shrink=0.6, aspect=30, pad=0.03, ticks=np.log1p(ticks))
        bar.ax.set_yticklabels([str(c) for c in ticks])
        bar.set_label("test images (log scale: log(1 + x))", fontsize=10)
    return fig


def last_old_classes(table: pd.DataFrame, run_dir: str) -> int:
    """Number of old classes in the last phase of a run (classes seen before it)."""
    phases = table[table.run_dir == run_dir].drop_duplicates("phase").sort_values("phase")
    return int(phases.classes_seen.iloc[-2]) if len(phases) > 1 else 0


def checks(t: pd.DataFrame) -> list[tuple]:
    """Fig. 9: iCaRL-CNN sends old-class images into new classes; the last three panels (iCaRL-NME,
    LUCIR-NME, LUCIR-CNN) each send fewer, and LUCIR-CNN is the most accurate of the four."""
    s = confusion_summary(t).set_index("curve")
    acc = s["acc"]
    rows = []
    for other in ("LUCIR-CNN", "iCaRL-NME", "LUCIR-NME"):  # "mitigated in the last three methods"
        if {"iCaRL-CNN", other} <= set(acc.index):
            rows.append((f"iCaRL-CNN puts more old-class images into new classes than {other}",
                         f"{s.loc['iCaRL-CNN', 'old_as_new']:.1f}% vs {s.loc[other, 'old_as_new']:.1f}%",
                         bool(s.loc["iCaRL-CNN", "old_as_new"] > s.loc[other, "old_as_new"])))
    if {"LUCIR-CNN", "iCaRL-CNN"} <= set(acc.index):
        rows.append(("LUCIR-CNN has the best accuracy of the four", f"{acc['LUCIR-CNN']:.2f} vs max "
                     f"{acc.drop('LUCIR-CNN').max():.2f}", bool(acc["LUCIR-CNN"] >= acc.max())))
    return rows


def section(t: pd.DataFrame) -> None:
    """Fig. 9 per setting, the checks, and the final accuracies and old/new shares."""
    for setting, part in t.groupby("setting"):
        show(plot(part))
    summary = confusion_summary(t)
    checks_table(checks(t))
    md("Final accuracy on all classes (%) beside the paper's Fig. 9, and the shares (%) of old-class test images "
       "predicted as some new class and of new-class images predicted as some old class:")
    show_table(confusion_display(summary))


def confusion_display(summary: pd.DataFrame) -> pd.DataFrame:
    """ex.confusion_summary with the columns a reader needs: the difference to the paper and its
    meaning only where our setting is the paper's, the setting only when there are several."""
    out = summary.rename(columns={"acc": "ours", "published acc": "paper (Fig. 9)",
                                  "old_as_new": "old predicted as new", "new_as_old": "new predicted as old"})
    cols = ["setting", "curve", "ours", "paper (Fig. 9)", "old predicted as new", "new predicted as old"]
    if not out.reduced.astype(bool).all():
        cols += ["ours - published", "comparison"]
    if out.setting.nunique() <= 1:
        cols.remove("setting")
    return out.assign(curve=out.curve.astype(str))[cols]


def notebook_table(t: pd.DataFrame) -> pd.DataFrame:
    return confusion_display(confusion_summary(t)).set_index("curve").round(2)


figure = Figure(name=NAME, title="Confusion matrices (Fig. 9)", label="Fig. 9",
                heading="Confusion matrices after one phase (Fig. 9)",
                claim=CLAIM, plan=plan, table=table, plot=plot, checks=checks, section=section,
                summary=notebook_table)
