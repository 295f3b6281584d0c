"""What the figures' plots share (lucir.figures draws each): their look, colours, titles, panels
and accuracy curves with seaborn, from the tidy tables of lucir.experiments.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from .experiments import average_accuracy

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


def title(dataset: str, phases: int) -> str:
    return f"{DATASET_NAMES.get(dataset, dataset)} ({phases} phase{'s' if phases != 1 else ''})"


def panels(n: int, width: float = 4.3, height: float = 3.6):
    """n panels side by side, or two by two from three panels on, so that a figure reads at
    notebook and report width (about 960 px) without being shrunk; unused panels are hidden."""
    ncols = n if n <= 2 else 2
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, sharey=True)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def curves(ax, data: pd.DataFrame, hue: str, order: list, style: str | None = None) -> None:
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
