"""ResNet-32/18 backbones, the cosine classifier of Eq. 4, the split old/new head, imprinting."""
import math

import pytest
import torch
import torch.nn as nn

from lucir.models import (CosineLinear, Output, ResNet18, ResNet32, SplitCosineLinear, add_classes,
                          build_model, imprint_weights, merge_head, weight_norms)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- backbones
def test_resnet32_feature_dim_and_parameter_count():
    net = ResNet32(last_relu=False)
    assert net.out_dim == 64
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    # by hand: 3x3 convs without bias, BN (2 params per channel), 1x1 conv + BN shortcut
    # where the shape changes (as in the official modified ResNet-32).
    conv = lambda cin, cout, k=3: cin * cout * k * k  # noqa: E731
    block = lambda c: 2 * conv(c, c) + 2 * 2 * c  # noqa: E731
    down = lambda cin, cout: conv(cin, cout) + conv(cout, cout) + 2 * 2 * cout + conv(cin, cout, 1) + 2 * cout  # noqa: E731
    expected = (conv(3, 16) + 2 * 16 + 5 * block(16)
                + down(16, 32) + 4 * block(32) + down(32, 64) + 4 * block(64))
    count = sum(p.numel() for p in net.parameters())
    assert count == expected
    assert 0.45e6 < count < 0.48e6  # "ResNet-32, 0.46M parameters"


def test_resnet32_depth_is_32_layers():
    net = ResNet32()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 3 * 5 * 2  # + the FC layer = 32


def test_resnet18_feature_dim():
    net = ResNet18(last_relu=True).eval()
    assert net.out_dim == 512
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 512)


@pytest.mark.parametrize("arch", [ResNet32, ResNet18])
def test_last_relu_switch(arch):
    # At initialisation the last block's output is a zero-mean BN branch plus a non-negative
    # identity, so its average pool is non-negative either way; a negative BN shift on the
    # last residual branch makes the missing ReLU visible.
    x = torch.randn(4, 3, 32, 32)
    for mode in ("train", "eval"):
        with_relu = arch(last_relu=True)
        last_block = [m for m in with_relu.modules() if type(m).__name__ == "BasicBlock"][-1]
        with torch.no_grad():
            last_block.bn2.bias.fill_(-3.0)
        without = arch(last_relu=False)
        without.load_state_dict(with_relu.state_dict())  # same weights: only the ReLU differs
        getattr(with_relu, mode)()
        getattr(without, mode)()
        f_relu, f_free = with_relu(x), without(x)
        assert (f_relu >= 0).all()
        assert (f_free < 0).any()
        assert not torch.allclose(f_relu, f_free)


@pytest.mark.parametrize("cosine", [True, False])
def test_forward_returns_same_structure_in_train_and_eval(cosine):
    model = build_model("resnet32", 5, cosine=cosine, last_relu=not cosine)
    x = torch.randn(3, 3, 32, 32)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        out = model(x)
        assert isinstance(out, Output)
        assert out._fields == ("features", "scores", "logits")
        assert out.features.shape == (3, 64)
        assert out.scores.shape == out.logits.shape == (3, 5)
        if cosine:
            assert torch.allclose(out.logits, model.head.eta * out.scores)
            assert out.scores.abs().max() <= 1 + 1e-6
        else:
            assert torch.equal(out.logits, out.scores)


def test_build_model_picks_head_and_eta_init():
    cos = build_model("resnet32", 4, cosine=True, last_relu=False, eta_init=2.5)
    assert isinstance(cos.head, CosineLinear) and cos.cosine and cos.num_classes == 4
    assert cos.head.eta.item() == 2.5
    lin = build_model("resnet18", 7, cosine=False, last_relu=True)
    assert isinstance(lin.head, nn.Linear) and not lin.cosine and lin.num_classes == 7
    assert lin.head.bias is not None


