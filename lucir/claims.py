"""The project's seed-noise rule, in one place: the figures' checks of the paper's claims
(lucir.figures; a check row is (check, ours, holds[, seed noise]), shown under each figure and
collected into claims.csv by lucir.report.claims) and the comparison of ours with a published
number (lucir.experiments.comparison) both apply `beyond_noise`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def spread(a_std: float, b_std: float) -> float:
    """The spread of a difference of two means, sqrt(std_a^2 + std_b^2); a missing std counts 0."""
    return float(np.hypot(0.0 if a_std is None or pd.isna(a_std) else a_std,
                          0.0 if b_std is None or pd.isna(b_std) else b_std))


def beyond_noise(a: float, b: float, spread_ab: float) -> bool:
    """The project's seed-noise rule: a difference of two means is beyond what the seeds alone give
    when |a - b| > 2 sqrt(std_a^2 + std_b^2) (`spread`), the stds taken over runs with different seeds.
    The claims' checks (`noise`) and the comparison with a published number
    (lucir.experiments.comparison) both apply it."""
    return abs(a - b) > 2 * spread_ab


def noise(a: float, a_std: float, b: float, b_std: float, runs: int) -> str:
    """Whether a difference of two mean accuracies of ours exceeds seed noise (`beyond_noise`);
    unknown with one run."""
    if runs < 2 or pd.isna(a_std) or pd.isna(b_std):
        return "unknown: 1 run"
    s = spread(a_std, b_std)
    return f"{'beyond' if beyond_noise(a, b, s) else 'within'} seed noise (2 x {s:.2f})"


def compare_row(check: str, a: str, b: str, mean: pd.Series, std: pd.Series, runs: int) -> tuple:
    """(check, 'a vs b', a > b, seed noise) for two curves of one setting."""
    return (check, f"{mean[a]:.2f} vs {mean[b]:.2f}", bool(mean[a] > mean[b]),
            noise(mean[a], std.get(a, np.nan), mean[b], std.get(b, np.nan), runs))
