"""What one figure of the paper is, in one object: a `Figure` holds its claim in the paper's
words, the plan of runs its notebook asks for, its tidy table, its plot, its checks against the
paper and the body of its report section. Each module of lucir.figures builds one; the
registry (lucir.figures.FIGURES) lists them in the report's order.

A figure's notebook uses only its `Figure`: `setup()`, `config(profile, overrides)` (the config
its runs start from), `run(...)` (train or load the plan's runs, write the tidy table),
`overview(results)`, `plot(table)` and `summary(table)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from .. import experiments as ex
from .. import plots, studies


@dataclass(frozen=True)
class Figure:
    name: str        # its notebook (notebooks/<name>.ipynb), its tables' folder and its key in a profile
    title: str       # how the claims table names it, e.g. "Component ablation (Fig. 7a)"
    label: str       # the paper's figure numbers, e.g. "Fig. 7a"
    heading: str     # its section's heading in the report
    claim: str       # what the paper claims, in the paper's words where short
    plan: Callable[..., list]                        # notebook parameters -> [ex.PlannedRun]
    table: Callable[[list, str], pd.DataFrame]       # (run_plan's results, setting) -> tidy table
    plot: Callable[[pd.DataFrame], object]           # tidy table -> matplotlib Figure
    checks: Callable[[pd.DataFrame], list]           # tidy table -> [(check, ours, holds[, seed noise])]
    section: Callable[[pd.DataFrame], None]          # tidy table -> the report section below the claim
    summary: Callable[[pd.DataFrame], pd.DataFrame]  # tidy table -> the notebook's closing table
    # a --select cut of the notebook's parameters beyond phases and seeds (lucir.profiles), or None
    narrow: Callable[[dict, dict], dict] | None = None

    def setup(self) -> None:
        """The look of every plot."""
        plots.setup()

    def config(self, profile: str, overrides: dict) -> dict:
        """The config fields every run of the notebook starts from: the profile's shared ones (a
        name in studies/ or a .yaml path), `overrides` over them."""
        return studies.shared(profile) | overrides

    def run(self, parameters: dict, results_dir, setting: str, started: float | None = None):
        """Train or load every run of the plan, write the tidy table (ex.write_table); return
        (the runs' results, the table)."""
        results = ex.run_plan(self.plan(**parameters), results_dir)
        table = ex.write_table(self.table(results, setting), results_dir, self.name, setting, parameters, started)
        return results, table

    def overview(self, results: list[dict]) -> pd.DataFrame:
        """One line per run: what it is, its averages and its wall time."""
        return ex.runs_overview(results)
