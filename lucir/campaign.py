"""A study's runs trained on a borrowed GPU until a deadline, and brought home as results.

The GPU machine this project borrows runs one command for at most 10 minutes, on an image with
torch but no Jupyter stack, and sends back at most 8 files of at most 16 MiB from `$OUT`. A
campaign trains a profile's runs there (base phases first and shared, the cells the repository
lacks first, seed 0 before seeds 1 and 2), stops them cleanly at a deadline (at the end of an
epoch: the epoch checkpoint is written), and packs everything the reports and the next lease need
into $OUT. `land` takes the returned files home into the study's results and cache folders; the
study then renders the report without training (docs/gpu.md, "A campaign"):

    python -m lucir.campaign plan --profile paper_cifar_gpu                  # here: what a lease finishes
    python -m lucir.campaign run --profile paper_cifar_gpu --out $OUT        # there, after lucir.carry unpack
    python -m lucir.campaign land FOLDER --results results/paper_cifar_gpu --cache-dir ~/.cache/lucir
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from . import carry, costs, local_executor, provenance, scheduler
from .device import MPSUnavailable, mps_daemon
from .profiles import build_pairs
from .studies import StudyError, load_profile

REPO_ROOT = provenance.REPO_ROOT

RETURN_FILES = 8          # what comes back from $OUT
RETURN_MIB = 16           # each at most
PACK_SECONDS = 45         # kept free at the end of a command to pack $OUT (measured: a few seconds for 50 MB)
COMMAND_MINUTES = 10      # the device tool's limit for one command
LEASE_TRAINING_MINUTES = 7  # of a 15-minute lease: start 2-4, carrying the data 1.5, packing 0.5 (docs/gpu.md)


def committed_runs(reports: Path = REPO_ROOT / "reports") -> set[str]:
    """Names of the runs behind the committed reports (their runs.csv and tables): a campaign
    trains the cells the repository lacks first."""
    import pandas as pd
    names = set()
    for table in [*reports.glob("*/runs.csv"), *reports.glob("*/tables/*.csv")]:
        frame = pd.read_csv(table)
        for column in ("run", "run_dir"):
            if column in frame:
                names |= {str(v).rstrip("/").split("/")[-1] for v in frame[column].dropna()}
    return names


def campaign_order(tasks: list[scheduler.RunTask], committed: set[str]) -> list[scheduler.RunTask]:
    """Seed 0's runs first, then seed 1's and seed 2's; within a seed the runs the repository lacks
    before the others, and then the study's own order (a base phase's longest run leads it)."""
    ranked = scheduler.order_runs(tasks)
    position = {t.name: k for k, t in enumerate(ranked)}
    return sorted(tasks, key=lambda t: (t.config.seed, t.name in committed, position[t.name]))


def plan_tasks(profile: str, results: Path, runtime: dict) -> tuple[str, list[scheduler.RunTask], list]:
    name, _, content = load_profile(profile)
    pairs = build_pairs(content, results, None, runtime)
    todo, earlier = scheduler.collect_runs(pairs, results)
    return name, todo, earlier


def lease_seconds(deadline_minutes: float) -> float:
    return deadline_minutes * 60.0


def plan(profile: str, results: Path, deadline_minutes: float, rate: float | None, kind: str = "cuda",
         runtime: dict | None = None) -> list[str]:
    """The dry run: each run in campaign order with its image-steps, the lease in which it would
    end at the rate of lucir/rates.json (or `rate`), and how many leases the whole profile takes."""
    name, todo, earlier = plan_tasks(profile, results, runtime or {})
    committed = committed_runs()
    ordered = campaign_order(todo, committed)
    started = scheduler.order_runs(ordered)  # who trains a shared base phase, who loads it
    run_costs = dict(zip((t.name for t in started), scheduler.costs_left(started)))  # reads each checkpoint once
    model = ordered[0].config.resolved_model if ordered else "resnet32"
    best = costs.sharing(kind, model)
    r, source = (rate, "given with --rate") if rate else (best["rate"], best["source"])
    per_lease = lease_seconds(deadline_minutes) * r
    lines = [f"campaign {name}: {len(todo)} runs to train ({len(earlier)} complete earlier) on one {kind} at "
             f"{r:,.0f} image-steps/s in all ({source}); {deadline_minutes:g} min of training a lease = "
             f"{per_lease / 1e6:.1f}M image-steps",
             f"  {'#':>3}  {'run':<40} {'method':<8} {'order':>5} {'in reports':>10} {'image-steps':>11} {'ends in lease':>13}"]
    left = {t.name: sum(run_costs[t.name]) for t in ordered}
    total, ends = 0.0, {}
    for k, t in enumerate(ordered, 1):
        total += left[t.name]
        lease = ends[t.name] = int(total // per_lease) + 1 if per_lease > 0 else 0
        lines.append(f"  {k:>3}  {t.name:<40} {t.label[:8]:<8} {t.config.class_order_run:>5} "
                     f"{'yes' if t.name in committed else 'no':>10} {left[t.name] / 1e6:>10.1f}M {lease:>13}")
    first = [f"{t.label} {t.config.phases} phase(s) seed {t.config.seed}" for t in ordered if ends[t.name] == 1]
    lines.append(f"one lease finishes {len(first)} run(s): {', '.join(first)}" if first else
                 f"one lease finishes no run: the first ends in lease {min(ends.values())}" if ordered else
                 "nothing to train")
    by_seed = {}
    running = 0.0
    for t in ordered:
        running += left[t.name]
        by_seed[t.config.seed] = running
    for seed, upto in sorted(by_seed.items()):
        lines.append(f"seeds up to {seed}: {upto / 1e6:.1f}M image-steps, {-(-upto // per_lease):.0f} lease(s)")
    return lines


# --------------------------------------------------------------------------- run (on the GPU machine)
def run(profile: str, work: Path, out: Path, deadline: float, device: str = "cuda", jobs: int | None = None,
        runs_per_gpu: int | None = None, data_dir: str | None = None, cache_dir: str | None = None,
        command: str = "", log=sys.stderr, grace: float = PACK_SECONDS / 3, mps: str = "auto") -> dict:
    """Train the profile's runs under `work` until `deadline` (time.time()), then pack into `out`.
    A run stops at the end of its first epoch past the deadline; one still under way `grace`
    seconds after it (a long epoch, evaluation, herding) is packed as its checkpoints hold it.
    `runs_per_gpu` None and `mps` "auto" share the GPU as gpu_check's K-process figures in
    lucir/rates.json say is fastest (costs.sharing). Its progress goes to `log` and, as plain
    lines, to WORK/campaign.log, which is packed with the rest. Returns the summary that
    campaign.json holds."""
    started = time.time()
    results = work / "results"
    runtime = {k: v for k, v in (("data_dir", data_dir), ("cache_dir", cache_dir)) if v}
    name, todo, earlier = plan_tasks(profile, results, runtime)
    committed = committed_runs()
    for t in todo:
        t.deadline = deadline
    before = {t.name: scheduler.work_done(t) for t in todo}
    best = costs.sharing(device, todo[0].config.resolved_model if todo else "resnet32")
    runs_per_gpu = runs_per_gpu or best["runs"]
    use_mps = device.startswith("cuda") and runs_per_gpu > 1 and {"on": True, "off": False}.get(mps, best["mps"])
    work.mkdir(parents=True, exist_ok=True)
    log_file = open(work / "campaign.log", "w", buffering=1)

    def say(text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, file=log, flush=True)
        print(line, file=log_file)

    with log_file, contextlib.ExitStack() as stack:
        env = {}
        if use_mps:
            try:
                env = stack.enter_context(mps_daemon(work / "mps"))
            except MPSUnavailable as e:
                say(f"MPS asked for but not started ({e}): the {runs_per_gpu} runs share the GPU by time slicing")
        slots = [dataclasses.replace(s, env=tuple(env.items()))
                 for s in local_executor.local_slots(device, jobs, runs_per_gpu)]
        executor = local_executor.LocalExecutor(slots)
        say(f"campaign {name}: {len(todo)} runs to train, {len(earlier)} complete earlier; {executor.describe()}"
            f"{' under MPS' if env else ''}; deadline in {(deadline - started) / 60:.1f} min")
        outcome: dict = {}
        done = threading.Event()

        def train() -> None:
            try:
                outcome.update(scheduler.execute(todo, executor, None, poll=0.5,
                                                 order=lambda ts: campaign_order(ts, committed),
                                                 stop=lambda: time.time() >= deadline))
            finally:
                done.set()

        threading.Thread(target=train, name="campaign", daemon=True).start()
        last = time.time()
        while not done.wait(min(5.0, max(deadline + grace - time.time(), 0.5))):
            if time.time() - last >= 30:  # plain progress lines, every 30 s
                last = time.time()
                busy = "; ".join(f"{t.name}: {scheduler.describe_state(t)}" for _, t in executor.under_way()) or "none"
                say(f"{sum(r['status'] == 'done' for r in outcome.values())} runs ended; under way: {busy}")
            if time.time() > deadline + grace:  # a run that overran its last epoch: pack what is on disk
                say("past the deadline with runs still under way: packing what their checkpoints hold")
                break
        trained = time.time() - started
        after = {t.name: scheduler.work_done(t) for t in todo}
        steps = sum(after[t.name] - before[t.name] for t in todo)
        summary = {"profile": name, "command": command, "started": provenance.now(), "seconds": trained,
                   "image_steps": steps, "rate": steps / max(trained, 1e-9),
                   "runs_per_gpu": runs_per_gpu, "mps": bool(env), "sharing": best["source"],
                   "provenance": provenance.collect(),
                   "runs": [{"run": t.name, "method": t.label, "phases": t.config.phases, "seed": t.config.seed,
                             "class_order": t.config.class_order_run, "state": scheduler.describe_state(t),
                             "result": outcome.get(t.name, {}).get("status", "not started"),
                             "left": max(sum(t.cost) - after[t.name], 0.0)} for t in todo]}
        for line in table(summary, deadline - started):
            say(line)
        pack(summary, todo + earlier, Path(cache_dir) if cache_dir else None, started, out, work / "campaign.log")
        return summary


def table(summary: dict, lease_training: float) -> list[str]:
    """What the lease did, and what the next one would finish at the rate it measured."""
    lines = [f"{summary['image_steps'] / 1e6:.2f}M image-steps in {summary['seconds']:.0f} s: "
             f"{summary['rate']:,.0f} image-steps/s"]
    budget, next_lease = summary["rate"] * lease_training, []
    for r in summary["runs"]:
        lines.append(f"  {r['run']:<40} {r['method']:<8} {r['state']}")
        if r["left"] > 0 and r["left"] <= budget:
            budget -= r["left"]
            next_lease.append(r["run"])
    lines.append(f"the next lease would finish: {', '.join(next_lease) if next_lease else 'no run'}")
    return lines


def pack(summary: dict, tasks: list[scheduler.RunTask], cache_dir: Path | None, since: float, out: Path,
         log_path: Path | None = None) -> dict:
    """Into `out`: at most RETURN_FILES files of at most RETURN_MIB, the run folders (all but locks
    and progress files: metrics, confusion matrices, weight norms, the newest phase checkpoint, the
    epoch checkpoint), the base phases cached during the campaign, campaign.json and the
    campaign's log."""
    members = []
    for t in tasks:
        folder = Path(t.folder)
        if folder.exists():
            members += [(p, f"runs/{folder.name}/{p.relative_to(folder)}") for p in carry.run_state_files(folder)]
    if cache_dir is not None:
        members += [(p, f"cache/base/{p.name}") for p in sorted((cache_dir / "base").glob("*.pt"))
                    if p.stat().st_mtime >= since]
    out.mkdir(parents=True, exist_ok=True)
    record = out.parent / f".{out.name}-campaign.json"
    record.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    members.append((record, "campaign.json"))
    if log_path is not None and log_path.exists():
        members.append((log_path, "campaign.log"))
    try:
        return carry.write_parts(members, out, RETURN_MIB * carry.MIB - 64 * 1024, {"kind": "campaign"},
                                 max_parts=RETURN_FILES - 1)
    finally:
        record.unlink(missing_ok=True)


