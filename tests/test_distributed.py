"""One run on two processes (torchrun, DistributedDataParallel over gloo on the CPU): it
completes, every rank ends with rank 0's exemplar memory, metrics and model, a killed run
resumes to the phases of an uninterrupted one, the feature extraction of herding and evaluation
is split over the ranks and gives one process's exemplars and accuracies to the bit. Each launch
takes some seconds (two processes import torch and join a process group)."""
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import lucir
from lucir import distributed
from lucir import results as res
from lucir import trainer
from lucir.config import phase_sizes
from lucir.data import load_dataset, phase_classes

from conftest import comparable, phase_model

ROOT = Path(__file__).resolve().parents[1]

# small: 6 synthetic classes, base 2 + 2 phases; incremental phases long enough (epochs) for the
# kill below to land inside phase 1; global batch 16 = 8 per rank. Extraction batches of 7 images:
# the 48 images of two classes make 7 batches, 4 for rank 0 and 3 for rank 1 (rows of unequal
# length to gather), and the 4 exemplars of phase 0 one batch, none for rank 1.
SETTINGS = dict(dataset="synthetic", num_classes=6, base_classes=2, phases=2, train_per_class=24, test_per_class=4,
                base_epochs=1, base_lr_milestones="1", epochs=12, lr_milestones="8", batch_size=16, memory_per_class=2,
                eval_batch_size=7, device="cpu", progress="false", cache_base="false")
# base_lr_milestones 1: a step after the base phase's one epoch, which changes nothing it trains (a milestone
# must lie within its stage's epochs)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _run_args(out: Path, cache: Path) -> list[str]:
    args = ["run", "--preset", "smoke", "--out", str(out)]
    for k, v in (SETTINGS | {"cache_dir": str(cache)}).items():
        args += ["--set", f"{k}={v}"]
    return args


def _torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """An uninterrupted two-rank run through tests/ddp_probe.py: (out_dir, record of rank 0, of rank 1)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cmd = _torchrun(str(ROOT / "tests" / "ddp_probe.py"), str(tmp / "records"), *_run_args(tmp / "run", tmp / "cache"))
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads((tmp / "records" / f"rank{r}.json").read_text()) for r in (0, 1)]
    return tmp / "run", records[0], records[1]


def test_ddp_run_completes_with_one_set_of_outputs(ddp_run):
    out, rank0, _ = ddp_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["world_size"] == 2
    assert [p["classes_seen"] for p in metrics["phases"]] == [2, 4, 6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["phase_0.pt", "phase_1.pt", "phase_2.pt"]
    assert comparable(rank0["metrics"]) == comparable(metrics)


def test_every_rank_holds_rank0_memory_metrics_and_model(ddp_run):
    out, rank0, rank1 = ddp_run
    # the epoch checkpoint to resume from (none), then per phase: the memory after herding and the
    # metric row (cache_base is off: no cache decision)
    assert len(rank0["shared"]) == 1 + 2 * 3 and rank0["shared"][0] == "None"
    assert rank1["shared"] == rank0["shared"]
    assert comparable(rank1["metrics"]) == comparable(rank0["metrics"])
    # weights and BatchNorm statistics agree after every training call (3 phases)
    assert len(rank0["models"]) == 3 and rank1["models"] == rank0["models"]
    memory = torch.load(out / "checkpoints" / "phase_2.pt", weights_only=False)["memory"]
    assert rank1["shared"][-2] == repr(memory)  # what rank 1 holds is what rank 0 saved
    assert sum(len(v) for v in memory.values()) == 6 * SETTINGS["memory_per_class"]


def _kill_ranks_of(out: Path) -> None:
    """A rank may outlive the agent killed with its group for a moment, holding the run's lock (the
    next call would be refused, rightly, while it runs): kill and wait for whatever still runs on
    `out`, so that the test resumes a run nobody is writing."""
    deadline = time.time() + 60
    while time.time() < deadline:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and str(out).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"processes on {out} outlived SIGKILL for 60 s")



def test_an_epochs_summary_counts_each_image_once_over_the_ranks(ddp_run):
    """The training accuracy (and the mean loss terms) of an epoch: the ranks' right answers over
    the epoch's images, each image counted by the rank that trained on it, the same on both ranks.
    The first epoch is the base phase's: 2 classes of 24 images, three global batches of 16."""
    _, rank0, rank1 = ddp_run
    assert len(rank0["epochs"]) == len(rank1["epochs"]) > 1
    for a, b in zip(rank0["epochs"], rank1["epochs"]):
        assert a["train_acc"] == b["train_acc"] == (a["correct"] + b["correct"]) / (a["seen"] + b["seen"])
    assert rank0["epochs"][0]["seen"] + rank1["epochs"][0]["seen"] == 2 * 24

