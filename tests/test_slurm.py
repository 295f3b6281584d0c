"""`--executor slurm` against a real Slurm: a one-node cluster started on this machine by
scripts/slurm_local.sh (Debian's slurm-wlm and munge, daemons as plain processes; .ci/run installs
them). Skipped, with the reason, where Slurm is not installed or the tests do not run as root.

The same numbers as the local executor; a job killed by its time limit in mid-run is requeued and
finishes with the numbers of an uninterrupted run; a failing run is listed while the others
finish; a second invocation follows the jobs of the first instead of submitting them again."""
from __future__ import annotations

import json
import sys
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import comparable, submit_as_the_follower_fails
from lucir.slurm import job_info
from smoke_study import REPO, run_study

SMOKE = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("Slurm is not installed (apt-get install slurm-wlm munge; .ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster is started as root")
    pytest.importorskip("submitit")
    folder = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, LUCIR_SLURM_DIR=str(folder))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_local.sh"), "start"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    conf = proc.stdout.strip().split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield folder
    subprocess.run(["bash", str(REPO / "scripts" / "slurm_local.sh"), "stop"], env=env, timeout=60)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def _profile(tmp_path, notebooks: dict, shared: dict | None = None) -> str:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"description": "test", "shared": {**SMOKE["shared"], **(shared or {})},
                                    "notebooks": notebooks}))
    return str(path)


def _metrics(results: Path) -> dict:
    return {p.name: comparable(json.loads((p / "metrics.json").read_text()))
            for p in sorted((results / "runs").iterdir()) if (p / "metrics.json").exists()}




def test_the_slurm_executor_is_a_concurrent_futures_executor(slurm_cluster, tmp_path):
    """submit(task) returns a concurrent.futures.Future that the job's end completes (here a task
    without a config: the job body raises, and the result says the run failed, with its job)."""
    import concurrent.futures

    from lucir.scheduler import RunTask
    from lucir.slurm import SlurmExecutor, SlurmOptions
    task = RunTask(name="a", folder=str(tmp_path / "runs" / "a"), config=None, cost=[1.0])
    with SlurmExecutor(tmp_path, SlurmOptions(cpus=1, time_min=5)) as executor:
        assert isinstance(executor, concurrent.futures.Executor)
        future = executor.submit(task)
        assert isinstance(future, concurrent.futures.Future)
        assert [t.name for _, t in executor.under_way()] == ["a"]
        result = future.result(timeout=300)
    assert result["name"] == "a" and result["status"] == "failed" and result["job"], result


def test_a_run_submitted_while_the_slurm_follower_fails_ends_with_its_error(slurm_cluster, tmp_path):
    """The thread that follows the jobs fails (Slurm's commands gone) while a submit is between
    its check that the thread runs and its future's registration: that future ends with the error,
    and a later submit is refused with it; none waits for ever."""
    from lucir.scheduler import RunTask
    from lucir.slurm import SlurmExecutor, SlurmOptions

    def pause_launch(pause):
        sbatch = executor.executor.submit

        def paused(*args, **kwargs):
            pause()
            return sbatch(*args, **kwargs)
        executor.executor.submit = paused

    tasks = [RunTask(name=n, folder=str(tmp_path / "runs" / n), config=None, cost=[1.0]) for n in "ab"]
    with SlurmExecutor(tmp_path, SlurmOptions(cpus=1, time_min=5)) as executor:
        ended = submit_as_the_follower_fails(executor, pause_launch, *tasks)
    assert ended["first"] is not None, "the run before it never ended"
    assert ended["second"] == ("raised", ended["error"]) and ended["third"] == ("refused", ended["error"]), ended


TWO_RUNS = {"main_curves": [{"setting": "synthetic", "phases": [1], "joint_phases": [], "seeds": [0]}]}


