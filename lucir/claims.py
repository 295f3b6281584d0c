"""Checks of the paper's claims, one function per figure: each takes that experiment's tidy
table (lucir.experiments) and returns rows (check, ours, holds[, seed noise]). The report shows
them under each figure and collects them into claims.csv (lucir.report.claims).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import experiments as ex


def noise(a: float, a_std: float, b: float, b_std: float, runs: int) -> str:
    """Whether a difference of two mean accuracies exceeds what the seeds alone give: beyond noise
    when |a - b| > 2 sqrt(std_a^2 + std_b^2), the stds taken over runs with different seeds."""
    if runs < 2 or pd.isna(a_std) or pd.isna(b_std):
        return "unknown: 1 run"
    spread = float(np.hypot(a_std, b_std))
    return f"{'beyond' if abs(a - b) > 2 * spread else 'within'} seed noise (2 x {spread:.2f})"


def _compare_row(check: str, a: str, b: str, mean: pd.Series, std: pd.Series, runs: int) -> tuple:
    """(check, 'a vs b', a > b, seed noise) for two curves of one setting."""
    return (check, f"{mean[a]:.2f} vs {mean[b]:.2f}", bool(mean[a] > mean[b]),
            noise(mean[a], std.get(a, np.nan), mean[b], std.get(b, np.nan), runs))


def main_curves_checks(t: pd.DataFrame) -> list[tuple]:
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
            rows.append(_compare_row(f"{where}: avg. LUCIR-CNN > iCaRL-CNN", "LUCIR-CNN", "iCaRL-CNN", mean, std, runs))
        if {"LUCIR-CNN", "iCaRL-NME"} <= set(mean.index):
            rows.append(_compare_row(f"{where}: avg. LUCIR-CNN > iCaRL-NME", "LUCIR-CNN", "iCaRL-NME", mean, std, runs))
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


def component_ablation_checks(t: pd.DataFrame) -> list[tuple]:
    """Fig. 7a: each component added (CN, LC, IS) raises the CNN average; CBF changes it by under 1 point."""
    stats = ex.average_accuracy(t[t.classifier == "CNN"], ["method"]).set_index("method")
    avg, std, runs = stats["ours"], stats["ours_std"], int(stats.runs.min()) if len(stats) else 0
    order = [m for m, _ in ex.ABLATION_ROWS if m in avg.index]
    rows = [_compare_row(f"avg. {b} > {a}", b, a, avg, std, runs)
            for a, b in zip(order, order[1:]) if b != "CN+LC+IS+CBF"]
    if "CN+LC+IS+CBF" in avg.index and "CN+LC+IS" in avg.index:
        d = avg["CN+LC+IS+CBF"] - avg["CN+LC+IS"]
        rows.append(("CBF changes avg. by less than 1 point", f"{d:+.2f}", bool(abs(d) < 1)))
    return rows


def exemplar_count_checks(t: pd.DataFrame) -> list[tuple]:
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


def adaptive_weight_checks(t: pd.DataFrame) -> list[tuple]:
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


def confusion_matrices_checks(t: pd.DataFrame) -> list[tuple]:
    """Fig. 9: iCaRL-CNN sends more old-class images into new classes than LUCIR-CNN, which is the
    most accurate of the four panels."""
    summary = ex.confusion_summary(t)
    acc = summary.set_index("curve")["acc"]
    rows = []
    if {"LUCIR-CNN", "iCaRL-CNN"} <= set(acc.index):
        s = summary.set_index("curve")
        rows.append(("iCaRL-CNN puts more old-class images into new classes than LUCIR-CNN",
                     f"{s.loc['iCaRL-CNN', 'old_as_new']:.1f}% vs {s.loc['LUCIR-CNN', 'old_as_new']:.1f}%",
                     bool(s.loc["iCaRL-CNN", "old_as_new"] > s.loc["LUCIR-CNN", "old_as_new"])))
        rows.append(("LUCIR-CNN has the best accuracy of the four", f"{acc['LUCIR-CNN']:.2f} vs max "
                     f"{acc.drop('LUCIR-CNN').max():.2f}", bool(acc["LUCIR-CNN"] >= acc.max())))
    return rows


def weight_norms_checks(t: pd.DataFrame) -> list[tuple]:
    """Fig. 3: iCaRL's plain classifier gives new classes larger weight norms and biases than old ones."""
    return [(f"{r.method}: mean {r.metric} of new classes > old", f"{r.new:.3f} vs {r.old:.3f}", bool(r.new > r.old))
            for r in ex.weight_norm_summary(t).itertuples() if r.method == "iCaRL"]


# experiment -> its checks, in the report's order
CHECKS = {"main_curves": main_curves_checks, "component_ablation": component_ablation_checks,
          "exemplar_count": exemplar_count_checks, "adaptive_weight": adaptive_weight_checks,
          "confusion_matrices": confusion_matrices_checks, "weight_norms": weight_norms_checks}
