"""The batch runner: every (notebook, parameter set) of a study profile through papermill, then
the report.

    python -m lucir.study --profile quick [--only NOTEBOOK] [--jobs N] [--results DIR] [--device DEV]

A profile (studies/<name>.yaml) holds `shared` config overrides applied to every run and, per
notebook, a list of parameter sets. Each pair is executed into
reports/<profile>/executed/<notebook>__<setting>.ipynb; a pair whose done marker (written only after
success) matches its parameters is skipped, and the runs behind the notebooks are shared and
resumed by lucir.experiments. A failing notebook does not stop the others: failures are listed
at the end and the exit status is 1. The report notebook then reads the tidy results and is
converted to one self-contained HTML file, reports/<profile>/report.html (code hidden, figures
embedded), with the tables it was built from (CSV) and its main figure (PNG) beside it.
Results go to results/<profile>/ unless --results says otherwise.
Bad input (unknown profile, notebook or parameter) is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import experiments, provenance
from . import results as res
from .config import ConfigError, phase_sizes
from .memory import exemplars_per_class

REPO_ROOT = provenance.REPO_ROOT
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
STUDIES_DIR = REPO_ROOT / "studies"
REPORT = "report"
COMMON_PARAMETERS = ("setting", "results_dir", "config_overrides")
TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}
# For the progress bar only: classes and train images per class of each dataset, and the work
# (in image-epochs) that loading the data and starting a kernel costs.
DATASET_SIZE = {"cifar100": (100, 500, 100), "imagenet": (1000, 1300, 50), "imagenet_subset": (100, 1300, 50),
                "tiny_imagenet": (200, 50, 50), "synthetic": (10, 50, 20)}
NOTEBOOK_OVERHEAD = 3000.0
# The kernels' own log (e.g. ipykernel's warning about TCP transport) would break the progress bar.
QUIET_KERNEL = {"extra_arguments": ["--IPKernelApp.log_level=ERROR"]}


class StudyError(Exception):
    """Bad input to the runner; the message is one line for the user."""


@dataclass
class Pair:
    """One notebook with one parameter set."""
    notebook: str
    setting: str
    parameters: dict                          # what papermill injects
    plan: list = field(default_factory=list)  # the runs the notebook will ask for

    @property
    def key(self) -> str:
        return f"{self.notebook}__{self.setting}"


# --------------------------------------------------------------------------- profiles
def available_profiles() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> tuple[str, Path, dict]:
    """(name, path, content) of a profile given by name (studies/<name>.yaml) or by path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = STUDIES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise StudyError(f"unknown profile '{name_or_path}'; choose one of: {', '.join(available_profiles())} "
                         f"(in {STUDIES_DIR}) or give the path of a .yaml file")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise StudyError(f"profile {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(content, dict):
        raise StudyError(f"profile {path} must be a mapping with 'shared' and 'notebooks'")
    unknown = sorted(set(content) - {"description", "shared", "notebooks"})
    if unknown:
        raise StudyError(f"profile {path}: unknown key '{unknown[0]}' (known: description, shared, notebooks)")
    if not isinstance(content.get("shared") or {}, dict):
        raise StudyError(f"profile {path}: 'shared' must be a mapping of config fields")
    if not isinstance(content.get("notebooks"), dict) or not content["notebooks"]:
        raise StudyError(f"profile {path}: 'notebooks' must map notebook names to lists of parameter sets")
    return path.stem, path, content


def notebook_parameters(notebook: str) -> dict:
    """{name: (type name, default value)} of the notebook's `parameters` cell (papermill's view)."""
    import papermill as pm
    params = pm.inspect_notebook(str(NOTEBOOKS_DIR / f"{notebook}.ipynb"))
    return {name: (p["inferred_type_name"], ast.literal_eval(p["default"])) for name, p in params.items()}


def _check_type(notebook: str, name: str, value, type_name: str) -> None:
    expected = TYPES.get(type_name)
    if expected and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)):
        raise StudyError(f"notebook {notebook}: parameter '{name}' expects {type_name}, got {value!r}")


