"""The study's runs on an executor: plan them, train each once, base phases first.

`lucir.study` hands this module every run that its notebooks will ask for. `collect_runs` keeps
one task per run folder (a run two notebooks need is trained once) and `order_runs` puts, for each
base phase that several runs share (trainer.base_cache_path), one run first; the runs that reuse
that base wait until it is cached, then load it instead of training it again. `execute` hands the
tasks to an executor, follows them with one progress bar, and returns a result per run; a failing
run does not stop the others.

Each task is `run_incremental(config, folder)`, exactly what a notebook calls (under the same
run-folder lock), so the numbers are those of `python -m lucir run` with the same config.

Executors:
- `LocalExecutor`: one worker process per slot (a 'spawn' context, so CUDA is safe in it). A slot
  is a device and a number of torch threads: on a CPU, `jobs` slots with every core each (the
  thread count of a run by hand, so the same numbers; $OMP_NUM_THREADS sets another); on
  GPUs, K slots per GPU (`--runs-per-gpu K`), each worker seeing only its GPU
  (CUDA_VISIBLE_DEVICES is set in the worker before torch starts CUDA).
- `lucir.ray_executor.RayExecutor`: each run a Ray task on a cluster without a shared filesystem.
- `lucir.slurm.SlurmExecutor`: each run a Slurm job on a cluster's shared filesystem.
Both reuse this module's worker body, `execute_run`.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import bars, experiments
from . import results as res
from .config import Config, one_line, phase_sizes
# the cost model lives below the trainer (which warns with it); re-exported for the planner's callers
from .costs import (RATES_FILE, assumed_rate, cpu_instead_of_gpu, duration, projected_seconds,  # noqa: F401
                    rates, run_cost)
from .data import DATASET_SIZE

# The work (in image-epochs) that loading the data and starting a kernel costs, for the progress bar.
NOTEBOOK_OVERHEAD = 3000.0
PROGRESS_FILE = "progress.json"  # written by a local worker after every epoch; removed when the run ends


class ExecutorError(Exception):
    """The executor cannot start (e.g. Ray is not installed); one line for the user."""


def base_phase_file(config: Config) -> Path | None:
    """The cache file of the run's base phase, or None when the run does not cache it."""
    if not config.cache_base:
        return None
    from .trainer import base_cache_path
    n_cls = config.num_classes or DATASET_SIZE.get(config.dataset, (100,))[0]
    return base_cache_path(config, phase_sizes(n_cls, config.base_classes, config.phases)[0])


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


def project(tasks: list[RunTask], slots: int, rate_of) -> list[tuple[RunTask, float, float]]:
    """(task, start, end) in seconds, in the order the runs start, when `slots` runs go at once,
    each at rate_of(task) images/s: runs in order_runs order, a run that reuses a base phase once
    the run that trains it has finished that phase (as `execute` starts them)."""
    ordered = order_runs(tasks)
    costs = dict(zip((t.name for t in ordered), costs_with_shared_bases(ordered)))
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


# --------------------------------------------------------------------------- slots and the worker
@dataclass(frozen=True)
class Slot:
    """Where one worker runs: a device ("cpu", "cuda", "cuda:0"), its torch threads, and the
    device it belongs to (`group`, the GPU index; --runs-per-gpu K gives each group K slots)."""
    index: int
    device: str
    threads: int
    group: int = 0
    visible_gpu: int | None = None  # set CUDA_VISIBLE_DEVICES to this in the worker
    env: tuple[tuple[str, str], ...] = ()  # more environment for the worker (MPS's pipe folder)


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_slots(device: str | None, jobs: int | None, runs_per_gpu: int = 1, gpus: int | None = None) -> list[Slot]:
    """The slots of the local executor. `jobs` None is 'auto': on a CPU with two or more cores two
    runs at once, sharing the cores (each overlaps the other's single-threaded work: evaluation,
    herding, Python; the quick study went 7% faster than one run at a time, measured on a 2-core
    machine, docs/performance.md), on GPUs `runs_per_gpu` runs per visible GPU. A number caps the slots.
    $OMP_NUM_THREADS, when set, is every worker's thread count. On a CPU every slot keeps the
    thread count of a run by hand (every core, or $OMP_NUM_THREADS), whatever `jobs`: a CPU run's
    numbers depend on its torch thread count (the order of the sums in its convolutions), so N runs
    at once share the cores rather than split them, and give the numbers of `python -m lucir run`."""
    if gpus is None:
        gpus = 0
        if device is None or device == "auto" or device.startswith("cuda"):
            import torch
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = cpu_threads()
    fixed = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else None
    if gpus and device != "cpu":
        ids = [int(device.split(":")[1])] if device and ":" in device else list(range(gpus))
        layout = [(k, i) for k in range(runs_per_gpu) for i in ids]  # round robin over the GPUs
        layout = layout[:jobs] if jobs else layout
        threads = fixed or max(1, cores // len(layout))
        return [Slot(n, "cuda", threads, group=i, visible_gpu=i) for n, (_, i) in enumerate(layout)]
    return [Slot(k, "cpu", fixed or cores) for k in range(jobs or min(2, cores))]


def _die_with(driver: int) -> None:
    """End this worker when the study's driver process is gone. A driver killed on its own (`kill
    PID`, the OOM killer) leaves its workers running, reparented: one would go on training a run
    nobody waits for, holding its folder's lock, and train it a second time beside the next
    invocation. A daemon thread checks the parent every second; the run's epoch checkpoint is
    already on disk, so the next invocation continues from it."""
    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, name="die-with-driver", daemon=True).start()


