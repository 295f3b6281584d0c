"""The batch runner: plan every run of a study profile, train them on an executor, then execute
the notebooks with papermill and render the report.

    python -m lucir.study --profile quick [--only NOTEBOOK] [--jobs N|auto] [--results DIR] [--device DEV]
                          [--executor local|ray] [--runs-per-gpu K] [--address ADDR]
                          [--select KEY=VALUE ...] [--dry-run] [--rate IMAGES_PER_S]

A profile (studies/<name>.yaml) holds `shared` config overrides applied to every run and, per
notebook, a list of parameter sets. A pair whose done marker (written only after success) matches
its parameters is skipped. Of the others, every run their notebooks will ask for is collected,
once per run folder, and trained by lucir.scheduler (base phases shared by several runs first);
then each pair is executed into <report>/executed/<notebook>__<setting>.ipynb, where the
notebook only loads its finished runs. A failing run does not stop the others: the notebooks
that need it are marked failed (not executed), failures are listed at the end and the exit
status is 1. The report notebook then reads the tidy results and is converted to one
self-contained HTML file, <report>/report.html (code hidden, figures embedded), with the
tables it was built from (CSV) and its main figure (PNG) beside it. Several invocations on one
results folder (e.g. with different --only) merge their notebooks into study/study.json.
Results go to results/<profile>/ and the report to results/<profile>/report/ (both ignored by git)
unless --results / --reports say otherwise; `--reports reports/<profile>` re-renders the committed
report. Where the profile has a committed report, the study ends with a verdict (lucir.compare):
this run beside it, cell by cell, printed before the report's path, in verdict.md and at the top
of report.html.
Bad input (unknown profile, notebook or parameter) is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from . import experiments, local_executor, provenance, scheduler
from . import results as res
from .config import ConfigError, one_line
from .progress import Progress
from .profiles import (NOTEBOOKS_DIR, SELECT_KEYS, Pair, StudyError, _n, available_profiles,
                       build_pairs, load_profile, parse_selection)

REPO_ROOT = provenance.REPO_ROOT
REPORT = "report"
# The kernels' own log (e.g. ipykernel's warning about TCP transport) would break the progress bar.
# CRITICAL, not ERROR: jupyter_client interrupts every kernel before shutting it down (8.x,
# KernelManager._async_shutdown_kernel), and a kernel handling a message then logs "ERROR |
# KeyboardInterrupt caught in kernel." after a notebook that succeeded. A cell's error reaches the
# study through papermill, not through this log.
QUIET_KERNEL = {"extra_arguments": ["--IPKernelApp.log_level=CRITICAL"]}


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
                "error": one_line(error), "seconds": time.time() - tic, "executed": str(out)}
    seconds = time.time() - tic
    res.write_json(marker_path(results_dir, pair), {
        "notebook": pair.notebook, "setting": pair.setting, "parameters": pair.parameters,
        "parameters_hash": parameters_hash(pair.parameters), "seconds": seconds, "finished": provenance.now(),
        "executed": str(out)})
    return {"key": pair.key, "notebook": pair.notebook, "setting": pair.setting, "status": "done",
            "seconds": seconds, "executed": str(out)}


def data_provenance(pairs: list[Pair]) -> list[dict]:
    """Where the data of every real dataset the study uses is, in which format, with checksums
    (the array format's SHA256SUMS, checked; sha256 of torchvision's CIFAR-100 files), or, for
    CIFAR-100 missing from the default data folder, that it will be downloaded there."""
    from . import data as data_mod
    out, seen = [], set()
    for pair in pairs:
        for planned in pair.plan[:1]:
            c = planned.config()
            if c.dataset == "synthetic" or c.dataset in seen:
                continue
            seen.add(c.dataset)
            root = data_mod.data_root(c)
            folder = data_mod.find_data_folder(root, c.dataset)
            entry = {"dataset": c.dataset, "folder": str(folder or root), "found": folder is not None,
                     "format": None, "download": False, "files": []}
            if folder is not None and c.dataset == "cifar100" and not (folder / "labels.npz").exists():
                tv = folder / data_mod.CIFAR100_TORCHVISION
                entry["format"] = "torchvision"
                entry["files"] = [{"file": f"{tv.name}/{name}", "sha256": provenance.sha256(tv / name),
                                   "expected": None, "ok": None} for name in ("train", "test", "meta")]
            elif folder is not None:
                entry["format"] = "array" if c.dataset in ("cifar100", "tiny_imagenet") else "folders"
                entry["files"] = provenance.data_checksums(folder)
            elif c.dataset == "cifar100" and root == data_mod.default_data_root():
                entry["download"] = True
            out.append(entry)
    return out


def data_plan_lines(data: list[dict]) -> list[str]:
    """One line per dataset: where it is and in which format, or what will be downloaded."""
    from .data import CIFAR100_DOWNLOAD, CIFAR100_TORCHVISION
    lines = []
    for d in data:
        if d["found"]:
            lines.append(f"{d['dataset']}: {d['format']} format in {d['folder']}")
        elif d["download"]:
            lines.append(f"{d['dataset']}: not in {d['folder']}; downloaded there through torchvision into "
                         f"{CIFAR100_TORCHVISION}/ before the runs start ({CIFAR100_DOWNLOAD})")
        else:
            lines.append(f"{d['dataset']}: NOT FOUND under {d['folder']}")
    return lines


def preflight_data(data: list[dict]) -> None:
    """Stop with one line when data is missing or fails its checksums; download CIFAR-100 into
    the default data folder when it is missing there (once, before any run starts)."""
    from .data import DataError, download_cifar100
    for d in data:
        if d["download"]:
            try:
                download_cifar100(Path(d["folder"]))
            except DataError as e:
                raise StudyError(str(e)) from None
            continue
        if not d["found"]:
            raise StudyError(f"{d['dataset']} data not found under '{d['folder']}'; point at it with "
                             f"LUCIR_DATA=/path (or data_dir in the profile's shared overrides)")
        bad = [f["file"] for f in d["files"] if f["ok"] is False]
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


def merge_study(path: Path, record: dict) -> None:
    """Write study.json under a lock, keeping what other invocations on this results folder
    recorded: their pairs (by key) and runs (by name) stay, this invocation's replace them."""
    with res.locked(path.with_name(".study.json.lock")):
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        pairs = {p["key"]: p for p in old.get("pairs", [])} | {p["key"]: p for p in record["pairs"]}
        runs = {r["name"]: r for r in old.get("runs", [])} | {r["name"]: r for r in record.get("runs", [])}
        res.write_json(path, record | {"pairs": list(pairs.values()), "runs": list(runs.values())})


