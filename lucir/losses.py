"""The losses of the paper as pure functions of tensors (Eq. 1, 2, 5, 6, 7, 8; their sum, Eq. 9,
is lucir.trainer.batch_loss).

No hidden state, no hooks: the model returns cosine scores and features, the trainer passes
them here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 1: cross-entropy over all seen classes, mean over the batch. For LUCIR the logits
    are the eta-scaled cosine scores of Eq. 4."""
    return F.cross_entropy(logits, targets)


def lwf_distillation(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Eq. 2: -sum_{i in Co} tau_i(p*) log tau_i(p), tau_i(v) = v_i^(1/Omega) / sum_j v_j^(1/Omega),
    over the old classes (the `old_logits.shape[1]` first columns), mean over the batch.

    With p = softmax(z), tau(p) restricted to the old classes equals softmax(z_old / Omega),
    so this is a temperature-Omega cross-entropy between the old and the new model."""
    n_old = old_logits.shape[1]
    target = F.softmax(old_logits / temperature, dim=1)
    log_pred = F.log_softmax(logits[:, :n_old] / temperature, dim=1)
    return -(target * log_pred).sum(1).mean()


def cosine_distillation(cos_scores: torch.Tensor, old_cos_scores: torch.Tensor) -> torch.Tensor:
    """Eq. 5 (ablation "CN"): sum over the old classes of |<theta_i, f(x)> - <theta*_i, f*(x)>|
    on cosine scores before eta, mean over the batch. (The leading minus sign printed in the
    paper would reward disagreement; we read it as a typesetting slip, see README.)"""
    n_old = old_cos_scores.shape[1]
    return (cos_scores[:, :n_old] - old_cos_scores).abs().sum(1).mean()


def less_forget(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """Eq. 6: 1 - <normalize(f*(x)), normalize(f(x))> on every sample, mean over the batch
    (official code: CosineEmbeddingLoss with target 1)."""
    return (1 - F.cosine_similarity(features, old_features, dim=1)).mean()


def adaptive_lambda(lambda_base: float, n_old: int, n_new: int, direction: str = "code") -> float:
    """Eq. 7, the weight of L_dis^G. The official code (which produced the published numbers)
    uses lambda_base * sqrt(|Co| / |Cn|); the paper prints lambda_base * sqrt(|Cn| / |Co|)
    (direction="paper"). |Co| counts the old classes only, before the new ones are added."""
    if n_old <= 0 or n_new <= 0:
        raise ValueError(f"adaptive_lambda needs old and new classes, got n_old={n_old}, n_new={n_new}")
    if direction == "code":
        return lambda_base * math.sqrt(n_old / n_new)
    if direction == "paper":
        return lambda_base * math.sqrt(n_new / n_old)
    raise ValueError(f"direction must be 'code' or 'paper', got {direction!r}")


def margin_ranking(cos_scores: torch.Tensor, targets: torch.Tensor, n_old: int,
                   margin: float = 0.5, k: int = 2) -> torch.Tensor:
    """Eq. 8 on cosine scores before eta: for each old-class sample (anchor) of the batch,
    max(m - <theta(x), f(x)> + <theta_k, f(x)>, 0) against the top-K new-class scores.
    Returns the mean over all (anchor, hard negative) pairs, as the official code does (Eq. 8
    summed over k, averaged over anchors, divided by K); zero when the batch has no old sample
    (or the scores have no new-class column)."""
    n_new = cos_scores.shape[1] - n_old
    if n_new <= 0:  # no new-class column: a fact of the shapes, not of the data
        return cos_scores.sum() * 0.0  # keeps the graph and the device
    # Every row is computed and the non-anchors are masked out, so there is no data-dependent
    # branch and no boolean indexing (either would wait for the GPU). The anchors' pairs get the
    # same gradients as the mean over the anchors alone; no anchor gives exactly 0.
    anchors = (targets < n_old).unsqueeze(1)                              # B, 1
    positive = cos_scores.gather(1, targets.unsqueeze(1))                 # <theta(x), f(x)>
    hard_negatives = cos_scores[:, n_old:].topk(min(k, n_new), dim=1).values  # top-K new classes
    pairs = torch.where(anchors, F.relu(margin - positive + hard_negatives), 0.0)
    count = (anchors.sum() * hard_negatives.shape[1]).clamp(min=1).to(pairs.dtype)
    return pairs.sum() / count
