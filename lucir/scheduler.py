"""The study's runs on an executor: plan them, train each once, base phases first.

`lucir.study` hands this module every run that its notebooks will ask for. `collect_runs` keeps
one task per run folder (a run two notebooks need is trained once) and `order_runs` puts, for each
base phase that several runs share (trainer.base_cache_path), one run first; the runs that reuse
that base wait until it is cached, then load it instead of training it again. `execute` hands the
tasks to an executor, follows them with one progress bar, and returns a result per run; a failing
run does not stop the others.

Each task is `run_incremental(config, folder)`, exactly what a notebook calls (under the same
run-folder lock), so the numbers are those of `python -m lucir run` with the same config.

Executors have the interface of `concurrent.futures` (`RunExecutor`): `submit(task)` returns a
Future of the run's result. They are:
- `lucir.local_executor.LocalExecutor`: worker processes on this machine; its `execute_run` is
  the worker body that every executor runs.
- `lucir.ray_executor.RayExecutor`: each run a Ray task on a cluster without a shared filesystem.
- `lucir.slurm.SlurmExecutor`: each run a Slurm job on a cluster's shared filesystem.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import experiments
from . import results as res
from .config import Config, one_line
# the cost model lives below the trainer (which warns with it); re-exported for the planner's callers
from .costs import (RATES_FILE, assumed_rate, cpu_instead_of_gpu, duration, projected_seconds,  # noqa: F401
                    rates, run_cost)
from .trainer import base_partial_path, base_phase_file  # noqa: F401  (base_phase_file: the executors')

PROGRESS_FILE = "progress.json"  # written by the worker after every epoch; removed when the run ends


class ExecutorError(Exception):
    """The executor cannot start (e.g. Ray is not installed); one line for the user."""


# --------------------------------------------------------------------------- planning
@dataclass
class RunTask:
    """One run of the study: where it goes, its config, and the notebooks that need it."""
    name: str                                      # the run folder's name
    folder: str                                    # results_dir/runs/<name>
    config: Config
    label: str = ""                                # how the first notebook that needs it calls it
    needed_by: list = field(default_factory=list)  # keys of the (notebook, setting) pairs
    base: str | None = None                        # its base-phase cache file, None without one
    cost: list = field(default_factory=list)       # run_cost per phase
    deadline: float | None = None                  # time.time() after which the run stops at an epoch's end


class DeadlineReached(Exception):
    """A run stopped at the end of an epoch past its task's deadline; its epoch checkpoint is
    written, so the same run goes on from there when it is run again."""


def collect_runs(pairs, results_dir) -> tuple[list[RunTask], list[RunTask]]:
    """(runs to train, runs complete earlier) behind `pairs`, one task per run folder, in plan order."""
    tasks: dict[str, RunTask] = {}
    for pair in pairs:
        for planned in pair.plan:
            config = planned.config()
            folder = experiments.run_dir(config, results_dir)
            if str(folder) not in tasks:
                base = base_phase_file(config)
                label = " ".join(x for x in (planned.method, planned.variant) if x)
                tasks[str(folder)] = RunTask(folder.name, str(folder), config, label, [],
                                             None if base is None else str(base), run_cost(config))
            if pair.key not in tasks[str(folder)].needed_by:
                tasks[str(folder)].needed_by.append(pair.key)
    todo = [t for t in tasks.values() if not res.is_complete(t.folder)]
    return todo, [t for t in tasks.values() if res.is_complete(t.folder)]


def costs_with_shared_bases(tasks: list[RunTask]) -> list[list[float]]:
    """run_cost of each task, where a base phase that an earlier task trains, or that is cached
    already, costs only its loading."""
    out, bases = [], set()
    for t in tasks:
        costs = list(t.cost)
        if t.base is not None and (Path(t.base).exists() or t.base in bases):
            costs[0] = 0.25 * costs[0] / max(t.config.base_epochs or t.config.epochs, 1)  # loaded
        if t.base is not None:
            bases.add(t.base)
        out.append(costs)
    return out


def _partial(task: RunTask) -> Path | None:
    """Where the base phase that the task trains for the cache keeps its epoch checkpoint."""
    return None if task.base is None else base_partial_path(Path(task.base))


def epoch_state(task: RunTask) -> dict | None:
    """results.epoch_state of the task's folder, its base phase's partial checkpoint included."""
    return res.epoch_state(task.folder, task.config, _partial(task))


def work_done(task: RunTask) -> float:
    """Image-steps of the task that its folder holds: finished phases plus the epochs of the phase
    under way (from its epoch checkpoint), at run_cost's full price (a loaded base phase included)."""
    phases = res.phases_done(task.folder)
    done = sum(task.cost[:phases])
    state = epoch_state(task)
    if state and phases < len(task.cost) and state["stage"] == "train":
        done += task.cost[phases] * state["epoch"] / max(state["epochs"], 1)
    return done


