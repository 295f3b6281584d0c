"""run_incremental: the base phase and every incremental phase, as plain functions.

Per phase t: freeze a copy of the model (the old model), grow the head (imprinting the new
cosine weights), train with the loss of Eq. 9 (or its baselines), select exemplars by herding,
optionally finetune on a class-balanced set, evaluate CNN and NME, write a checkpoint.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import losses
from . import results as res
from .config import Config, ConfigError, phase_sizes
from .data import Dataset, data_root, load_dataset, phase_classes
from .memory import class_means, exemplars_per_class, herding, nme_predict
from .metrics import (accuracy, average_incremental_accuracy, confusion_matrix, forgetting,
                      group_accuracies, split_accuracy)
from .models import Net, add_classes, build_model, imprint_weights, merge_head, weight_norms


class TrainingDiverged(RuntimeError):
    """A loss turned NaN or infinite; checkpoints of finished phases are kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here; use device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None


def phase_seed(seed: int, phase: int) -> int:
    """Each phase draws from its own seed, so a resumed run repeats an uninterrupted one."""
    return seed * 1000 + phase


# --------------------------------------------------------------------------- features
@torch.no_grad()
def extract(model: Net, images, idx: torch.Tensor, device, batch_size: int, view: str = "none"):
    """(features, logits) of images `idx` with test-time transforms (and `view`), in eval mode."""
    model.eval()
    feats, logits = [], []
    for chunk in idx.split(batch_size):
        out = model(images.batch(chunk, device, train=False, view=view))
        feats.append(out.features.float().cpu())
        logits.append(out.logits.float().cpu())
    return torch.cat(feats), torch.cat(logits)


# --------------------------------------------------------------------------- the batch loss
def batch_loss(c: Config, out, old, targets: torch.Tensor, n_old: int, lam: float) -> dict:
    """The loss terms of one batch; their sum is Eq. 9 for LUCIR (or the baseline's loss).
    `old` is the frozen old model's output on the same batch, None without distillation."""
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


def train_epochs(model: Net, old_model: Net | None, data: Dataset, train_idx: torch.Tensor, c: Config,
                 params, epochs: int, lr: float, milestones, n_old: int, lam: float, device,
                 generator: torch.Generator, desc: str, frozen_backbone: bool = False) -> dict:
    """SGD over `train_idx` for `epochs` epochs, lr stepped per epoch at `milestones`."""
    opt = torch.optim.SGD(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=c.lr_gamma)
    labels = data.train_labels
    bar = tqdm(range(epochs), desc=desc, disable=not c.progress, leave=True, dynamic_ncols=True)
    summary: dict = {}
    for epoch in bar:
        model.train()
        if frozen_backbone:
            model.backbone.eval()
        sums: dict = {}  # running sums stay on the device: no host sync inside the batch loop
        correct = torch.zeros((), device=device)
        perm = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for batch in perm.split(c.batch_size):
            x = data.train.batch(batch, device, train=True, generator=generator)
            y = labels[batch].to(device)
            out = model(x)
            old = None
            if old_model is not None:
                with torch.no_grad():
                    old = old_model(x)
            terms = batch_loss(c, out, old, y, n_old, lam)
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach() * len(batch)
            correct += (out.logits.argmax(1) == y).sum()
        sched.step()
        summary = {k: float(v) / len(perm) for k, v in sums.items()}
        bad = [k for k, v in summary.items() if not np.isfinite(v)]
        if bad:
            raise TrainingDiverged(f"loss term {', '.join(bad)} became {summary[bad[0]]} in {desc}, epoch "
                                   f"{epoch + 1}; checkpoints of finished phases are kept")
        summary["train_acc"] = float(correct) / len(perm)
        bar.set_postfix({k: f"{v:.3f}" for k, v in summary.items()}, refresh=False)
    bar.close()
    return summary