def build_pairs(content: dict, results_dir: Path, only: list[str] | None, runtime: dict) -> list[Pair]:
    """Every (notebook, parameter set) of the profile, checked against the notebook's parameters
    and with its plan of runs validated (a bad config value fails here, before any training)."""
    shared = dict(content.get("shared") or {})
    notebooks = content["notebooks"]
    for name in notebooks:
        if name not in experiments.EXPERIMENTS:
            raise StudyError(f"profile lists unknown notebook '{name}'; "
                             f"notebooks: {', '.join(experiments.EXPERIMENTS)}")
    for name in only or []:
        if name not in experiments.EXPERIMENTS:
            raise StudyError(f"--only: unknown notebook '{name}'; notebooks: {', '.join(experiments.EXPERIMENTS)}")
        if name not in notebooks:
            raise StudyError(f"--only: notebook '{name}' has no parameter sets in this profile")
    pairs = []
    for notebook, entries in notebooks.items():
        if only and notebook not in only:
            continue
        known = notebook_parameters(notebook)
        if not isinstance(entries, list):
            entries = [entries]
        seen = set()
        for entry in entries:
            if not isinstance(entry, dict):
                raise StudyError(f"notebook {notebook}: each parameter set must be a mapping, got {entry!r}")
            entry = dict(entry)
            for name, value in entry.items():
                if name not in known:
                    raise StudyError(f"notebook {notebook} has no parameter '{name}' "
                                     f"(its parameters: {', '.join(known)})")
                _check_type(notebook, name, value, known[name][0])
            setting = str(entry.get("setting") or shared.get("dataset") or known["setting"][1])
            if not re.fullmatch(r"[\w.+-]+", setting):
                raise StudyError(f"notebook {notebook}: setting name '{setting}' may hold only letters, "
                                 f"digits, . + - _")
            if setting in seen:
                raise StudyError(f"notebook {notebook} has two parameter sets named '{setting}'; "
                                 f"name each with 'setting:'")
            seen.add(setting)
            overrides = {**shared, **(entry.get("config_overrides") or {}), **runtime}
            # every parameter is injected, defaults included, so the executed notebook and the
            # done marker record exactly what ran
            params = {name: default for name, (_, default) in known.items()} | entry | {
                "setting": setting, "results_dir": str(results_dir), "config_overrides": overrides}
            plan_args = {k: v for k, v in params.items() if k not in ("setting", "results_dir")}
            try:
                plan = experiments.PLANS[notebook](**plan_args)
                for run in plan:
                    run.config()
            except ConfigError as e:
                raise StudyError(f"notebook {notebook}, setting {setting}: {e}") from None
            pairs.append(Pair(notebook, setting, params, plan))
    return pairs


# --------------------------------------------------------------------------- done markers
def parameters_hash(params: dict) -> str:
    """Hash of what a pair computes: its parameters without where results go or runtime fields."""
    p = {k: v for k, v in params.items() if k != "results_dir"}
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


def _marker_seconds(results_dir: Path, pair: Pair) -> float | None:
    """How long the pair took when it ran (from its done marker), for the report."""
    try:
        return json.loads(marker_path(results_dir, pair).read_text()).get("seconds")
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the progress bar
def run_cost(config) -> list[float]:
    """Rough work of each phase of a run, in image-epochs (for the ETA only)."""
    n_cls, per_class, test_per_class = DATASET_SIZE.get(config.dataset, (100, 500, 100))
    n_cls = config.num_classes or n_cls
    per, test = config.train_per_class or per_class, config.test_per_class or test_per_class
    costs, seen = [], 0
    for t, size in enumerate(phase_sizes(n_cls, config.base_classes, config.phases)):
        old, seen = seen, seen + size
        mem = exemplars_per_class(max(seen, 1), config.memory_per_class, config.memory_total)
        if t == 0:
            work = size * per * (config.base_epochs or config.epochs)
        else:
            images = seen * per if config.joint_training else size * per + mem * old
            work = images * config.epochs * (1.25 if config.distillation else 1.0)
            work += 0.3 * mem * seen * config.cbf_epochs if config.class_balanced_finetune else 0.0
        costs.append(work + 0.25 * (seen * test + size * per + 2 * mem * seen))
    return costs