def costs_left(tasks: list[RunTask]) -> list[list[float]]:
    """costs_with_shared_bases of each task less what its folder holds already: a finished phase
    costs nothing, the phase under way only its epochs not trained yet (a resumed run's time)."""
    out = []
    for t, costs in zip(tasks, costs_with_shared_bases(tasks)):
        phases, state = res.phases_done(t.folder), epoch_state(t)
        left = [0.0 if k < phases else c for k, c in enumerate(costs)]
        if state and state["stage"] == "train" and state["phase"] == phases < len(left):
            left[phases] *= max(0.0, 1.0 - state["epoch"] / max(state["epochs"], 1))
        out.append(left)
    return out


def describe_state(task: RunTask) -> str:
    """results.describe_state of the task's folder: complete, under way (phase, epoch), not started."""
    return res.describe_state(task.folder, task.config, _partial(task))


def project(tasks: list[RunTask], slots: int, rate_of,
            costs: dict | None = None) -> list[tuple[RunTask, float, float]]:
    """(task, start, end) in seconds, in the order the runs start, when `slots` runs go at once,
    each at rate_of(task) images/s: runs in order_runs order, a run that reuses a base phase once
    the run that trains it has finished that phase (as `execute` starts them), each for the work
    its folder does not hold yet (costs_left, by run name; given by a caller that has them already,
    so that no checkpoint is read twice)."""
    ordered = order_runs(tasks)
    costs = costs if costs is not None else dict(zip((t.name for t in ordered), costs_left(ordered)))
    free, pending, base_ready, out = [0.0] * max(1, slots), list(ordered), {}, []
    while pending:
        now = min(free)
        ready = [t for t in pending if t.base is None or t.base not in base_ready or base_ready[t.base] <= now]
        if not ready:
            free[free.index(now)] = min(base_ready[t.base] for t in pending)
            continue
        task = ready[0]
        pending.remove(task)
        rate = rate_of(task)
        end = now + sum(costs[task.name]) / rate
        if task.base is not None:
            base_ready.setdefault(task.base, now + costs[task.name][0] / rate)
        free[free.index(now)] = end
        out.append((task, now, end))
    return out


def order_runs(tasks: list[RunTask]) -> list[RunTask]:
    """Longest runs first, within the order that base phases impose: for each distinct base phase
    its longest run leads (it trains and caches the base), and leaders come before the runs that
    reuse a base. Each of the two lists is longest first (run_cost), plan order among equals."""
    leaders, followers, bases = [], [], set()
    for t in sorted(tasks, key=lambda t: -sum(t.cost)):  # a stable sort: plan order among equals
        if t.base is None or t.base not in bases:
            leaders.append(t)
            if t.base is not None:
                bases.add(t.base)
        else:
            followers.append(t)
    return leaders + followers


