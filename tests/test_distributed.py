"""One run on two processes (torchrun, DistributedDataParallel over gloo on the CPU): it
completes, every rank ends with rank 0's exemplar memory, metrics and model, and a killed run
resumes to the phases of an uninterrupted one. Each launch takes some seconds (two processes
import torch and join a process group)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import comparable

ROOT = Path(__file__).resolve().parents[1]

# small: 6 synthetic classes, base 2 + 2 phases; incremental phases long enough (epochs) for the
# kill below to land inside phase 1; global batch 16 = 8 per rank
SETTINGS = dict(dataset="synthetic", num_classes=6, base_classes=2, phases=2, train_per_class=24, test_per_class=4,
                base_epochs=1, epochs=12, lr_milestones="8", batch_size=16, memory_per_class=2, eval_batch_size=64,
                device="cpu", progress="false", cache_base="false")


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
    assert not (out / "checkpoints" / "phase_2.pt").exists()
    assert json.loads((out / "metrics.json").read_text())["complete"] is False

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