# --------------------------------------------------------------------------- Eq. 4
def test_cosine_linear_by_hand():
    head = CosineLinear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        head.eta.fill_(2.0)
    f = torch.tensor([[3.0, 4.0], [-1.0, 1.0]])
    # cos((3,4),(1,0)) = 3/5, cos((3,4),(0,1)) = 4/5; cos((-1,1),(1,0)) = -1/sqrt2, with (0,1) 1/sqrt2
    expected = 2.0 * torch.tensor([[0.6, 0.8], [-1 / math.sqrt(2), 1 / math.sqrt(2)]])
    assert torch.allclose(head(f), expected, atol=1e-6)
    assert torch.allclose(head.cosine(f), expected / 2, atol=1e-6)


def test_cosine_linear_forward_is_eta_times_cosine():
    head = CosineLinear(8, 5, eta_init=3.0)
    f = torch.randn(6, 8)
    w = head.weight.detach()
    cos = torch.stack([torch.stack([torch.dot(a, b) / (a.norm() * b.norm()) for b in w]) for a in f])
    assert torch.allclose(head(f), 3.0 * cos, atol=1e-5)
    assert not hasattr(head, "bias") or head.bias is None


def test_cosine_linear_invariant_to_feature_and_weight_scale():
    head = CosineLinear(8, 5)
    f = torch.randn(6, 8)
    ref = head(f)
    scales = torch.tensor([0.01, 1.0, 7.0, 100.0, 0.5, 3.0])[:, None]
    assert torch.allclose(head(f * scales), ref, atol=1e-5)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([0.1, 2.0, 5.0, 1.0, 30.0])[:, None])
    assert torch.allclose(head(f), ref, atol=1e-5)


def test_cosine_linear_eta_is_one_learnable_scalar():
    head = CosineLinear(4, 3)
    assert isinstance(head.eta, nn.Parameter)
    assert head.eta.dim() == 0 and head.eta.item() == 1.0  # official init
    assert any(p is head.eta for p in head.parameters())
    head(torch.randn(5, 4)).pow(2).sum().backward()
    assert head.eta.grad is not None and head.eta.grad.item() != 0
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    opt.step()
    assert head.eta.item() != 1.0


# --------------------------------------------------------------------------- imprinting
def test_imprint_weights_by_hand():
    # old weights with norms 1 and 3: mean norm 2
    old = torch.tensor([[1.0, 0.0], [0.0, -3.0]])
    # class A: (3,4) and (0,5) -> normalised (0.6,0.8), (0,1) -> mean (0.3,0.9) -> /sqrt(0.9)
    # class B: (2,0), (0,-7), (10,0) -> (1,0), (0,-1), (1,0) -> mean (2/3,-1/3) -> /sqrt(5/9)
    feats_a = torch.tensor([[3.0, 4.0], [0.0, 5.0]])
    feats_b = torch.tensor([[2.0, 0.0], [0.0, -7.0], [10.0, 0.0]])
    w = imprint_weights([feats_a, feats_b], old)
    expected_a = [2 * 0.3 / math.sqrt(0.9), 2 * 0.9 / math.sqrt(0.9)]
    expected_b = [2 * (2 / 3) / math.sqrt(5 / 9), 2 * (-1 / 3) / math.sqrt(5 / 9)]
    assert torch.allclose(w, torch.tensor([expected_a, expected_b]), atol=1e-6)
    assert torch.allclose(w.norm(dim=1), torch.tensor([2.0, 2.0]), atol=1e-6)


def test_imprint_uses_normalised_features_not_raw_mean():
    # raw mean of (100,0) and (0,1) points along x; the normalised mean is the diagonal
    w = imprint_weights([torch.tensor([[100.0, 0.0], [0.0, 1.0]])], torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(w, torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)]]), atol=1e-6)