def repo_relative(path) -> str:
    """A file's path relative to the repository when it lies inside it (what reports name), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return str(path)


def _count(work: float) -> str:
    return f"{work / 1e9:.2f}G" if work >= 1e9 else f"{work / 1e6:.1f}M" if work >= 1e6 else f"{work / 1e3:.0f}k"


def print_plan(name, pairs, todo, left_out, tasks, earlier, data, device, executor, jobs, runs_per_gpu, rate) -> None:
    """The dry run: notebooks kept and left out, data, each run in the order it starts with its
    cost (image-steps, run_cost) and the base phase it shares, and the projected time on the chosen
    device from the cost model at the rate it assumes (lucir/rates.json, or --rate)."""
    import torch
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = "cpu" if kind == "auto" else kind
    note = ""
    if executor == "local" and kind.startswith("cuda") and not torch.cuda.is_available():
        slots, sharing, note = min(jobs or runs_per_gpu, runs_per_gpu), runs_per_gpu, " (no GPU here: 1 GPU assumed)"
    elif executor == "local":
        slots = len(local_executor.local_slots(device, jobs, runs_per_gpu))
        sharing = runs_per_gpu if kind.startswith("cuda") else slots
    else:  # ray: the cluster decides; the projection is for one run at a time
        slots, sharing, note = 1, 1, " (Ray: one at a time assumed)"
    sharing = max(1, min(sharing, len(tasks)))
    rates = {}

    def rate_of(task):
        model = task.config.resolved_model
        rates[model] = (rate, "given with --rate") if rate else scheduler.assumed_rate(kind, model)
        return rates[model][0] / sharing

    print(f"study '{name}', dry run (nothing is trained): {_n(len(pairs), 'notebook run')} "
          f"({len(pairs) - len(todo)} complete earlier); {_n(len(tasks), 'run')} to train, {len(earlier)} complete earlier")
    for pair in pairs:
        print(f"  notebook {pair.key}: {_n(len(pair.plan), 'run')}")
    for key, why in left_out:
        print(f"  left out: {key} ({why})")
    for line in data_plan_lines(data):
        print(f"data: {line}")
    if not tasks:
        return
    schedule = scheduler.project(tasks, slots, rate_of)
    ordered = scheduler.order_runs(tasks)
    costs = dict(zip((t.name for t in ordered), scheduler.costs_with_shared_bases(ordered)))
    bases = {}
    for t, _, _ in schedule:
        if t.base is not None:
            bases.setdefault(t.base, []).append(t.name)
    letters = {b: chr(ord("A") + k) if k < 26 else f"B{k}" for k, b in enumerate(bases)}
    print(f"runs in the order they start ({slots} at once on {kind}{note} with --executor {executor}; a run that reuses a "
          f"base phase starts once it is cached):")
    width = max(34, *(len(t.name) for t, _, _ in schedule))
    print(f"  {'#':>3}  {'run':<{width}} {'order':>5}  {'method':<26} {'image-steps':>11}  {'base phase':<22} {'start':>9} "
          f"{'time':>9}")
    for k, (t, start, end) in enumerate(schedule, 1):
        if t.base is None:
            base = "own, not cached"
        elif Path(t.base).exists():
            base = f"{letters[t.base]}: cached, loaded"
        elif bases[t.base][0] == t.name:
            base = f"{letters[t.base]}: trains it ({_n(len(bases[t.base]), 'run')})"
        else:
            base = f"{letters[t.base]}: reuses it"
        # order: the class order (run k of the authors' code, lucir.data.class_order; 0 is the paper's)
        print(f"  {k:>3}  {t.name:<{width}} {t.config.class_order_run:>5}  {t.label[:26]:<26} {_count(sum(costs[t.name])):>11}  "
              f"{base:<22} "
              f"{scheduler.duration(start):>9} {scheduler.duration(end - start):>9}")
    total = sum(sum(c) for c in costs.values())
    device_seconds = sum(sum(costs[t.name]) / rates[t.config.resolved_model][0] for t, _, _ in schedule)
    print(f"total: {_count(total)} image-steps; {scheduler.duration(device_seconds)} of {kind} time; projected wall time "
          f"{scheduler.duration(max(end for _, _, end in schedule))} with {slots} at once (cost model: lucir.scheduler.run_cost; "
          f"a device's rate shared by the runs on it; data loading and notebooks not counted)")
    for model, (r, source) in sorted(rates.items()):
        print(f"rate assumed for {model} on {kind}: {r:,.0f} image-steps/s ({source})")


def make_executor(kind: str, device: str | None, jobs: int | None, runs_per_gpu: int, address: str | None,
                  cpus_per_run: int, results_dir: Path | None = None, slurm: dict | None = None):
    if kind == "ray":
        from .ray_executor import RayExecutor
        return RayExecutor(address, device, runs_per_gpu, cpus_per_run)
    if kind == "slurm":
        from dataclasses import fields

        from .slurm import SlurmExecutor, SlurmOptions
        known = [f.name for f in fields(SlurmOptions)]
        unknown = sorted(set(slurm or {}) - set(known))
        if unknown:
            raise StudyError(f"profile's slurm: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return SlurmExecutor(results_dir, SlurmOptions(**{"cpus": cpus_per_run, **(slurm or {})}), max_jobs=jobs)
    return local_executor.LocalExecutor(local_executor.local_slots(device, jobs, runs_per_gpu))


def gpu_profile_on_cpu(name: str, content: dict, pairs: list, results_dir: Path, device: str | None,
                       executor: str) -> str | None:
    """One line when a profile meant for a GPU (`meant_for: gpu`) is about to train on this machine's
    CPU, with what that costs (the cost model at lucir/rates.json's rates, each shared base phase
    once); None otherwise, and for Ray, whose cluster has devices of its own."""
    from .device import resolve_device, unusable_gpu
    if content.get("meant_for") != "gpu" or executor != "local" or (device or "").startswith("cuda"):
        return None  # (a dry run may plan for a GPU this machine lacks)
    if resolve_device(device or "auto").type == "cuda":
        return None
    tasks, _ = scheduler.collect_runs(pairs, results_dir)
    bases, runs = set(), []
    for t in scheduler.order_runs(tasks):
        shared = t.base is not None and (t.base in bases or Path(t.base).exists())
        bases.add(t.base)
        runs.append((t.config, sum(t.cost[1:] if shared else t.cost)))
    why = unusable_gpu() if device in (None, "auto") else None
    return (f"profile '{name}' is meant for a GPU but its {len(tasks)} runs will train on the CPU"
            f"{f' ({why})' if why else ''}: {scheduler.cpu_instead_of_gpu(runs)}")


def kernels_import_this_package() -> None:
    """The notebooks' kernels (started with this process's environment) import the lucir that this
    runner imported, not whichever copy `pip install -e` last pointed at (another clone, say)."""
    root = str(Path(__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


def run_study(profile: str, results: str | None = None, reports: str | None = None, only: list[str] | None = None,
              jobs: int | None = None, device: str | None = None, cache_dir: str | None = None, progress: bool = True,
              executor: str = "local", runs_per_gpu: int = 1, address: str | None = None,
              cpus_per_run: int = 1, select: dict | None = None, dry_run: bool = False,
              rate: float | None = None, slurm: dict | None = None) -> int:
    """The whole study; returns the exit status (0, or 1 when a run or a notebook failed).
    `jobs` None is 'auto' (see local_executor.local_slots; with Slurm, no limit on the jobs at once).
    `select` (parse_selection) cuts the profile down; `dry_run` prints the plan (print_plan) and
    trains nothing. `slurm`: SlurmOptions fields, over the profile's `slurm:` mapping."""
    name, path, content = load_profile(profile)
    results_dir = Path(results or Path("results") / name).resolve()
    # The user's report sits with their results (ignored by git); reports/<profile>/ is the committed
    # reference, re-rendered only when asked for with --reports.
    reports_dir = Path(reports).resolve() if reports else results_dir / "report"
    # Kernels run in notebooks/: relative data and cache folders must mean what they mean here.
    for var in ("LUCIR_DATA", "LUCIR_CACHE"):
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())
    kernels_import_this_package()
    cache_dir = str(Path(cache_dir).expanduser().resolve()) if cache_dir else None
    runtime = {"progress": False} | ({"device": device} if device else {}) | (
        {"cache_dir": cache_dir} if cache_dir else {})
    if device and not dry_run:  # a dry run may plan for a device this machine lacks
        from .trainer import resolve_device
        try:
            resolve_device(device)
        except ConfigError as e:
            raise StudyError(f"--device: {e}") from None
    left_out: list = []
    pairs = build_pairs(content, results_dir, only, runtime, select, left_out)
    if not pairs:
        raise StudyError(f"the selection leaves nothing to run in profile '{name}' "
                         f"({'; '.join(f'{k}: {why}' for k, why in left_out[:3])})")
    if note := gpu_profile_on_cpu(name, content, pairs, results_dir, device, executor):
        print(f"warning: {note}", file=sys.stderr)
    data = data_provenance(pairs)
    if dry_run:
        todo = [p for p in pairs if not is_done(results_dir, p)]
        tasks, earlier = scheduler.collect_runs(todo, results_dir)
        print_plan(name, pairs, todo, left_out, tasks, earlier, data, device, executor, jobs, runs_per_gpu, rate)
        return 0
    preflight_data(data)
    if any(d["download"] for d in data):
        data = data_provenance(pairs)  # the downloaded files, for provenance
    started = provenance.now()
    todo = [p for p in pairs if not is_done(results_dir, p)]
    tasks, earlier = scheduler.collect_runs(todo, results_dir)
    records = {p.key: {"key": p.key, "notebook": p.notebook, "setting": p.setting, "status": "complete earlier",
                       "parameters": p.parameters, "seconds": _marker_seconds(results_dir, p)} for p in pairs}
    run_records = {t.name: {"name": t.name, "label": t.label, "needed_by": t.needed_by, "status": status}
                   for status, group in (("complete earlier", earlier), ("not started", tasks)) for t in group}
    for pair in todo:
        records[pair.key]["status"] = "not started"
    study_file = results_dir / "study" / "study.json"

    def write_study(finished=None):
        merge_study(study_file, {
            "profile": name, "profile_path": repo_relative(path), "description": content.get("description", ""),
            "shared": content.get("shared") or {}, "notebooks": content["notebooks"], "only": only,
            "select": {k: sorted(v) for k, v in (select or {}).items()},
            "executor": executor, "jobs": jobs or "auto", "runtime": runtime, "started": started,
            "finished": finished, "pairs": list(records.values()), "runs": list(run_records.values()),
            "provenance": provenance.collect() | {"data": data}})

    write_study()
    print(f"study '{name}': {len(pairs)} notebook runs, {len(pairs) - len(todo)} complete earlier, "
          f"{len(todo)} to run; results in {results_dir}", file=sys.stderr)
    slurm = {**(content.get("slurm") or {}), **(slurm or {})}
    runner = make_executor(executor, device, jobs, runs_per_gpu, address, cpus_per_run, results_dir,
                           slurm) if tasks else None
    bases = len({t.base for t in tasks if t.base})
    # complete runs of every notebook run, those complete earlier included (not only of those to run)
    complete = len(scheduler.collect_runs(pairs, results_dir)[1]) if len(todo) < len(pairs) else len(earlier)
    print(f"{len(tasks)} runs to train ({complete} complete earlier; {bases} distinct cached base phases)"
          + (f"; {runner.describe()}" if runner else ""), file=sys.stderr)
    bar = Progress(tasks, len(todo), f"study {name}", enabled=progress)
    bar.update(postfix=f"0/{len(tasks)} runs")
    failures, failed_runs, finished = [], {}, 0
    try:
        outcomes = scheduler.execute(tasks, runner, bar) if runner else {}
        for run_name, outcome in outcomes.items():
            run_records[run_name].update({k: v for k, v in outcome.items() if k != "name"})
        blocked: dict = {}
        for t in tasks:
            if outcomes.get(t.name, {}).get("status") == "failed":
                failed_runs[t.name] = (t, outcomes[t.name]["error"])
                for key in t.needed_by:
                    blocked.setdefault(key, []).append(t.name)
        for pair in todo:
            if pair.key in blocked:
                first = blocked[pair.key][0]
                records[pair.key].update({"status": "failed", "seconds": 0.0,
                                          "error": f"run {first} failed: {failed_runs[first][1]}",
                                          "executed": "not executed: a run it needs failed"})
                failures.append(records[pair.key])
                bar.notebook_finished()
        write_study()
        runnable = [p for p in todo if p.key not in blocked]
        bar.update(postfix=f"0/{len(runnable)} notebooks")
        with ThreadPoolExecutor(max_workers=max(1, min(4, local_executor.cpu_threads(), len(runnable)))) as pool:
            futures = [pool.submit(execute_pair, pair, results_dir, reports_dir) for pair in runnable]
            for future in as_completed(futures):
                result = future.result()
                records[result["key"]].update(result)
                finished += 1
                if result["status"] == "failed":
                    failures.append(result)
                    bar.write(f"FAILED {result['key']}: {result['error']}")
                bar.notebook_finished()
                bar.update(postfix=f"{finished}/{len(runnable)} notebooks")
                write_study()
        bar.update(postfix="report")
        write_study(finished=provenance.now())
        # One report at a time per results folder: the last one built sees every invocation's notebooks.
        with res.locked(results_dir / "study" / ".report.lock"):
            try:
                html, report_error = build_report(results_dir, reports_dir), None
            except Exception as e:  # noqa: BLE001  (still list the failures below)
                html, report_error = None, f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', str(e))}"
        bar.notebook_finished()
    finally:
        bar.close()
    if failed_runs:
        print(f"{len(failed_runs)} run(s) failed (the other runs finished):", file=sys.stderr)
        for run_name, (t, error) in failed_runs.items():
            print(f"  {run_name} ({t.label}): {error}\n    needed by {', '.join(t.needed_by)}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} notebook run(s) failed (the others ran; the report marks them):", file=sys.stderr)
        for f in failures:
            print(f"  {f['key']}: {f['error']}\n    see {f['executed']}", file=sys.stderr)
    if report_error:
        print(f"the report failed: {one_line(report_error)}\n    see "
              f"{reports_dir / 'executed' / (REPORT + '.ipynb')}", file=sys.stderr)
        return 1
    if text := reference_verdict(name, reports_dir):
        print(text, end="")
    print(html)
    return 1 if failures or failed_runs else 0


