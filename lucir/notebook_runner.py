"""Executing the notebooks with papermill: a (notebook, parameter set) pair into
<reports>/executed/<notebook>__<setting>.ipynb, with its done marker (written only after success,
holding the hash of what the pair computes), and any notebook of notebooks/ in a kernel started
with an environment of its own (kernel_env), never by changing this process's."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from . import experiments, provenance
from . import results as res
from .config import one_line
from .profiles import NOTEBOOKS_DIR, Pair

# The kernels' own log (e.g. ipykernel's warning about TCP transport) would break the progress bar.
# CRITICAL, not ERROR: jupyter_client interrupts every kernel before shutting it down (8.x,
# KernelManager._async_shutdown_kernel), and a kernel handling a message then logs "ERROR |
# KeyboardInterrupt caught in kernel." after a notebook that succeeded. A cell's error reaches the
# study through papermill, not through this log.
QUIET_KERNEL = {"extra_arguments": ["--IPKernelApp.log_level=CRITICAL"]}


# --------------------------------------------------------------------------- the kernels
def kernel_env(environ=None) -> dict:
    """The environment the notebooks' kernels start with: this process's (or `environ`), with this
    checkout first on PYTHONPATH, so that they import the lucir that the runner imported, not
    whichever copy `pip install -e` last pointed at (another clone, say), and LUCIR_DATA and
    LUCIR_CACHE absolute, since kernels start in notebooks/. The environment itself is left as it is."""
    env = dict(os.environ if environ is None else environ)
    root = str(provenance.REPO_ROOT)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    for var in ("LUCIR_DATA", "LUCIR_CACHE"):
        if env.get(var):
            env[var] = str(Path(env[var]).expanduser().resolve())
    return env


def execute(notebook: str, out: Path, parameters: dict, env: dict) -> None:
    """Execute notebooks/<notebook>.ipynb into `out` with papermill, in a python3 kernel started in
    notebooks/ with the environment `env` (papermill hands nbclient its kernel manager class, and
    jupyter_client's start_kernel takes `env`); a failing cell raises papermill's error."""
    import papermill as pm
    from jupyter_client.manager import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            return await super().start_kernel(**{"env": env, **kw})

    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(NOTEBOOKS_DIR / f"{notebook}.ipynb"), str(out), parameters=parameters,
                        kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS_DIR),
                        kernel_manager_class=KernelManager, **QUIET_KERNEL)


def error_text(e: Exception) -> str:
    """A failed execution in one line: the cell's exception (papermill's ename and evalue)."""
    return f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', str(e))}"


# --------------------------------------------------------------------------- done markers
def parameters_hash(params: dict) -> str:
    """Hash of what a pair computes: its parameters without where results go, runtime fields or the
    profile's name (its shared config is in config_overrides already)."""
    p = {k: v for k, v in params.items() if k not in ("results_dir", "profile")}
    p["config_overrides"] = {k: v for k, v in p.get("config_overrides", {}).items() if k not in res.RUNTIME_FIELDS}
    return hashlib.sha256(json.dumps(p, sort_keys=True, default=str).encode()).hexdigest()[:16]


def marker_path(results_dir: Path, pair: Pair) -> Path:
    return results_dir / "study" / "done" / f"{pair.key}.json"


def is_done(results_dir: Path, pair: Pair) -> bool:
    """Complete: the marker matches the parameters, and the table and every run behind it exist."""
    try:
        marker = json.loads(marker_path(results_dir, pair).read_text())
    except (OSError, ValueError):
        return False
    table = experiments.table_path(results_dir, pair.notebook, pair.setting)
    runs = [experiments.run_dir(run.config(), results_dir) for run in pair.plan]
    return (marker.get("parameters_hash") == parameters_hash(pair.parameters) and table.exists()
            and all(res.is_complete(r) for r in runs))


def marker_seconds(results_dir: Path, pair: Pair) -> float | None:
    """How long the pair took when it ran (from its done marker), for the report."""
    try:
        return json.loads(marker_path(results_dir, pair).read_text()).get("seconds")
    except (OSError, ValueError):
        return None


def execute_pair(pair: Pair, results_dir: Path, reports_dir: Path, env: dict) -> dict:
    """Run one notebook with papermill; write its done marker only after success."""
    out = reports_dir / "executed" / f"{pair.key}.ipynb"
    tic = time.time()
    try:
        execute(pair.notebook, out, pair.parameters, env)
    except Exception as e:  # noqa: BLE001  (a failing notebook must not stop the study)
        return {"key": pair.key, "notebook": pair.notebook, "setting": pair.setting, "status": "failed",
                "error": one_line(error_text(e)), "seconds": time.time() - tic, "executed": str(out)}
    seconds = time.time() - tic
    res.write_json(marker_path(results_dir, pair), {
        "notebook": pair.notebook, "setting": pair.setting, "parameters": pair.parameters,
        "parameters_hash": parameters_hash(pair.parameters), "seconds": seconds, "finished": provenance.now(),
        "executed": str(out)})
    return {"key": pair.key, "notebook": pair.notebook, "setting": pair.setting, "status": "done",
            "seconds": seconds, "executed": str(out)}