# --------------------------------------------------------------------------- phases
def base_cache_path(c: Config, first_classes: int) -> Path:
    """Cache file of the base-phase model, keyed by everything that phase depends on."""
    key = {k: getattr(c, k) for k in (
        "dataset", "num_classes", "train_per_class", "class_order_seed", "seed", "image_size",
        "cosine_normalization", "eta_init", "lr", "lr_gamma", "batch_size", "momentum", "weight_decay")}
    key |= {"model": c.resolved_model, "last_relu": c.resolved_last_relu, "first_classes": first_classes,
            "epochs": c.base_epochs or c.epochs, "milestones": list(c.base_lr_milestones or c.lr_milestones),
            "format": 1}
    if c.dataset != "synthetic":
        key["data"] = str(data_root(c).resolve())
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:20]
    root = Path(c.cache_dir or os.environ.get("LUCIR_CACHE") or Path.home() / ".cache" / "lucir")
    return root / "base" / f"{c.dataset}-{c.resolved_model}-{digest}.pt"


def train_base(model: Net, data: Dataset, classes: range, c: Config, device, gen) -> None:
    idx = torch.nonzero(data.train_labels < classes.stop).flatten()
    train_epochs(model, None, data, idx, c, model.parameters(), c.base_epochs or c.epochs, c.lr,
                 c.base_lr_milestones or c.lr_milestones, 0, 0.0, device, gen,
                 desc=f"phase 0 (base, {len(classes)} classes)")


def train_incremental(model: Net, data: Dataset, classes: range, memory: dict, c: Config, device, gen,
                      phase: int) -> float:
    """One incremental phase; returns the lambda used. The model's head is grown here."""
    n_old, n_new = classes.start, len(classes)
    old_model = None
    if c.distillation:
        old_model = copy.deepcopy(model).eval()
        for p in old_model.parameters():
            p.requires_grad_(False)
    new_weight = None
    if model.cosine and c.imprint:
        idx = torch.nonzero((data.train_labels >= n_old) & (data.train_labels < classes.stop)).flatten()
        feats, _ = extract(model, data.train, idx, device, c.eval_batch_size)
        lab = data.train_labels[idx]
        new_weight = imprint_weights([feats[lab == k] for k in classes], model.head.weight.detach().float().cpu())
    add_classes(model, n_new, new_weight)
    params = [p for p in model.parameters()]
    if model.cosine and c.less_forget:
        # Sec. 3.3: old-class embeddings fixed (official: lr 0 and weight decay 0 for fc1).
        model.head.old_weight.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
    lam = 0.0
    if c.distillation:
        lam = losses.adaptive_lambda(c.lambda_base, n_old, n_new, c.lambda_direction) if c.adaptive_weight \
            else c.lambda_base
    if c.joint_training:
        idx = torch.nonzero(data.train_labels < classes.stop).flatten()
    else:
        new_idx = torch.nonzero((data.train_labels >= n_old) & (data.train_labels < classes.stop)).flatten()
        idx = torch.cat([new_idx, torch.tensor(memory_indices(memory), dtype=torch.long)])
    train_epochs(model, old_model, data, idx, c, params, c.epochs, c.lr, c.lr_milestones, n_old, lam, device,
                 gen, desc=f"phase {phase} ({n_old}+{n_new} classes)")
    merge_head(model)
    return lam


def memory_indices(memory: dict) -> list[int]:
    return [i for cls in sorted(memory) for i in memory[cls]]


def update_memory(model: Net, data: Dataset, classes: range, memory: dict, c: Config, device) -> dict:
    """Herding for the new classes; with a fixed total budget, old classes keep a prefix."""
    m = exemplars_per_class(classes.stop, c.memory_per_class, c.memory_total)
    memory = {k: v[:m] for k, v in memory.items()}
    idx = torch.nonzero((data.train_labels >= classes.start) & (data.train_labels < classes.stop)).flatten()
    feats, _ = extract(model, data.train, idx, device, c.eval_batch_size)
    lab = data.train_labels[idx]
    for k in classes:
        mask = lab == k
        chosen = herding(feats[mask], m)
        memory[k] = [int(i) for i in idx[mask][chosen]]
    return memory


