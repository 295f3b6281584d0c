"""Evaluation metrics as small pure functions: accuracy, old/new split, confusion matrix,
forgetting, average incremental accuracy (Sec. 4.1)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix as sk_confusion_matrix


def accuracy(pred, target) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    pred, target = np.asarray(pred), np.asarray(target)
    return float((pred == target).mean()) if len(target) else float("nan")


def split_accuracy(pred, target, n_old: int) -> tuple[float, float]:
    """(accuracy on old classes (label < n_old), accuracy on new classes); nan where empty."""
    pred, target = np.asarray(pred), np.asarray(target)
    old = target < n_old
    return accuracy(pred[old], target[old]), accuracy(pred[~old], target[~old])


def confusion_matrix(pred, target, num_classes: int) -> np.ndarray:
    """counts[i, j] = test samples of class i predicted as class j (scikit-learn's, over the
    labels 0 .. num_classes - 1; a label outside them is an error, not dropped as sklearn would)."""
    pred, target = np.asarray(pred, dtype=np.int64), np.asarray(target, dtype=np.int64)
    if len(target) == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    if min(pred.min(), target.min()) < 0 or max(pred.max(), target.max()) >= num_classes:
        raise ValueError(f"confusion_matrix: labels must lie in 0..{num_classes - 1}")
    return sk_confusion_matrix(target, pred, labels=np.arange(num_classes)).astype(np.int64)


def average_incremental_accuracy(accuracies) -> float:
    """Mean of the accuracy curve, base phase included (Sec. 4.1, from iCaRL)."""
    acc = np.asarray(list(accuracies), dtype=float)
    if acc.size == 0:
        raise ValueError("average_incremental_accuracy needs at least one accuracy")
    return float(acc.mean())


def forgetting(group_accuracy: list[list[float]]) -> float:
    """Average forgetting at the last phase: for each group of classes learnt before the last
    phase, its best accuracy in an earlier phase minus its accuracy now, averaged over groups.

    `group_accuracy[t][g]` is the accuracy on the classes of phase g after phase t (g <= t)."""
    last = len(group_accuracy) - 1
    if last < 1:
        return 0.0
    drops = [max(group_accuracy[t][g] for t in range(g, last)) - group_accuracy[last][g] for g in range(last)]
    return float(np.mean(drops))


def group_accuracies(pred, target, bounds: list[range]) -> list[float]:
    """Accuracy on the classes of each phase seen so far (`bounds` are label ranges)."""
    pred, target = np.asarray(pred), np.asarray(target)
    out = []
    for r in bounds:
        mask = (target >= r.start) & (target < r.stop)
        out.append(accuracy(pred[mask], target[mask]))
    return out
