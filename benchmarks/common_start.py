"""A common start for ours and the authors' trainer: one phase from the same weights and exemplars.

Issue 30, item 4. At the matched setting of `benchmarks/authors_code.py` (full CIFAR-100, B50 + 10
phases of 5, 8 epochs a phase, lr 0.1 / 10 after epochs 4 and 6, R_per = 20), every run of the
authors' code was above every run of ours on old-class CNN accuracy in phases 7-10 (two runs a side).
This script decides whether a phase's training differs, with the history held fixed:

1. `start`: ours (`lucir.trainer.run_incremental`, run seed 0) trains to the end of phase 6 once; its
   phase-6 checkpoint (model, exemplar memory) is the common start. The run stops at the first epoch
   of phase 7 (that epoch is thrown away), so phases 0-6 are exactly those of the matched run.
2. `ours_s<k>`: from that checkpoint, our phase 7 (`train_incremental`: imprinting, Eq. 9, frozen old
   embeddings) with run seed k (k = 0 continues the matched run).
3. `authors_r<k>`: from the same weights, the authors' phase 7: their network classes
   (`modified_resnet_cifar`, `modified_linear.SplitCosineLinear`) set up as their script sets up an
   incremental phase (the old head merged into fc1, ref model copied before), imprinting from features
   that their `compute_features` takes through their test transform (the formula is lucir.models'
   `imprint_weights`, which docs/authors_code.md compares with theirs value for value), their loader
   (torchvision CIFAR100 with their train transform, batch 128, shuffled, over the same new-class
   images and the same exemplars), their optimiser groups and their `incremental_train_and_eval_MR_LF`
   (patched as the harness patches it). torch is seeded with k (their script seeds nothing).
   Their trainer tests after every epoch; it is given one batch of test images for that, which
   changes nothing in training (eval mode, no gradients).

Both sides end the same way: the trained weights go into our network, our herding picks the new
classes' exemplars, and `lucir.trainer.evaluate` scores CNN and NME on the test images of the 85
classes seen (old = the 80 of the common start, new = the 5 of phase 7). So only the phase's training
differs between the sides. Each part writes its file under --work and is skipped when it exists, so
the script resumes; `start` itself resumes from its last epoch checkpoint.

    LUCIR_DATA=/work/shared/data nice -n 10 python benchmarks/common_start.py --authors CHECKOUT \\
        [--work DIR] [--out DIR] [--seeds 3] [--only start|ours|authors] [--report-only] [--time-steps N]
"""
from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("authors_code", REPO / "benchmarks" / "authors_code.py")
ac = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("authors_code", ac)
_spec.loader.exec_module(ac)

START_PHASE = 6  # the common start is the end of this phase; the next one is compared
TINY_EXTRA = {"train_per_class": 20, "test_per_class": 10, "memory_per_class": 5}  # --tiny: reduced data


class _Stop(Exception):
    pass


def config(setting: ac.Setting, work: Path, seed: int = 0, **extra):
    from lucir import make_config
    ms = tuple(setting.milestones)
    return make_config("lucir", device="cpu", progress=False, num_classes=setting.num_classes,
                       base_classes=setting.base_classes, phases=setting.phases, epochs=setting.epochs,
                       lr_milestones=ms, base_epochs=setting.epochs, base_lr_milestones=ms, seed=seed,
                       cache_dir=str(work / "cache"), **extra)


def train_start(c, work: Path, start_phase: int) -> Path:
    """Ours to the end of `start_phase` (run seed 0), resumable; returns the phase checkpoint."""
    from lucir import results as res
    from lucir.trainer import run_incremental
    out = work / "start"
    ckpt = res.checkpoint_path(out, start_phase)
    if ckpt.exists():
        return ckpt

    def stop(desc, epoch, epochs):
        if desc.startswith(f"phase {start_phase + 1} "):
            raise _Stop
    try:
        run_incremental(c, out, on_epoch=stop)
    except _Stop:
        pass
    res.epoch_checkpoint_path(out).unlink(missing_ok=True)  # the thrown-away epoch of the next phase
    assert ckpt.exists(), ckpt
    return ckpt


_DATA: dict = {}


def _load_start(c, ckpt: Path):
    import torch
    from lucir import results as res
    from lucir.data import load_dataset, phase_classes
    from lucir.config import phase_sizes
    from lucir.models import build_model
    state = res.load_state(ckpt, "the common start")
    key = (c.dataset, c.num_classes, c.train_per_class, c.test_per_class, c.class_order_seed)
    if key not in _DATA:  # loaded once a process: the runs of both sides read the same data
        _DATA.clear()
        _DATA[key] = load_dataset(c)
    data = _DATA[key]
    ranges = phase_classes(phase_sizes(len(data.class_names), c.base_classes, c.phases))
    model = build_model(c.resolved_model, state["num_classes"], c.cosine_normalization, c.resolved_last_relu,
                        c.eta_init)
    model.load_state_dict(state["model"])
    return model.to(memory_format=torch.channels_last), state["memory"], data, ranges


