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
This module is the command line and that flow; the pieces are lucir.profiles (the pairs),
lucir.study_data (the data check), lucir.plan_text (--dry-run), lucir.scheduler (the runs),
lucir.notebook_runner (papermill, done markers) and lucir.report.build_report (report.html).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from . import local_executor, provenance, scheduler
from . import results as res
from .config import ConfigError, one_line
from .notebook_runner import error_text, execute_pair, is_done, kernel_env, marker_seconds
from .plan_text import print_plan
from .progress import Progress
from .profiles import SELECT_KEYS, build_pairs, parse_selection, profile_parameter
from .studies import StudyError, available_profiles, load_profile
from .study_data import data_provenance, preflight_data

REPO_ROOT = provenance.REPO_ROOT


@dataclass(frozen=True)
class StudyOptions:
    """How a study runs: the command line's options (build_parser), with its defaults."""
    results: str | None = None     # runs/, tables/ and study/ go here (default results/<profile>)
    reports: str | None = None     # the report goes here (default <results>/report)
    only: list | None = None       # the notebooks to run (default: every notebook of the profile)
    select: dict | None = None     # a cut of the profile (parse_selection)
    dry_run: bool = False          # print the plan (lucir.plan_text) and train nothing
    rate: float | None = None      # the dry run's training rate instead of the assumed one
    executor: str = "local"        # local, ray or slurm
    jobs: int | None = None        # runs at once; None: auto (local_executor.local_slots; Slurm: no limit)
    runs_per_gpu: int = 1
    address: str | None = None     # the Ray cluster to join (default: start a local one)
    cpus_per_run: int = 1          # Ray and Slurm: CPUs each run asks for
    slurm: dict | None = None      # SlurmOptions fields, over the profile's `slurm:` mapping
    device: str | None = None      # config device of every run
    cache_dir: str | None = None   # the base-phase cache
    progress: bool = True          # the progress bar


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


def run_study(profile: str, options: StudyOptions | None = None) -> int:
    """The whole study of a profile (a name in studies/ or a .yaml path): plan, execute, render;
    returns the exit status (0, or 1 when a run or a notebook failed)."""
    o = options or StudyOptions()
    executor, device, jobs, runs_per_gpu, address, cpus_per_run, slurm = (
        o.executor, o.device, o.jobs, o.runs_per_gpu, o.address, o.cpus_per_run, o.slurm)
    env = kernel_env()  # here, before papermill changes the working folder of this process
    name, path, content = load_profile(profile)
    results_dir = Path(o.results or Path("results") / name).resolve()
    # The user's report sits with their results (ignored by git); reports/<profile>/ is the committed
    # reference, re-rendered only when asked for with --reports.
    reports_dir = Path(o.reports).resolve() if o.reports else results_dir / "report"
    cache_dir = str(Path(o.cache_dir).expanduser().resolve()) if o.cache_dir else None
    runtime = {"progress": False} | ({"device": device} if device else {}) | (
        {"cache_dir": cache_dir} if cache_dir else {})
    if device and not o.dry_run:  # a dry run may plan for a device this machine lacks
        from .trainer import resolve_device
        try:
            resolve_device(device)
        except ConfigError as e:
            raise StudyError(f"--device: {e}") from None
    left_out: list = []
    pairs = build_pairs(content, results_dir, o.only, runtime, o.select, left_out, profile_parameter(name, path))
    if not pairs:
        raise StudyError(f"the selection leaves nothing to run in profile '{name}' "
                         f"({'; '.join(f'{k}: {why}' for k, why in left_out[:3])})")
    if note := gpu_profile_on_cpu(name, content, pairs, results_dir, device, executor):
        print(f"warning: {note}", file=sys.stderr)
    data = data_provenance(pairs)
    if o.dry_run:
        todo = [p for p in pairs if not is_done(results_dir, p)]
        tasks, earlier = scheduler.collect_runs(todo, results_dir)
        print_plan(name, pairs, todo, left_out, tasks, earlier, data, o)
        return 0
    preflight_data(data)
    if any(d["download"] for d in data):
        data = data_provenance(pairs)  # the downloaded files, for provenance
    started = provenance.now()
    todo = [p for p in pairs if not is_done(results_dir, p)]
    tasks, earlier = scheduler.collect_runs(todo, results_dir)
    records = {p.key: {"key": p.key, "notebook": p.notebook, "setting": p.setting, "status": "complete earlier",
                       "parameters": p.parameters, "seconds": marker_seconds(results_dir, p)} for p in pairs}
    run_records = {t.name: {"name": t.name, "label": t.label, "needed_by": t.needed_by, "status": status}
                   for status, group in (("complete earlier", earlier), ("not started", tasks)) for t in group}
    for pair in todo:
        records[pair.key]["status"] = "not started"
    study_file = results_dir / "study" / "study.json"

    def write_study(finished=None):
        merge_study(study_file, {
            "profile": name, "profile_path": repo_relative(path), "description": content.get("description", ""),
            "shared": content.get("shared") or {}, "notebooks": content["notebooks"], "only": o.only,
            "select": {k: sorted(v) for k, v in (o.select or {}).items()},
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
    bar = Progress(tasks, len(todo), f"study {name}", enabled=o.progress)
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
            futures = [pool.submit(execute_pair, pair, results_dir, reports_dir, env) for pair in runnable]
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
        from .report import REPORT, build_report
        # One report at a time per results folder: the last one built sees every invocation's notebooks.
        with res.locked(results_dir / "study" / ".report.lock"):
            try:
                html, report_error = build_report(results_dir, reports_dir, env), None
            except Exception as e:  # noqa: BLE001  (still list the failures below)
                html, report_error = None, error_text(e)
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
    written to verdict.md and put at the top of report.html (a report without main curves, Fig. 9's,
    is compared on its claims); a line saying why not when this run's report cannot be compared;
    None without a committed report, or when this run re-rendered it."""
    from . import compare
    reference = REPO_ROOT / "reports" / name
    if not (reference / "claims.csv").exists() or reference.resolve() == reports_dir.resolve():
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
        return run_study(args.profile, StudyOptions(
            results=args.results, reports=args.reports, only=only, select=parse_selection(args.select),
            dry_run=args.dry_run, rate=args.rate, executor=args.executor, jobs=jobs, runs_per_gpu=args.runs_per_gpu,
            address=args.address, cpus_per_run=args.cpus_per_run, slurm=slurm, device=args.device,
            cache_dir=args.cache_dir, progress=not args.no_progress))
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
