"""lucir.scheduler and the study's executors: slots (fake GPUs on the CPU), base phases first,
the same numbers as a direct run, the base phase trained once by runs started together, two
invocations on one results folder, and the Ray executor (a local cluster) with a failing run."""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY, comparable, process_alive, submit_as_the_follower_fails
from lucir import results as res
from lucir import local_executor, progress, ray_executor, run_incremental, scheduler
from lucir import study as study_mod
from lucir.experiments import PlannedRun
from lucir.profiles import Pair
from lucir.trainer import base_cache_path
from smoke_study import REPO, run_study, smoke_study

SMOKE = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())


def _fake_task(name: str, folder, base: str | None = None) -> scheduler.RunTask:
    return scheduler.RunTask(name=name, folder=str(folder), config=None, label="fake", needed_by=["nb__x"],
                             base=base, cost=[1.0])


def hold_until_four_started(task, slot) -> dict:
    """A stand-in for a run: note its start, wait until four tasks have started (so the first four
    certainly overlap), hold its slot a moment, note its end."""
    folder = Path(task.folder)
    started = time.time()
    (folder / f"start_{task.name}").touch()
    deadline = time.time() + 60
    while len(list(folder.glob("start_*"))) < 4 and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    return {"name": task.name, "status": "done", "error": None, "slot": slot.index, "group": slot.group,
            "pid": os.getpid(), "start": started, "end": time.time(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def note_times(task, slot) -> dict:
    time.sleep(0.3)
    return {"name": task.name, "status": "done", "error": None, "slot": slot.index, "end": time.time(),
            "start": time.time() - 0.3}


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


# --------------------------------------------------------------------------- slots
def test_two_fake_gpus_take_k_runs_each_and_never_more(tmp_path):
    """Two GPUs, K = 2 runs per GPU, faked on the CPU: the slots' workers see only their GPU, runs go
    to both GPUs, each GPU runs 2 at once and never 3, and a slot never runs two at once."""
    slots = local_executor.local_slots("cuda", None, runs_per_gpu=2, gpus=2)
    assert [(s.group, s.visible_gpu, s.device) for s in slots] == [(0, 0, "cuda"), (1, 1, "cuda")] * 2
    tasks = [_fake_task(f"run{k}", tmp_path) for k in range(10)]
    results = scheduler.execute(tasks, local_executor.LocalExecutor(slots, work=hold_until_four_started), poll=0.05)
    assert sorted(results) == sorted(t.name for t in tasks) and {r["status"] for r in results.values()} == {"done"}
    for r in results.values():
        assert r["visible"] == str(r["group"]), "each worker sees only its own GPU"
    assert {r["group"] for r in results.values()} == {0, 1}
    for group in (0, 1):
        intervals = [(r["start"], r["end"]) for r in results.values() if r["group"] == group]
        assert _most_at_once(intervals) == 2, f"GPU {group}: K = 2 runs at once, never more"
    for slot in slots:
        mine = [r for r in results.values() if r["slot"] == slot.index]
        assert len({r["pid"] for r in mine}) <= 1, "one worker process per slot"
        assert _most_at_once([(r["start"], r["end"]) for r in mine]) <= 1


def test_cpu_slots_keep_the_thread_count_of_a_run_by_hand(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(local_executor, "cpu_threads", lambda: 8)
    assert [s.threads for s in local_executor.local_slots("cpu", None)] == [8, 8], "auto on a CPU: two runs, every core"
    assert [s.threads for s in local_executor.local_slots("cpu", 1)] == [8]
    # a CPU run's numbers depend on its thread count: runs at once share the cores, not split them
    assert [s.threads for s in local_executor.local_slots("cpu", 2)] == [8, 8]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert [s.threads for s in local_executor.local_slots("cpu", 2)] == [3, 3]
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(local_executor, "cpu_threads", lambda: 1)
    assert [s.threads for s in local_executor.local_slots("cpu", None)] == [1], "one core: nothing to overlap"
    assert [(s.device, s.visible_gpu) for s in local_executor.local_slots("cuda:1", None, 3, gpus=2)] == [("cuda", 1)] * 3
    assert len(local_executor.local_slots("auto", 3, runs_per_gpu=2, gpus=8)) == 3, "--jobs caps the slots"


def report_wait_policy(task, slot) -> dict:
    return {"name": task.name, "status": "done", "error": None, "wait": os.environ.get("OMP_WAIT_POLICY")}


def test_runs_sharing_the_cores_wait_passively_and_one_run_alone_is_left_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(local_executor, "cpu_threads", lambda: 2)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    alone = scheduler.execute([_fake_task("a", tmp_path)],
                              local_executor.LocalExecutor([local_executor.Slot(0, "cpu", 2)], work=report_wait_policy))
    assert alone["a"]["wait"] is None
    two = local_executor.LocalExecutor([local_executor.Slot(k, "cpu", 2) for k in range(2)], work=report_wait_policy)
    results = scheduler.execute([_fake_task("b", tmp_path), _fake_task("c", tmp_path)], two)
    assert {r["wait"] for r in results.values()} == {"PASSIVE"}  # 4 threads on 2 cores: no spinning
    assert "OMP_WAIT_POLICY" not in os.environ  # set only around the workers' start: ours is as it was


def test_a_shared_base_phase_is_trained_first_and_reused_after(tmp_path):
    base_a, base_b = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    tasks = [_fake_task("a1", tmp_path, base_a), _fake_task("a2", tmp_path, base_a), _fake_task("n", tmp_path),
             _fake_task("b1", tmp_path, base_b), _fake_task("a3", tmp_path, base_a)]
    assert [t.name for t in scheduler.order_runs(tasks)] == ["a1", "n", "b1", "a2", "a3"]
    slots = [local_executor.Slot(k, "cpu", 1) for k in range(2)]
    results = scheduler.execute(tasks[:2], local_executor.LocalExecutor(slots, work=note_times), poll=0.05)
    assert results["a2"]["start"] >= results["a1"]["end"], "a run reusing a base waits for the run that trains it"


def _costed_task(name: str, folder, cost: float, base: str | None = None) -> scheduler.RunTask:
    return scheduler.RunTask(name=name, folder=str(folder), config=None, label="fake", needed_by=["nb__x"],
                             base=base, cost=[cost / 2, cost / 2])


def test_runs_start_longest_first_within_the_order_base_phases_impose(tmp_path):
    base_x, base_y = str(tmp_path / "x.pt"), str(tmp_path / "y.pt")
    tasks = [_costed_task("a", tmp_path, 5, base_x), _costed_task("b", tmp_path, 9, base_x),
             _costed_task("c", tmp_path, 7), _costed_task("d", tmp_path, 1, base_y), _costed_task("e", tmp_path, 3)]
    # b is the longest run on base x, so it trains that base; a reuses it and waits for it
    assert [t.name for t in scheduler.order_runs(tasks)] == ["b", "c", "e", "d", "a"]
    results = scheduler.execute(tasks, local_executor.LocalExecutor([local_executor.Slot(0, "cpu", 1)], work=note_times),
                                poll=0.05)
    assert [name for name, _ in sorted(results.items(), key=lambda kv: kv[1]["start"])] == ["b", "c", "e", "d", "a"]


def test_the_local_executor_is_a_concurrent_futures_executor(tmp_path):
    """submit(task) returns a concurrent.futures.Future of the run's result; a failed run is a
    result too; `with` shuts the workers down."""
    with local_executor.LocalExecutor([local_executor.Slot(k, "cpu", 1) for k in range(2)],
                                      work=fail_like_a_cuda_error) as executor:
        assert isinstance(executor, concurrent.futures.Executor) and executor.capacity == 2
        good, bad = executor.submit(_fake_task("ok", tmp_path)), executor.submit(_fake_task("bad", tmp_path))
        assert isinstance(good, concurrent.futures.Future) and isinstance(bad, concurrent.futures.Future)
        assert good.result(timeout=120)["status"] == "done" and bad.result(timeout=120)["status"] == "failed"
        assert executor.under_way() == []
    assert all(pool._shutdown_thread for pool in executor.pools.values())


def fail_like_a_cuda_error(task, slot) -> dict:
    """A stand-in for a run; the run named 'bad' fails as a device-side fault would."""
    record = {"name": task.name, "slot": slot.index, "group": slot.group, "pid": os.getpid()}
    if task.name == "bad":
        return record | {"status": "failed", "error": "RuntimeError: CUDA error: an illegal memory access was "
                                                      "encountered"}
    return record | {"status": "done", "error": None}


def test_a_worker_whose_run_failed_is_replaced_before_the_slot_takes_another(tmp_path):
    tasks = [_costed_task(name, tmp_path, cost) for name, cost in (("ok1", 3), ("bad", 2), ("ok2", 1))]
    executor = local_executor.LocalExecutor([local_executor.Slot(0, "cpu", 1)], work=fail_like_a_cuda_error)
    results = scheduler.execute(tasks, executor, poll=0.05)
    assert [results[n]["status"] for n in ("ok1", "bad", "ok2")] == ["done", "failed", "done"]
    assert results["ok1"]["pid"] == results["bad"]["pid"], "a worker is kept after a run that succeeded"
    assert results["ok2"]["pid"] != results["bad"]["pid"], "the worker of the failed run was not replaced"


def note_pid_and_hold(task, slot) -> dict:
    """A run that does not end by itself within the test: its worker's pid in the folder, then a wait."""
    (Path(task.folder) / "worker.pid").write_text(str(os.getpid()))
    time.sleep(300)
    return {"name": task.name, "status": "done", "error": None}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_worker_ends_when_its_driver_is_killed_on_its_own(tmp_path):
    """`kill -9 <driver>` (not its process group): the worker must not go on training unseen."""
    code = (f"import sys; sys.path[:0] = [{str(REPO / 'tests')!r}, {str(REPO)!r}]\n"
            "from test_scheduler import _fake_task, note_pid_and_hold\n"
            "from lucir import local_executor, scheduler\n"
            f"scheduler.execute([_fake_task('a', {str(tmp_path)!r})], local_executor.LocalExecutor(\n"
            "                  [local_executor.Slot(0, 'cpu', 1)], work=note_pid_and_hold), poll=0.05)\n")
    driver = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    pid_file, worker = tmp_path / "worker.pid", None
    try:
        deadline = time.time() + 180
        while not pid_file.exists() and time.time() < deadline and driver.poll() is None:
            time.sleep(0.1)
        assert pid_file.exists(), "the worker never started"
        worker = int(pid_file.read_text())
        assert process_alive(worker)
        driver.kill()
        driver.wait()
        deadline = time.time() + 20
        while process_alive(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not process_alive(worker), "the worker went on after its driver was killed"
    finally:
        if driver.poll() is None:
            driver.kill()
        if worker is not None and process_alive(worker):
            os.kill(worker, 9)


def test_the_bar_moves_with_each_epoch_and_counts_only_this_invocations_epochs(tmp_path):
    """The study's bar: a phase under way counts by its epochs (progress.json), a phase resumed from
    an epoch checkpoint from where this invocation found it (its earlier epochs leave the total too,
    so that the ETA is that of the work left), a finished phase in full."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"phases": [{}]}))  # phase 0 done by an earlier call
    task = replace(_fake_task("a", folder), cost=[100.0, 10.0, 10.0])
    bar = progress.Progress([task], 0, "test", enabled=False)

    def epoch(desc: str, k: int, n: int) -> float:
        (folder / scheduler.PROGRESS_FILE).write_text(json.dumps({"phase": desc, "epoch": k, "epochs": n}))
        return bar.work_done()
    try:
        assert bar.work_done() == 0.0
        # phase 1 resumed at epoch 2 of 10: the first epoch this call trains is worth 1/10 of 10
        assert epoch("phase 1 (50+5 classes)", 3, 10) == pytest.approx(1.0)
        # ... and the 2 epochs trained before leave the work to do: 18 of phases 1-2, and the report
        assert bar.work_to_do() == pytest.approx(18.0 + progress.NOTEBOOK_OVERHEAD)
        assert epoch("phase 1 (50+5 classes)", 8, 10) == pytest.approx(6.0)
        (folder / "metrics.json").write_text(json.dumps({"phases": [{}, {}]}))
        assert epoch("phase 1 (50+5 classes)", 10, 10) == pytest.approx(8.0)  # stale: phase 1 is done
        assert epoch("phase 2 (55+5 classes)", 4, 10) == pytest.approx(8.0 + 4.0)  # started here: all of it
        assert epoch("phase 2 CBF", 1, 30) == pytest.approx(18.0)
        bar.notebook_finished()
        assert bar.work_done() == bar.work_to_do()  # all done: the bar is full
    finally:
        bar.close()


def test_projection_starts_runs_as_execute_does(tmp_path):
    """The dry run's projection: base-phase leaders first, a run reusing a base once that base is
    trained (its base then costs only its loading), each run's time its cost over its rate."""
    from lucir import make_config
    config = make_config("lucir", epochs=10, lr_milestones=(5,))  # base phase 10 epochs: loading costs 0.25 / 10 of it
    base = str(tmp_path / "base.pt")
    tasks = [scheduler.RunTask(name, str(tmp_path / name), config, cost=[100.0, 10.0], base=b)
             for name, b in (("a1", base), ("a2", base), ("n", None))]
    plan = scheduler.project(tasks, slots=2, rate_of=lambda task: 10.0)
    assert [(t.name, start, end) for t, start, end in plan] == [
        ("a1", 0.0, 11.0), ("n", 0.0, 11.0),   # the base's leader and the run of its own
        ("a2", 11.0, 11.0 + (100.0 * 0.25 / 10 + 10.0) / 10)]  # starts when a1 is free, loads the base
    plan = scheduler.project(tasks, slots=3, rate_of=lambda task: 10.0)
    assert [(t.name, start) for t, start, _ in plan] == [("a1", 0.0), ("n", 0.0), ("a2", 10.0)]  # base done at 10 s


def test_a_run_under_way_is_planned_for_what_is_left_of_it(tmp_path):
    """A resumed run (this project's long runs are resumed session after session) costs only what
    its folder does not hold: finished phases nothing, the phase under way its epochs not trained.
    Its base phase, cached, costs its loading; the finished base phase is not subtracted twice."""
    from lucir import make_config
    config = make_config("lucir", phases=2, epochs=10, lr_milestones=(5,))
    base = tmp_path / "base.pt"
    base.write_bytes(b"")  # cached: loading costs 0.25 / 10 of the base phase
    folder = tmp_path / "run"
    task = scheduler.RunTask("run", str(folder), config, cost=[100.0, 40.0, 40.0], base=str(base))
    assert scheduler.costs_left([task]) == [[2.5, 40.0, 40.0]]
    assert scheduler.describe_state(task) == "not started"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"phases": [{}, {}]}))  # base phase and phase 1 done
    res.save_state(res.epoch_checkpoint_path(folder), {"phase": 2, "stage": "train", "epoch": 3})
    assert scheduler.costs_left([task]) == [[0.0, 0.0, pytest.approx(40.0 * 7 / 10)]]
    assert scheduler.work_done(task) == pytest.approx(100.0 + 40.0 + 40.0 * 3 / 10)  # at full price
    assert scheduler.describe_state(task) == "under way: phase 2 of 2, epoch 3/10"
    (plan,) = scheduler.project([task], slots=1, rate_of=lambda t: 4.0)
    assert plan[1:] == (0.0, pytest.approx(40.0 * 7 / 10 / 4.0))  # the dry run's time: what is left


def test_a_base_phase_trained_for_the_cache_is_read_from_its_partial_checkpoint(tmp_path):
    """A base phase trained for the cache keeps its epoch checkpoint beside the cache file, not in
    the run folder: where the run stands is read from there, with the base phase's own epochs; a
    class-balanced finetune under way is named as such, with its own epochs."""
    from lucir import make_config
    from lucir.trainer import base_partial_path
    config = make_config("lucir", phases=2, epochs=10, base_epochs=20, lr_milestones=(5,), cbf_epochs=4)
    base = tmp_path / "cache" / "base.pt"
    folder = tmp_path / "run"
    task = scheduler.RunTask("run", str(folder), config, cost=[100.0, 40.0, 40.0], base=str(base))
    res.save_state(base_partial_path(base), {"phase": 0, "stage": "train", "epoch": 7})
    assert scheduler.describe_state(task) == "under way: phase 0 of 2, epoch 7/20"
    assert res.describe_state(folder, config) == "not started"  # without the cache's partial file
    res.save_state(res.epoch_checkpoint_path(folder), {"phase": 1, "stage": "cbf", "epoch": 2})
    assert scheduler.describe_state(task) == "under way: phase 1 of 2 (class-balanced finetune), epoch 2/4"


def test_the_dry_run_of_a_resumed_study_says_where_each_run_stands(capsys, tmp_path):
    """The study's dry run of a profile whose run is under way: the run's state in its row, and its
    image-steps and time what is left of it (not the whole run again)."""
    argv = ["--profile", "paper", "--select", "dataset=cifar100", "--select", "method=lucir", "--select", "phases=5",
            "--select", "seed=0", "--dry-run", "--results", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache")]
    assert study_mod.main(argv) == 0
    fresh = capsys.readouterr().out
    row = next(line for line in fresh.splitlines() if "cifar100-b50-p5-s0-" in line)
    assert "10.4M" in row and row.rstrip().endswith("not started") and "under way" not in fresh
    folder = tmp_path / "results" / "runs" / row.split()[1]
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"phases": [{}]}))  # the base phase done
    res.save_state(res.epoch_checkpoint_path(folder), {"phase": 1, "stage": "train", "epoch": 80})
    assert study_mod.main(argv) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "cifar100-b50-p5-s0-" in line)
    assert row.rstrip().endswith("under way: phase 1 of 5, epoch 80/160") and "1 run under way" in out
    from lucir import experiments, make_config
    config = make_config("lucir", phases=5)  # the paper's cell: the run of the plan
    assert experiments.run_name(config) == folder.name
    cost = scheduler.run_cost(config)
    left = float(re.search(r"(\d+\.\d)M", row).group(1))
    assert left == pytest.approx((sum(cost[2:]) + cost[1] / 2) / 1e6, abs=0.05)  # 4.5 of 5 phases, no base phase
    assert re.search(r"total: \d+\.\dM image-steps left", out)


