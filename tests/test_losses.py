"""The losses of lucir/losses.py against numbers worked out by hand (math.exp / math.log on
plain Python floats, never the same torch function), plus the invariants each equation implies."""
import math

import pytest
import torch

from lucir import losses


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------- Eq. 1
def test_cross_entropy_by_hand():
    logits = t([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    targets = torch.tensor([2, 0])
    row0 = -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3)))
    row1 = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(-1) + math.exp(0)))
    assert losses.cross_entropy(logits, targets).item() == pytest.approx((row0 + row1) / 2, rel=1e-12)


# --------------------------------------------------------------------------- Eq. 2
def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def _tau(p, n_old, omega):
    """tau_i(v) = v_i^(1/Omega) / sum_j v_j^(1/Omega), over the old classes (Eq. 2)."""
    r = [x ** (1 / omega) for x in p[:n_old]]
    return [x / sum(r) for x in r]


def _lwf_by_hand(logits, old_logits, omega=2.0):
    """-sum_{i in Co} tau_i(p*) log tau_i(p), with p = softmax over ALL current classes and
    p* = softmax of the old model over the old classes; mean over the batch."""
    total = 0.0
    for z, z_old in zip(logits, old_logits):
        n_old = len(z_old)
        tp = _tau(_softmax(z), n_old, omega)
        tp_star = _tau(_softmax(z_old), n_old, omega)
        total += -sum(a * math.log(b) for a, b in zip(tp_star, tp))
    return total / len(logits)


LWF_LOGITS = [[2.0, -1.0, 0.5], [0.3, 0.8, 3.0]]  # 2 old classes + 1 new class
LWF_OLD = [[1.0, 0.0], [-0.5, 1.5]]


def test_lwf_distillation_by_hand():
    got = losses.lwf_distillation(t(LWF_LOGITS), t(LWF_OLD), temperature=2.0).item()
    assert got == pytest.approx(_lwf_by_hand(LWF_LOGITS, LWF_OLD, 2.0), rel=1e-10)
    # the default temperature is the paper's Omega = 2
    assert losses.lwf_distillation(t(LWF_LOGITS), t(LWF_OLD)).item() == pytest.approx(got, rel=1e-12)


def test_lwf_distillation_other_temperature_by_hand():
    got = losses.lwf_distillation(t(LWF_LOGITS), t(LWF_OLD), temperature=3.0).item()
    assert got == pytest.approx(_lwf_by_hand(LWF_LOGITS, LWF_OLD, 3.0), rel=1e-10)
    assert got != pytest.approx(_lwf_by_hand(LWF_LOGITS, LWF_OLD, 2.0), rel=1e-3)


def test_lwf_distillation_single_sample_numbers():
    # z = (0, ln 4, anything): tau over the 2 old classes of softmax(z) with Omega = 2 is
    # (1, 2) / 3, whatever the new-class logit. Old model z* = (ln 9, 0) gives tau(p*) = (3, 1) / 4.
    # loss = -(3/4 log(1/3) + 1/4 log(2/3)).
    expected = -(0.75 * math.log(1 / 3) + 0.25 * math.log(2 / 3))
    for new_logit in (-5.0, 0.0, 7.0):
        z = t([[0.0, math.log(4), new_logit]])
        got = losses.lwf_distillation(z, t([[math.log(9), 0.0]])).item()
        assert got == pytest.approx(expected, rel=1e-10)


def test_lwf_distillation_uses_old_columns_only_and_batch_mean():
    z, z_old = t(LWF_LOGITS), t(LWF_OLD)
    base = losses.lwf_distillation(z, z_old)
    z2 = z.clone()
    z2[:, 2] += 10.0  # the new class column does not enter Eq. 2 (tau renormalises over Co)
    assert losses.lwf_distillation(z2, z_old).item() == pytest.approx(base.item(), rel=1e-10)
    per_sample = [losses.lwf_distillation(z[i:i + 1], z_old[i:i + 1]).item() for i in range(2)]
    assert base.item() == pytest.approx(sum(per_sample) / 2, rel=1e-12)


