"""The seed-noise rule that the figures' checks of the paper's claims (lucir.figures) apply: a
check row is (check, ours, holds[, seed noise]); the report shows them under each figure and
collects them into claims.csv (lucir.report.claims).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def noise(a: float, a_std: float, b: float, b_std: float, runs: int) -> str:
    """Whether a difference of two mean accuracies exceeds what the seeds alone give: beyond noise
    when |a - b| > 2 sqrt(std_a^2 + std_b^2), the stds taken over runs with different seeds."""
    if runs < 2 or pd.isna(a_std) or pd.isna(b_std):
        return "unknown: 1 run"
    spread = float(np.hypot(a_std, b_std))
    return f"{'beyond' if abs(a - b) > 2 * spread else 'within'} seed noise (2 x {spread:.2f})"


def compare_row(check: str, a: str, b: str, mean: pd.Series, std: pd.Series, runs: int) -> tuple:
    """(check, 'a vs b', a > b, seed noise) for two curves of one setting."""
    return (check, f"{mean[a]:.2f} vs {mean[b]:.2f}", bool(mean[a] > mean[b]),
            noise(mean[a], std.get(a, np.nan), mean[b], std.get(b, np.nan), runs))