def reference_verdict(name: str, reports_dir: Path) -> str | None:
    """This run beside the profile's committed report (reports/<profile>/, lucir.compare): the verdict,
    written to verdict.md and put at the top of report.html; a line saying why not when this run has
    no headline to compare; None without a committed report, or when this run re-rendered it."""
    from . import compare
    reference = REPO_ROOT / "reports" / name
    if not (reference / "headline.csv").exists() or reference.resolve() == reports_dir.resolve():
        return None
    try:
        c = compare.compare(reference, reports_dir, repo_relative(reference), repo_relative(reports_dir))
    except compare.CompareError as e:
        return f"no comparison with {repo_relative(reference)}: {e}\n"
    text = compare.verdict_markdown(c)
    res.atomic_write(reports_dir / "verdict.md", lambda p: Path(p).write_text(text))
    compare.put_on_top(reports_dir / "report.html", compare.verdict_html(c))
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lucir.study", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", required=True,
                   help=f"a profile in studies/ ({', '.join(available_profiles())}) or a .yaml path")
    p.add_argument("--only", action="append", metavar="NOTEBOOK",
                   help="run only this notebook (repeatable, or comma-separated); the report marks the others "
                        "'not run'")
    p.add_argument("--select", action="append", metavar="KEY=VALUE[,VALUE]",
                   help="cut the profile down (repeatable; values of one key are alternatives, different keys "
                        f"must all hold): KEY is one of {', '.join(SELECT_KEYS)}, e.g. --select dataset=cifar100 "
                        "--select method=lucir --select phases=5 --select seed=0. Each notebook's parameter set is "
                        "narrowed (phases, seeds, main_curves' methods) and run only if every run it needs lies "
                        "inside the selection; a method is a preset (lucir, icarl, joint, ...)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and train nothing: the notebooks kept and left out, where the data is (or "
                        "what will be downloaded), each run in the order it starts with its cost in image-steps, "
                        "the base phase it shares and its projected time on the device at the rate assumed")
    p.add_argument("--rate", type=float, metavar="IMAGES_PER_S",
                   help="--dry-run: the training rate (image-steps/s of one run alone on the device) instead of "
                        "the assumed one")
    p.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                   help="local: worker processes on this machine (default); ray: Ray tasks, on a local Ray "
                        "cluster or the one at --address (needs pip install -e \".[ray]\"); slurm: one Slurm job "
                        "per run through submitit, requeued and resumed past its time limit (needs "
                        "pip install -e \".[slurm]\"; a second invocation follows the jobs still running)")
    p.add_argument("--jobs", default="auto", metavar="N|auto",
                   help="local executor: runs trained at once (default auto: on a CPU two runs sharing every core, "
                        "on GPUs --runs-per-gpu runs per GPU); on a CPU each run keeps every core's thread "
                        "(or $OMP_NUM_THREADS): its numbers then equal a run by hand")
    p.add_argument("--runs-per-gpu", type=int, default=1, metavar="K",
                   help="runs sharing each GPU at once (default 1); with Ray each run asks for 1/K of a GPU")
    p.add_argument("--address", help="ray executor: the cluster to join (e.g. ray://head:10001 or auto); "
                                     "default: start a local Ray cluster")
    p.add_argument("--cpus-per-run", type=int, default=1, metavar="N",
                   help="ray and slurm executors: CPUs each run asks for, and its torch threads (default 1)")
    p.add_argument("--partition", help="slurm executor: the partition (default: the cluster's default)")
    p.add_argument("--time-limit", type=int, metavar="MIN",
                   help="slurm executor: each job's time limit in minutes (default 1440); a run that needs "
                        "longer is requeued and resumes from its last epoch checkpoint")
    p.add_argument("--gpus-per-run", type=int, metavar="N", help="slurm executor: GPUs per run (default 0)")
    p.add_argument("--mem-gb", type=float, metavar="GB", help="slurm executor: memory per run (default: the partition's)")
    p.add_argument("--signal-delay", type=int, metavar="S",
                   help="slurm executor: seconds before the time limit at which a job is told to requeue "
                        "(default 120)")
    p.add_argument("--results", help="runs/, tables/ and study/ go here (default results/<profile>)")
    p.add_argument("--reports", help="report.html, its CSV tables and figures, and the executed notebooks go here "
                                     "(default <results>/report, ignored by git; --reports reports/<profile> "
                                     "re-renders the committed report)")
    p.add_argument("--device", help="config device for every run: auto, cpu, cuda, cuda:N (default: the config's auto)")
    p.add_argument("--cache-dir", help="base-phase cache folder (default: $LUCIR_CACHE, else $XDG_CACHE_HOME/lucir, "
                                        "~/.cache/lucir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = [n.strip() for item in args.only or [] for n in item.split(",") if n.strip()] or None
    if args.jobs == "auto":
        jobs = None
    elif args.jobs.isdigit() and int(args.jobs) >= 1:
        jobs = int(args.jobs)
    else:
        print(f"error: --jobs must be a number of at least 1 or 'auto', got '{args.jobs}'", file=sys.stderr)
        return 2
    for option, value in (("--runs-per-gpu", args.runs_per_gpu), ("--cpus-per-run", args.cpus_per_run)):
        if value < 1:
            print(f"error: {option} must be at least 1", file=sys.stderr)
            return 2
    if args.address and args.executor != "ray":
        print("error: --address is for --executor ray", file=sys.stderr)
        return 2
    slurm = {k: v for k, v in (("partition", args.partition), ("time_min", args.time_limit),
                               ("gpus", args.gpus_per_run), ("mem_gb", args.mem_gb),
                               ("signal_delay_s", args.signal_delay)) if v is not None}
    if slurm and args.executor != "slurm":
        print("error: --partition, --time-limit, --gpus-per-run, --mem-gb and --signal-delay are for "
              "--executor slurm", file=sys.stderr)
        return 2
    needs = {"ray": ("ray", "Ray"), "slurm": ("submitit", "submitit")}  # the executors' optional extras
    if args.executor in needs:
        module, name = needs[args.executor]
        try:
            importlib.import_module(module)
        except ImportError:
            print(f'error: --executor {args.executor} needs {name}, which is not installed: '
                  f'pip install -e ".[{args.executor}]"', file=sys.stderr)
            return 2
    if args.rate is not None and not args.rate > 0:
        print("error: --rate must be positive", file=sys.stderr)
        return 2
    try:
        return run_study(args.profile, args.results, args.reports, only, jobs, args.device, args.cache_dir,
                         progress=not args.no_progress, executor=args.executor, runs_per_gpu=args.runs_per_gpu,
                         address=args.address, cpus_per_run=args.cpus_per_run, select=parse_selection(args.select),
                         dry_run=args.dry_run, rate=args.rate, slurm=slurm)
    except (StudyError, scheduler.ExecutorError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs and phases are kept, and the same command resumes", file=sys.stderr)
        return 130
    except Exception as e:  # the report itself failed: say where to look
        traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