def test_lwf_distillation_minimum_is_entropy_of_soft_targets():
    # cross-entropy form: -sum q log r >= -sum q log q, equality iff r = q
    z_old = t([[1.0, -2.0, 0.5]])
    q = _tau(_softmax([1.0, -2.0, 0.5]), 3, 2.0)
    entropy = -sum(a * math.log(a) for a in q)
    same = losses.lwf_distillation(torch.cat([z_old, t([[4.0]])], 1), z_old).item()
    assert same == pytest.approx(entropy, rel=1e-10)
    other = losses.lwf_distillation(t([[0.0, 0.0, 0.0, 4.0]]), z_old).item()
    assert other > entropy + 1e-3


# --------------------------------------------------------------------------- Eq. 5
def test_cosine_distillation_by_hand():
    cos = t([[0.5, -0.2, 0.9], [0.1, 0.4, -0.3]])  # 2 old classes + 1 new
    old = t([[0.3, 0.1], [0.1, 0.0]])
    # sample 0: |0.5-0.3| + |-0.2-0.1| = 0.5; sample 1: 0 + 0.4 = 0.4; mean 0.45
    assert losses.cosine_distillation(cos, old).item() == pytest.approx(0.45, abs=1e-12)


def test_cosine_distillation_zero_when_old_scores_kept():
    old = t([[0.3, -0.7], [0.2, 0.9]])
    cos = torch.cat([old, t([[0.99], [-0.99]])], 1)  # new-class scores are free
    assert losses.cosine_distillation(cos, old).item() == 0.0


# --------------------------------------------------------------------------- Eq. 6
def test_less_forget_identical_and_positively_scaled_features_are_zero():
    f = t([[1.0, 2.0, -3.0], [0.5, 0.0, 4.0]])
    assert losses.less_forget(f, f).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.less_forget(3.7 * f, f).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.less_forget(f, t([[0.01], [100.0]]) * f).item() == pytest.approx(0.0, abs=1e-12)


def test_less_forget_opposite_is_two_orthogonal_is_one():
    f = t([[1.0, 2.0, -3.0]])
    assert losses.less_forget(-f, f).item() == pytest.approx(2.0, abs=1e-12)
    assert losses.less_forget(t([[1.0, 0.0]]), t([[0.0, 5.0]])).item() == pytest.approx(1.0, abs=1e-12)


def test_less_forget_by_hand_and_mean_over_batch():
    # cos((3,4), (1,0)) = 3/5 -> 0.4; identical -> 0; opposite -> 2; mean = 2.4 / 3 = 0.8
    f = t([[3.0, 4.0], [1.0, 1.0], [2.0, -1.0]])
    f_old = t([[1.0, 0.0], [1.0, 1.0], [-2.0, 1.0]])
    assert losses.less_forget(f, f_old).item() == pytest.approx(0.8, abs=1e-12)
    assert losses.less_forget(f, f_old).item() == pytest.approx(losses.less_forget(f_old, f).item(), abs=1e-12)


# --------------------------------------------------------------------------- Eq. 7
def test_adaptive_lambda_code_direction_is_default():
    # official code: lambda_base * sqrt(|Co| / |Cn|); CIFAR B50, 5 phases: 5 * sqrt(50 / 10)
    assert losses.adaptive_lambda(5.0, 50, 10) == pytest.approx(5 * math.sqrt(5), rel=1e-12)
    assert losses.adaptive_lambda(5.0, 50, 10) == pytest.approx(11.180339887, rel=1e-9)
    assert losses.adaptive_lambda(5.0, 50, 10, "code") == losses.adaptive_lambda(5.0, 50, 10)
    # later phases: |Co| is the old classes before the new ones are added
    assert losses.adaptive_lambda(5.0, 90, 10) == pytest.approx(15.0, rel=1e-12)
    assert losses.adaptive_lambda(10.0, 500, 100) == pytest.approx(10 * math.sqrt(5), rel=1e-12)


def test_adaptive_lambda_paper_direction_is_inverse_ratio():
    assert losses.adaptive_lambda(5.0, 50, 10, "paper") == pytest.approx(5 * math.sqrt(10 / 50), rel=1e-12)
    assert losses.adaptive_lambda(5.0, 50, 50, "paper") == pytest.approx(5.0, rel=1e-12)


