"""The smoke study, run once per test session and shared by test_study.py and test_notebooks.py.

Both modules call `smoke_study(...)` from their own session fixture; the result is memoised here
(one module object per session), so the study runs once however the tests are selected. It runs as
a newcomer runs the README's main command: in a fresh clone of this working tree (fresh_clone),
with the default results and report folders (results/smoke/, results/smoke/report/).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("main_curves", "component_ablation", "exemplar_count", "adaptive_weight", "confusion_matrices",
               "weight_norms")
_CACHE: dict = {}
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]


def run_study(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m lucir.study ARGS` in a child process, as a user would run it (from `cwd`, whose
    lucir package is the one imported: the working folder comes first on a `python -m` path), with
    the variables of `env` added to this process's environment."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, "-m", "lucir.study", *args, "--no-progress"], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def fresh_clone(dest: Path) -> Path:
    """A git repository at `dest` holding this working tree as a clone of its last commit would,
    uncommitted changes included (what git would track: `git ls-files -co --exclude-standard`),
    committed, so that `git status --porcelain` is empty before anything runs in it."""
    files = git("ls-files", "-co", "--exclude-standard", "-z", cwd=REPO).split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git("init", "-q", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "fresh clone", cwd=dest)
    return dest


def smoke_study(tmp_path_factory, cache_dir: str) -> dict:
    """Run the smoke profile once, in a fresh clone with the default folders; return its paths and output."""
    if "smoke" not in _CACHE:
        root = tmp_path_factory.mktemp("smoke_study")
        clone = fresh_clone(root / "clone")
        proc = run_study("--profile", "smoke", "--cache-dir", cache_dir, cwd=clone)
        results = clone / "results" / "smoke"
        _CACHE["smoke"] = {"root": root, "clone": clone, "results": results, "reports": results / "report",
                           "cache_dir": cache_dir, "proc": proc, "status": git("status", "--porcelain", cwd=clone)}
    return _CACHE["smoke"]
