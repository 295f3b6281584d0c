"""The dry run's text (`python -m lucir.study --dry-run`): the notebooks kept and left out, the
data, and each run in the order it starts with its cost, the base phase it shares, its projected
time from the cost model (lucir.scheduler) and where its folder stands (a run under way costs
only what is left of it)."""
from __future__ import annotations

from pathlib import Path

from . import local_executor, scheduler
from .profiles import _n
from .study_data import data_plan_lines


def _count(work: float) -> str:
    return f"{work / 1e9:.2f}G" if work >= 1e9 else f"{work / 1e6:.1f}M" if work >= 1e6 else f"{work / 1e3:.0f}k"


def print_plan(name, pairs, todo, left_out, tasks, earlier, data, options) -> None:
    """The dry run: notebooks kept and left out, data, each run in the order it starts with its
    cost (image-steps, run_cost) and the base phase it shares, and the projected time on the chosen
    device from the cost model at the rate it assumes (lucir/rates.json, or --rate). `options`:
    the study's (lucir.study.StudyOptions: device, executor, jobs, runs_per_gpu, rate)."""
    import torch
    device, executor, jobs, runs_per_gpu, rate = (options.device, options.executor, options.jobs,
                                                  options.runs_per_gpu, options.rate)
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
    ordered = scheduler.order_runs(tasks)
    costs = dict(zip((t.name for t in ordered), scheduler.costs_left(ordered)))
    schedule = scheduler.project(tasks, slots, rate_of, costs)
    states = {t.name: scheduler.describe_state(t) for t in ordered}
    resumed = sum(state != "not started" for state in states.values())
    bases = {}
    for t, _, _ in schedule:
        if t.base is not None:
            bases.setdefault(t.base, []).append(t.name)
    letters = {b: chr(ord("A") + k) if k < 26 else f"B{k}" for k, b in enumerate(bases)}
    if resumed:
        print(f"{_n(resumed, 'run')} under way: each resumes from its folder's newest checkpoint, and its "
              "image-steps and time are what is left")
    print(f"runs in the order they start ({slots} at once on {kind}{note} with --executor {executor}; a run that reuses a "
          f"base phase starts once it is cached):")
    width = max(34, *(len(t.name) for t, _, _ in schedule))
    print(f"  {'#':>3}  {'run':<{width}} {'order':>5}  {'method':<26} {'image-steps':>11}  {'base phase':<22} {'start':>9} "
          f"{'time':>9}  state")
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
              f"{scheduler.duration(start):>9} {scheduler.duration(end - start):>9}  {states[t.name]}")
    total = sum(sum(c) for c in costs.values())
    device_seconds = sum(sum(costs[t.name]) / rates[t.config.resolved_model][0] for t, _, _ in schedule)
    print(f"total: {_count(total)} image-steps{' left' if resumed else ''}; {scheduler.duration(device_seconds)} of {kind} "
          f"time; projected wall time "
          f"{scheduler.duration(max(end for _, _, end in schedule))} with {slots} at once (cost model: lucir.scheduler.run_cost; "
          f"a device's rate shared by the runs on it; data loading and notebooks not counted)")
    for model, (r, source) in sorted(rates.items()):
        print(f"rate assumed for {model} on {kind}: {r:,.0f} image-steps/s ({source})")
