"""Exemplar memory as data: herding (iCaRL), per-class or total budgets, NME class means."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def herding(features: torch.Tensor, m: int) -> list[int]:
    """Indices of the m exemplars, in the order chosen (iCaRL herding, Sec. 4.1).

    Features are l2-normalised; step k picks the sample (not yet chosen) that brings the mean
    of the chosen normalised features closest to the class mean of normalised features."""
    f = F.normalize(torch.as_tensor(features).double(), dim=1)
    mu = f.mean(0)
    m = min(m, len(f))
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(f), dtype=torch.bool)
    for k in range(1, m + 1):
        dist = (mu - (running + f) / k).norm(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += f[i]
    return chosen


def exemplars_per_class(n_seen: int, per_class: int, total: int | None) -> int:
    """Exemplars per class: R_per, or R_total // classes seen for a fixed total budget."""
    if total is None:
        return per_class
    return max(1, total // n_seen)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                flipped_features: torch.Tensor | None = None) -> torch.Tensor:
    """NME prototypes: per class, the mean of the l2-normalised exemplar features (averaged
    with those of a second view of the images when given, as the official code does; see
    config `nme_flip`), renormalised."""
    f = F.normalize(features, dim=1)
    if flipped_features is not None:
        f = (f + F.normalize(flipped_features, dim=1)) / 2
    means = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device)
    means.index_add_(0, labels.to(f.device), f)
    counts = torch.bincount(labels.to(f.device), minlength=num_classes).clamp(min=1)
    return F.normalize(means / counts[:, None], dim=1)


def nme_predict(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Nearest mean of exemplars: the class whose normalised mean is closest to the
    normalised feature."""
    return torch.cdist(F.normalize(features, dim=1), means).argmin(1)
