"""run_incremental: the base phase and every incremental phase, as plain functions.

Per phase t: freeze a copy of the model (the old model), grow the head (imprinting the new
cosine weights), train with the loss of Eq. 9 (or its baselines), select exemplars by herding,
optionally finetune on a class-balanced set, evaluate CNN and NME, write a checkpoint.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import losses
from . import results as res
from .config import IMAGENET_LIKE, Config, ConfigError, phase_sizes
from .bars import bar_options
from .data import DATASET_SIZE, Dataset, data_identity, data_root, default_workers, load_dataset, phase_classes
from .device import autocast, check_amp, grad_scaler, resolve_device, set_deterministic, unusable_gpu
from .distributed import (all_sum, barrier, gather_rows, is_main, launched_world_size, rank_slice, share, sync_module,
                          world_size, wrap)
from .distributed import rank as dist_rank
from .distributed import setup as dist_setup
from .memory import class_means, exemplars_per_class, herding, nme_predict
from .metrics import (accuracy, average_incremental_accuracy, confusion_matrix, forgetting,
                      group_accuracies, split_accuracy)
from .models import (Net, Output, add_classes, build_model, frozen_copy, grow_head, imprint_weights, merge_head,
                     weight_norms)


class TrainingDiverged(RuntimeError):
    """A loss turned NaN or infinite; checkpoints of finished phases are kept."""


def resolve_workers(workers: int | None) -> int:
    return default_workers() if workers is None else workers


def phase_seed(seed: int, phase: int) -> int:
    """Each phase draws from its own seed, so a resumed run repeats an uninterrupted one."""
    return seed * 1000 + phase


# --------------------------------------------------------------------------- resume inside a phase
class EpochCheckpoint:
    """The state inside phase `phase`, written by train_epochs every `every` epochs and after a
    loop's last epoch (config `checkpoint_every`), so that a run killed at any epoch goes on from
    the last one written and ends with the numbers of a run never interrupted.

    One file, replaced atomically (only the newest is kept), removed once the phase's own
    checkpoint is written. It holds the training loop's state (_Loop, and the epochs done) under
    its Stage's name as `stage` ("train": the base or incremental phase; "cbf": the class-balanced
    finetune), beside the phase's own (exemplar memory, history, seconds so far). `resume` is
    what an earlier call wrote; it applies only to the same phase."""

    def __init__(self, path: Path | None, every: int, phase: int, resume: dict | None = None, on_epoch=None):
        self.path = path if every > 0 else None
        self.on_epoch = on_epoch  # run_incremental's observer, called after every epoch
        self.every, self.phase = every, phase
        self.resume = resume if resume is not None and resume.get("phase") == phase else None
        self.tic = time.time() - (self.resume["seconds"] if self.resume else 0.0)  # phase time survives a resume
        self.context: dict = {}  # the phase's state saved beside the loop's: memory, history

    @property
    def stage(self) -> str | None:
        return self.resume["stage"] if self.resume else None

    def state_for(self, stage: str) -> dict | None:
        return self.resume if self.stage == stage else None

    def due(self, epoch: int, epochs: int) -> bool:
        return self.path is not None and (epoch % self.every == 0 or epoch == epochs)

    def save(self, stage: str, epoch: int, loop_state: dict) -> None:
        if is_main():
            res.save_state(self.path, {"phase": self.phase, "stage": stage, "epoch": epoch,
                                       "seconds": time.time() - self.tic, **self.context, **loop_state})

    def remove(self) -> None:
        if self.path is not None and is_main():
            Path(self.path).unlink(missing_ok=True)


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _rng_state(device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- features
@torch.no_grad()
def extract(model: Net, images, idx: torch.Tensor, device, batch_size: int, view: str = "none",
            workers: int = 0, amp: str = "off"):
    """(features, logits) of images `idx` with test-time transforms (and `view`), in eval mode.
    JPEG images are decoded by `workers` processes; the results reach the host in one copy.
    Under torchrun every rank must call it: each computes a block of the batches and receives
    the rows of all (lucir.distributed.rank_slice, gather_rows), in the order of `idx`; the
    batches are those of one process, and so are the numbers."""
    model.eval()
    feats, logits = [], []
    batches = rank_slice(list(idx.split(batch_size)))
    for x in images.iterate(batches, device, train=False, view=view, workers=workers):
        with autocast(torch.device(device), amp):
            out = model(x)
        feats.append(out.features.float())
        logits.append(out.logits.float())
    if not feats:  # no image, or none for this rank
        feats, logits = [torch.zeros(0)], [torch.zeros(0)]
    return gather_rows(torch.cat(feats)).cpu(), gather_rows(torch.cat(logits)).cpu()


def compiled_backbone(model: Net, mode: str = "default"):
    """torch.compile of the model's backbone (config `compile`), sharing its parameters; the model
    calls it in place of its own backbone. The backbone keeps its shapes across phases, while the
    cosine head grows every phase and stays eager. The batch dimension is dynamic from the first
    call (an epoch's last batch is smaller, and each phase's differs), so each mode (training, the
    frozen old model, the backbone frozen in the class-balanced finetune) compiles once for every
    batch size, twice on a CPU whose convolutions switch layout at 16 images (tests/
    test_gpu_path.py counts them); a batch of one image gets its own graph. fullgraph: a graph
    break, or more recompiles than torch._dynamo's limit (8), is an error, never a silent fall
    back to eager. `mode` (config compile_mode) is passed on unless it is torch's default."""
    compiled = torch.compile(model.backbone, fullgraph=True, **({} if mode == "default" else {"mode": mode}))

    def backbone(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            torch._dynamo.mark_dynamic(x, 0)
        return compiled(x)
    return backbone


# --------------------------------------------------------------------------- the batch loss
def _loss_precision(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 (amp) up to float32; float32 unchanged (the same tensor); float64 kept."""
    return t if t.dtype == torch.float64 else t.float()


def batch_loss(c: Config, out, old, targets: torch.Tensor, n_old: int, lam: float) -> dict:
    """The loss terms of one batch; their sum is Eq. 9 for LUCIR (or the baseline's loss).
    `old` is the frozen old model's output on the same batch, None without distillation.
    The losses are computed in float32 whatever lower precision the forward pass ran in (`amp`);
    a float64 model keeps float64 (tests compare it with the authors' code beyond float32's rounding)."""
    out = Output(*(_loss_precision(t) for t in out))
    old = None if old is None else Output(*(_loss_precision(t) for t in old))
    terms = {"ce": losses.cross_entropy(out.logits, targets)}                          # Eq. 1
    if old is None:
        return terms
    if not c.cosine_normalization:
        terms["dis"] = losses.lwf_distillation(out.logits, old.logits, c.temperature)  # Eq. 2
    elif not c.less_forget:
        terms["dis"] = lam * losses.cosine_distillation(out.scores, old.scores)       # Eq. 5
    else:
        terms["dis"] = lam * losses.less_forget(out.features, old.features)           # Eq. 6, 7
    if c.inter_class_separation:
        terms["mr"] = losses.margin_ranking(out.scores, targets, n_old, c.margin, c.K)  # Eq. 8
    return terms


@dataclass(frozen=True)
class Stage:
    """What varies between the loops that train: the base phase, an incremental phase (the
    old model's `n_old` classes, `lam` weighting L_dis^G) and the class-balanced finetune (the
    backbone frozen). `desc` names it on its progress bar; `name` keys its epoch checkpoint."""
    desc: str
    epochs: int
    lr: float
    milestones: tuple = ()  # epochs after which lr is multiplied by lr_gamma
    n_old: int = 0
    lam: float = 0.0
    frozen_backbone: bool = False
    name: str = "train"  # or "cbf"


def train_epochs(model: Net, old_model: Net | None, data: Dataset, train_idx: torch.Tensor, params, stage: Stage,
                 c: Config, device, generator: torch.Generator, checkpoint: EpochCheckpoint | None = None) -> dict:
    """Eq. 9's batch loop: SGD on `params` over `train_idx` for the stage's epochs; returns the
    last epoch's summary. Under torchrun each rank trains on its slice of every global batch of
    `batch_size` (the same permutation on every rank), through DistributedDataParallel; see
    lucir.distributed. With `checkpoint`, the loop starts from its state for the stage when it
    has one, and writes its state there after the epochs it is due."""
    loop = _Loop(model, old_model, params, stage, c, device, generator)
    start, summary = loop.resume(checkpoint)  # before DDP or compile wrap the model: they see its weights
    labels = data.train_labels.to(device)  # on the device once; each epoch gathers its labels there
    rank, world = dist_rank(), world_size()
    workers = resolve_workers(c.workers)
    net = wrap(model, torch.device(device))
    backbone = compiled_backbone(model, c.compile_mode) if c.compile else None  # None: its own, eager
    old_backbone = compiled_backbone(old_model, c.compile_mode) if c.compile and old_model is not None else None
    bar = tqdm(range(start, stage.epochs), desc=stage.desc, disable=not (c.progress and is_main()), leave=True,
               initial=start, total=stage.epochs, **{"dynamic_ncols": True, **bar_options()})
    for epoch in bar:
        model.train()
        if stage.frozen_backbone:
            model.backbone.eval()
        sums: dict = {}  # running sums stay on the device: no host sync inside the batch loop
        correct = torch.zeros((), device=device)
        perm = train_idx[torch.randperm(len(train_idx), generator=generator)]
        # a last global batch smaller than the world has no sample for some rank
        batches = [b for b in perm.split(c.batch_size) if len(b) >= world]
        targets = [y.tensor_split(world)[rank] for y in labels[perm.to(device)].split(c.batch_size)]
        images = data.train.iterate(batches, device, train=True, generator=generator, workers=workers,
                                    shard=(rank, world))
        for x, y in zip(images, targets):
            with autocast(torch.device(device), c.amp):
                out = net(x, backbone=backbone)
                with torch.no_grad():
                    old = None if old_model is None else old_model(x, backbone=old_backbone)
            terms = batch_loss(c, out, old, y, stage.n_old, stage.lam)  # L_ce, lambda L_dis^G, L_mr
            loop.step(sum(terms.values()))  # Eq. 9: their sum
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach() * len(y)
            correct += (out.logits.argmax(1) == y).sum()
        loop.sched.step()
        seen = sum(len(y) for y in targets[:len(batches)])  # this rank's images: the all-reduce adds the ranks'
        summary = _epoch_summary(sums, correct, seen, device, f"{stage.desc}, epoch {epoch + 1}")
        bar.set_postfix({k: f"{v:.3f}" for k, v in summary.items()}, refresh=False)
        loop.save_epoch(checkpoint, epoch + 1, summary)
    bar.close()
    sync_module(model)  # rank 0's weights and BatchNorm statistics on every rank
    return summary


class _Loop:
    """What a training loop carries from epoch to epoch, and its epoch checkpoint holds: the model,
    the frozen old model, SGD with momentum, its lr schedule (stepped per epoch), the float16
    gradient scaler (a pass-through otherwise), the phase's generator and torch's global one."""

    def __init__(self, model: Net, old_model: Net | None, params, stage: Stage, c: Config, device, generator):
        self.model, self.old_model, self.stage, self.device, self.generator = model, old_model, stage, device, generator
        # fused_sgd off: torch's default SGD, exactly as before the switch existed
        self.opt = torch.optim.SGD(params, lr=stage.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                   **({"fused": True} if c.fused_sgd else {}))
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, list(stage.milestones), gamma=c.lr_gamma)
        self.scaler = grad_scaler(torch.device(device), c.amp)

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def resume(self, checkpoint: EpochCheckpoint | None) -> tuple[int, dict]:
        """(epochs done, their last summary), from the checkpoint's state for the stage, which the
        loop takes on; (0, {}) without one."""
        state = checkpoint.state_for(self.stage.name) if checkpoint is not None else None
        if state is None:
            return 0, {}
        self.model.load_state_dict(state["model"])
        if self.old_model is not None:
            self.old_model.load_state_dict(state["old_model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])  # its milestones come from the config
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        _set_rng_state(state["rng"], self.device)
        return state["epoch"], state["summary"]

    def save_epoch(self, checkpoint: EpochCheckpoint | None, epoch: int, summary: dict) -> None:
        """After `epoch` epochs: the loop's state into the checkpoint if due, then its observer."""
        if checkpoint is not None and checkpoint.due(epoch, self.stage.epochs):
            checkpoint.save(self.stage.name, epoch, {
                "model": _cpu_state(self.model),
                "old_model": None if self.old_model is None else _cpu_state(self.old_model),
                "optimizer": self.opt.state_dict(),
                "scheduler": {k: v for k, v in self.sched.state_dict().items() if k != "milestones"},
                "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(),
                "rng": _rng_state(self.device), "summary": summary})
        if checkpoint is not None and checkpoint.on_epoch is not None:
            checkpoint.on_epoch(self.stage.desc, epoch, self.stage.epochs)


def _epoch_summary(sums: dict, correct: torch.Tensor, seen: int, device, where: str) -> dict:
    """The epoch's mean loss terms and training accuracy; under torchrun its sums are summed over
    the ranks first, so that every rank takes the same decisions. A term turned NaN or infinite
    stops the run."""
    if world_size() > 1:
        keys = sorted(sums)
        total = all_sum(torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device)
                                     for v in [*(sums[k] for k in keys), correct, float(seen)]]))
        sums, correct, seen = dict(zip(keys, total[:-2])), total[-2], float(total[-1])
    summary = {k: float(v) / seen for k, v in sums.items()}
    bad = [k for k, v in summary.items() if not np.isfinite(v)]
    if bad:
        raise TrainingDiverged(f"loss term {', '.join(bad)} became {summary[bad[0]]} in {where}; "
                               f"checkpoints of finished phases are kept")
    summary["train_acc"] = float(correct) / seen
    return summary