# --------------------------------------------------------------------------- executors
class RunExecutor(Executor):
    """What `execute` asks of an executor: the interface of `concurrent.futures` (`submit`, and
    `shutdown`, which a `with` block calls), how many runs it takes at once, and where its runs
    are, for the progress bar. `submit(task)` returns a Future whose result is the run's result
    (execute_run's record: a run that failed is a result with status "failed"), or that raises
    the error that ended the task."""
    name = ""
    reports_epochs = True  # the runs' progress.json reaches the results folder: the bar shows epochs

    @property
    def capacity(self) -> int:
        """How many runs it takes at once; `execute` submits no more."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the plan: where the runs go."""
        raise NotImplementedError

    def submit(self, task: RunTask) -> Future:
        raise NotImplementedError

    def under_way(self) -> list[tuple[str, RunTask]]:
        """The runs submitted and not ended, each with where it runs, in the order the bar lists them."""
        raise NotImplementedError

    # The executors whose runs a thread of their own follows (Ray, Slurm) keep each run under way in
    # self.runs, as a tuple that ends in its future, and start that thread (their `_follow`) with
    # `start_following`. submit works inside `admitting()`, and the thread ends on an error in
    # `end_following`: both hold one lock, so a run submitted while the thread fails is either
    # failed with the others or refused, never left with a future that nothing completes.
    def start_following(self, name: str) -> None:
        self.error: Exception | None = None  # what stopped the thread
        self.guard = threading.Lock()  # held by `admitting` and `end_following`
        self.stopping = threading.Event()
        self.follower = threading.Thread(target=self._follow, name=name, daemon=True)
        self.follower.start()

    def stop_following(self) -> None:
        self.stopping.set()
        self.follower.join()

    @contextmanager
    def admitting(self):
        """Around submit, from its check that the follower runs until its future is in self.runs."""
        with self.guard:
            if self.error is not None:
                raise self.error
            yield

    def end_following(self, error: Exception) -> None:
        """The follower thread's last act on an error: every run under way, and every later
        submit, ends with it, so that the study does not wait for ever."""
        with self.guard:
            self.error = error
            for *_, future in list(self.runs.values()):
                future.set_exception(error)


# --------------------------------------------------------------------------- the loop
def execute(tasks: list[RunTask], executor: RunExecutor, progress=None, poll: float = 1.0,
            order=order_runs, stop=None) -> dict:
    """Every task on the executor, base phases first; {run name: result}. A run that reuses a base
    phase starts once that base is cached, or once the run that trains it has ended. `order` puts
    the tasks in the order they start (by default order_runs: longest first); once `stop()` is
    true no more start, and the loop ends with the runs under way. `progress` (a
    lucir.progress.Progress) follows the runs; the executor is shut down at the end."""
    pending = order(tasks)
    leaders = {}
    for t in pending:
        if t.base is not None:
            leaders.setdefault(t.base, t.name)
    results: dict = {}
    running: dict = {}  # future -> its task

    def ready(t: RunTask) -> bool:
        return (t.base is None or leaders[t.base] == t.name or leaders[t.base] in results
                or Path(t.base).exists())

    with executor:
        while (pending and not (stop and stop())) or running:
            while len(running) < executor.capacity and not (stop and stop()):
                task = next((t for t in pending if ready(t)), None)
                if task is None:
                    break
                pending.remove(task)
                running[executor.submit(task)] = task
            if progress:
                progress.set_busy(executor.under_way(), executor.reports_epochs)
            if not running:
                time.sleep(poll)
                continue
            done, _ = wait(running, timeout=poll, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                results[task.name] = result = run_result(future, task)
                if progress:
                    if result["status"] == "failed":
                        progress.write(f"FAILED run {task.name} ({task.label}), needed by "
                                       f"{', '.join(task.needed_by)}: {result['error']}")
                    progress.set_busy(executor.under_way(), executor.reports_epochs)
                    progress.update(postfix=f"{len(results)}/{len(tasks)} runs")
    return results


def run_result(future: Future, task: RunTask) -> dict:
    """A done future's result; an error that ended its task makes a failed run's result."""
    try:
        return future.result()
    except Exception as e:  # noqa: BLE001  (a failing run must not stop the others)
        return {"name": task.name, "status": "failed", "error": one_line(e)}
