"""Resume from any epoch: a run killed with SIGKILL in the middle of a phase, after at least one
epoch checkpoint, is started again with the same command and ends with the metrics.json (and
the weights) of a run that was never interrupted. Covered: the base phase trained for the cache
and without it, an incremental phase, the class-balanced finetune, and a run under the study's
local executor whose worker process is killed.

The kill is real (the process sends itself SIGKILL, so nothing is flushed or cleaned up) and comes
at a fixed point: in the first batch of the epoch after the epoch checkpoint named by the test,
so the test is deterministic and the state on disk is that of a process killed mid-epoch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, comparable
from lucir import results as res
from lucir import local_executor, run_incremental, scheduler
from lucir.experiments import PlannedRun
from lucir.profiles import Pair
from smoke_study import REPO

# Long enough phases to be killed inside: 4 epochs with two lr steps, so a resumed loop must
# restore the schedule's position, the momentum and the generators to match.
LONG = dict(TINY, epochs=4, lr_milestones=(2, 3), cbf_epochs=3, cbf_lr_milestones=(2,))


def arm_kill(phase: int, stage: str, epoch: int) -> None:
    """In this process: once the epoch checkpoint (phase, stage, epoch) is written, SIGKILL the
    process in the next training batch (that is, in the middle of the following epoch)."""
    from lucir import trainer
    armed = []
    save, loss = res.save_state, trainer.batch_loss

    def save_and_arm(path, state):
        save(path, state)
        if (state.get("phase"), state.get("stage"), state.get("epoch")) == (phase, stage, epoch):
            armed.append(path)

    def loss_or_die(*args, **kwargs):
        if armed:
            os.kill(os.getpid(), signal.SIGKILL)
        return loss(*args, **kwargs)

    res.save_state, trainer.batch_loss = save_and_arm, loss_or_die


KILLED_RUN = r"""
import sys, test_resume
from lucir import cli
phase, stage, epoch = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
test_resume.arm_kill(phase, stage, epoch)
sys.exit(cli.main(sys.argv[4:]))
"""


def command(preset: str, values: dict, out: Path) -> list[str]:
    """`python -m lucir run` arguments for the config `values`."""
    sets = []
    for k, v in values.items():
        v = ",".join(map(str, v)) if isinstance(v, tuple) else v
        sets += ["--set", f"{k}={v}"]
    return ["run", "--preset", preset, *sets, "--out", str(out)]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))


def run_killed(args: list[str], phase: int, stage: str, epoch: int) -> None:
    """`python -m lucir` with `args`, SIGKILLed in the epoch after checkpoint (phase, stage, epoch)."""
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(phase), stage, str(epoch), *args],
                            env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


def run_again(args: list[str]) -> str:
    """The same `python -m lucir` command again, to the end; its stderr."""
    again = subprocess.run([sys.executable, "-m", "lucir", *args], env=_env(), cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    return again.stderr


def _weights(out: Path, phase: int) -> dict:
    return torch.load(res.checkpoint_path(out, phase), weights_only=True)["model"]


CASES = {  # name: (preset, config values, where to kill: phase, stage, epoch)
    "base phase for the cache": ("lucir", dict(LONG, cache_base=True), (0, "train", 2)),
    "base phase, no cache": ("lucir", dict(LONG, cache_base=False), (0, "train", 1)),
    "incremental phase": ("lucir", dict(LONG, cache_base=False), (1, "train", 2)),
    "class-balanced finetune": ("lucir", dict(LONG, cache_base=False, class_balanced_finetune=True), (2, "cbf", 1)),
    "iCaRL incremental phase": ("icarl", dict(LONG, cache_base=False), (2, "train", 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path, case):
    preset, values, (phase, stage, epoch) = CASES[case]
    reference = tmp_path / "reference"
    ref_metrics = run_incremental(_config(preset, values, tmp_path / "cache_ref"), reference)

    out, cache = tmp_path / "run", tmp_path / "cache"
    args = command(preset, dict(values, cache_dir=cache, device="cpu", progress=False), out)
    run_killed(args, phase, stage, epoch)
    if phase == 0 and values["cache_base"]:  # the base phase trained for the cache keeps its state there
        partial = list(cache.rglob("*.partial.pt"))
        assert len(partial) == 1 and not res.epoch_checkpoint_path(out).exists()
        state = torch.load(partial[0], weights_only=True)
    else:
        state = torch.load(res.epoch_checkpoint_path(out), weights_only=True)
    assert (state["phase"], state["stage"], state["epoch"]) == (phase, stage, epoch)
    assert not res.is_complete(out) and not res.checkpoint_path(out, phase).exists()

    said = run_again(args)
    # the command says how far the run had got before it goes on (the epoch checkpoint's phase and epoch)
    assert f"{out}: under way: phase {phase} of {values['phases']}" in said, said
    assert f"epoch {epoch}/" in said and "resuming from its newest checkpoint" in said, said
    resumed = res.load_metrics(out)
    assert resumed["complete"] and comparable(resumed) == comparable(ref_metrics)
    assert f"{out}: complete; its results are read, nothing is trained" in run_again(args)  # once more: nothing to do
    last = len(ref_metrics["phases"]) - 1
    ref_w, w = _weights(reference, last), _weights(out, last)
    assert ref_w.keys() == w.keys() and all(torch.equal(ref_w[k], w[k]) for k in w)
    # only the newest epoch checkpoint is kept, and none once the run is done
    assert not res.epoch_checkpoint_path(out).exists() and not list(cache.rglob("*.partial.pt"))
    # the phase's time counts the epochs before the kill too
    assert resumed["phases"][phase]["seconds"] >= state["seconds"]


def test_a_killed_run_moved_to_another_machine_as_one_file_resumes_there(tmp_path):
    """docs/resume.md, "Moving a run": the run folder and the cache folder packed into one tar
    (lock files left out), unpacked under other paths, and resumed there by the same command with
    those paths, ends as a run that was never interrupted. The paper-protocol run travels so."""
    values = dict(LONG, cache_base=True)
    reference = run_incremental(_config("lucir", values, tmp_path / "cache_ref"), tmp_path / "reference")
    here = tmp_path / "here"
    args = command("lucir", dict(values, cache_dir=here / "cache", device="cpu", progress=False), here / "run")
    run_killed(args, 1, "train", 2)
    packed = tmp_path / "run.tar"
    subprocess.run(["tar", "-cf", packed, "--exclude=*.lock", "-C", here, "run", "cache"],
                   check=True)
    there = tmp_path / "there"
    there.mkdir()
    subprocess.run(["tar", "-xf", packed, "-C", there], check=True)
    assert not list(there.rglob("*.lock")) and res.epoch_checkpoint_path(there / "run").exists()
    args = command("lucir", dict(values, cache_dir=there / "cache", device="cpu", progress=False), there / "run")
    run_again(args)
    moved = res.load_metrics(there / "run")
    assert moved["complete"] and comparable(moved) == comparable(reference)
    # phase 0 came from the unpacked cache, not from training the base phase again
    assert moved["phases"][0]["seconds"] == res.load_metrics(here / "run")["phases"][0]["seconds"]


def _config(preset, values, cache):
    from lucir import make_config
    return make_config(preset, **dict(values, cache_dir=str(cache)))


def test_epoch_checkpoints_can_be_switched_off(tmp_path, monkeypatch):
    written = []
    save = res.save_state
    monkeypatch.setattr(res, "save_state", lambda path, state: (written.append(Path(path).name), save(path, state)))
    run_incremental(_config("lucir", dict(TINY, checkpoint_every=0, cache_base=False), tmp_path / "c"), tmp_path / "o")
    assert written == ["phase_0.pt", "phase_1.pt", "phase_2.pt"]
    written.clear()
    run_incremental(_config("lucir", dict(LONG, checkpoint_every=3, cache_base=False), tmp_path / "c"), tmp_path / "p")
    # every 3rd epoch and after the last: epochs 3 and 4 of each of the 3 phases
    assert written == [name for t in range(3) for name in ("epoch.pt", "epoch.pt", f"phase_{t}.pt")]


# --------------------------------------------------------------------------- under the study's executor
def killed_in_phase_1(task, slot) -> dict:
    """A local worker's body that is killed in the middle of phase 1, after its epoch-2 checkpoint."""
    arm_kill(1, "train", 2)
    return local_executor.execute_run(task, slot)


def test_run_killed_under_the_local_executor_resumes_when_the_study_runs_again(tmp_path):
    values = dict(LONG, cache_dir=str(tmp_path / "cache"))
    direct = run_incremental(_config("lucir", values, tmp_path / "cache_direct"), tmp_path / "direct")
    pair = Pair("main_curves", "x", {}, [PlannedRun("LUCIR", "lucir", values)])
    tasks, _ = scheduler.collect_runs([pair], tmp_path / "results")
    slots = local_executor.local_slots("cpu", 1)
    first = scheduler.execute(tasks, local_executor.LocalExecutor(slots, work=killed_in_phase_1), poll=0.05)
    assert first[tasks[0].name]["status"] == "failed" and "died" in first[tasks[0].name]["error"]
    folder = Path(tasks[0].folder)
    assert torch.load(res.epoch_checkpoint_path(folder), weights_only=True)["epoch"] == 2
    again = scheduler.execute(tasks, local_executor.LocalExecutor(slots), poll=0.05)
    assert again[tasks[0].name]["status"] == "done", again
    assert comparable(res.load_metrics(folder)) == comparable(direct)