class Progress:
    """One bar over the work of every run still to do; a thread follows the runs' metrics.json
    (written after each phase), so the bar and its ETA move within a notebook too."""

    def __init__(self, pairs: list[Pair], results_dir: Path, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm
        from .trainer import base_cache_path
        self.tracked, claimed, bases = [], set(), set()
        for pair in pairs:
            for planned in pair.plan:
                c = planned.config()
                folder = experiments.run_dir(c, results_dir)
                if folder in claimed or res.is_complete(folder):
                    continue
                claimed.add(folder)
                costs = run_cost(c)
                base = base_cache_path(c, phase_sizes(c.num_classes or DATASET_SIZE.get(c.dataset, (100,))[0],
                                                      c.base_classes, c.phases)[0])
                if (c.cache_base and base.exists()) or (c.cache_base and base in bases):
                    costs[0] = 0.25 * costs[0] / max(c.base_epochs or c.epochs, 1)
                bases.add(base)
                self.tracked.append((folder, costs, self._phases_done(folder)))
        self.overhead = NOTEBOOK_OVERHEAD
        self.total = sum(sum(c[k0:]) for _, c, k0 in self.tracked) + self.overhead * (len(pairs) + 1)
        self.pairs_done, self.lock, self.stop = 0, threading.Lock(), threading.Event()
        self.bar = tqdm(total=max(self.total, 1.0), desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}")
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    @staticmethod
    def _phases_done(folder: Path) -> int:
        try:
            return len(json.loads((folder / "metrics.json").read_text())["phases"])
        except (OSError, ValueError, KeyError):
            return 0

    def work_done(self) -> float:
        runs = sum(sum(c[k0:max(k0, self._phases_done(f))]) for f, c, k0 in self.tracked)
        return min(runs + self.overhead * self.pairs_done, self.total)

    def update(self, desc: str | None = None, postfix: str | None = None) -> None:
        with self.lock:
            if desc is not None:
                self.bar.set_description_str(desc, refresh=False)
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.n = self.work_done()
            self.bar.refresh()

    def pair_finished(self) -> None:
        self.pairs_done += 1
        self.update()

    def _watch(self) -> None:
        while not self.stop.wait(2.0):
            self.update()

    def close(self) -> None:
        self.stop.set()
        self.update()
        self.bar.close()


# --------------------------------------------------------------------------- execution
def execute_pair(pair: Pair, results_dir: Path, reports_dir: Path) -> dict:
    """Run one notebook with papermill; write its done marker only after success."""
    import papermill as pm
    out = reports_dir / "executed" / f"{pair.key}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    tic = time.time()
    try:
        pm.execute_notebook(str(NOTEBOOKS_DIR / f"{pair.notebook}.ipynb"), str(out), parameters=pair.parameters,
                            kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS_DIR), **QUIET_KERNEL)
    except Exception as e:  # noqa: BLE001  (a failing notebook must not stop the study)
        error = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', str(e))}"
        return {"key": pair.key, "notebook": pair.notebook, "setting": pair.setting, "status": "failed",
                "error": " ".join(error.split())[:400], "seconds": time.time() - tic, "executed": str(out)}
    seconds = time.time() - tic
    res.write_json(marker_path(results_dir, pair), {
        "notebook": pair.notebook, "setting": pair.setting, "parameters": pair.parameters,
        "parameters_hash": parameters_hash(pair.parameters), "seconds": seconds, "finished": provenance.now(),
        "executed": str(out)})
    return {"key": pair.key, "notebook": pair.notebook, "setting": pair.setting, "status": "done",
            "seconds": seconds, "executed": str(out)}


def data_provenance(pairs: list[Pair]) -> list[dict]:
    """Checksums of the data folder of every real dataset the study uses."""
    from .data import _find, data_root
    markers = {"cifar100": (("cifar100", "cifar-100"), "labels.npz"),
               "tiny_imagenet": (("tiny_imagenet_subset", "tiny_imagenet"), "val_jpeg.npz"),
               "imagenet": (("imagenet", "ILSVRC2012"), "train"),
               "imagenet_subset": (("imagenet", "ILSVRC2012"), "train")}
    out, seen = [], set()
    for pair in pairs:
        for planned in pair.plan[:1]:
            c = planned.config()
            if c.dataset == "synthetic" or c.dataset in seen:
                continue
            seen.add(c.dataset)
            names, marker = markers[c.dataset]
            folder = _find(data_root(c), names, marker)
            out.append({"dataset": c.dataset, "folder": str(folder or data_root(c)), "found": folder is not None,
                        "files": provenance.data_checksums(folder) if folder else []})
    return out


def preflight_data(data: list[dict]) -> None:
    for d in data:
        if not d["found"]:
            raise StudyError(f"{d['dataset']} data not found under '{d['folder']}'; point at it with "
                             f"LUCIR_DATA=/path (or data_dir in the profile's shared overrides)")
        bad = [f["file"] for f in d["files"] if not f["ok"]]
        if bad:
            raise StudyError(f"{d['dataset']} data in '{d['folder']}' fails its SHA256SUMS check: {', '.join(bad)}")


