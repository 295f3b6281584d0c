"""The experiments of Sec. 4 as plans of runs, and their tidy tables.

A notebook builds a plan (a list of `PlannedRun`: a method preset plus config overrides), runs
it with `run_plan`, and writes one tidy table with `write_table`. Every run goes to
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

from . import provenance, published
from . import results as res
from .results import run_lock  # noqa: F401  (the study's and notebooks' name for it)
from .bars import bar_options
from .config import Config, ConfigError, make_config
from .trainer import run_incremental

EXPERIMENTS = ("main_curves", "component_ablation", "exemplar_count", "adaptive_weight",
               "confusion_matrices", "weight_norms")
MAIN_CURVES = ("LUCIR-CNN", "LUCIR-NME", "iCaRL-CNN", "iCaRL-NME", "Joint-CNN")
ABLATION_ROWS = (("CN", "cn"), ("CN+LC", "cn_lc"), ("CN+LC+IS", "cn_lc_is"), ("CN+LC+IS+CBF", "cn_lc_is_cbf"))
CONFUSION_PANELS = ("iCaRL-CNN", "iCaRL-NME", "LUCIR-NME", "LUCIR-CNN")  # the order of Fig. 9
TABLE_COLUMNS = ["experiment", "setting", "dataset", "method", "variant", "classifier", "curve", "phases",
                 "seed", "class_order_seed", "class_order", "memory_per_class", "reduced", "phase", "classes_seen", "metric",
                 "value", "run_dir", "run_seconds"]


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


# --------------------------------------------------------------------------- plans (one per notebook)
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


def _grid(seeds, class_orders, config_overrides: dict, **fields):
    """Overrides of every run (runs_of), on top of the shared config overrides."""
    for seed, order in runs_of(seeds, class_orders):
        yield {**config_overrides, **fields, "seed": seed, "class_order_run": order}


MAIN_METHODS = {"lucir": "LUCIR", "icarl": "iCaRL"}


def plan_main_curves(phases: list, joint_phases: list, seeds: list, class_orders: list,
                     config_overrides: dict, lucir_overrides: dict,
                     methods: list = tuple(MAIN_METHODS)) -> list[PlannedRun]:
    """Fig. 5 / 6: LUCIR, iCaRL (or those of `methods`) and, where asked, joint training, for
    every phase count."""
    unknown = [m for m in methods if m not in MAIN_METHODS]
    if unknown or not methods:
        raise ConfigError(f"main curves: methods must be some of {', '.join(MAIN_METHODS)}, got {list(methods)}")
    plan = []
    for p in phases:
        for o in _grid(seeds, class_orders, config_overrides, phases=p):
            plan += [PlannedRun(MAIN_METHODS[m], m, {**o, **lucir_overrides} if m == "lucir" else o) for m in methods]
            if p in joint_phases:
                plan.append(PlannedRun("Joint", "joint", o))
    return plan


def plan_component_ablation(phases: int, seeds: list, class_orders: list, config_overrides: dict,
                            rows: list | None = None) -> list[PlannedRun]:
    """Fig. 7a: the rows CN, CN+LC, CN+LC+IS, CN+LC+IS+CBF (or those of them named in `rows`)."""
    known = dict(ABLATION_ROWS)
    unknown = [r for r in rows or [] if r not in known]
    if unknown:
        raise ConfigError(f"unknown ablation row '{unknown[0]}'; rows: {', '.join(known)}")
    chosen = [(name, preset) for name, preset in ABLATION_ROWS if rows is None or name in rows]
    return [PlannedRun(name, preset, o) for o in _grid(seeds, class_orders, config_overrides, phases=phases)
            for name, preset in chosen]


def plan_exemplar_count(phases: int, memory_per_class: list, seeds: list, class_orders: list,
                        config_overrides: dict) -> list[PlannedRun]:
    """Fig. 7b: LUCIR and iCaRL for every R_per."""
    return [PlannedRun(method, preset, o, variant=f"R_per={r}")
            for r in memory_per_class
            for o in _grid(seeds, class_orders, config_overrides, phases=phases, memory_per_class=r)
            for method, preset in (("LUCIR", "lucir"), ("iCaRL", "icarl"))]


def plan_adaptive_weight(phases: list, seeds: list, class_orders: list,
                         config_overrides: dict) -> list[PlannedRun]:
    """Fig. 8: LUCIR with the adaptive lambda of Eq. 7 and with the fixed lambda_base."""
    return [PlannedRun("LUCIR", "lucir", {**o, "adaptive_weight": aw}, variant=label)
            for p in phases for o in _grid(seeds, class_orders, config_overrides, phases=p)
            for aw, label in ((True, "adaptive lambda"), (False, "fixed lambda_base"))]


def plan_one_phase_pair(phases: int, seed: int, class_order: int, config_overrides: dict) -> list[PlannedRun]:
    """Fig. 9 and Fig. 3: one iCaRL run and one LUCIR run (the paper uses 1 phase)."""
    o = {**config_overrides, "phases": phases, "seed": seed, "class_order_run": class_order}
    return [PlannedRun("iCaRL", "icarl", o), PlannedRun("LUCIR", "lucir", o)]


PLANS = {
    "main_curves": plan_main_curves,
    "component_ablation": plan_component_ablation,
    "exemplar_count": plan_exemplar_count,
    "adaptive_weight": plan_adaptive_weight,
    "confusion_matrices": plan_one_phase_pair,
    "weight_norms": plan_one_phase_pair,
}


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
                  "run_dir": str(r["run_dir"]), "run_seconds": m["train_seconds"]}
        for p in m["phases"]:
            for clf in ("cnn", "nme"):
                for metric in ("acc", "acc_old", "acc_new"):
                    value = p.get(f"{metric}_{clf}")
                    rows.append({**common, "classifier": clf.upper(), "curve": f"{planned.method}-{clf.upper()}",
                                 "phase": p["phase"], "classes_seen": p["classes_seen"], "metric": metric,
                                 "value": np.nan if value is None else 100 * value})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def confusion_file(run_dir, phase: int, classifier: str) -> Path:
    name = f"confusion_phase{phase}.npy" if classifier.upper() == "CNN" else f"confusion_nme_phase{phase}.npy"
    return Path(run_dir) / name


def old_new_confusion(matrix: np.ndarray, n_old: int) -> dict:
    """Shares (%) of old-class test images predicted as some new class, and the reverse."""
    old, new = matrix[:n_old], matrix[n_old:]
    return {"old_as_new": 100 * old[:, n_old:].sum() / max(old.sum(), 1),
            "new_as_old": 100 * new[:, :n_old].sum() / max(new.sum(), 1)}


def tidy_confusion(results: list[dict], setting: str) -> pd.DataFrame:
    """The accuracy curves plus, at the last phase, the old/new confusion shares of each classifier."""
    table = tidy_curves(results, "confusion_matrices", setting)
    extra = []
    for r in results:
        last = r["metrics"]["phases"][-1]
        n_old = last["classes_seen"] - last["new_classes"]
        for clf in ("CNN", "NME"):
            matrix = np.load(confusion_file(r["run_dir"], last["phase"], clf))
            rows = table[(table.run_dir == str(r["run_dir"])) & (table.classifier == clf) & (table.metric == "acc")
                         & (table.phase == last["phase"])]
            for metric, value in old_new_confusion(matrix, n_old).items():
                extra.append({**rows.iloc[0].to_dict(), "metric": metric, "value": value})
    return pd.concat([table, pd.DataFrame(extra, columns=TABLE_COLUMNS)], ignore_index=True)


def tidy_weight_norms(results: list[dict], setting: str) -> pd.DataFrame:
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
                rows.append({"experiment": "weight_norms", "setting": setting, "dataset": c.dataset,
                             "method": r["planned"].method, "variant": "", "classifier": "CNN",
                             "curve": r["planned"].method, "phases": c.phases, "seed": c.seed,
                             "class_order_seed": c.class_order_seed, "class_order": c.class_order_run,
                             "memory_per_class": c.memory_per_class,
                             "reduced": bool(published.setting_differences(c.to_dict())),
                             "phase": last["phase"], "classes_seen": last["classes_seen"], "metric": metric,
                             "value": float(value), "run_dir": str(r["run_dir"]),
                             "run_seconds": r["metrics"]["train_seconds"], "class_index": k,
                             "group": "old" if k < n_old else "new"})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS + ["class_index", "group"])


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


def main_curves_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Our average incremental accuracies (mean, std and number of runs) beside each published one
    (CIFAR-100 B50): one row per setting, phase count, curve and published source. A difference is
    given only where our setting is the paper's; `comparison` says what it means."""
    ours = average_accuracy(table[table.curve.isin(MAIN_CURVES)], ["setting", "dataset", "phases", "curve", "reduced"])
    pub = published.average_accuracy_table().assign(dataset="cifar100")
    out = ours.merge(pub, on=["dataset", "curve", "phases"], how="left")
    return _compare(out, "ours", "ours_std").sort_values(
        ["setting", "phases", "curve", "source"],
        key=lambda s: s.map({c: i for i, c in enumerate(MAIN_CURVES)}) if s.name == "curve" else s,
    ).reset_index(drop=True)