def _init_worker(slot: Slot, driver: int | None = None) -> None:
    """First thing in a worker process: only its GPU visible, its share of the cores, and an end
    when the driver ends."""
    if driver is not None:
        _die_with(driver)
    if slot.visible_gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot.visible_gpu)
    os.environ.update(dict(slot.env))
    os.environ["OMP_NUM_THREADS"] = str(slot.threads)
    import torch
    torch.set_num_threads(slot.threads)


def execute_run(task: RunTask, slot: Slot) -> dict:
    """Train (or resume) one run in this process on the slot's device, as a notebook would:
    run_incremental(config, folder) under the run-folder lock. Never raises: a failure is a result."""
    import torch

    from . import trainer
    folder = Path(task.folder)
    config = replace(task.config, device=slot.device, progress=False)
    torch.set_num_threads(slot.threads)
    progress = folder / PROGRESS_FILE

    record = {"name": task.name, "slot": slot.index, "group": slot.group, "device": slot.device,
              "threads": slot.threads, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "base_epochs_trained": 0}  # epochs of the base phase this call trained (0: loaded or done)

    def epoch_done(desc: str, epoch: int, epochs: int) -> None:
        res.write_json(progress, {"phase": desc, "epoch": epoch, "epochs": epochs})
        if desc.startswith("phase 0 "):
            record["base_epochs_trained"] += 1
        if task.deadline is not None and time.time() >= task.deadline:  # the epoch checkpoint is written
            raise DeadlineReached(f"{desc}, epoch {epoch}/{epochs}")

    try:
        with experiments.run_lock(folder):
            # a progress.json left by a process that was killed tells where that one was, not where
            # this one resumes (a phase checkpoint without an epoch checkpoint restarts its phase):
            # progress starts again from the first epoch this call trains
            progress.unlink(missing_ok=True)
            trainer.run_incremental(config, folder, on_epoch=epoch_done)
        record |= {"status": "done", "error": None}
    except DeadlineReached as e:
        record |= {"status": "stopped", "error": None, "stopped_at": str(e)}
    except Exception as e:  # noqa: BLE001  (a failing run must not stop the others)
        record |= {"status": "failed", "error": one_line(e)}
    finally:
        progress.unlink(missing_ok=True)
    record["finished"] = time.time()
    record["seconds"] = record["finished"] - record["started"]
    return record