# --------------------------------------------------------------------------- growing the head
def test_add_classes_cosine_keeps_old_rows_and_shares_eta():
    model = build_model("resnet32", 3, cosine=True, last_relu=False)
    with torch.no_grad():
        model.head.eta.fill_(4.0)
    old_w = model.head.weight.detach().clone()
    new_w = torch.randn(2, 64)
    add_classes(model, 2, new_w)
    head = model.head
    assert isinstance(head, SplitCosineLinear)
    assert model.num_classes == 5
    assert torch.equal(head.weight[:3], old_w)
    assert torch.equal(head.weight[3:], new_w)
    assert head.eta.item() == 4.0
    etas = [n for n, _ in head.named_parameters() if "eta" in n]
    assert etas == ["eta"]  # one eta for the old and the new part
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    out = model(x)
    with torch.no_grad():
        head.eta.fill_(2.0)
    out2 = model(x)
    assert torch.allclose(out2.logits, out.logits / 2, atol=1e-5)  # both parts scale with eta


def test_add_classes_twice_merges_first():
    model = build_model("resnet32", 3, cosine=True, last_relu=False)
    add_classes(model, 2)
    with torch.no_grad():
        model.head.new_weight.add_(1.0)
    grown = model.head.weight.detach().clone()
    add_classes(model, 4)
    assert isinstance(model.head, SplitCosineLinear)
    assert model.num_classes == 9
    assert model.head.old_weight.shape == (5, 64)
    assert torch.equal(model.head.weight[:5], grown)


def test_add_classes_random_new_weight_has_right_shape():
    model = build_model("resnet32", 3, cosine=True, last_relu=False)
    add_classes(model, 2)
    assert model.head.new_weight.shape == (2, 64)
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 5)


def test_add_classes_linear_keeps_old_rows_and_biases():
    model = build_model("resnet32", 3, cosine=False, last_relu=True)
    w, b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    add_classes(model, 4)
    assert isinstance(model.head, nn.Linear)
    assert model.num_classes == 7
    assert torch.equal(model.head.weight[:3], w)
    assert torch.equal(model.head.bias[:3], b)
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 7)


def test_split_head_merged_preserves_outputs():
    old = CosineLinear(16, 3, eta_init=1.7)
    split = SplitCosineLinear(old, torch.randn(4, 16))
    f = torch.randn(5, 16)
    merged = split.merged()
    assert isinstance(merged, CosineLinear)
    assert merged.out_features == 7
    assert torch.allclose(merged(f), split(f), atol=1e-6)
    assert torch.allclose(merged.cosine(f), split.cosine(f), atol=1e-6)
    assert merged.eta.item() == pytest.approx(1.7)
    # the merged head is a copy, not a view: training it leaves the split head alone
    with torch.no_grad():
        merged.weight.zero_()
    assert split.weight.abs().sum() > 0


def test_split_head_old_part_can_be_frozen_alone():
    split = SplitCosineLinear(CosineLinear(16, 3), torch.randn(2, 16))
    split.old_weight.requires_grad_(False)
    split(torch.randn(4, 16)).sum().backward()
    assert split.old_weight.grad is None
    assert split.new_weight.grad is not None and split.eta.grad is not None


def test_merge_head_and_weight_norms():
    model = build_model("resnet32", 3, cosine=True, last_relu=False)
    add_classes(model, 2)
    before = model.head.weight.detach().clone()
    merge_head(model)
    assert isinstance(model.head, CosineLinear)
    assert torch.equal(model.head.weight, before)
    norms = weight_norms(model)
    assert norms["weight_norm"].shape == (5,)
    assert norms["weight_norm"] == pytest.approx(before.norm(dim=1).numpy(), rel=1e-6)
    assert "bias" not in norms
    lin = build_model("resnet32", 3, cosine=False, last_relu=True)
    assert weight_norms(lin)["bias"].shape == (3,)


@pytest.mark.parametrize("arch, blocks", [(ResNet32, 15), (ResNet18, 8)])
def test_only_the_last_block_loses_its_relu(arch, blocks):
    relus = [m.relu for m in arch(last_relu=False).modules() if type(m).__name__ == "BasicBlock"]
    assert relus == [True] * (blocks - 1) + [False]
    relus = [m.relu for m in arch(last_relu=True).modules() if type(m).__name__ == "BasicBlock"]
    assert relus == [True] * blocks
