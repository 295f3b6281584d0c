"""The figures of the paper, drawn with seaborn from the tidy tables (shared by notebooks and report).

Every function takes a tidy table (see lucir.experiments) and returns a matplotlib Figure.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from .experiments import (CONFUSION_PANELS, MAIN_CURVES, average_accuracy, confusion_file, last_phase,
                          old_new_confusion)

DATASET_NAMES = {"cifar100": "CIFAR-100", "imagenet_subset": "ImageNet-Subset", "imagenet": "ImageNet-Full",
                 "tiny_imagenet": "Tiny-ImageNet", "synthetic": "synthetic"}
PALETTE = {"LUCIR-CNN": "#d62728", "LUCIR-NME": "#ff7f0e", "iCaRL-CNN": "#1f77b4", "iCaRL-NME": "#17becf",
           "Joint-CNN": "#7f7f7f", "LUCIR": "#d62728", "iCaRL": "#1f77b4",
           "CN": "#9467bd", "CN+LC": "#2ca02c", "CN+LC+IS": "#d62728", "CN+LC+IS+CBF": "#8c564b",
           "adaptive lambda": "#d62728", "fixed lambda_base": "#1f77b4", "old": "#1f77b4", "new": "#d62728"}


def setup() -> None:
    """The look of every figure."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 96, "savefig.dpi": 96, "figure.constrained_layout.use": True})


def _title(dataset: str, phases: int) -> str:
    return f"{DATASET_NAMES.get(dataset, dataset)} ({phases} phase{'s' if phases != 1 else ''})"


def _panels(n: int, width: float = 4.3, height: float = 3.6):
    """n panels side by side, or two by two from three panels on, so that a figure reads at
    notebook and report width (about 960 px) without being shrunk; unused panels are hidden."""
    ncols = n if n <= 2 else 2
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, sharey=True)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _curves(ax, data: pd.DataFrame, hue: str, order: list, style: str | None = None) -> None:
    """Accuracy (%) against classes seen; mean line and +-1 std band over runs; the legend
    gives each line's average incremental accuracy, as the paper's figures do. With `style`,
    its first value is drawn solid and the others dashed."""
    styles = sorted(data[style].unique()) if style else [None]
    sns.lineplot(data=data, x="classes_seen", y="value", hue=hue, hue_order=order, style=style,
                 style_order=styles if style else None, marker="o", markersize=5, errorbar="sd",
                 palette=PALETTE, ax=ax, legend=False)
    keys = [hue] + ([style] if style else [])
    avg = average_accuracy(data, keys).set_index(keys)["ours"]
    handles = []
    for h in order:
        for i, s in enumerate(styles):
            key = (h, s) if style else h
            if key not in avg.index:
                continue
            label = f"{h} {s}" if style else h
            handles.append(plt.Line2D([], [], color=PALETTE.get(h, "k"), marker="o", markersize=4,
                                      linestyle="-" if i == 0 else "--", label=f"{label}: {avg[key]:.2f}"))
    ax.legend(handles=handles, fontsize=8, title="avg. incremental acc. (%)", title_fontsize=8, loc="best")
    ticks = sorted(data.classes_seen.unique())
    if len(ticks) <= 12:
        ax.set_xticks(ticks)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of classes")
    ax.set_ylabel("accuracy (%)")


def main_curves(table: pd.DataFrame) -> plt.Figure:
    """Fig. 5 / 6: one panel per (dataset, phase count)."""
    data = table[(table.metric == "acc") & table.curve.isin(MAIN_CURVES)]
    keys = sorted(data.groupby(["dataset", "phases"]).groups)
    fig, axes = _panels(len(keys))
    for ax, (dataset, phases) in zip(axes, keys):
        d = data[(data.dataset == dataset) & (data.phases == phases)]
        _curves(ax, d, "curve", [c for c in MAIN_CURVES if c in set(d.curve)])
        ax.set_title(_title(dataset, phases))
    return fig