# --------------------------------------------------------------------------- land (back home)
def land(folder: Path, results: Path, cache_dir: Path) -> dict:
    """The returned files into the study's results folder (runs/) and the cache folder (base/);
    campaign.json into results/study/campaigns/, where the report's provenance lists it."""
    staging = results / "study" / ".landing"
    shutil.rmtree(staging, ignore_errors=True)
    carry.extract_parts(folder, staging)
    summary = json.loads((staging / "campaign.json").read_text())
    for run in sorted((staging / "runs").iterdir()) if (staging / "runs").exists() else []:
        target = results / "runs" / run.name
        if target.exists():
            shutil.rmtree(target)  # the lease went on from this run's state: its files are newer
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run), str(target))
    for path in sorted((staging / "cache" / "base").glob("*.pt")) if (staging / "cache").exists() else []:
        (cache_dir / "base").mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(cache_dir / "base" / path.name))
    campaigns = results / "study" / "campaigns"
    campaigns.mkdir(parents=True, exist_ok=True)
    stamp = summary.get("started", provenance.now()).replace(":", "")
    shutil.move(str(staging / "campaign.json"), str(campaigns / f"{stamp}.json"))
    if (staging / "campaign.log").exists():
        shutil.move(str(staging / "campaign.log"), str(campaigns / f"{stamp}.log"))
    shutil.rmtree(staging, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lucir.campaign", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("plan", help="here: which runs a lease finishes, and how many leases the profile takes")
    a.add_argument("--profile", required=True)
    a.add_argument("--results", default=None, help="results folder whose runs count as done (default: a fresh one)")
    a.add_argument("--deadline-min", type=float, default=LEASE_TRAINING_MINUTES, help="training minutes of a lease")
    a.add_argument("--rate", type=float, help="image-steps/s (default: lucir/rates.json's cuda figure)")
    b = sub.add_parser("run", help="there: train until the deadline, then pack into --out")
    b.add_argument("--profile", required=True)
    b.add_argument("--work", default="/tmp/lucir-data", help="where lucir.carry unpacked (its data/, cache/ and "
                   "results/ are the campaign's unless --data or --cache-dir say otherwise)")
    b.add_argument("--out", default=os.environ.get("OUT"), help="where the returned files go ($OUT)")
    b.add_argument("--data", help="data folder (default: WORK/data)")
    b.add_argument("--cache-dir", help="base-phase cache folder (default: WORK/cache)")
    b.add_argument("--deadline-min", type=float, default=LEASE_TRAINING_MINUTES,
                   help="minutes from now at which the runs stop (at most 10 less a minute to pack and return)")
    b.add_argument("--device", default="cuda")
    b.add_argument("--jobs", type=int, help="runs at once (default: --runs-per-gpu per GPU)")
    b.add_argument("--runs-per-gpu", type=int, default=None, metavar="K",
                   help="runs at once on the GPU (default: the K of gpu_check's fastest K-process figure in "
                        "lucir/rates.json, 1 without figures)")
    b.add_argument("--mps", choices=("auto", "on", "off"), default="auto",
                   help="NVIDIA's MPS for K > 1 runs at once (auto: where gpu_check measured it faster)")
    c = sub.add_parser("land", help="here: the returned files into the results and cache folders")
    c.add_argument("folder", help="where the returned files were copied")
    c.add_argument("--results", required=True)
    c.add_argument("--cache-dir", default=os.environ.get("LUCIR_CACHE") or str(Path.home() / ".cache" / "lucir"))
    args = p.parse_args(argv)
    try:
        if args.command == "plan":
            results = Path(args.results or (Path(os.environ.get("TMPDIR", "/tmp")) / "lucir-campaign-plan"))
            for line in plan(args.profile, results, args.deadline_min, args.rate):
                print(line)
        elif args.command == "run":
            if not args.out:
                raise StudyError("no --out and no $OUT: where should the returned files go?")
            if not 0 < args.deadline_min <= COMMAND_MINUTES - 1:
                raise StudyError(f"--deadline-min {args.deadline_min:g}: give at most {COMMAND_MINUTES - 1} (a command "
                                 f"runs {COMMAND_MINUTES} min, and packing the returned files needs the last one)")
            deadline = time.time() + args.deadline_min * 60
            work = Path(args.work)
            run(args.profile, work, Path(args.out), deadline, args.device, args.jobs, args.runs_per_gpu,
                args.data or str(work / "data"), args.cache_dir or str(work / "cache"), command=" ".join(sys.argv),
                mps=args.mps)
        else:
            s = land(Path(args.folder), Path(args.results), Path(args.cache_dir).expanduser())
            print(f"landed {len(s['runs'])} runs of campaign {s['profile']} ({s['image_steps'] / 1e6:.1f}M image-steps "
                  f"at {s['rate']:,.0f}/s on {s['provenance']['device'].get('gpu') or 'CPU'}) in {args.results}")
    except (StudyError, carry.CarryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