# --------------------------------------------------------------------------- the same numbers
@pytest.mark.parametrize("jobs", [1, 2])
def test_scheduled_runs_give_the_numbers_of_a_direct_run(tmp_path, jobs):
    overrides = dict(TINY, cache_dir=str(tmp_path / "cache_direct"))
    plan = [PlannedRun("LUCIR", "lucir", overrides), PlannedRun("iCaRL", "icarl", overrides),
            PlannedRun("LUCIR", "lucir", dict(overrides, seed=1))]
    direct = {}
    for planned in plan:
        out = tmp_path / "direct" / f"{planned.method}-{planned.config().seed}"
        direct[(planned.method, planned.config().seed)] = run_incremental(planned.config(), out)
    scheduled_plan = [PlannedRun(p.method, p.preset, dict(p.overrides, cache_dir=str(tmp_path / "cache_sched")))
                      for p in plan]
    pair = Pair("main_curves", "x", {}, scheduled_plan)
    tasks, earlier = scheduler.collect_runs([pair, pair], tmp_path / "results")
    assert len(tasks) == 3 and not earlier and all(t.needed_by == ["main_curves__x"] for t in tasks)
    slots = local_executor.local_slots("cpu", jobs)
    assert len(slots) == jobs
    results = scheduler.execute(tasks, local_executor.LocalExecutor(slots))
    assert {r["status"] for r in results.values()} == {"done"}, results
    if jobs == 2:
        assert {r["slot"] for r in results.values()} == {0, 1}
    for planned, task in zip(plan, tasks):
        metrics = json.loads((Path(task.folder) / "metrics.json").read_text())
        assert comparable(metrics) == comparable(direct[(planned.method, planned.config().seed)])
        assert not (Path(task.folder) / scheduler.PROGRESS_FILE).exists()


