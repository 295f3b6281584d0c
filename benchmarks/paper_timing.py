"""The paper's CIFAR-100 run, timed through the real phase machinery for a few epochs a phase, and
projected to its full length.

    python benchmarks/paper_timing.py [--epochs 3] [--tiny]

`lucir.run_incremental` runs the LUCIR preset at the paper's CIFAR-100 shapes (Sec. 4.1: 50 base
classes + 5 phases of 10, 500 training and 100 test images a class, R_per 20, batch 128, ResNet-32)
on synthetic 32-px images (the data set lives on the device as uint8, like CIFAR-100), with
everything a run does: the base phase, imprinting of the new weights, incremental phases with the
old model (Eq. 9), herding, NME and CNN evaluation, the epoch and phase checkpoints. Only the
number of epochs differs: `--epochs` a phase in place of the paper's 160 (the milestones scaled).

The projection, per phase: the time of one steady epoch (measured: the mean of the epochs after a
phase's first, from the run's own after-epoch callback) times the paper's epochs, plus everything
else the phase did (measured: phase time minus its epochs at the steady rate; this holds
imprinting, herding, evaluation, the checkpoints, and the first epoch's extra cost: cuDNN's
search, and compilation with `compile=true`). Extrapolated: that the epochs after the ones run
cost the steady epoch (the learning rate does not change the work), and, for K runs sharing the
device, that whole runs share it as the K-process training step did (benchmarks/gpu_check.py,
part 3).

--tiny: a tiny CPU-sized version of the same (CI runs it through gpu_check.py --tiny).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from the work tree as it is: the project need not be installed
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lucir import make_config, run_incremental, trainer  # noqa: E402
from lucir.data import load_dataset  # noqa: E402

# The paper's CIFAR-100 shapes (the lucir preset's defaults: 50 base classes, 5 phases, R_per 20,
# batch 128), on synthetic data of CIFAR-100's size.
PAPER = dict(dataset="synthetic", num_classes=100, train_per_class=500, test_per_class=100)
TINY = dict(dataset="synthetic", num_classes=6, base_classes=2, phases=2, train_per_class=8, test_per_class=4,
            batch_size=16, memory_per_class=2, eval_batch_size=64)


def timed_config(epochs: int, tiny: bool, device: str, **overrides):
    """(the config timed: `epochs` a phase, milestones scaled from the paper's; the paper's config
    it stands for)."""
    shapes = TINY if tiny else PAPER
    paper = make_config("lucir", **shapes, device=device, **overrides)
    scale = epochs / paper.epochs
    timed = make_config("lucir", **shapes, device=device, progress=False, cache_base=False, epochs=epochs,
                        lr_milestones=tuple(sorted({max(1, round(m * scale)) for m in paper.lr_milestones})),
                        cbf_epochs=max(2, round(paper.cbf_epochs * scale)) if paper.class_balanced_finetune
                        else paper.cbf_epochs, **overrides)
    return timed, paper


def time_run(config, out_dir, device) -> dict:
    """Run `config`; the end of every epoch (after the device finished it) per training stage, and
    each phase's seconds. The synthetic set is made first, timed apart and handed to the run (the
    same set it would make): it stands for CIFAR-100's arrays, which a real run loads in seconds."""
    ends: dict = {}
    tic = time.perf_counter()
    data = load_dataset(config)
    data_seconds = time.perf_counter() - tic

    def on_epoch(desc, epoch, epochs):  # observes only (a device sync, which changes no number)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ends.setdefault(desc, []).append(time.perf_counter())

    tic = time.perf_counter()
    with mock.patch.object(trainer, "load_dataset", lambda c: data):
        metrics = run_incremental(config, out_dir, on_epoch=on_epoch)
    return {"stages": ends, "phase_seconds": [p["seconds"] for p in metrics["phases"]],
            "seconds": time.perf_counter() - tic, "data_seconds": data_seconds,
            "acc_cnn": [p["acc_cnn"] for p in metrics["phases"]]}


def project(timing: dict, timed, paper, shared: dict | None = None) -> dict:
    """The paper run's time from the timed one. `timing["stages"]`: per training stage (its desc,
    "phase t ..."), the end times of its epochs (at least 2); `shared`: {K: images/s of K processes
    at once, in all}. Per phase: the steady epochs, scaled to the paper's count, plus the rest."""
    phases = []
    for t, seconds in enumerate(timing["phase_seconds"]):
        epochs_part = paper_epochs_part = 0.0
        for desc, ends in timing["stages"].items():
            if not desc.startswith(f"phase {t} "):
                continue
            if len(ends) < 2:
                raise ValueError(f"{desc}: {len(ends)} epoch timed; the steady epoch needs 2 or more")
            steady = (ends[-1] - ends[0]) / (len(ends) - 1)
            wanted = paper.cbf_epochs if desc.endswith("CBF") else \
                (paper.base_epochs or paper.epochs) if t == 0 else paper.epochs
            epochs_part += steady * len(ends)
            paper_epochs_part += steady * wanted
        rest = seconds - epochs_part
        phases.append({"phase": t, "seconds_timed": seconds, "epochs_timed_at_steady_rate": epochs_part,
                       "rest_measured": rest, "projected": rest + paper_epochs_part})
    # outside the phases' own clocks: the model, each phase's checkpoint and metrics
    outside = timing["seconds"] - sum(timing["phase_seconds"])
    alone = sum(p["projected"] for p in phases) + outside
    out = {"timed_epochs": timed.epochs, "paper_epochs": paper.epochs, "phases": phases,
           "timed_seconds": timing["seconds"], "outside_phases_measured": outside, "projected_alone_s": alone,
           "synthetic_data_seconds": timing.get("data_seconds")}
    if shared:
        one = shared.get(1)
        out["projected_K_runs_s"] = {k: alone * k * one / rate for k, rate in sorted(shared.items()) if one and rate}
    return out


def describe(projection: dict, kind: str) -> list[str]:
    """Lines saying what was measured, what extrapolated, and the projection."""
    p = projection
    lines = [f"Paper-shaped run on {kind}: {len(p['phases'])} phases timed with {p['timed_epochs']} epochs each "
             f"in {p['timed_seconds']:.1f} s (measured).",
             "Measured per phase: the steady epoch, and the rest (imprinting, herding, NME and CNN evaluation, "
             "checkpoints, first-epoch warm-up and any compilation): "
             + ", ".join(f"phase {q['phase']} {q['rest_measured']:.1f} s" for q in p["phases"])
             + f"; outside the phases (model, phase checkpoints) {p['outside_phases_measured']:.1f} s "
             f"(making the synthetic set, {p['synthetic_data_seconds'] or 0:.1f} s, is left out).",
             f"Extrapolated: {p['paper_epochs']} epochs a phase at the steady epoch's time -> one paper run alone "
             f"{p['projected_alone_s']:.0f} s ({p['projected_alone_s'] / 60:.1f} min)."]
    for k, s in p.get("projected_K_runs_s", {}).items():
        if k == 1:
            continue
        lines.append(f"Extrapolated: {k} runs sharing the device at the K-process step rate: {s:.0f} s for all "
                     f"{k} ({s / 60:.1f} min, {s / k / 60:.1f} min a run).")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="epochs a phase (2 or more)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if args.tiny:
        torch.set_num_threads(1)  # tiny runs on a shared CPU: more threads waited on busy cores
    timed, paper = timed_config(args.epochs, args.tiny, str(device))
    with tempfile.TemporaryDirectory() as tmp:
        timing = time_run(timed, Path(tmp) / "run", device)
    print("\n".join(describe(project(timing, timed, paper), device.type)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