def comparison(ours: float, ours_std: float, reference: float, reference_std: float, reduced: bool) -> str:
    """What a difference to a published number means: nothing for a reduced setting; otherwise
    whether it lies within twice the spread sqrt(std_ours^2 + std_published^2) over seeds."""
    if reference is None or pd.isna(reference):
        return "no published number"
    if reduced:
        return "not comparable: reduced setting"
    spread = float(np.hypot(0.0 if pd.isna(ours_std) else ours_std,
                            0.0 if reference_std is None or pd.isna(reference_std) else reference_std))
    if spread == 0:
        return "no spread to compare with (1 run, no published std)"
    inside = abs(ours - reference) <= 2 * spread
    return f"{'within' if inside else 'outside'} 2x the spread over seeds ({spread:.2f})"


def _compare(out: pd.DataFrame, value: str, std: str, reference: str = "published",
             reference_std: str = "published_std") -> pd.DataFrame:
    """Add `ours - published` (only where the setting is the paper's) and `comparison` columns."""
    ref_std = out[reference_std] if reference_std in out else pd.Series(np.nan, index=out.index)
    own_std = out[std] if std in out else pd.Series(np.nan, index=out.index)
    out = out.assign(comparison=[comparison(v, s, r, rs, bool(red)) for v, s, r, rs, red in
                                 zip(out[value], own_std, out[reference], ref_std, out.reduced)])
    diff = (out[value] - out[reference]).where(~out.reduced.astype(bool))
    return out.assign(**{"ours - published": diff})


def confusion_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Final accuracy and old/new confusion shares of the four panels of Fig. 9, beside the paper's."""
    last = last_phase(table)
    wide = last[last.metric.isin(["acc", "old_as_new", "new_as_old"])].pivot_table(
        index=["setting", "curve", "reduced"], columns="metric", values="value").reset_index()
    wide["published acc"] = wide.curve.map(published.FINAL_ACCURACY_ONE_PHASE)
    wide = _compare(wide, "acc", "acc_std", reference="published acc", reference_std="published acc std")
    wide["curve"] = pd.Categorical(wide.curve, CONFUSION_PANELS, ordered=True)
    return wide.sort_values(["setting", "curve"]).reset_index(drop=True)


def weight_norm_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of the embedding norms and biases of old and new classes, per method."""
    return table.pivot_table(index=["setting", "method", "metric"], columns="group", values="value",
                             aggfunc="mean").reset_index()[["setting", "method", "metric", "old", "new"]]