# --------------------------------------------------------------------------- the base phase, once
BASE_ONCE = r"""
import contextlib, json, pathlib, sys, time
import lucir.results, lucir.trainer as T
from lucir.config import config_from_dict
config, out, log, go, lock = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4]), sys.argv[5]
if lock == "off":  # the control: without the lock both runs train the base
    lucir.results.locked = lambda path: contextlib.nullcontext()
train_base = T.train_base
def counted(*args, **kwargs):
    with open(log, "a") as fh:
        fh.write(out + "\n")
    return train_base(*args, **kwargs)
T.train_base = counted
c = config_from_dict(config)
pathlib.Path(out + ".ready").touch()
while not go.exists():
    time.sleep(0.005)
T.run_incremental(c, out)
"""


@pytest.mark.parametrize("lock", ["on", "off"])
def test_two_runs_started_together_train_a_shared_base_once(tmp_path, lock):
    """Two processes, released at the same instant, run two configs that share a base phase (lambda_base
    does not change it). With the lock the base is trained once and loaded by the other; the
    control without the lock trains it twice, so the check cannot pass by accident."""
    from lucir import make_config
    values = dict(TINY, train_per_class=32, base_epochs=12, cache_dir=str(tmp_path / "cache"))
    configs = [make_config("lucir", **values), make_config("lucir", **values, lambda_base=2.0)]
    assert base_cache_path(configs[0], 2) == base_cache_path(configs[1], 2)
    log, go = tmp_path / "base_trained.log", tmp_path / "go"
    outs = [tmp_path / f"run{k}" for k in range(2)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", BASE_ONCE, json.dumps(c.to_dict()), str(o), str(log), str(go),
                               lock], env=env) for c, o in zip(configs, outs)]
    deadline = time.time() + 300
    while not all(Path(f"{o}.ready").exists() for o in outs) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    trained = log.read_text().splitlines()
    assert len(trained) == (1 if lock == "on" else 2), trained
    phase0 = [json.loads((o / "metrics.json").read_text())["phases"][0] for o in outs]
    assert phase0[0]["acc_cnn"] == phase0[1]["acc_cnn"] and phase0[0]["acc_nme"] == phase0[1]["acc_nme"]