# --------------------------------------------------------------------------- phases
def base_cache_path(c: Config, first_classes: int) -> Path:
    """Cache file of the base-phase model, keyed by everything that phase depends on, the data by
    what it is (lucir.data.data_identity), so that a cache carried to another machine or data
    folder is found there. A file cached before that, keyed by the data folder's path, is used
    where it exists and the new one does not (it holds the same weights)."""
    current, legacy = base_cache_paths(c, first_classes)
    if legacy is not None and not _cache_started(current) and _cache_started(legacy):
        return legacy
    return current


def _cache_started(path: Path) -> bool:
    return path.exists() or base_partial_path(path).exists()


def base_cache_paths(c: Config, first_classes: int) -> tuple[Path, Path | None]:
    """(the cache file's path keyed by the data's content, the path it had when keyed by the data
    folder's path, or None where the two keys are the same: synthetic data)."""
    key = {k: getattr(c, k) for k in (
        "dataset", "num_classes", "train_per_class", "class_order_seed", "seed", "image_size",
        "cosine_normalization", "eta_init", "lr", "lr_gamma", "batch_size", "momentum", "weight_decay")}
    key |= {"model": c.resolved_model, "last_relu": c.resolved_last_relu, "first_classes": first_classes,
            "epochs": c.base_epochs or c.epochs, "milestones": list(c.base_lr_milestones or c.lr_milestones),
            "format": 1}
    legacy = None
    if c.dataset != "synthetic":
        legacy = {**key, "data": str(data_root(c).resolve())}
        key["data"] = data_identity(c)
    if c.class_order_run:  # only for another order, so that the paper's order keeps its cache
        key["class_order_run"] = c.class_order_run
    if c.amp != "off":  # only when on, so that the paper's fp32 runs keep their cache
        key["amp"] = c.amp
    if c.compile:
        key["compile"] = True
    if c.compile_mode != "default":
        key["compile_mode"] = c.compile_mode
    if c.fused_sgd:  # only when on, as amp and compile
        key["fused_sgd"] = True
    if world_size() > 1:  # per-rank BatchNorm and gradient averaging change the result
        key["world_size"] = world_size()
    if c.dataset in IMAGENET_LIKE:  # JPEG crops are drawn per sample since this version (lucir.data)
        key["jpeg_augmentation"] = "per-sample seeds"
    if legacy is not None:
        legacy |= {k: v for k, v in key.items() if k != "data"}
    root = Path(c.cache_dir or os.environ.get("LUCIR_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lucir")  # as the data's

    def path(k: dict) -> Path:
        digest = hashlib.sha256(json.dumps(k, sort_keys=True, default=list).encode()).hexdigest()[:20]
        return root / "base" / f"{c.dataset}-{c.resolved_model}-{digest}.pt"
    return path(key), path(legacy) if legacy is not None else None


def base_phase_file(config: Config) -> Path | None:
    """The cache file of the run's base phase, or None when the run does not cache it."""
    if not config.cache_base:
        return None
    n_cls = config.num_classes or DATASET_SIZE.get(config.dataset, (100,))[0]
    return base_cache_path(config, phase_sizes(n_cls, config.base_classes, config.phases)[0])


def base_partial_path(cache: Path) -> Path:
    """The epoch checkpoint that a base phase trained for the cache keeps beside its cache file
    while it trains (removed once the cache file is written)."""
    return cache.with_name(cache.stem + ".partial.pt")


def train_base(model: Net, data: Dataset, classes: range, c: Config, device, gen,
               checkpoint: EpochCheckpoint | None = None) -> None:
    idx = torch.nonzero(data.train_labels < classes.stop).flatten()
    stage = Stage(f"phase 0 (base, {len(classes)} classes)", epochs=c.base_epochs or c.epochs, lr=c.lr,
                  milestones=c.base_lr_milestones or c.lr_milestones)
    train_epochs(model, None, data, idx, model.parameters(), stage, c, device, gen, checkpoint)


def phase_lambda(c: Config, classes: range) -> float:
    """The weight of the distillation term in an incremental phase: Eq. 7, or lambda_base fixed."""
    if not c.distillation:
        return 0.0
    if c.adaptive_weight:
        return losses.adaptive_lambda(c.lambda_base, classes.start, len(classes), c.lambda_direction)
    return c.lambda_base


def train_incremental(model: Net, data: Dataset, classes: range, memory: dict, c: Config, device, gen,
                      phase: int, checkpoint: EpochCheckpoint | None = None) -> float:
    """One incremental phase; returns the lambda used. The model's head is grown here (imprinted,
    unless the epoch checkpoint being resumed holds the grown head's weights)."""
    n_old, n_new = classes.start, len(classes)
    resuming = checkpoint is not None and checkpoint.state_for("train") is not None
    old_model = frozen_copy(model) if c.distillation else None
    new_weight = None
    if model.cosine and c.imprint and not resuming:
        idx = torch.nonzero((data.train_labels >= n_old) & (data.train_labels < classes.stop)).flatten()
        feats, _ = extract(model, data.train, idx, device, c.eval_batch_size, **_extract_options(c))
        lab = data.train_labels[idx]
        new_weight = imprint_weights([feats[lab == k] for k in classes], model.head.weight.detach().float().cpu())
    params = grow_head(model, n_new, new_weight, fix_old=c.less_forget)
    lam = phase_lambda(c, classes)
    if c.joint_training:
        idx = torch.nonzero(data.train_labels < classes.stop).flatten()
    else:
        new_idx = torch.nonzero((data.train_labels >= n_old) & (data.train_labels < classes.stop)).flatten()
        idx = torch.cat([new_idx, torch.tensor(memory_indices(memory), dtype=torch.long)])
    stage = Stage(f"phase {phase} ({n_old}+{n_new} classes)", epochs=c.epochs, lr=c.lr, milestones=c.lr_milestones,
                  n_old=n_old, lam=lam)
    train_epochs(model, old_model, data, idx, params, stage, c, device, gen, checkpoint)
    merge_head(model)
    return lam


def _extract_options(c: Config) -> dict:
    return {"workers": resolve_workers(c.workers), "amp": c.amp}


def memory_indices(memory: dict) -> list[int]:
    return [i for cls in sorted(memory) for i in memory[cls]]


def update_memory(model: Net, data: Dataset, classes: range, memory: dict, c: Config, device) -> dict:
    """Herding for the new classes; with a fixed total budget, old classes keep a prefix."""
    m = exemplars_per_class(classes.stop, c.memory_per_class, c.memory_total)
    memory = {k: v[:m] for k, v in memory.items()}
    idx = torch.nonzero((data.train_labels >= classes.start) & (data.train_labels < classes.stop)).flatten()
    feats, _ = extract(model, data.train, idx, device, c.eval_batch_size, **_extract_options(c))
    lab = data.train_labels[idx]
    for k in classes:
        mask = lab == k
        chosen = herding(feats[mask], m)
        memory[k] = [int(i) for i in idx[mask][chosen]]
    return memory


def class_balanced_finetune(model: Net, data: Dataset, memory: dict, c: Config, device, gen, phase: int,
                            checkpoint: EpochCheckpoint | None = None) -> None:
    """CBF (end of Sec. 3.5): only the classifier trains, on the exemplars of all seen classes."""
    idx = torch.tensor(memory_indices(memory), dtype=torch.long)
    stage = Stage(f"phase {phase} CBF", epochs=c.cbf_epochs, lr=c.cbf_lr, milestones=c.cbf_lr_milestones,
                  frozen_backbone=True, name="cbf")
    train_epochs(model, None, data, idx, model.head.parameters(), stage, c, device, gen, checkpoint)


def evaluate(model: Net, data: Dataset, memory: dict, ranges: list[range], c: Config, device) -> tuple[dict, dict]:
    """CNN and NME accuracy on all seen classes, old/new split, per-phase groups, confusions."""
    n_seen, n_old = ranges[-1].stop, ranges[-1].start
    test_idx = torch.nonzero(data.test_labels < n_seen).flatten()
    y = data.test_labels[test_idx].numpy()
    options = _extract_options(c)
    feats, logits = extract(model, data.test, test_idx, device, c.eval_batch_size, **options)
    ex_idx = torch.tensor(memory_indices(memory), dtype=torch.long)
    ex_feats, _ = extract(model, data.train, ex_idx, device, c.eval_batch_size, **options)
    second = None  # the second view of each exemplar of the official code (nme_flip)
    if c.nme_flip != "none":
        second = extract(model, data.train, ex_idx, device, c.eval_batch_size, view=c.nme_flip, **options)[0]
    means = class_means(ex_feats, data.train_labels[ex_idx], n_seen, second)
    preds = {"cnn": logits[:, :n_seen].argmax(1).numpy(), "nme": nme_predict(feats, means).numpy()}
    row: dict = {}
    confusion = {}
    for clf, p in preds.items():
        row[f"acc_{clf}"] = accuracy(p, y)
        row[f"acc_old_{clf}"], row[f"acc_new_{clf}"] = split_accuracy(p, y, n_old)
        row[f"group_acc_{clf}"] = group_accuracies(p, y, ranges)
        confusion[clf] = confusion_matrix(p, y, n_seen)
    return row, confusion


# --------------------------------------------------------------------------- the run
def run_incremental(config: Config, out_dir, on_epoch=None) -> dict:
    """Run (or resume, or just load) the whole class-incremental sequence into `out_dir`.
    `on_epoch(desc, epoch, epochs)`, when given, is called after every training epoch (the study's
    workers report their progress with it); it observes a run, never changes it."""
    c = config
    world = launched_world_size()
    if c.batch_size % world:  # each rank takes an equal slice of every global batch
        raise ConfigError(f"batch_size = {c.batch_size} does not divide by the {world} processes of torchrun; "
                          f"the global batch is split evenly over the ranks, so choose a multiple of {world}")
    out = Path(out_dir)
    res.prepare_out_dir(out, config)
    res.check_final_checkpoint(out)
    if res.is_complete(out):
        return res.load_metrics(out)
    device = dist_setup(resolve_device(c.device), c.dist_timeout_minutes)  # under torchrun: join the group
    check_amp(c.amp, device)
    set_deterministic(c.deterministic, device)
    if c.device == "auto" and is_main() and (unusable := unusable_gpu()):
        from .costs import cpu_instead_of_gpu, run_cost
        print(f"warning: {unusable}; this run's {cpu_instead_of_gpu([(c, sum(run_cost(c)))])}", file=sys.stderr)
    data = load_dataset(c)
    ranges = phase_classes(phase_sizes(len(data.class_names), c.base_classes, c.phases))
    if c.memory_total is not None and c.memory_total < ranges[-1].stop:
        raise ConfigError(f"memory budget memory_total (R_total) = {c.memory_total} is below the "
                          f"{ranges[-1].stop} classes; it must hold at least one exemplar per class")
    torch.manual_seed(phase_seed(c.seed, 0))  # the run seed sets the initialisation
    model = build_model(c.resolved_model, len(ranges[0]), c.cosine_normalization, c.resolved_last_relu, c.eta_init)
    memory: dict = {}
    history: list = []
    start = 0
    state = res.latest_checkpoint(out)
    if state is not None:
        model = build_model(c.resolved_model, state["num_classes"], c.cosine_normalization,
                            c.resolved_last_relu, c.eta_init)
        model.load_state_dict(state["model"])
        memory, history, start = state["memory"], state["history"], state["phase"] + 1
    model.to(device=device, memory_format=torch.channels_last)
    if world_size() > 1 and device.type == "cuda":
        # BatchNorm over the global batch, as on the paper's single GPU (see lucir.distributed)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    run_started = time.time()
    # The state inside the phase in progress (config checkpoint_every), read once: only the first
    # phase of this call can have one. Rank 0 reads it and decides for every rank.
    epoch_file = res.epoch_checkpoint_path(out)
    resume = share(res.load_state(epoch_file, f"phase {start}") if is_main() else None)
    for t in range(start, len(ranges)):
        torch.manual_seed(phase_seed(c.seed, t))
        gen = torch.Generator().manual_seed(phase_seed(c.seed, t))
        classes = ranges[t]
        lam = 0.0
        ckpt = EpochCheckpoint(epoch_file, c.checkpoint_every, t, resume if t == start else None, on_epoch)
        ckpt.context = {"memory": memory, "history": history}
        if t == 0:
            cache = base_cache_path(c, len(classes))
            # Runs sharing this base phase take turns: the first trains and saves it, the others
            # wait on the lock beside the cache file, then load it. A base phase trained for the
            # cache keeps its epoch checkpoint beside the cache, so whichever run takes it on next
            # goes on from there.
            lock = res.locked(cache.with_name(cache.name + ".lock")) if c.cache_base and is_main() \
                else contextlib.nullcontext()
            with lock:
                if c.cache_base and share(cache.exists()):  # rank 0 decides for every rank
                    # read as a checkpoint: a damaged cache file is one line naming it
                    model.load_state_dict(res.load_state(cache, "the base phase (every run sharing it)"))
                else:
                    if c.cache_base:
                        partial = base_partial_path(cache)
                        ckpt = EpochCheckpoint(partial, c.checkpoint_every, 0,
                                               share(res.load_state(partial, "the base phase") if is_main() else None),
                                               on_epoch)
                    train_base(model, data, classes, c, device, gen, checkpoint=ckpt)
                    if c.cache_base and is_main():
                        res.atomic_write(cache, lambda p: Path(p).write_bytes(res.state_bytes(model.state_dict())))
                        ckpt.remove()
        elif ckpt.stage == "cbf":  # killed in the class-balanced finetune: training and herding were done
            merge_head(add_classes(model, len(classes)))  # the shape its saved weights fit
            memory, lam = ckpt.resume["memory"], phase_lambda(c, classes)
        else:
            lam = train_incremental(model, data, classes, memory, c, device, gen, t, checkpoint=ckpt)
        if ckpt.stage != "cbf":
            # herding and evaluation run on every rank, each extracting its block of the features
            # (see extract); share() gives every rank rank 0's results
            memory = share(update_memory(model, data, classes, memory, c, device))
        if c.class_balanced_finetune and t > 0:
            ckpt.context["memory"] = memory
            class_balanced_finetune(model, data, memory, c, device, gen, t, checkpoint=ckpt)
        row, confusion = evaluate(model, data, memory, ranges[: t + 1], c, device)
        entry = None
        if is_main():
            entry = {"phase": t, "classes_seen": classes.stop, "new_classes": len(classes), **row,
                     "lambda": lam, "eta": float(model.head.eta.detach()) if model.cosine else None,
                     "exemplars": sum(len(v) for v in memory.values()), "seconds": time.time() - ckpt.tic}
        history.append(share(entry))
        metrics = summarize(history, complete=(t == len(ranges) - 1), data=data)
        if is_main():
            res.save_array(out / f"confusion_phase{t}.npy", confusion["cnn"])
            res.save_array(out / f"confusion_nme_phase{t}.npy", confusion["nme"])
            res.save_npz(out / f"weight_norms_phase{t}.npz", **weight_norms(model))
            # the checkpoint first: metrics.json (and its "complete") vouches for files already written
            res.save_checkpoint(out, t, {"phase": t, "num_classes": classes.stop, "memory": memory, "history": history,
                                         "model": {k: v.cpu() for k, v in model.state_dict().items()}})
            res.write_metrics(out, metrics)
            epoch_file.unlink(missing_ok=True)  # the phase checkpoint now holds everything it held
    if start >= len(ranges) and is_main():  # every phase was checkpointed, metrics.json not written after the last
        res.write_metrics(out, summarize(history, complete=True, data=data))
        epoch_file.unlink(missing_ok=True)
    barrier()  # rank 0's files are complete before any rank reads them
    metrics = res.load_metrics(out)
    metrics.setdefault("wall_seconds_this_call", time.time() - run_started)
    return metrics


def summarize(history: list, complete: bool, data: Dataset) -> dict:
    """metrics.json: per-phase rows plus the single numbers of Sec. 4.1."""
    out = {"phases": history, "complete": complete, "class_order": data.order,
           "class_names": data.class_names, "data_source": data.source}
    for clf in ("cnn", "nme"):
        accs = [p[f"acc_{clf}"] for p in history]
        out[f"avg_incremental_accuracy_{clf}"] = average_incremental_accuracy(accs)
        out[f"final_accuracy_{clf}"] = accs[-1]
        out[f"forgetting_{clf}"] = forgetting([p[f"group_acc_{clf}"] for p in history])
    out["train_seconds"] = float(np.sum([p["seconds"] for p in history]))
    if world_size() > 1:
        out["world_size"] = world_size()
    return out
