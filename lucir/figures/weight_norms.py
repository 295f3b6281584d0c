"""Fig. 3, the weight norms after one phase: the norms of the old and new classes' embeddings (and
the biases of iCaRL's linear head), iCaRL against LUCIR."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .. import experiments as ex
from .. import plots, published
from ..display import checks_table, md, show, show_table
from .figure import Figure

NAME = "weight_norms"
CLAIM = ("Fig. 3 (CIFAR-100, 1 phase, iCaRL): the weights and biases of the new classes are larger than "
         "those of the old classes; cosine normalisation removes the bias and the effect of the "
         "magnitudes.")


plan = ex.plan_one_phase_pair


def table(results: list[dict], setting: str) -> pd.DataFrame:
    """One row per class of the last phase: its embedding norm (and bias for a linear head), old or new."""
    rows = []
    for r in results:
        c, last = r["config"], r["metrics"]["phases"][-1]
        n_old = last["classes_seen"] - last["new_classes"]
        arrays = np.load(Path(r["run_dir"]) / f"weight_norms_phase{last['phase']}.npz")
        for metric in ("weight_norm", "bias"):
            if metric not in arrays:
                continue
            for k, value in enumerate(arrays[metric]):
                rows.append({"experiment": NAME, "setting": setting, "dataset": c.dataset,
                             "method": r["planned"].method, "variant": "", "classifier": "CNN",
                             "curve": r["planned"].method, "phases": c.phases, "seed": c.seed,
                             "class_order_seed": c.class_order_seed, "class_order": c.class_order_run,
                             "memory_per_class": c.memory_per_class,
                             "reduced": bool(published.setting_differences(c.to_dict())),
                             "phase": last["phase"], "classes_seen": last["classes_seen"], "metric": metric,
                             "value": float(value), "run_dir": str(r["run_dir"]), "class_index": k,
                             "group": "old" if k < n_old else "new"})
    return pd.DataFrame(rows, columns=ex.TABLE_COLUMNS + ["class_index", "group"])


def weight_norm_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of the embedding norms and biases of old and new classes, per method."""
    return table.pivot_table(index=["setting", "method", "metric"], columns="group", values="value",
                             aggfunc="mean").reset_index()[["setting", "method", "metric", "old", "new"]]


def plot(table: pd.DataFrame) -> plt.Figure:
    """Fig. 3: norms of the class embeddings (and biases of iCaRL's linear head), old vs new."""
    keys = [(m, k) for m in ("iCaRL", "LUCIR") for k in ("weight_norm", "bias")
            if ((table.method == m) & (table.metric == k)).any()]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, (method, metric) in zip(axes[0], keys):
        d = table[(table.method == method) & (table.metric == metric)]
        sns.scatterplot(data=d, x="class_index", y="value", hue="group", hue_order=["old", "new"], palette=plots.PALETTE,
                        s=14, linewidth=0, ax=ax)
        ax.set_title(f"{method}: {'norm of class embedding' if metric == 'weight_norm' else 'bias'}")
        ax.set_xlabel("class index (old, then new)")
        ax.set_ylabel("norm" if metric == "weight_norm" else "bias")
        ax.legend(fontsize=8, title=None)
    return fig


def checks(t: pd.DataFrame) -> list[tuple]:
    """Fig. 3: iCaRL's plain classifier gives new classes larger weight norms and biases than old ones."""
    return [(f"{r.method}: mean {r.metric} of new classes > old", f"{r.new:.3f} vs {r.old:.3f}", bool(r.new > r.old))
            for r in weight_norm_summary(t).itertuples() if r.method == "iCaRL"]


def section(t: pd.DataFrame) -> None:
    """Fig. 3, the checks, and the mean norms of old and new classes."""
    show(plot(t))
    s = weight_norm_summary(t)
    checks_table(checks(t))
    md("Mean over old and new classes after the last phase (LUCIR's cosine classifier normalises the "
       "embeddings, so their stored norms do not reach the scores):")
    show_table(s, digits=4)


def notebook_table(t: pd.DataFrame) -> pd.DataFrame:
    return weight_norm_summary(t).round(4)


figure = Figure(name=NAME, title="Weight norms (Fig. 3)", label="Fig. 3",
                heading="Norms of old and new class embeddings (Fig. 3)",
                claim=CLAIM, plan=plan, table=table, plot=plot, checks=checks, section=section,
                summary=notebook_table)