# --------------------------------------------------------------------------- study.json is merged
def test_study_record_merges_pairs_of_several_invocations(tmp_path):
    path = tmp_path / "study" / "study.json"
    study_mod.merge_study(path, {"profile": "p", "pairs": [{"key": "a__x", "status": "done"}],
                                 "runs": [{"name": "r1", "status": "done"}]})
    study_mod.merge_study(path, {"profile": "p", "pairs": [{"key": "b__x", "status": "done"},
                                                           {"key": "a__x", "status": "complete earlier"}],
                                 "runs": [{"name": "r2", "status": "failed"}]})
    record = json.loads(path.read_text())
    assert {p["key"]: p["status"] for p in record["pairs"]} == {"a__x": "complete earlier", "b__x": "done"}
    assert {r["name"] for r in record["runs"]} == {"r1", "r2"}


def test_two_invocations_at_once_on_one_results_folder(tmp_path, cache_dir):
    """--only confusion_matrices and --only weight_norms started together: they need the same two
    runs (trained once, under the run lock); both notebooks end up in study.json and the report."""
    results, reports = tmp_path / "results", tmp_path / "reports"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = [subprocess.Popen([sys.executable, "-m", "lucir.study", "--profile", "smoke", "--only", notebook,
                               "--results", str(results), "--reports", str(reports), "--cache-dir", cache_dir,
                               "--no-progress"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for notebook in ("confusion_matrices", "weight_norms")]
    outputs = [p.communicate(timeout=1200) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    record = json.loads((results / "study" / "study.json").read_text())
    assert {p["key"]: p["status"] for p in record["pairs"]} == {"confusion_matrices__synthetic": "done",
                                                               "weight_norms__synthetic": "done"}
    assert len(list((results / "runs").glob("*/metrics.json"))) == 2
    html = (reports / "report.html").read_text()
    assert len(re.findall(r"<img", html)) == 2, "the figures of both notebooks"
    assert html.count("Not run") == 4


# --------------------------------------------------------------------------- Ray
def test_ray_missing_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    rc = study_mod.main(["--profile", "smoke", "--executor", "ray"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and 'pip install -e ".[ray]"' in err


@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory, cache_dir):
    return smoke_study(tmp_path_factory, cache_dir)


def test_smoke_study_under_ray_matches_the_local_one(tmp_path, local_smoke):
    pytest.importorskip("ray")
    results, reports = tmp_path / "results", tmp_path / "reports"
    proc = run_study("--profile", "smoke", "--executor", "ray", "--results", str(results), "--reports", str(reports),
                     "--cache-dir", str(tmp_path / "cache"), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "executor ray" in proc.stderr
    record = json.loads((results / "study" / "study.json").read_text())
    assert record["executor"] == "ray" and {p["status"] for p in record["pairs"]} == {"done"}
    assert {r["status"] for r in record["runs"]} == {"done"}
    headings = lambda path: re.findall(r"<h2[^>]*>(.*?)<", path.read_text())  # noqa: E731
    assert headings(reports / "report.html") == headings(local_smoke["reports"] / "report.html")
    local_runs = {p.name: p for p in (local_smoke["results"] / "runs").iterdir() if p.is_dir()}
    ray_runs = {p.name: p for p in (results / "runs").iterdir() if p.is_dir()}
    assert ray_runs.keys() == local_runs.keys()
    for name, folder in ray_runs.items():
        a, b = (json.loads((f / "metrics.json").read_text()) for f in (folder, local_runs[name]))
        assert comparable(a) == comparable(b), f"{name}: the files the Ray task returned hold the same numbers"
        # a Ray task sends only the newest phase checkpoint at each sync: the last one is there,
        # older ones only if a sync caught them, and no epoch checkpoint is left
        newest = max(local_runs[name].glob("checkpoints/phase_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        shipped = {p.name for p in folder.rglob("*.pt")}
        assert newest.name in shipped and shipped <= {p.name for p in local_runs[name].rglob("*.pt")}, shipped


def _kill_ray_task_after_phase_0(folder: Path, killed: list, deadline: float) -> None:
    """Once phase 0's checkpoint has reached the driver's folder: note its file's identity, then
    SIGKILL the Ray worker process running the task (Ray names it after the task's function)."""
    import psutil
    checkpoint = folder / "checkpoints" / "phase_0.pt"
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    for proc in psutil.process_iter(["cmdline"]):
        if any("run_in_temporary_folder" in part for part in proc.info["cmdline"] or []):
            st = checkpoint.stat()
            killed.append((proc.pid, (st.st_ino, st.st_mtime_ns)))
            proc.kill()
            return


def test_ray_task_killed_after_its_first_phase_resumes_and_keeps_that_phase(tmp_path):
    """The files a Ray task writes reach the driver as they are written; its worker process is
    killed with SIGKILL after phase 0; Ray starts the task again, which resumes from what reached
    the driver: the run ends with the numbers of an uninterrupted run, and phase 0's checkpoint
    (deterministic, so a retrained one would be rewritten, not changed) was not written again."""
    pytest.importorskip("ray")
    import threading
    values = dict(TINY, train_per_class=48, epochs=20, lr_milestones=(10,), cache_base=False,
                  cache_dir=str(tmp_path / "cache"))
    direct = run_incremental(PlannedRun("LUCIR", "lucir", values).config(), tmp_path / "direct")
    pair = Pair("main_curves", "x", {}, [PlannedRun("LUCIR", "lucir", values)])
    tasks, _ = scheduler.collect_runs([pair], tmp_path / "results")
    folder, killed = Path(tasks[0].folder), []
    executor = ray_executor.RayExecutor(device="cpu", num_cpus=1)
    killer = threading.Thread(target=_kill_ray_task_after_phase_0, args=(folder, killed, time.time() + 600))
    killer.start()
    results = scheduler.execute(tasks, executor, poll=0.2)
    killer.join()
    assert killed, "the task was not found running after phase 0"
    result = results[tasks[0].name]
    assert result["status"] == "done" and result["pid"] != killed[0][0], result
    assert comparable(res.load_metrics(folder)) == comparable(direct)
    st = (folder / "checkpoints" / "phase_0.pt").stat()
    assert (st.st_ino, st.st_mtime_ns) == killed[0][1], "phase 0 was trained and sent again"
    assert not (folder / scheduler.PROGRESS_FILE).exists() and not res.epoch_checkpoint_path(folder).exists()


def test_ray_trains_a_shared_base_phase_once_and_hands_it_on_as_soon_as_it_is_trained(tmp_path):
    """Two runs share a base phase, and each Ray task has a cache folder of its own, as on nodes
    without a shared filesystem. The leading run trains the base phase; its cache file reaches the
    driver's cache while that run goes on, the other run starts then (before the leader ends),
    receives the base through Ray's object store and trains no base epoch; both end with the
    numbers of direct runs."""
    pytest.importorskip("ray")
    common = dict(TINY, train_per_class=24, base_epochs=2, base_lr_milestones=(1,), epochs=20, lr_milestones=(15,),
                  cache_dir=str(tmp_path / "cache"))
    planned = [PlannedRun("LUCIR", "lucir", dict(common, phases=p)) for p in (2, 1)]
    direct = {p.config().phases: run_incremental(replace(p.config(), cache_dir=str(tmp_path / "direct_cache")),
                                                 tmp_path / "direct" / str(p.config().phases)) for p in planned}
    tasks, _ = scheduler.collect_runs([Pair("main_curves", "x", {}, planned)], tmp_path / "results")
    assert len({t.base for t in tasks}) == 1 and not Path(tasks[0].base).exists()
    leader, follower = scheduler.order_runs(tasks)
    results = scheduler.execute(tasks, ray_executor.RayExecutor(device="cpu", num_cpus=2), poll=0.2)
    lead, follow = results[leader.name], results[follower.name]
    assert lead["status"] == follow["status"] == "done", results
    assert (lead["base_epochs_trained"], follow["base_epochs_trained"]) == (2, 0), "the base phase was trained once"
    assert follow["started"] < lead["finished"], "the second run waited for the whole first run"
    assert Path(leader.base).exists() and not ray_executor.base_files(leader.base)[ray_executor.BASE_PARTIAL].exists()
    trained = torch.load(leader.base, weights_only=True)
    reference = torch.load(base_cache_path(replace(leader.config, cache_dir=str(tmp_path / "direct_cache")), 2),
                           weights_only=True)
    assert all(torch.equal(trained[k], reference[k]) for k in reference)
    for task in tasks:
        assert comparable(res.load_metrics(task.folder)) == comparable(direct[task.config.phases])


def test_the_ray_executor_is_a_concurrent_futures_executor(tmp_path):
    """submit(task) returns a concurrent.futures.Future; a task that raises (here a task without a
    config) makes the future raise, and `execute` a failed run's result."""
    pytest.importorskip("ray")
    with ray_executor.RayExecutor(device="cpu", num_cpus=1) as executor:
        assert isinstance(executor, concurrent.futures.Executor) and executor.capacity == 1
        future = executor.submit(_fake_task("a", tmp_path / "a"))
        assert isinstance(future, concurrent.futures.Future)
        assert [task.name for _, task in executor.under_way()] == ["a"]
        assert isinstance(future.exception(timeout=300), Exception)
    results = scheduler.execute([_fake_task("b", tmp_path / "b")], ray_executor.RayExecutor(device="cpu", num_cpus=1))
    assert results["b"]["status"] == "failed" and "TypeError" in results["b"]["error"], results


def test_a_run_submitted_while_the_ray_follower_fails_ends_with_its_error(tmp_path):
    """The thread that follows the Ray tasks fails (the cluster gone) while a submit is between its
    check that the thread runs and its future's registration: that future ends with the error, as
    the run before it does, and a later submit is refused with it; none waits for ever."""
    pytest.importorskip("ray")

    def pause_launch(pause):
        remote = executor.remote

        class Paused:
            def options(self, **kwargs):
                pause()
                return remote.options(**kwargs)
        executor.remote = Paused()

    with ray_executor.RayExecutor(device="cpu", num_cpus=1) as executor:
        ended = submit_as_the_follower_fails(executor, pause_launch, _fake_task("a", tmp_path / "a"),
                                             _fake_task("b", tmp_path / "b"))
    assert ended["first"] is not None, "the run before it never ended"
    assert ended["second"] == ("raised", ended["error"]) and ended["third"] == ("refused", ended["error"]), ended


def test_a_failing_run_under_ray_is_reported_and_the_others_finish(tmp_path):
    """A run on corrupt data fails inside its Ray task; the other runs finish, the notebook that
    needed it is marked failed (not executed), and stderr and study.json list the failure."""
    pytest.importorskip("ray")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "val_jpeg.npz").write_bytes(b"not a zip file")
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"description": "test", "shared": SMOKE["shared"], "notebooks": {
        "weight_norms": [{"setting": "synthetic", "phases": 1, "seed": 0},
                         {"setting": "broken", "phases": 1, "seed": 0,
                          "config_overrides": {"dataset": "tiny_imagenet", "data_dir": str(broken)}}]}}))
    results = tmp_path / "results"
    proc = run_study("--profile", str(profile), "--executor", "ray", "--results", str(results), "--reports",
                     str(tmp_path / "reports"), "--cache-dir", str(tmp_path / "cache"), timeout=1200)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 run(s) failed" in proc.stderr, "iCaRL and LUCIR on the broken data"
    assert re.search(r"tiny_imagenet-\S+ \((iCaRL|LUCIR)\): DataError: .*corrupt", proc.stderr)
    assert "needed by weight_norms__broken" in proc.stderr
    assert re.search(r"weight_norms__broken: run tiny_imagenet-\S+ failed: DataError", proc.stderr)
    record = json.loads((results / "study" / "study.json").read_text())
    pairs = {p["key"]: p for p in record["pairs"]}
    assert pairs["weight_norms__synthetic"]["status"] == "done"
    assert pairs["weight_norms__broken"]["status"] == "failed" and "not executed" in pairs["weight_norms__broken"][
        "executed"]
    runs = {r["name"]: r for r in record["runs"]}
    assert sorted(r["status"] for r in runs.values()) == ["done", "done", "failed", "failed"]
    assert all("DataError" in r["error"] for r in runs.values() if r["status"] == "failed")
    assert all((results / "runs" / n / "metrics.json").exists() for n, r in runs.items() if r["status"] == "done")