def _finish(model, memory, data, ranges, phase, c, tic, extra, start_weight) -> dict:
    """Herding of the new classes and evaluation, the same for both sides; with two facts of the
    trained head: the old-class weights are still those of the start (Sec. 3.3), and its eta."""
    import torch
    from lucir.trainer import evaluate, update_memory
    n_old = ranges[phase].start
    extra = {**extra, "old_weights_fixed": bool(torch.equal(model.head.weight[:n_old].detach(), start_weight)),
             "eta": float(model.head.eta.detach()), "start_eta": extra.get("start_eta")}
    memory = update_memory(model, data, ranges[phase], memory, c, "cpu")
    row, _ = evaluate(model, data, memory, ranges[: phase + 1], c, "cpu")
    row = {k: v for k, v in row.items() if not k.startswith("group_")}
    return {**row, **extra, "wall_s": time.perf_counter() - tic[0], "cpu_s": time.process_time() - tic[1]}


def ours_phase(c, ckpt: Path, phase: int, seed: int) -> dict:
    import torch
    from lucir.trainer import phase_seed, train_incremental
    tic = ac._clock()
    model, memory, data, ranges = _load_start(c, ckpt)
    w0, eta0 = model.head.weight.detach().clone(), float(model.head.eta.detach())
    torch.manual_seed(phase_seed(seed, phase))
    gen = torch.Generator().manual_seed(phase_seed(seed, phase))
    lam = train_incremental(model, data, ranges[phase], memory, c, "cpu", gen, phase)
    return _finish(model, memory, data, ranges, phase, c, tic, {"lambda": lam, "start_eta": eta0}, w0)


def authors_phase(c, ckpt: Path, phase: int, seed: int, code: Path, cifar: Path) -> dict:
    import torch
    import torchvision
    from lucir.models import imprint_weights
    from lucir.trainer import memory_indices
    tic = ac._clock()
    model, memory, data, ranges = _load_start(c, ckpt)
    sys.path.insert(0, str(code / ac.SCRIPT.parent))
    import modified_linear
    import modified_resnet_cifar
    from utils_incremental.compute_features import compute_features
    from utils_incremental.incremental_train_and_eval_MR_LF import incremental_train_and_eval_MR_LF
    torch.manual_seed(seed)
    n_old, n_new = ranges[phase].start, len(ranges[phase])
    w, eta0 = model.head.weight.detach().clone(), float(model.head.eta.detach())
    # Their network as their script leaves it after the previous phase (fc1: classes before it, fc2: its new ones).
    theirs = modified_resnet_cifar.resnet32(num_classes=c.base_classes)
    ours_bb = model.backbone.state_dict()
    keys = [k for k in theirs.state_dict() if not k.startswith("fc.")]
    assert [theirs.state_dict()[k].shape for k in keys] == [v.shape for v in ours_bb.values()]
    theirs.load_state_dict({**dict(zip(keys, (v.contiguous() for v in ours_bb.values()))),
                            **{k: v for k, v in theirs.state_dict().items() if k.startswith("fc.")}})
    prev = ranges[phase - 1]
    fc = modified_linear.SplitCosineLinear(64, prev.start, len(prev))
    fc.fc1.weight.data, fc.fc2.weight.data = w[: prev.start].clone(), w[prev.start:].clone()
    fc.sigma.data.fill_(float(model.head.eta.detach()))
    theirs.fc = fc
    # Their incremental set-up: ref model copied first, then the head grown with the old ones merged in fc1.
    ref = copy.deepcopy(theirs)
    new_fc = modified_linear.SplitCosineLinear(64, n_old, n_new)
    new_fc.fc1.weight.data[: prev.start] = theirs.fc.fc1.weight.data
    new_fc.fc1.weight.data[prev.start:] = theirs.fc.fc2.weight.data
    new_fc.sigma.data = theirs.fc.sigma.data
    theirs.fc = new_fc
    lam = 5.0 * math.sqrt(n_old / n_new)  # --lamda 5 --adapt_lamda
    train_tf, test_tf = ac.authors_transforms()

    def loader(idx, images, labels, tf, shuffle, batch):
        ds = torchvision.datasets.CIFAR100(str(cifar.parent), train=True, download=False, transform=tf)
        ds.data = images.images[idx].permute(0, 2, 3, 1).numpy().astype(np.uint8)  # NHWC, as their pickles
        ds.targets = [int(v) for v in labels[idx]]
        return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=shuffle, num_workers=0)

    feat_model = torch.nn.Sequential(*list(theirs.children())[:-1])
    feats = []
    for k in ranges[phase]:
        idx = torch.nonzero(data.train_labels == k).flatten()
        feats.append(torch.from_numpy(compute_features(feat_model, loader(idx, data.train, data.train_labels, test_tf,
                                                                          False, 128), len(idx), 64)).float())
    theirs.fc.fc2.weight.data = imprint_weights(feats, theirs.fc.fc1.weight.data.float()).to(w.dtype)
    new_idx = torch.nonzero((data.train_labels >= n_old) & (data.train_labels < ranges[phase].stop)).flatten()
    train_idx = torch.cat([new_idx, torch.tensor(memory_indices(memory), dtype=torch.long)])
    trainloader = loader(train_idx, data.train, data.train_labels, train_tf, True, c.batch_size)
    test_idx = torch.nonzero(data.test_labels < ranges[phase].stop).flatten()[:100]
    testloader = loader(test_idx, data.test, data.test_labels, test_tf, False, 100)
    opt, sched = ac.authors_optimizer(theirs, incremental=True, milestones=list(c.lr_milestones))
    start_iteration = c.base_classes // n_new - 1
    theirs = incremental_train_and_eval_MR_LF(c.epochs, theirs, ref, opt, sched, trainloader, testloader,
                                              start_iteration + phase, start_iteration, lam, 0.5, 2, 1.0,
                                              device=torch.device("cpu"))
    # Back into our network for the common herding and evaluation.
    from lucir.models import add_classes, merge_head
    add_classes(model, n_new)
    merge_head(model)
    after = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    model.backbone.load_state_dict(dict(zip(model.backbone.state_dict(), after.values())))
    with torch.no_grad():
        model.head.weight.copy_(torch.cat([theirs.fc.fc1.weight, theirs.fc.fc2.weight]))
        model.head.eta.fill_(float(theirs.fc.sigma.detach()))
    return _finish(model, memory, data, ranges, phase, c, tic, {"lambda": lam, "start_eta": eta0}, w)