# --------------------------------------------------------------------------- executors
class LocalExecutor:
    """One worker process per slot; a slot runs one task at a time. `work(task, slot)` is the
    function the workers call (execute_run; tests pass another)."""
    name = "local"
    reports_epochs = True  # the workers write progress.json where the driver sees it

    def __init__(self, slots: list[Slot], work=execute_run):
        self.slots, self.work = list(slots), work
        if sum(s.threads for s in self.slots if s.device == "cpu") > cpu_threads():
            # More threads than cores (runs at once keep a by-hand run's thread count): OpenMP
            # threads that spin while they wait would take the cores from the other runs (measured
            # on 2 cores, two 2-thread ResNet-32 steps: 133 images/s in all spinning, 314 passive,
            # 330 for one alone). The workers inherit this; the numbers do not depend on it.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.context = multiprocessing.get_context("spawn")
        self.pools = {s.index: self._pool(s) for s in self.slots}
        self.running: dict = {}  # future -> (slot, task)

    def _pool(self, slot: Slot) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=self.context, initializer=_init_worker,
                                   initargs=(slot, os.getpid()))

    @property
    def capacity(self) -> int:
        return len(self.slots)

    def describe(self) -> str:
        devices = sorted({s.device if s.visible_gpu is None else f"GPU {s.visible_gpu}" for s in self.slots})
        return (f"executor local: {len(self.slots)} worker(s) on {', '.join(devices)}, "
                f"{self.slots[0].threads} thread(s) each")

    def free(self) -> int:
        return len(self.slots) - len(self.running)

    def submit(self, task: RunTask) -> None:
        busy = {slot.index for slot, _ in self.running.values()}
        slot = next(s for s in self.slots if s.index not in busy)
        self.running[self.pools[slot.index].submit(self.work, task, slot)] = (slot, task)

    def busy(self) -> list[tuple[str, RunTask]]:
        return [(f"worker {slot.index} ({slot.device if slot.visible_gpu is None else f'GPU {slot.visible_gpu}'})",
                 task) for slot, task in sorted(self.running.values(), key=lambda st: st[0].index)]

    def wait(self, timeout: float) -> list[tuple[RunTask, dict]]:
        if not self.running:
            time.sleep(timeout)
            return []
        done, _ = wait_futures(list(self.running), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for future in done:
            slot, task = self.running.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool:  # the worker died (out of memory, a crash)
                result = {"name": task.name, "status": "failed", "slot": slot.index, "group": slot.group,
                          "error": "the worker process died (out of memory, or a crash in native code)"}
            except Exception as e:  # noqa: BLE001  (e.g. a task that could not be pickled)
                result = {"name": task.name, "status": "failed", "slot": slot.index, "group": slot.group,
                          "error": one_line(e)}
            if result["status"] == "failed":
                # A failed run can leave its process unusable (a CUDA error poisons the process's
                # CUDA context; after running out of memory the worker keeps its cached memory):
                # the slot gets a fresh worker process before it takes another run.
                self.pools[slot.index].shutdown(wait=False, cancel_futures=True)
                self.pools[slot.index] = self._pool(slot)
            out.append((task, result))
        return out

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- progress
class Progress:
    """One bar over the work of every run still to do and of the notebooks and report after them,
    with its ETA from run_cost; below it a line per busy worker. A thread follows the runs'
    metrics.json (written after each phase) and, from local workers, progress.json (each epoch)."""

    def __init__(self, tasks: list[RunTask], notebooks: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm
        self.tqdm, self.enabled, self.desc = tqdm, enabled, desc
        self.tracked = [(Path(t.folder), costs, self._phases_done(Path(t.folder)))
                        for t, costs in zip(tasks, costs_with_shared_bases(tasks))]
        self.total = sum(sum(c[k0:]) for _, c, k0 in self.tracked) + NOTEBOOK_OVERHEAD * (notebooks + 1)
        self.notebooks_done, self.lock, self.stop = 0, threading.Lock(), threading.Event()
        self.found_at: dict = {}  # (folder, phase) -> share of the phase trained before this invocation
        # on a file or pipe: plain lines (lucir.bars), each with the workers' states in its postfix
        self.plain = bars.plain(sys.stderr)
        self.bar = tqdm(total=max(self.total, 1.0), desc=desc, disable=not enabled,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}",
                        **{"dynamic_ncols": True, "file": sys.stderr, **bars.bar_options(sys.stderr)})
        self.postfix = ""
        self.lines: list = []
        self.busy: list = []
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    @staticmethod
    def _phases_done(folder: Path) -> int:
        try:
            return len(json.loads((folder / "metrics.json").read_text())["phases"])
        except (OSError, ValueError, KeyError):
            return 0

    def work_done(self) -> float:
        """Finished phases, plus the epochs trained so far in a phase under way: a phase of a long
        run (the paper's base phase: hours) would otherwise hold the bar and its ETA still."""
        done = 0.0
        for f, c, k0 in self.tracked:
            k = max(k0, self._phases_done(f))
            done += sum(c[j] * (1.0 - self.found_at.get((f, j), 0.0)) for j in range(k0, k))
            done += c[k] * self._share_of_phase(f, k, k == k0) if k < len(c) else 0.0
        return min(done + NOTEBOOK_OVERHEAD * self.notebooks_done, self.work_to_do())

    def work_to_do(self) -> float:
        """The bar's total: all phases not finished before this invocation, less the epochs of a
        resumed phase that an earlier invocation trained (neither this one's work nor still to do)."""
        costs = {f: c for f, c, _ in self.tracked}
        return self.total - sum(costs[f][phase] * share for (f, phase), share in self.found_at.items())

    def _share_of_phase(self, folder: Path, phase: int, resumed: bool) -> float:
        """The share of `phase` that this invocation has trained, from the run's progress.json. A
        phase this invocation started in (`resumed`: it may go on from an epoch checkpoint) counts
        from where this invocation found it (less the epoch that told it), so that epochs of an
        earlier invocation do not make the ETA too short."""
        try:
            p = json.loads((folder / PROGRESS_FILE).read_text())
            stage = re.match(r"phase (\d+)( CBF)?", p["phase"])
            share = 1.0 if stage[2] else p["epoch"] / p["epochs"]  # the CBF finetune: training is done
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0
        if int(stage[1]) != phase:
            return 0.0
        if (folder, phase) not in self.found_at:
            self.found_at[(folder, phase)] = max(share - 1 / p["epochs"], 0.0) if resumed and not stage[2] else 0.0
        return max(share - self.found_at[(folder, phase)], 0.0)

    @staticmethod
    def worker_text(where: str, task: RunTask, epochs: bool) -> str:
        text = f"  {where}: {task.name} {task.label}"
        if not epochs:
            return f"{text}: running"
        try:
            p = json.loads((Path(task.folder) / PROGRESS_FILE).read_text())
            return f"{text}: {p['phase']}, epoch {p['epoch']}/{p['epochs']}"
        except (OSError, ValueError, KeyError):
            return f"{text}: starting"

    def set_busy(self, busy: list[tuple[str, RunTask]], epochs: bool) -> None:
        with self.lock:
            self.busy = [(where, task, epochs) for where, task in busy]

    def update(self, postfix: str | None = None) -> None:
        with self.lock:
            if postfix is not None:
                self.postfix = postfix
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.n = self.work_done()
            self.bar.total = max(self.work_to_do(), 1.0)
            if self.plain:  # one line now and then (tqdm's mininterval), the workers' states in it
                states = "; ".join(self.worker_text(*b).strip() for b in self.busy)
                self.bar.set_postfix_str("; ".join(x for x in (self.postfix, states) if x), refresh=False)
                self.bar.update(0)
                return
            self.bar.refresh()
            if not self.enabled:
                return
            while len(self.lines) < len(self.busy):
                self.lines.append(self.tqdm(total=0, position=len(self.lines) + 1, bar_format="{desc}",
                                            file=sys.stderr, dynamic_ncols=True, leave=False))
            for k, line in enumerate(self.lines):
                text = self.worker_text(*self.busy[k]) if k < len(self.busy) else ""
                line.set_description_str(text, refresh=True)

    def notebook_finished(self) -> None:
        self.notebooks_done += 1
        self.update()

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def _watch(self) -> None:
        while not self.stop.wait(2.0):
            self.update()

    def close(self) -> None:
        self.stop.set()
        self.busy = []
        self.update()
        for line in self.lines:
            line.close()
        self.bar.close()


# --------------------------------------------------------------------------- the loop
def execute(tasks: list[RunTask], executor, progress: Progress | None = None, poll: float = 1.0,
            order=order_runs, stop=None) -> dict:
    """Every task on the executor, base phases first; {run name: result}. A run that reuses a base
    phase starts once that base is cached, or once the run that trains it has ended. `order` puts
    the tasks in the order they start (by default order_runs: longest first); once `stop()` is
    true no more start, and the loop ends with the runs under way."""
    pending = order(tasks)
    leaders = {}
    for t in pending:
        if t.base is not None:
            leaders.setdefault(t.base, t.name)
    results: dict = {}

    def ready(t: RunTask) -> bool:
        return (t.base is None or leaders[t.base] == t.name or leaders[t.base] in results
                or Path(t.base).exists())

    try:
        while (pending and not (stop and stop())) or executor.running:
            while executor.free() > 0 and not (stop and stop()):
                task = next((t for t in pending if ready(t)), None)
                if task is None:
                    break
                pending.remove(task)
                executor.submit(task)
            if progress:
                progress.set_busy(executor.busy(), executor.reports_epochs)
            for task, result in executor.wait(poll):
                results[task.name] = result
                if progress:
                    if result["status"] == "failed":
                        progress.write(f"FAILED run {task.name} ({task.label}), needed by "
                                       f"{', '.join(task.needed_by)}: {result['error']}")
                    progress.set_busy(executor.busy(), executor.reports_epochs)
                    progress.update(postfix=f"{len(results)}/{len(tasks)} runs")
    finally:
        executor.close()
    return results