def test_study_through_slurm_gives_the_numbers_of_the_local_executor(slurm_cluster, tmp_path):
    profile = _profile(tmp_path, TWO_RUNS)
    local = run_study("--profile", profile, "--jobs", "1", "--results", str(tmp_path / "local"), "--reports",
                      str(tmp_path / "local_reports"), "--cache-dir", str(tmp_path / "cache_local"))
    assert local.returncode == 0, local.stderr[-3000:]
    proc = run_study("--profile", profile, "--executor", "slurm", "--cpus-per-run", "1", "--time-limit", "30",
                     "--results", str(tmp_path / "slurm"), "--reports", str(tmp_path / "slurm_reports"),
                     "--cache-dir", str(tmp_path / "cache_slurm"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "executor slurm" in proc.stderr
    record = json.loads((tmp_path / "slurm" / "study" / "study.json").read_text())
    assert record["executor"] == "slurm" and {r["status"] for r in record["runs"]} == {"done"}
    jobs = json.loads((tmp_path / "slurm" / "study" / "slurm_jobs.json").read_text())
    assert sorted(jobs) == sorted(_metrics(tmp_path / "slurm"))  # one job per run
    assert _metrics(tmp_path / "slurm") == _metrics(tmp_path / "local") and len(jobs) == 2
    assert (tmp_path / "slurm_reports" / "report.html").exists()


def test_a_job_killed_by_its_time_limit_is_requeued_and_resumes(slurm_cluster, tmp_path):
    """A 2-minute limit on a run that needs longer: the job is told to requeue 30 s before its limit,
    stops, starts again and resumes from its epoch checkpoint; same numbers as a run that was never
    stopped (trained here by the local executor). Slurm checks limits in passes of about 30 s, so
    the signal can come that much early: with a 1-minute limit it came 6 s after the start, before
    the job had installed its handler, and killed it."""
    long_run = {"main_curves": [{"setting": "synthetic", "phases": [2], "joint_phases": [], "seeds": [0],
                                 "methods": ["lucir"]}]}
    shared = {"train_per_class": 64, "base_epochs": 40, "base_lr_milestones": [30], "epochs": 30,
              "lr_milestones": [20], "cache_base": False}
    profile = _profile(tmp_path, long_run, shared)
    local = run_study("--profile", profile, "--jobs", "1", "--results", str(tmp_path / "local"), "--reports",
                      str(tmp_path / "local_reports"))
    assert local.returncode == 0, local.stderr[-3000:]
    proc = run_study("--profile", profile, "--executor", "slurm", "--cpus-per-run", "1", "--time-limit", "2",
                     "--signal-delay", "30", "--results", str(tmp_path / "slurm"), "--reports",
                     str(tmp_path / "slurm_reports"), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = json.loads((tmp_path / "slurm" / "study" / "slurm_jobs.json").read_text()).values()
    assert int(job_info(job).get("Restarts", 0)) >= 1, "the job was not requeued: the run fit in its limit"
    assert _metrics(tmp_path / "slurm") == _metrics(tmp_path / "local")


def test_a_failing_run_under_slurm_is_listed_and_the_others_finish(slurm_cluster, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "val_jpeg.npz").write_bytes(b"not a zip file")
    profile = _profile(tmp_path, {"weight_norms": [
        {"setting": "synthetic", "phases": 1, "seed": 0},
        {"setting": "broken", "phases": 1, "seed": 0,
         "config_overrides": {"dataset": "tiny_imagenet", "data_dir": str(broken)}}]})
    results = tmp_path / "results"
    proc = run_study("--profile", profile, "--executor", "slurm", "--cpus-per-run", "1", "--results", str(results),
                     "--reports", str(tmp_path / "reports"), "--cache-dir", str(tmp_path / "cache"), timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 run(s) failed" in proc.stderr and "DataError" in proc.stderr
    runs = {r["name"]: r for r in json.loads((results / "study" / "study.json").read_text())["runs"]}
    assert sorted(r["status"] for r in runs.values()) == ["done", "done", "failed", "failed"]


def test_a_second_invocation_follows_the_jobs_of_the_first(slurm_cluster, tmp_path):
    """The first invocation submits the runs and is killed while they run; the second, on the same
    results folder, follows the same jobs (no new submission) and renders the report."""
    shared = {"train_per_class": 32, "base_epochs": 20, "base_lr_milestones": [15], "epochs": 10,
              "lr_milestones": [8]}
    profile = _profile(tmp_path, TWO_RUNS, shared)
    results = tmp_path / "results"
    args = ["--profile", profile, "--executor", "slurm", "--cpus-per-run", "1", "--results", str(results),
            "--reports", str(tmp_path / "reports"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "lucir.study", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    record = results / "study" / "slurm_jobs.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        jobs = json.loads(record.read_text()) if record.exists() else {}
        if jobs and any(job_info(j).get("JobState") == "RUNNING" for j in jobs.values()):
            break
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    jobs_before = json.loads(record.read_text())
    assert jobs_before and not all((results / "runs" / n / "metrics.json").exists() for n in jobs_before), \
        "the runs finished before the first invocation was stopped"
    second = run_study(*args[:-1], timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    jobs_after = json.loads(record.read_text())
    followed = {n: j for n, j in jobs_after.items() if jobs_before.get(n) == j}
    assert followed, "every job was submitted again"
    assert all(job_info(j).get("JobState", "COMPLETED") == "COMPLETED" for j in jobs_after.values())
    assert all((results / "runs" / n / "metrics.json").exists() for n in jobs_after)