# --------------------------------------------------------------------------- report
KEYS = ("acc_cnn", "acc_old_cnn", "acc_new_cnn", "acc_nme", "acc_old_nme", "acc_new_nme")


def _mean_sd(v):
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else float("nan"))


def verdict(rows: list[dict], key: str = "acc_old_cnn") -> str:
    ours = [r[key] for r in rows if r["side"] == "ours"]
    theirs = [r[key] for r in rows if r["side"] == "authors"]
    if not ours or not theirs:
        return "not decided yet: one side has no finished run"
    (mo, so), (mt, st) = _mean_sd(ours), _mean_sd(theirs)
    d = mo - mt
    spread = max(so, st) if len(ours) > 1 and len(theirs) > 1 else float("nan")
    sep = "every run of theirs is above every run of ours" if min(theirs) > max(ours) else (
        "every run of ours is above every run of theirs" if min(ours) > max(theirs) else "the runs of the two sides interleave")
    return (f"{key}: ours - authors' = {d:+.2f} points (means over {len(ours)} and {len(theirs)} runs), "
            f"spread within a side (sample std) {so:.2f} ours, {st:.2f} theirs; {sep}. "
            + ("The difference is within the spread of a side: from a common start, the two trainers do not "
               "differ in this measure beyond chance." if abs(d) <= 2 * spread else
               "The difference exceeds twice the spread of a side: from a common start the trainers differ."))