def class_balanced_finetune(model: Net, data: Dataset, memory: dict, c: Config, device, gen, phase: int) -> None:
    """CBF (end of Sec. 3.5): only the classifier trains, on the exemplars of all seen classes."""
    idx = torch.tensor(memory_indices(memory), dtype=torch.long)
    train_epochs(model, None, data, idx, c, model.head.parameters(), c.cbf_epochs, c.cbf_lr,
                 c.cbf_lr_milestones, 0, 0.0, device, gen, desc=f"phase {phase} CBF", frozen_backbone=True)


def evaluate(model: Net, data: Dataset, memory: dict, ranges: list[range], c: Config, device) -> tuple[dict, dict]:
    """CNN and NME accuracy on all seen classes, old/new split, per-phase groups, confusions."""
    n_seen, n_old = ranges[-1].stop, ranges[-1].start
    test_idx = torch.nonzero(data.test_labels < n_seen).flatten()
    y = data.test_labels[test_idx].numpy()
    feats, logits = extract(model, data.test, test_idx, device, c.eval_batch_size)
    ex_idx = torch.tensor(memory_indices(memory), dtype=torch.long)
    ex_feats, _ = extract(model, data.train, ex_idx, device, c.eval_batch_size)
    second = None  # the second view of each exemplar of the official code (nme_flip)
    if c.nme_flip != "none":
        second = extract(model, data.train, ex_idx, device, c.eval_batch_size, view=c.nme_flip)[0]
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
def run_incremental(config: Config, out_dir) -> dict:
    """Run (or resume, or just load) the whole class-incremental sequence into `out_dir`."""
    out = Path(out_dir)
    res.prepare_out_dir(out, config)
    if res.is_complete(out):
        return res.load_metrics(out)
    c = config
    device = resolve_device(c.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
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
    run_started = time.time()
    for t in range(start, len(ranges)):
        tic = time.time()
        torch.manual_seed(phase_seed(c.seed, t))
        gen = torch.Generator().manual_seed(phase_seed(c.seed, t))
        classes = ranges[t]
        lam = 0.0
        if t == 0:
            cache = base_cache_path(c, len(classes))
            if c.cache_base and cache.exists():
                model.load_state_dict(torch.load(cache, map_location=device, weights_only=True))
            else:
                train_base(model, data, classes, c, device, gen)
                if c.cache_base:
                    res.atomic_write(cache, lambda p: torch.save(model.state_dict(), p))
        else:
            lam = train_incremental(model, data, classes, memory, c, device, gen, t)
        memory = update_memory(model, data, classes, memory, c, device)
        if c.class_balanced_finetune and t > 0:
            class_balanced_finetune(model, data, memory, c, device, gen, t)
        row, confusion = evaluate(model, data, memory, ranges[: t + 1], c, device)
        history.append({"phase": t, "classes_seen": classes.stop, "new_classes": len(classes), **row,
                        "lambda": lam, "eta": float(model.head.eta.detach()) if model.cosine else None,
                        "exemplars": sum(len(v) for v in memory.values()), "seconds": time.time() - tic})
        res.save_array(out / f"confusion_phase{t}.npy", confusion["cnn"])
        res.save_array(out / f"confusion_nme_phase{t}.npy", confusion["nme"])
        res.save_npz(out / f"weight_norms_phase{t}.npz", **weight_norms(model))
        metrics = summarize(history, complete=(t == len(ranges) - 1), data=data)
        res.write_metrics(out, metrics)
        res.save_checkpoint(out, t, {"phase": t, "num_classes": classes.stop, "memory": memory,
                                     "history": history, "model": {k: v.cpu() for k, v in model.state_dict().items()}})
    if start >= len(ranges):  # every phase was checkpointed but metrics.json was not marked complete
        res.write_metrics(out, summarize(history, complete=True, data=data))
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
    return out
