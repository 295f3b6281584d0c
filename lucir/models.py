"""ResNet-32 (CIFAR) and ResNet-18 (ImageNet) with a `last_relu` switch, the cosine classifier
of Eq. 4 split into an old and a new part sharing eta, imprinting, and the linear head of iCaRL.

Every model returns the same `Output(features, scores, logits)` in train and eval mode:
`scores` are the cosine scores before eta (plain scores for the linear head) and `logits`
what the softmax of Eq. 1 / Eq. 4 sees.
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class Output(NamedTuple):
    features: torch.Tensor  # f(x), the penultimate features
    scores: torch.Tensor    # <theta_i, f(x)> after l2-normalisation (cosine), or theta^T f + b
    logits: torch.Tensor    # eta * scores for the cosine head; = scores for the linear head


# --------------------------------------------------------------------------- backbones
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = relu

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out) if self.relu else out


def _stage(cin: int, cout: int, blocks: int, stride: int, last_relu: bool) -> nn.Sequential:
    layers = [BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                         relu=(i < blocks - 1) or last_relu) for i in range(blocks)]
    return nn.Sequential(*layers)


class ResNet32(nn.Module):
    """ResNet-32 for 32x32 inputs: 3 stages of 5 basic blocks (16/32/64 channels), 64-d feature.
    `last_relu=False` removes the ReLU at the end of the last block (Sec. 4.1, with CN)."""

    def __init__(self, last_relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 16, 5, 1, True)
        self.layer2 = _stage(16, 32, 5, 2, True)
        self.layer3 = _stage(32, 64, 5, 2, last_relu)
        self.out_dim = 64
        _init_convs(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class ResNet18(nn.Module):
    """ResNet-18 for ImageNet (512-d feature), with the same `last_relu` switch."""

    def __init__(self, last_relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(64, 64, 2, 1, True)
        self.layer2 = _stage(64, 128, 2, 2, True)
        self.layer3 = _stage(128, 256, 2, 2, True)
        self.layer4 = _stage(256, 512, 2, 2, last_relu)
        self.out_dim = 512
        _init_convs(self)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _init_convs(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- heads
class CosineLinear(nn.Module):
    """Eq. 4: logits_i = eta * <normalize(theta_i), normalize(f)>, no bias, one learnable eta."""

    def __init__(self, in_features: int, out_features: int, eta_init: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        self.eta = nn.Parameter(torch.tensor(float(eta_init)))

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.eta * self.cosine(features)


class SplitCosineLinear(nn.Module):
    """The cosine classifier during an incremental phase: an old part (fixed under the
    less-forget constraint) and a new part, sharing one eta (official code: fc1, fc2, sigma)."""

    def __init__(self, old: CosineLinear, new_weight: torch.Tensor):
        super().__init__()
        self.old_weight = nn.Parameter(old.weight.detach().clone())
        self.new_weight = nn.Parameter(new_weight.detach().clone())
        self.eta = nn.Parameter(old.eta.detach().clone())

    @property
    def out_features(self) -> int:
        return self.old_weight.shape[0] + self.new_weight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.old_weight, self.new_weight])

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.eta * self.cosine(features)

    def merged(self) -> CosineLinear:
        """One CosineLinear over old + new classes (done at the end of each phase)."""
        out = CosineLinear(self.old_weight.shape[1], self.out_features).to(self.eta.device)
        out.weight.data.copy_(self.weight.detach())
        out.eta.data.copy_(self.eta.detach())
        return out


class Net(nn.Module):
    """Backbone plus head; forward returns `Output(features, scores, logits)` in every mode."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    @property
    def cosine(self) -> bool:
        return not isinstance(self.head, nn.Linear)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, x: torch.Tensor, backbone: nn.Module | None = None) -> Output:
        """`backbone`: a stand-in for self.backbone sharing its parameters (its compiled form)."""
        features = (self.backbone if backbone is None else backbone)(x)
        if self.cosine:
            scores = self.head.cosine(features)
            return Output(features, scores, self.head.eta * scores)
        scores = self.head(features)
        return Output(features, scores, scores)


def build_model(arch: str, num_classes: int, cosine: bool, last_relu: bool, eta_init: float = 1.0) -> Net:
    backbone = {"resnet32": ResNet32, "resnet18": ResNet18}[arch](last_relu=last_relu)
    head = CosineLinear(backbone.out_dim, num_classes, eta_init) if cosine else nn.Linear(backbone.out_dim, num_classes)
    return Net(backbone, head)


def imprint_weights(new_features: list[torch.Tensor], old_weight: torch.Tensor) -> torch.Tensor:
    """Imprinted new-class weights (official code): for each new class, the mean of the
    l2-normalised features of its training images, renormalised, times the mean norm of the
    old-class weights."""
    scale = old_weight.norm(dim=1).mean()
    means = torch.stack([F.normalize(f, dim=1).mean(0) for f in new_features])
    return F.normalize(means, dim=1) * scale


def add_classes(model: Net, n_new: int, new_weight: torch.Tensor | None = None) -> Net:
    """Grow the head by `n_new` classes. Cosine: split into old (the merged head so far) and new
    parts sharing eta; `new_weight` imprints the new part. Linear: a larger FC keeping old rows."""
    head = model.head
    if model.cosine:
        if isinstance(head, SplitCosineLinear):
            head = head.merged()
        if new_weight is None:
            new_weight = CosineLinear(head.weight.shape[1], n_new).weight
        model.head = SplitCosineLinear(head, new_weight.to(head.weight.device))
    else:
        grown = nn.Linear(head.in_features, head.out_features + n_new).to(head.weight.device)
        grown.weight.data[: head.out_features] = head.weight.data
        grown.bias.data[: head.out_features] = head.bias.data
        model.head = grown
    return model


def frozen_copy(model: Net) -> Net:
    """The old model of an incremental phase (Eq. 6-8): a copy of the model as the previous phase
    left it, in eval mode, with no gradients."""
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


def grow_head(model: Net, n_new: int, new_weight: torch.Tensor | None = None, fix_old: bool = True) -> list:
    """The head grown by `n_new` classes for a new phase (add_classes; `new_weight` imprints them),
    and with `fix_old` on a cosine head the old classes' embeddings fixed (Sec. 3.3; the official
    code gives them lr 0 and weight decay 0). Returns the parameters left to train, in the model's
    order."""
    add_classes(model, n_new, new_weight)
    if model.cosine and fix_old:
        model.head.old_weight.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def merge_head(model: Net) -> Net:
    """Fold a split cosine head back into one CosineLinear (the form checkpoints store)."""
    if isinstance(model.head, SplitCosineLinear):
        model.head = model.head.merged()
    return model


def weight_norms(model: Net) -> dict:
    """Norms of the class embeddings (and biases for a linear head), for Fig. 3."""
    w = model.head.weight.detach().float().cpu()
    out = {"weight_norm": w.norm(dim=1).numpy()}
    if not model.cosine:
        out["bias"] = model.head.bias.detach().float().cpu().numpy()
    return out