def test_killed_ddp_run_resumes_to_the_uninterrupted_phases(ddp_run, tmp_path):
    ref_out, _, _ = ddp_run
    out = tmp_path / "run"
    cmd = _torchrun("-m", "lucir", *_run_args(out, tmp_path / "cache"))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "phase_0.pt").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two ranks: this test's own process group
        proc.wait()
        _kill_ranks_of(out)
    assert not (out / "checkpoints" / "phase_2.pt").exists()
    assert not res.is_complete(out)  # the phase checkpoint is written before metrics.json

    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed = json.loads((out / "metrics.json").read_text())
    reference = json.loads((ref_out / "metrics.json").read_text())
    assert resumed["complete"]
    assert comparable(resumed) == comparable(reference)
    for t in range(3):
        a = torch.load(out / "checkpoints" / f"phase_{t}.pt", weights_only=False)["model"]
        b = torch.load(ref_out / "checkpoints" / f"phase_{t}.pt", weights_only=False)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), f"phase {t}"


def test_batch_size_that_does_not_divide_by_the_ranks_is_a_one_line_error(tmp_path):
    args = _run_args(tmp_path / "run", tmp_path / "cache")
    args[args.index("batch_size=16")] = "batch_size=15"
    proc = subprocess.run(_torchrun("-m", "lucir", *args), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0
    assert "error: batch_size = 15 does not divide by the 2 processes of torchrun" in proc.stderr
    assert not (tmp_path / "run").exists()  # rejected before anything is written


def test_dist_timeout_minutes_is_the_process_groups_timeout(monkeypatch, tmp_path):
    """A run under torchrun joins its process group with the config's `dist_timeout_minutes`, a
    runtime field (it names no run); without torchrun nothing is initialised."""
    joined = {}
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: joined.update(kw))
    distributed.setup(torch.device("cpu"), 5)
    assert joined == {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    distributed.setup(torch.device("cpu"), 5)
    assert joined == {"backend": "gloo", "timeout": timedelta(minutes=5)}

    class Joined(Exception):
        pass

    def setup(device, timeout_minutes):
        joined["run"] = timeout_minutes
        raise Joined
    monkeypatch.setattr(trainer, "dist_setup", setup)
    config = lucir.make_config("smoke", **(SETTINGS | {"cache_dir": str(tmp_path), "dist_timeout_minutes": "90"}))
    with pytest.raises(Joined):
        lucir.run_incremental(config, tmp_path / "run")
    assert joined["run"] == 90.0
    assert res.run_identity(config) == res.run_identity(lucir.make_config("smoke", **SETTINGS))


def test_ranks_split_every_feature_extraction(ddp_run):
    """Imprinting, herding and evaluation hand each rank its block of the batches (rank_slice):
    together the ranks take every batch once, and rank 1 works whenever there are two or more."""
    _, rank0, rank1 = ddp_run
    # per phase: imprinting (phases 1, 2), herding, evaluation (test set, exemplars, their second view)
    assert len(rank0["slices"]) == 3 * 4 + 2 and len(rank1["slices"]) == len(rank0["slices"])
    for (total, mine0), (total1, mine1) in zip(rank0["slices"], rank1["slices"]):
        assert total == total1 and mine0 + mine1 == total and mine0 - mine1 in (0, 1)
    assert [7, 4] in rank0["slices"] and [1, 1] in rank0["slices"]  # rows of unequal length; none for rank 1


def test_two_ranks_herd_and_evaluate_as_one_process(ddp_run):
    """What exactly compares: from the models the two-rank run saved, this process (no torchrun)
    herds the exemplars the ranks herded and measures the accuracies they measured, to the bit.
    Training itself differs under DDP (per-rank BatchNorm on the CPU), hence the run's own models;
    the smoke preset has no class-balanced finetune, so a phase's saved model is the one that
    herded."""
    out, _, _ = ddp_run
    c = res.load_config(out)
    assert not c.class_balanced_finetune
    data = load_dataset(c)
    ranges = phase_classes(phase_sizes(len(data.class_names), c.base_classes, c.phases))
    metrics = json.loads((out / "metrics.json").read_text())
    memory = {}
    for t, classes in enumerate(ranges):
        model, state = phase_model(c, out, t)
        memory = trainer.update_memory(model, data, classes, memory, c, "cpu")
        assert memory == state["memory"], f"phase {t}: herding"
        row, _ = trainer.evaluate(model, data, memory, ranges[: t + 1], c, "cpu")
        # metrics.json writes NaN (no old classes in phase 0) as null
        assert res._nan_to_none(row) == {k: metrics["phases"][t][k] for k in row}, f"phase {t}: accuracies"
