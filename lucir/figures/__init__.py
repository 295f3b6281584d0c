"""The figures of the paper's Sec. 4, one module each (lucir/figures/<name>.py, whose `figure`
is all that figure is: claim, plan, tidy table, plot, checks, report section) and one notebook
each (notebooks/<name>.ipynb). NAMES lists them in the report's order; adding a figure is its
module, its notebook and its name here (docs/study.md, "Adding a figure")."""
from __future__ import annotations

from importlib import import_module

NAMES = ("main_curves", "component_ablation", "exemplar_count", "adaptive_weight", "confusion_matrices",
         "weight_norms")

FIGURES = {name: import_module(f"{__name__}.{name}").figure for name in NAMES}
