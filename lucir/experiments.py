"""What every figure of Sec. 4 shares: plans of runs, running them, tidy tables and their summaries.

Each figure (lucir.figures) builds a plan (a list of `PlannedRun`: a method preset plus config
overrides), runs it with `run_plan`, and writes one tidy table with `write_table`. Every run goes to
`results_dir/runs/<name>`, the name derived from a hash of the resolved config without its
runtime fields, so a run that two notebooks need (LUCIR with 5 phases is both a main curve
and the CN+LC+IS row of the ablation) is trained once; a complete run is only loaded.

Tables are in long format, one row per run, phase, classifier and metric, with accuracies in
percent: `results_dir/tables/<experiment>/<setting>.csv` (run_dir relative to results_dir),
plus `<setting>.json` holding the notebook's parameters and provenance. The report reads these
and the runs' files only.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import claims, provenance, published
from . import results as res
from .results import run_lock  # noqa: F401  (the study's and notebooks' name for it)
from .bars import bar_options
from .config import Config, ConfigError, make_config
from .trainer import run_incremental

MAIN_CURVES = ("LUCIR-CNN", "LUCIR-NME", "iCaRL-CNN", "iCaRL-NME", "Joint-CNN")
TABLE_COLUMNS = ["experiment", "setting", "dataset", "method", "variant", "classifier", "curve", "phases",
                 "seed", "class_order_seed", "class_order", "memory_per_class", "reduced", "phase", "classes_seen", "metric",
                 "value", "run_dir"]  # no wall clock: a table is the same bytes on any machine (see runs_overview)


@dataclass
class PlannedRun:
    """One run of an experiment: a method preset, config overrides, and how the figure labels it."""
    method: str                                    # LUCIR, iCaRL, Joint, CN, CN+LC, ...
    preset: str                                    # a key of lucir.config.PRESETS
    overrides: dict = field(default_factory=dict)  # config fields on top of the preset
    variant: str = ""                              # e.g. "R_per=5", "fixed lambda_base"

    def config(self) -> Config:
        return make_config(self.preset, **self.overrides)


# --------------------------------------------------------------------------- run names, paths
def run_name(config: Config) -> str:
    """Readable prefix plus a hash of the config without its runtime fields."""
    key = res.run_identity(config)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    order = f"-o{config.class_order_run}" if config.class_order_run else ""  # the paper's order: no tag
    return f"{config.dataset}-b{config.base_classes}-p{config.phases}-s{config.seed}{order}-{digest}"


def resolve_results_dir(results_dir) -> Path:
    """An absolute path; a relative one is taken from the repository root (so a notebook opened
    in JupyterLab and the batch runner share results/), or the working folder outside a checkout."""
    path = Path(results_dir).expanduser()
    if path.is_absolute():
        return path
    root = provenance.REPO_ROOT
    return (root if (root / "pyproject.toml").exists() else Path.cwd()) / path


def run_dir(config: Config, results_dir) -> Path:
    return resolve_results_dir(results_dir) / "runs" / run_name(config)


# --------------------------------------------------------------------------- plans (built by lucir.figures)
def runs_of(seeds: list, class_orders: list) -> list[tuple[int, int]]:
    """The (run seed, class order) of each run. One order: every seed runs on it. As many orders as
    seeds: run i is (seeds[i], class_orders[i]), the authors' convention, where each of the paper's
    3 runs has its own class order (run k of their code, lucir.data.class_order) and its own
    initialisation: seeds [0, 1, 2] with class_orders [0, 1, 2]."""
    seeds, class_orders = list(seeds), list(class_orders)
    if len(class_orders) == 1:
        return [(s, class_orders[0]) for s in seeds]
    if len(class_orders) != len(seeds):
        raise ConfigError(f"class_orders must hold one order, or one per seed ({len(seeds)}), "
                          f"got {class_orders} for seeds {seeds}")
    return list(zip(seeds, class_orders))


def grid(seeds, class_orders, config_overrides: dict, **fields):
    """Overrides of every run (runs_of), on top of the shared config overrides."""
    for seed, order in runs_of(seeds, class_orders):
        yield {**config_overrides, **fields, "seed": seed, "class_order_run": order}


def plan_one_phase_pair(phases: int, seed: int, class_order: int, config_overrides: dict) -> list[PlannedRun]:
    """Fig. 9 and Fig. 3: one iCaRL run and one LUCIR run (the paper uses 1 phase)."""
    o = {**config_overrides, "phases": phases, "seed": seed, "class_order_run": class_order}
    return [PlannedRun("iCaRL", "icarl", o), PlannedRun("LUCIR", "lucir", o)]


# --------------------------------------------------------------------------- running
def run_plan(plan: list[PlannedRun], results_dir) -> list[dict]:
    """Run (or load) every run of the plan; each result holds the planned run, config, dir, metrics."""
    configs = [planned.config() for planned in plan]
    out = []
    bar = tqdm(total=len(plan), desc="runs", unit="run", disable=not any(c.progress for c in configs), **bar_options())
    for planned, config in zip(plan, configs):
        folder = run_dir(config, results_dir)
        label = " ".join(x for x in (planned.method, planned.variant) if x)
        bar.set_postfix_str(f"{label}, {config.phases} phases, seed {config.seed}")
        with run_lock(folder):
            metrics = run_incremental(config, folder)
        out.append({"planned": planned, "config": config, "run_dir": folder, "metrics": metrics})
        bar.update()
    bar.close()
    return out


def runs_overview(results: list[dict]) -> pd.DataFrame:
    """One line per run: what it is, its average incremental accuracies and its wall time."""
    rows = [{"method": r["planned"].method, "variant": r["planned"].variant, "phases": r["config"].phases,
             "seed": r["config"].seed, "avg acc CNN (%)": 100 * r["metrics"]["avg_incremental_accuracy_cnn"],
             "avg acc NME (%)": 100 * r["metrics"]["avg_incremental_accuracy_nme"],
             "train seconds": r["metrics"]["train_seconds"], "run": r["run_dir"].name} for r in results]
    return pd.DataFrame(rows).round(2)


# --------------------------------------------------------------------------- tidy tables
def tidy_curves(results: list[dict], experiment: str, setting: str) -> pd.DataFrame:
    """Long table: one row per run, phase, classifier (cnn, nme) and metric (acc, acc_old, acc_new)."""
    rows = []
    for r in results:
        c, m, planned = r["config"], r["metrics"], r["planned"]
        common = {"experiment": experiment, "setting": setting, "dataset": c.dataset, "method": planned.method,
                  "variant": planned.variant, "phases": c.phases, "seed": c.seed,
                  "class_order_seed": c.class_order_seed, "class_order": c.class_order_run,
                  "memory_per_class": c.memory_per_class,
                  "reduced": bool(published.setting_differences(c.to_dict())),
                  "run_dir": str(r["run_dir"])}
        for p in m["phases"]:
            for clf in ("cnn", "nme"):
                for metric in ("acc", "acc_old", "acc_new"):
                    value = p.get(f"{metric}_{clf}")
                    rows.append({**common, "classifier": clf.upper(), "curve": f"{planned.method}-{clf.upper()}",
                                 "phase": p["phase"], "classes_seen": p["classes_seen"], "metric": metric,
                                 "value": np.nan if value is None else 100 * value})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def table_path(results_dir, experiment: str, setting: str) -> Path:
    return resolve_results_dir(results_dir) / "tables" / experiment / f"{setting}.csv"


def write_table(table: pd.DataFrame, results_dir, experiment: str, setting: str, parameters: dict,
                started: float | None = None) -> pd.DataFrame:
    """Write the tidy table and its sidecar (parameters, provenance, wall time); return the table.
    On disk, run_dir is relative to results_dir, so a results folder can be moved or copied.
    A table already on disk with the same rows, written with the same parameters (runtime fields
    aside), is left as it is, sidecar included: running a notebook again over finished runs
    writes nothing, and the sidecar keeps the provenance of the run that made the table."""
    path = table_path(results_dir, experiment, setting)
    root = resolve_results_dir(results_dir)
    text = table.assign(run_dir=[os.path.relpath(p, root) for p in table.run_dir]).to_csv(index=False)
    if _table_unchanged(path, text, parameters):
        return table
    res.atomic_write(path, lambda p: Path(p).write_text(text))
    meta = {"experiment": experiment, "setting": setting, "parameters": parameters, **provenance.collect(),
            "notebook_seconds": None if started is None else time.time() - started}
    res.write_json(path.with_suffix(".json"), meta)
    return table


def result_parameters(parameters: dict) -> dict:
    """A notebook's parameters as JSON holds them, without the runtime fields of its config
    overrides (they do not change what the runs compute)."""
    p = json.loads(json.dumps(parameters, default=str))
    overrides = p.get("config_overrides") or {}
    return p | {"config_overrides": {k: v for k, v in overrides.items() if k not in res.RUNTIME_FIELDS}}


def _table_unchanged(path: Path, text: str, parameters: dict) -> bool:
    try:
        same_rows = path.read_text() == text
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return same_rows and result_parameters(meta.get("parameters") or {}) == result_parameters(parameters)


def read_tables(results_dir, experiment: str, settings: list[str] | None = None) -> pd.DataFrame:
    """Every table of `experiment` (or those of `settings`), concatenated; empty if none."""
    root = resolve_results_dir(results_dir)
    folder = root / "tables" / experiment
    paths = sorted(folder.glob("*.csv")) if settings is None else [folder / f"{s}.csv" for s in settings]
    frames = [pd.read_csv(p) for p in paths if p.exists()]
    if not frames:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    return table.assign(run_dir=[str(root / p) for p in table.run_dir])


# --------------------------------------------------------------------------- summaries
def average_accuracy(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Average incremental accuracy (mean of the curve, base phase included) per run, then its
    mean, standard deviation and number of runs per group `by`."""
    acc = table[table.metric == "acc"]
    per_run = acc.groupby(by + ["run_dir"], dropna=False)["value"].mean().reset_index()
    out = per_run.groupby(by, dropna=False)["value"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": "ours", "std": "ours_std", "count": "runs"})


def last_phase(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last phase."""
    return table[table.phase == table.groupby("run_dir")["phase"].transform("max")]


def final_accuracy(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Accuracy after the last phase: mean and std over runs per group `by`."""
    acc = last_phase(table[table.metric == "acc"])
    out = acc.groupby(by, dropna=False)["value"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": "ours", "std": "ours_std", "count": "runs"})


def spread_over(table: pd.DataFrame) -> str:
    """What a mean ± std over the runs of `table` is taken over: its class orders (run k of the
    authors' code; a table written before orders were recorded holds order 0) and its run seeds,
    e.g. '3 runs: class orders 0, 1, 2, seeds 0, 1, 2' (the paper's convention and PODNet's) or
    '2 runs: seeds 0, 1 on class order 0' (the spread of seeds alone, narrower than that of orders)."""
    runs = table.drop_duplicates("run_dir")
    orders = sorted({int(o) for o in runs.get("class_order", pd.Series(0, index=runs.index)).fillna(0)})
    seeds = sorted({int(s) for s in runs.seed})
    listed = lambda values: ", ".join(map(str, values))  # noqa: E731
    head = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    if len(orders) == 1:
        return f"{head}: seed{'s' if len(seeds) != 1 else ''} {listed(seeds)} on class order {orders[0]}"
    return f"{head}: class orders {listed(orders)}, seeds {listed(seeds)}"


def comparison(ours: float, ours_std: float, reference: float, reference_std: float, reduced: bool) -> str:
    """What a difference to a published number means: nothing for a reduced setting; otherwise
    whether it lies within the seed noise (lucir.claims.beyond_noise: twice the spread
    sqrt(std_ours^2 + std_published^2) over seeds)."""
    if reference is None or pd.isna(reference):
        return "no published number"
    if reduced:
        return "not comparable: reduced setting"
    spread = claims.spread(ours_std, reference_std)
    if spread == 0:
        return "no spread to compare with (1 run, no published std)"
    inside = not pd.isna(ours) and not claims.beyond_noise(ours, reference, spread)  # no mean: outside
    return f"{'within' if inside else 'outside'} 2x the spread over seeds ({spread:.2f})"


def with_comparison(out: pd.DataFrame, value: str, std: str, reference: str = "published",
                    reference_std: str = "published_std") -> pd.DataFrame:
    """Add `ours - published` (only where the setting is the paper's) and `comparison` columns."""
    ref_std = out[reference_std] if reference_std in out else pd.Series(np.nan, index=out.index)
    own_std = out[std] if std in out else pd.Series(np.nan, index=out.index)
    out = out.assign(comparison=[comparison(v, s, r, rs, bool(red)) for v, s, r, rs, red in
                                 zip(out[value], own_std, out[reference], ref_std, out.reduced)])
    diff = (out[value] - out[reference]).where(~out.reduced.astype(bool))
    return out.assign(**{"ours - published": diff})