def test_adaptive_lambda_rejects_bad_input():
    with pytest.raises(ValueError):
        losses.adaptive_lambda(5.0, 0, 10)
    with pytest.raises(ValueError):
        losses.adaptive_lambda(5.0, 10, 0)
    with pytest.raises(ValueError):
        losses.adaptive_lambda(5.0, 50, 10, "printed")


# --------------------------------------------------------------------------- Eq. 8
# 2 old classes (0, 1) and 2 new (2, 3); cosine scores before eta.
MR_SCORES = [[0.9, 0.95, 0.6, 0.3],   # old anchor, class 0: negatives are the NEW scores 0.6, 0.3
             [0.2, 0.4, 0.1, 0.5],    # old anchor, class 1: negatives 0.5, 0.1
             [0.9, 0.9, 0.9, -0.1]]   # new-class sample (class 3): not an anchor
MR_TARGETS = [0, 1, 3]


def test_margin_ranking_by_hand_k2():
    # pairs: max(0.5 - 0.9 + 0.6, 0) = 0.2, max(0.5 - 0.9 + 0.3, 0) = 0,
    #        max(0.5 - 0.4 + 0.5, 0) = 0.6, max(0.5 - 0.4 + 0.1, 0) = 0.2; mean over 4 pairs
    got = losses.margin_ranking(t(MR_SCORES), torch.tensor(MR_TARGETS), n_old=2, margin=0.5, k=2)
    assert got.item() == pytest.approx((0.2 + 0.0 + 0.6 + 0.2) / 4, abs=1e-12)


def test_margin_ranking_by_hand_k1_and_other_margin():
    scores, targets = t(MR_SCORES), torch.tensor(MR_TARGETS)
    # K = 1: hardest new class only: 0.2 and 0.6
    assert losses.margin_ranking(scores, targets, 2, 0.5, 1).item() == pytest.approx(0.4, abs=1e-12)
    # m = 0.2, K = 2: max(-0.1,0)=0, 0, max(0.2-0.4+0.5,0)=0.3, max(-0.1,0)=0 -> 0.3 / 4
    assert losses.margin_ranking(scores, targets, 2, 0.2, 2).item() == pytest.approx(0.075, abs=1e-12)


def test_margin_ranking_defaults_are_paper_values():
    scores, targets = t(MR_SCORES), torch.tensor(MR_TARGETS)
    assert losses.margin_ranking(scores, targets, 2).item() == pytest.approx(0.25, abs=1e-12)  # m=0.5, K=2


def test_margin_ranking_k_larger_than_new_classes_uses_all_new():
    scores, targets = t(MR_SCORES), torch.tensor(MR_TARGETS)
    assert losses.margin_ranking(scores, targets, 2, 0.5, 5).item() == pytest.approx(0.25, abs=1e-12)


def test_margin_ranking_zero_and_differentiable_without_old_samples():
    scores = t([[0.1, 0.2, 0.9, 0.3]]).requires_grad_(True)
    loss = losses.margin_ranking(scores, torch.tensor([2]), n_old=2)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert scores.grad is not None and torch.all(scores.grad == 0)


def test_margin_ranking_zero_without_new_class_columns():
    """Scores of old classes only (no new class to rank against): zero, not the mean of nothing."""
    loss = losses.margin_ranking(t([[0.1, 0.9], [0.4, 0.2]]), torch.tensor([0, 1]), n_old=2)
    assert loss.item() == 0.0


def test_margin_ranking_zero_when_margin_satisfied():
    scores = t([[0.9, 0.0, 0.3, 0.39], [-0.2, 0.8, 0.2, 0.1]])  # every gap > 0.5
    assert losses.margin_ranking(scores, torch.tensor([0, 1]), n_old=2).item() == 0.0


def test_margin_ranking_gradient_pushes_positive_up_and_negatives_down():
    scores = t(MR_SCORES).requires_grad_(True)
    losses.margin_ranking(scores, torch.tensor(MR_TARGETS), n_old=2).backward()
    g = scores.grad
    assert g[0, 0] < 0 and g[0, 2] > 0 and g[0, 3] == 0  # only the active pair of anchor 0
    assert g[0, 1] == 0  # an old non-target class is never a negative
    assert torch.all(g[2] == 0)  # new-class samples are not anchors
