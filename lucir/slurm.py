"""The study's Slurm executor: each run a Slurm job, submitted through submitit.

Slurm clusters share a filesystem, so a job trains straight into results_dir/runs/<name>/ (the
worker body is the local executor's `execute_run`, so the numbers are those of a run by hand with
the same threads). A job that reaches its time limit or is preempted gets submitit's signal a
little before (`signal_delay_s`), is requeued, and resumes from its last epoch checkpoint.

Job state comes from `scontrol show job` (a cluster without accounting has no `sacct`, and
submitit's own state check relies on it) and from the result file submitit writes. The job ids
of a study are kept in results_dir/study/slurm_jobs.json, so that a second invocation with the
same results folder follows the jobs still queued or running instead of submitting them again.
A thread of the driver checks the jobs every second and completes the Future of each job that ended.
"""
from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from . import results as res
from .config import one_line
from .local_executor import Slot, execute_run
from .scheduler import ExecutorError, RunExecutor, RunTask

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


@dataclass
class SlurmOptions:
    """What each run's job asks for (flags of `python -m lucir.study`, or the profile's `slurm:`)."""
    partition: str | None = None
    time_min: int = 24 * 60       # the job's time limit; a run longer than that is requeued and resumes
    gpus: int = 0                 # GPUs per run
    cpus: int = 4                 # CPUs per run, and its torch threads
    mem_gb: float | None = None   # memory per run; None: the partition's default
    signal_delay_s: int = 120     # the time-limit signal comes this long before the limit
    max_requeues: int = 20        # time limits and preemptions a run may meet before it fails


class SlurmRun:
    """The job body: one run, by execute_run. On submitit's time-limit or preemption signal it
    asks to be submitted again with the same arguments (requeued); it then resumes."""

    def __call__(self, task: RunTask, slot: Slot) -> dict:
        return execute_run(task, slot)

    def checkpoint(self, task: RunTask, slot: Slot):
        import submitit
        return submitit.helpers.DelayedSubmission(self, task, slot)


def job_info(job_id: str) -> dict:
    """The job's fields from `scontrol show job` (JobState: PENDING, RUNNING, COMPLETED, ...;
    JobName, Restarts, ...); empty when Slurm no longer knows the job (it forgets finished jobs
    after MinJobAge)."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    return dict(field.split("=", 1) for field in proc.stdout.split() if "=" in field)


def job_state(job_id: str) -> str | None:
    return job_info(job_id).get("JobState")


class SlurmExecutor(RunExecutor):
    """One Slurm job per run, at most `max_jobs` queued or running at once (default: no limit
    but the cluster's). A shared filesystem: the jobs' progress.json is in the results folder."""
    name = "slurm"

    def __init__(self, results_dir: Path, options: SlurmOptions, max_jobs: int | None = None):
        try:
            import submitit
        except ImportError:
            raise ExecutorError('--executor slurm needs submitit: pip install -e ".[slurm]"') from None
        if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
            raise ExecutorError("--executor slurm: no Slurm cluster answers here (sinfo failed; is SLURM_CONF set?)")
        self.options, self.max_jobs = options, max_jobs
        self.record = Path(results_dir) / "study" / "slurm_jobs.json"
        self.folder = Path(results_dir) / "study" / "slurm"
        self.executor = submitit.SlurmExecutor(folder=self.folder / "%j", max_num_timeout=options.max_requeues)
        params = dict(time=options.time_min, cpus_per_task=options.cpus, signal_delay_s=options.signal_delay_s,
                      ntasks_per_node=1, nodes=1)
        if options.partition:
            params["partition"] = options.partition
        if options.gpus:
            params["gpus_per_node"] = options.gpus
        if options.mem_gb:
            params["mem"] = f"{int(options.mem_gb * 1024)}M"
        self.executor.update_parameters(**params)
        self.slot = Slot(0, "cuda" if options.gpus else "cpu", options.cpus)
        self.runs: dict = {}  # job id -> (task, submitit job, its future), until the job ends
        self.completed_at: dict = {}  # job id -> when scontrol first said COMPLETED without a result file
        self.start_following("slurm-jobs")

    @property
    def capacity(self) -> int:
        return self.max_jobs or 10 ** 6

    def describe(self) -> str:
        where = f"partition {self.options.partition}" if self.options.partition else "the default partition"
        gpus = f", {self.options.gpus} GPU(s)" if self.options.gpus else ""
        return (f"executor slurm: one job per run on {where}, each {self.options.cpus} CPU(s){gpus}, "
                f"time limit {self.options.time_min} min (requeued and resumed past it); jobs in {self.folder}")

    def _jobs_on_record(self) -> dict:
        try:
            return json.loads(self.record.read_text())
        except (OSError, ValueError):
            return {}

    def submit(self, task: RunTask) -> Future:
        import submitit
        future = Future()
        with self.admitting():
            earlier = self._jobs_on_record().get(task.name)
            info = job_info(earlier) if earlier else {}
            if info.get("JobState") in ACTIVE and info.get("JobName") == task.name:
                # an earlier invocation's job for this run is still queued or running: follow it
                self.runs[earlier] = (task, submitit.SlurmJob(self.folder / earlier, earlier), future)
                return future
            self.executor.update_parameters(job_name=task.name)
            job = self.executor.submit(SlurmRun(), task, self.slot)
            self.runs[str(job.job_id)] = (task, job, future)
        with res.locked(self.record.with_name(self.record.name + ".lock")):
            jobs = self._jobs_on_record() | {task.name: str(job.job_id)}
            res.write_json(self.record, jobs)
        return future

    def under_way(self) -> list[tuple[str, RunTask]]:
        return [(f"slurm job {job_id} ({(job_state(job_id) or '?').lower()})", task)
                for job_id, (task, _, _) in list(self.runs.items())]

    def _follow(self) -> None:
        """The driver's thread: every second, the result of each job that ended into its future. An
        error here (Slurm's commands gone, a result file unreadable) ends the futures under way and
        every later submit, as the Ray executor's follower does, so that the study does not wait
        for ever."""
        try:
            while not self.stopping.wait(1.0):
                for job_id, (task, job, future) in list(self.runs.items()):
                    result = self._result(job_id, task, job)
                    if result is not None:
                        del self.runs[job_id]
                        future.set_result(result)
        except Exception as e:  # noqa: BLE001
            self.end_following(e)

    def _result(self, job_id: str, task: RunTask, job) -> dict | None:
        """The run's result when its job has ended, else None."""
        if job.paths.result_pickle.exists():
            try:
                result = job.result()
            except Exception as e:  # noqa: BLE001  (the job body raised: not expected of execute_run)
                result = {"name": task.name, "status": "failed",
                          "error": one_line(e)}
            return result | {"job": job_id}
        state = job_state(job_id)
        if state in ACTIVE:
            return None
        if state == "COMPLETED" and time.time() - self.completed_at.setdefault(job_id, time.time()) < 30:
            return None  # ended well: its result file may not be visible here yet (a shared filesystem)
        return {"name": task.name, "status": "failed", "job": job_id,
                "error": f"slurm job {job_id} ended in state {state or 'unknown to scontrol'} "
                         f"(see {job.paths.stderr})"}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Jobs keep running when the study stops: a second invocation follows them."""
        self.stop_following()