def write_report(work: Path, out: Path, tiny: bool) -> list[dict]:
    rows = []
    for f in sorted(work.glob("phase_*.json")):
        r = json.loads(f.read_text())
        rows.append({**r, **{k: 100 * r[k] for k in KEYS}})  # fractions in the files, % in the table
    out.mkdir(parents=True, exist_ok=True)
    cols = ["side", "seed", "phase", "classes_seen", *KEYS, "lambda", "wall_s", "cpu_s"]
    with open(out / "common_start.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, cols, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(rows)
    lines = ["# A common start: phase 7 from the same weights and exemplars, ours and the authors' trainer", ""]
    if tiny:
        lines += ["**--tiny: a check of the script on reduced data, not a comparison.**", ""]
    lines += ["Written by `benchmarks/common_start.py`. Accuracy (%) on the test images of all classes seen "
              "after the phase; old = classes of the common start, new = the phase's classes.", "",
              "| side | seed | CNN | CNN old | CNN new | NME | NME old | NME new | CPU min |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['seed']} | " + " | ".join(f"{r[k]:.2f}" for k in KEYS)
                     + f" | {r['cpu_s'] / 60:.1f} |")
    for side in ("ours", "authors"):
        rs = [r for r in rows if r["side"] == side]
        if rs:
            cells = []
            for k in KEYS:
                m, s = _mean_sd([r[k] for r in rs])
                cells.append(f"{m:.2f} ± {s:.2f}")
            lines.append(f"| **{side}, mean ± std** | {len(rs)} runs | " + " | ".join(cells) + " | |")
    lines += ["", "## Conclusion", "", verdict(rows), "", verdict(rows, "acc_new_cnn"), "", verdict(rows, "acc_cnn"), ""]
    (out / "common_start.md").write_text("\n".join(lines))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--authors", type=Path, help="checkout of hshustc/CVPR19_Incremental_Learning")
    ap.add_argument("--work", type=Path, default=None, help="runs (default results/common_start[_tiny])")
    ap.add_argument("--out", type=Path, default=None, help="table (default reports/authors_code; --tiny: WORK/report)")
    ap.add_argument("--seeds", type=int, default=3, help="runs of each side (default 3)")
    ap.add_argument("--only", choices=["start", "ours", "authors"])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="20 classes, 2 phases, 1 epoch, 20 images a class: a check")
    ap.add_argument("--time-steps", type=int, metavar="N", help="project the cost from N timed batches of each side")
    a = ap.parse_args(argv)
    setting = ac.TINY if a.tiny else ac.MATCHED
    start_phase = 1 if a.tiny else START_PHASE
    work = a.work or REPO / "results" / ("common_start_tiny" if a.tiny else "common_start")
    out = a.out or (work / "report" if a.tiny else REPO / "reports" / "authors_code")
    extra = TINY_EXTRA if a.tiny else {}
    work.mkdir(parents=True, exist_ok=True)
    import torch
    torch.set_num_threads(1)
    if a.report_only:
        write_report(work, out, a.tiny)
        return 0
    code = cifar = None
    if a.only != "start" and a.only != "ours" or a.time_steps:
        if a.authors is None:
            raise SystemExit("error: --authors CHECKOUT is needed for the authors' side")
        ac.prepare_code(a.authors, work / "code")
        code, cifar = work / "code", ac.prepare_data(work / "data")
    if a.time_steps:
        t = ac.time_steps(code, work / "data", a.time_steps, setting, work)
        w, r = ac._workload(setting), t["images_per_s"]
        seen = [setting.base_classes + k * setting.per_phase for k in range(setting.phases + 1)]
        inc = [(setting.per_phase * 500 + 20 * seen[k - 1]) * setting.epochs for k in range(1, setting.phases + 1)]
        fwd7 = 3 * setting.per_phase * 500 + 100 * seen[start_phase + 1] + 40 * seen[start_phase]
        proj = {clock: {
            "start": w["base_steps"] / r["ours"]["base_step"][clock] + sum(inc[:start_phase]) / r["ours"]["inc_step"][clock]
            + sum(100 * s + 40 * s + 1000 * setting.per_phase for s in seen[:start_phase + 1]) / r["ours"]["forward"][clock],
            "ours_phase": inc[start_phase] / r["ours"]["inc_step"][clock] + fwd7 / r["ours"]["forward"][clock],
            "authors_phase": inc[start_phase] / r["authors"]["inc_step"][clock] + fwd7 / r["ours"]["forward"][clock]
            + (setting.per_phase * 500 + setting.epochs * 100) / r["authors"]["forward"][clock]}
            for clock in ("cpu", "wall")}
        (work / "projection.json").write_text(json.dumps(proj, indent=1))
        print(json.dumps(proj, indent=1))
        return 0
    c = config(setting, work, 0, **extra)
    tic = time.time()
    ckpt = train_start(c, work, start_phase)
    print(f"common start: {ckpt} ({time.time() - tic:.0f} s this call)", flush=True)
    phase = start_phase + 1
    for k in range(a.seeds):
        for side in ("ours", "authors"):
            if a.only in ("start",) or (a.only and a.only != side):
                continue
            f = work / f"phase_{phase}_{side}_s{k}.json"
            if f.exists():
                continue
            ck = config(setting, work, k, **extra)
            row = ours_phase(ck, ckpt, phase, k) if side == "ours" else authors_phase(ck, ckpt, phase, k, code, cifar)
            row = {"side": side, "seed": k, "phase": phase, "classes_seen": setting.base_classes + phase * setting.per_phase, **row}
            f.write_text(json.dumps(row, indent=1))
            print(f"{side} seed {k}: CNN old {row['acc_old_cnn']:.2f} new {row['acc_new_cnn']:.2f} "
                  f"({row['cpu_s'] / 60:.1f} CPU min)", flush=True)
    write_report(work, out, a.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