def build_report(results_dir: Path, reports_dir: Path) -> Path:
    """Execute notebooks/report.ipynb on the results and convert it to one HTML file."""
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter
    executed = reports_dir / "executed" / f"{REPORT}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(NOTEBOOKS_DIR / f"{REPORT}.ipynb"), str(executed),
                        parameters={"results_dir": str(results_dir)}, kernel_name="python3", progress_bar=False,
                        cwd=str(NOTEBOOKS_DIR), **QUIET_KERNEL)
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    body = re.sub(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>', "", body)  # self-contained, offline
    html = reports_dir / "report.html"
    res.atomic_write(html, lambda p: Path(p).write_text(body, encoding="utf-8"))
    from .report import export
    export(results_dir, reports_dir)
    return html


def run_study(profile: str, results: str | None = None, reports: str | None = None, only: list[str] | None = None,
              jobs: int = 1, device: str | None = None, cache_dir: str | None = None, progress: bool = True) -> int:
    """The whole study; returns the exit status (0, or 1 when a notebook failed)."""
    name, path, content = load_profile(profile)
    results_dir = Path(results or Path("results") / name).resolve()
    reports_dir = Path(reports or Path("reports") / name).resolve()
    # Kernels run in notebooks/: relative data and cache folders must mean what they mean here.
    for var in ("LUCIR_DATA", "LUCIR_CACHE"):
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())
    cache_dir = str(Path(cache_dir).expanduser().resolve()) if cache_dir else None
    runtime = {"progress": False} | ({"device": device} if device else {}) | (
        {"cache_dir": cache_dir} if cache_dir else {})
    if device:
        from .trainer import resolve_device
        try:
            resolve_device(device)
        except ConfigError as e:
            raise StudyError(f"--device: {e}") from None
    pairs = build_pairs(content, results_dir, only, runtime)
    data = data_provenance(pairs)
    preflight_data(data)
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # share the cores between the kernels
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    started = provenance.now()
    todo = [p for p in pairs if not is_done(results_dir, p)]
    records = {p.key: {"key": p.key, "notebook": p.notebook, "setting": p.setting, "status": "complete earlier",
                       "parameters": p.parameters, "seconds": _marker_seconds(results_dir, p)} for p in pairs}
    study_file = results_dir / "study" / "study.json"

    def write_study(finished=None):
        res.write_json(study_file, {
            "profile": name, "profile_path": str(path), "description": content.get("description", ""),
            "shared": content.get("shared") or {}, "notebooks": content["notebooks"], "only": only, "jobs": jobs,
            "runtime": runtime, "started": started, "finished": finished, "pairs": list(records.values()),
            "provenance": provenance.collect() | {"data": data}})

    write_study()
    print(f"study '{name}': {len(pairs)} notebook runs, {len(pairs) - len(todo)} complete earlier, "
          f"{len(todo)} to run; results in {results_dir}", file=sys.stderr)
    bar = Progress(todo, results_dir, f"study {name}", enabled=progress)
    bar.update(postfix=f"0/{len(todo)} notebooks")
    failures, finished = [], 0
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = {}
        for pair in todo:
            records[pair.key]["status"] = "not started"
            futures[pool.submit(execute_pair, pair, results_dir, reports_dir)] = pair
        for future in as_completed(futures):
            result = future.result()
            records[result["key"]].update(result)
            finished += 1
            if result["status"] == "failed":
                failures.append(result)
                bar.bar.write(f"FAILED {result['key']}: {result['error']}", file=sys.stderr)
            bar.pair_finished()
            bar.update(postfix=f"{finished}/{len(todo)} notebooks")
            write_study()
        pool.shutdown()
        bar.update(postfix="report")
        write_study(finished=provenance.now())
        try:
            html, report_error = build_report(results_dir, reports_dir), None
        except Exception as e:  # noqa: BLE001  (still list the notebook failures below)
            html, report_error = None, f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', str(e))}"
        bar.pair_finished()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: start no further notebook
        bar.close()
    if failures:
        print(f"{len(failures)} notebook run(s) failed (the others ran; the report marks them):", file=sys.stderr)
        for f in failures:
            print(f"  {f['key']}: {f['error']}\n    see {f['executed']}", file=sys.stderr)
    if report_error:
        print(f"the report failed: {' '.join(report_error.split())[:400]}\n    see "
              f"{reports_dir / 'executed' / (REPORT + '.ipynb')}", file=sys.stderr)
        return 1
    print(html)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lucir.study", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", required=True,
                   help=f"a profile in studies/ ({', '.join(available_profiles())}) or a .yaml path")
    p.add_argument("--only", action="append", metavar="NOTEBOOK",
                   help="run only this notebook (repeatable, or comma-separated); the report marks the others "
                        "'not run'")
    p.add_argument("--jobs", type=int, default=1, help="parameter sets run side by side (default 1)")
    p.add_argument("--results", help="runs/, tables/ and study/ go here (default results/<profile>)")
    p.add_argument("--reports", help="report.html, its CSV tables and figures, and the executed notebooks go here "
                                     "(default reports/<profile>)")
    p.add_argument("--device", help="config device for every run: auto, cpu, cuda, cuda:N (default: the config's auto)")
    p.add_argument("--cache-dir", help="base-phase cache folder (default: $LUCIR_CACHE or ~/.cache/lucir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = [n.strip() for item in args.only or [] for n in item.split(",") if n.strip()] or None
    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    try:
        return run_study(args.profile, args.results, args.reports, only, args.jobs, args.device, args.cache_dir,
                         progress=not args.no_progress)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs and phases are kept, and the same command resumes", file=sys.stderr)
        return 130
    except Exception as e:  # the report itself failed: say where to look
        traceback.print_exc()
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
