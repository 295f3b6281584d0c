"""Metrics against hand-written predictions and matrices."""
import math

import numpy as np
import pytest

from lucir.metrics import (accuracy, average_incremental_accuracy, confusion_matrix, forgetting,
                           group_accuracies, split_accuracy)

PRED = [0, 1, 2, 2, 3, 0, 3, 1]
TARGET = [0, 1, 1, 2, 3, 3, 3, 0]  # right: 0, 1, 3, 4, 6 -> 5 of 8


def test_accuracy_by_hand():
    assert accuracy(PRED, TARGET) == 5 / 8
    assert accuracy([1, 1], [1, 1]) == 1.0
    assert accuracy([0, 0], [1, 1]) == 0.0
    assert math.isnan(accuracy([], []))


def test_split_accuracy_by_hand():
    # old classes {0, 1}: targets at 0, 1, 2, 7 -> right at 0, 1 -> 2/4
    # new classes {2, 3}: targets at 3, 4, 5, 6 -> right at 3, 4, 6 -> 3/4
    assert split_accuracy(PRED, TARGET, n_old=2) == (0.5, 0.75)
    old, new = split_accuracy([0, 1], [0, 1], n_old=2)
    assert old == 1.0 and math.isnan(new)


def test_confusion_matrix_by_hand():
    expected = np.array([[1, 1, 0, 0],   # class 0: one right, one taken for 1
                         [0, 1, 1, 0],   # class 1: one right, one taken for 2
                         [0, 0, 1, 0],
                         [1, 0, 0, 2]])  # class 3: two right, one taken for 0
    m = confusion_matrix(PRED, TARGET, 4)
    assert m.dtype.kind == "i"
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == len(TARGET)
    assert np.trace(m) / m.sum() == accuracy(PRED, TARGET)


def test_confusion_matrix_counts_repeats_and_unseen_classes():
    m = confusion_matrix([2, 2, 2], [0, 0, 0], 5)
    assert m.shape == (5, 5)
    assert m[0, 2] == 3 and m.sum() == 3


def test_group_accuracies_by_hand():
    bounds = [range(0, 2), range(2, 3), range(3, 4)]
    # group {0,1}: 2/4; group {2}: 1/1; group {3}: 2/3
    assert group_accuracies(PRED, TARGET, bounds) == pytest.approx([0.5, 1.0, 2 / 3])


def test_forgetting_by_hand():
    # group_accuracy[t][g]: accuracy on the classes of phase g after phase t
    acc = [[0.8],
           [0.9, 0.6],
           [0.5, 0.7, 1.0]]
    # group 0: best before the last phase max(0.8, 0.9) = 0.9, now 0.5 -> 0.4
    # group 1: best 0.6, now 0.7 -> -0.1; the last group is not counted. Mean 0.15
    assert forgetting(acc) == pytest.approx(0.15)
    assert forgetting([[0.7], [0.4, 0.9]]) == pytest.approx(0.3)
    assert forgetting([[0.7]]) == 0.0


def test_average_incremental_accuracy_includes_base_phase():
    assert average_incremental_accuracy([0.8, 0.6, 0.4]) == pytest.approx(0.6)
    assert average_incremental_accuracy(iter([0.5])) == 0.5
    with pytest.raises(ValueError):
        average_incremental_accuracy([])
