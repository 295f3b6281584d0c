"""The local executor: the study's runs in worker processes on this machine, and the worker body
that every executor runs.

One worker process per slot (a 'spawn' context, so CUDA is safe in it). A slot is a device and a
number of torch threads: on a CPU, `jobs` slots with every core each (the thread count of a run by
hand, so the same numbers; $OMP_NUM_THREADS sets another); on GPUs, K slots per GPU
(`--runs-per-gpu K`), each worker seeing only its GPU (CUDA_VISIBLE_DEVICES is set in the worker
before torch starts CUDA). `execute_run` is the worker body; the Ray and Slurm executors
(lucir.ray_executor, lucir.slurm) run it too.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

from . import experiments
from . import results as res
from .config import one_line
from .device import environment
from .scheduler import PROGRESS_FILE, DeadlineReached, RunExecutor, RunTask


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
    # These two stay environment variables, written in the fresh worker process's own environment
    # before torch starts CUDA: CUDA_VISIBLE_DEVICES hides the other GPUs from everything in the run
    # (a torch.cuda call without a device would otherwise touch GPU 0, and the run's config keeps
    # the device "cuda" of a run by hand); MPS's clients find its daemon only by theirs (slot.env).
    if slot.visible_gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot.visible_gpu)
    os.environ.update(dict(slot.env))
    import torch
    torch.set_num_threads(slot.threads)  # what the run's numbers depend on (OpenMP read its environment at import)


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


class LocalExecutor(RunExecutor):
    """One worker process per slot; a slot runs one task at a time. `work(task, slot)` is the
    function the workers call (execute_run; tests pass another)."""
    name = "local"

    def __init__(self, slots: list[Slot], work=execute_run):
        self.slots, self.work = list(slots), work
        self.spawn_env: dict = {}  # what a worker's environment holds beyond this process's
        if sum(s.threads for s in self.slots if s.device == "cpu") > cpu_threads():
            # More threads than cores (runs at once keep a by-hand run's thread count): OpenMP
            # threads that spin while they wait would take the cores from the other runs (measured
            # on 2 cores, two 2-thread ResNet-32 steps: 133 images/s in all spinning, 314 passive,
            # 330 for one alone). The numbers do not depend on it. OpenMP reads its wait policy
            # once, when torch loads, before a worker's initializer runs, and a 'spawn' worker
            # starts with the environment this process has when it is spawned (at the first
            # submit to its pool): the policy is set around that, and this process's left as it is.
            self.spawn_env["OMP_WAIT_POLICY"] = "PASSIVE"
        self.context = multiprocessing.get_context("spawn")
        self.pools = {s.index: self._pool(s) for s in self.slots}
        self.runs: dict = {}  # slot index -> (task, future) of the slot's latest run

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

    def _running(self, slot: Slot) -> RunTask | None:
        task, future = self.runs.get(slot.index, (None, None))
        return task if future is not None and not future.done() else None

    def submit(self, task: RunTask) -> Future:
        slot = next(s for s in self.slots if self._running(s) is None)
        future = Future()
        with environment(**self.spawn_env):  # the pool spawns its worker here, the first time
            done = self.pools[slot.index].submit(self.work, task, slot)
        done.add_done_callback(lambda d: self._finish(slot, task, d, future))
        self.runs[slot.index] = (task, future)
        return future

    def _finish(self, slot: Slot, task: RunTask, done: Future, future: Future) -> None:
        """The worker's future is done (this runs in its pool's thread): the run's result, a
        worker that died or a task that could not be sent made into a failed run's result."""
        try:
            result = done.result()
        except BrokenProcessPool:  # the worker died (out of memory, a crash)
            result = {"name": task.name, "status": "failed", "slot": slot.index, "group": slot.group,
                      "error": "the worker process died (out of memory, or a crash in native code)"}
        except Exception as e:  # noqa: BLE001  (e.g. a task that could not be pickled)
            result = {"name": task.name, "status": "failed", "slot": slot.index, "group": slot.group,
                      "error": one_line(e)}
        if result["status"] != "failed":
            future.set_result(result)
            return
        # A failed run can leave its process unusable (a CUDA error poisons the process's CUDA
        # context; after running out of memory the worker keeps its cached memory): the slot gets a
        # fresh worker process before it takes another run, and before the run's future is done.
        # Not in this thread: it is the old pool's own.
        def renew() -> None:
            self.pools[slot.index].shutdown(wait=False, cancel_futures=True)
            self.pools[slot.index] = self._pool(slot)
            future.set_result(result)
        threading.Thread(target=renew, name=f"renew-worker-{slot.index}").start()

    def under_way(self) -> list[tuple[str, RunTask]]:
        return [(f"worker {s.index} ({s.device if s.visible_gpu is None else f'GPU {s.visible_gpu}'})", task)
                for s in sorted(self.slots, key=lambda s: s.index) if (task := self._running(s)) is not None]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
