"""The smoke study, run once per test session and shared by test_study.py and test_notebooks.py.

Both modules call `smoke_study(...)` from their own session fixture; the result is memoised here
(one module object per session), so the study runs once however the tests are selected.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("main_curves", "component_ablation", "exemplar_count", "adaptive_weight", "confusion_matrices",
               "weight_norms")
_CACHE: dict = {}


def run_study(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m lucir.study ARGS` in a child process, as a user would run it."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "lucir.study", *args, "--no-progress"], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def smoke_study(tmp_path_factory, cache_dir: str) -> dict:
    """Run the smoke profile into a tmp results/reports folder once; return its paths and output."""
    if "smoke" not in _CACHE:
        root = tmp_path_factory.mktemp("smoke_study")
        proc = run_study("--profile", "smoke", "--results", str(root / "results"), "--reports",
                         str(root / "reports"), "--cache-dir", cache_dir)
        _CACHE["smoke"] = {"root": root, "results": root / "results", "reports": root / "reports",
                           "cache_dir": cache_dir, "proc": proc}
    return _CACHE["smoke"]