def component_ablation(table: pd.DataFrame) -> plt.Figure:
    """Fig. 7a: CNN accuracy of CN, CN+LC, CN+LC+IS, CN+LC+IS+CBF."""
    data = table[(table.metric == "acc") & (table.classifier == "CNN")]
    keys = sorted(data.groupby(["dataset", "phases"]).groups)
    fig, axes = _panels(len(keys), width=5.2, height=3.8)
    for ax, (dataset, phases) in zip(axes, keys):
        d = data[(data.dataset == dataset) & (data.phases == phases)]
        _curves(ax, d, "method", [m for m in ("CN", "CN+LC", "CN+LC+IS", "CN+LC+IS+CBF") if m in set(d.method)])
        ax.set_title(f"{_title(dataset, phases)}, CNN")
    return fig


def exemplar_count(table: pd.DataFrame) -> plt.Figure:
    """Fig. 7b: average incremental accuracy against R_per, LUCIR and iCaRL, CNN and NME."""
    acc = table[table.metric == "acc"]
    per_run = acc.groupby(["curve", "memory_per_class", "run_dir"])["value"].mean().reset_index()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    order = [c for c in MAIN_CURVES if c in set(per_run.curve)]
    sns.lineplot(data=per_run, x="memory_per_class", y="value", hue="curve", hue_order=order, marker="o",
                 errorbar="sd", palette=PALETTE, ax=ax)
    ax.set_xticks(sorted(per_run.memory_per_class.unique()))
    ax.set_xlabel("exemplars per old class (R_per)")
    ax.set_ylabel("avg. incremental accuracy (%)")
    d = table.iloc[0] if len(table) else None
    ax.set_title(_title(d.dataset, d.phases) if d is not None else "")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def adaptive_weight(table: pd.DataFrame) -> plt.Figure:
    """Fig. 8: adaptive lambda against fixed lambda_base; CNN solid, NME dashed."""
    data = table[table.metric == "acc"]
    keys = sorted(data.groupby(["dataset", "phases"]).groups)
    fig, axes = _panels(len(keys), width=4.6, height=3.8)
    for ax, (dataset, phases) in zip(axes, keys):
        d = data[(data.dataset == dataset) & (data.phases == phases)]
        _curves(ax, d, "variant", ["adaptive lambda", "fixed lambda_base"], style="classifier")
        ax.set_title(_title(dataset, phases))
    return fig


def confusion_matrices(table: pd.DataFrame) -> plt.Figure:
    """Fig. 9: confusion matrices after the last phase, two by two in the paper's order, entries
    as log(1 + count) on one colour scale for all panels (the bar is labelled in counts). Rows are
    true classes, columns predicted ones, old classes first; dashed white lines mark the old/new
    boundary. Each title gives the overall accuracy and the share of old-class test images
    predicted as some new class (the bias Fig. 9 shows)."""
    last = last_phase(table[table.metric == "acc"])
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


def weight_norms(table: pd.DataFrame) -> plt.Figure:
    """Fig. 3: norms of the class embeddings (and biases of iCaRL's linear head), old vs new."""
    keys = [(m, k) for m in ("iCaRL", "LUCIR") for k in ("weight_norm", "bias")
            if ((table.method == m) & (table.metric == k)).any()]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, (method, metric) in zip(axes[0], keys):
        d = table[(table.method == method) & (table.metric == metric)]
        sns.scatterplot(data=d, x="class_index", y="value", hue="group", hue_order=["old", "new"], palette=PALETTE,
                        s=14, linewidth=0, ax=ax)
        ax.set_title(f"{method}: {'norm of class embedding' if metric == 'weight_norm' else 'bias'}")
        ax.set_xlabel("class index (old, then new)")
        ax.set_ylabel("norm" if metric == "weight_norm" else "bias")
        ax.legend(fontsize=8, title=None)
    return fig
