"""Exemplar memory: herding on toy sets with a known answer, budgets, NME class means."""
import math

import torch

from lucir.memory import class_means, exemplars_per_class, herding, nme_predict


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# Five unit vectors at 0, +30, -30, +90, -90 degrees: the class mean is (1 + 2 cos 30) / 5 = 0.5464
# along x. Worked by hand (distance of the candidate running mean to the class mean):
#   pick 1: the 0-degree point, the one closest to the mean.
#   pick 2: (f0+f30)/2 = (0.933, 0.25) -> 0.456; (f0+f90)/2 = (0.5, 0.5) -> 0.502: +30 (index 1,
#           the first of the tie with -30).
#   pick 3: with -30: (0.911, 0) -> 0.364; with -90: (0.622, -0.167) -> 0.183: -90 (index 4).
#   pick 4: with -30: (0.683, -0.25) -> 0.285; with +90: (0.467, 0.125) -> 0.148: +90 (index 3).
#   pick 5: the last one, -30 (index 2).
CIRCLE = torch.tensor([unit(0), unit(30), unit(-30), unit(90), unit(-90)])


def test_herding_order_on_circle_by_hand():
    assert herding(CIRCLE, 5) == [0, 1, 4, 3, 2]
    assert herding(CIRCLE, 2) == [0, 1]


def test_herding_accepts_numpy_features():
    assert herding(CIRCLE.numpy(), 5) == [0, 1, 4, 3, 2]


def test_herding_first_pick_is_closest_to_mean():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(30, 8, generator=g) + 2.0
    f = feats / feats.norm(dim=1, keepdim=True)
    mean = f.mean(0)
    closest = int(min(range(30), key=lambda i: float(((f[i] - mean) ** 2).sum())))
    assert herding(feats, 1) == [closest]
    assert herding(feats, 5)[0] == closest


def test_herding_uses_normalised_features():
    # per-sample scale does not change the picks
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(20, 6, generator=g)
    scale = torch.rand(20, 1, generator=g) * 100 + 0.01
    assert herding(feats * scale, 10) == herding(feats, 10)
    # a huge-norm outlier direction is not favoured: the circle answer holds after scaling it
    scaled = CIRCLE.clone()
    scaled[3] *= 1000
    assert herding(scaled, 5) == [0, 1, 4, 3, 2]


def test_herding_no_duplicates_and_m_larger_than_n():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(7, 4, generator=g)
    picks = herding(feats, 5)
    assert len(picks) == 5 == len(set(picks))
    all_picks = herding(feats, 50)
    assert sorted(all_picks) == list(range(7))
    assert all_picks[:5] == picks  # greedy: a smaller budget is a prefix


def test_herding_duplicate_points_are_still_distinct_indices():
    feats = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]])
    picks = herding(feats, 5)
    assert sorted(picks) == [0, 1, 2, 3, 4]


def test_herding_running_mean_approaches_class_mean():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(200, 16, generator=g)
    f = feats / feats.norm(dim=1, keepdim=True)
    picks = herding(feats, 20)
    herded = (f[picks].mean(0) - f.mean(0)).norm()
    first20 = (f[:20].mean(0) - f.mean(0)).norm()
    assert herded < first20 / 2


def test_exemplars_per_class():
    assert exemplars_per_class(50, 20, None) == 20   # R_per: grows with the classes
    assert exemplars_per_class(100, 20, None) == 20
    assert exemplars_per_class(50, 20, 2000) == 40   # R_total = 2000 over 50 classes
    assert exemplars_per_class(100, 20, 2000) == 20
    assert exemplars_per_class(60, 20, 2000) == 33   # floor: the total never exceeds the budget
    assert 60 * exemplars_per_class(60, 20, 2000) <= 2000


def test_class_means_by_hand():
    # class 0: (3,4), (0,5) -> normalised (0.6,0.8), (0,1) -> mean (0.3,0.9) -> (1,3)/sqrt(10)
    # class 1: (2,0) -> (1,0); class 2: no exemplar -> zero vector
    feats = torch.tensor([[3.0, 4.0], [2.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 1, 0])
    means = class_means(feats, labels, 3)
    assert torch.allclose(means[0], torch.tensor([1.0, 3.0]) / math.sqrt(10), atol=1e-6)
    assert torch.allclose(means[1], torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.all(means[2] == 0)


def test_class_means_with_flipped_features_by_hand():
    # one exemplar (1,0), its flip (0,2) -> normalised (0,1); average (0.5,0.5) -> (1,1)/sqrt2
    means = class_means(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), 1, torch.tensor([[0.0, 2.0]]))
    assert torch.allclose(means[0], torch.tensor([1.0, 1.0]) / math.sqrt(2), atol=1e-6)


def test_nme_predict_nearest_normalised_mean():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    feats = torch.tensor([[10.0, 1.0], [0.1, 0.3], [-5.0, -4.0], [0.5, -0.1]])
    assert nme_predict(feats, means).tolist() == [0, 1, 2, 0]
    # the feature norm does not matter
    assert nme_predict(feats * torch.tensor([[0.01], [100.0], [3.0], [7.0]]), means).tolist() == [0, 1, 2, 0]
