"""The fast paths change nothing they must not: the epoch-at-once CIFAR augmentation and the
masked Eq. 8 give the same training as batch by batch; JPEG decoding in worker processes gives
the same run whatever the number of workers (Tiny-ImageNet stand-in, ImageNet folder layout);
bfloat16 autocast (`amp`) and `compile` runs complete."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lucir
from lucir import losses
from lucir.data import (ArrayImages, EncodedImages, class_order, load_dataset, normalize, random_crop_flip,
                        random_resized_crop_box, sample_seed, second_view)

from conftest import TINY_IMAGENET_DIR, comparable, need, tiny_config


def _weights(out_dir, phase):
    return torch.load(out_dir / "checkpoints" / f"phase_{phase}.pt", map_location="cpu", weights_only=False)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- CIFAR hot path
def _per_batch_iterate(self, batches, device, train, generator=None, view="none", workers=0, shard=(0, 1)):
    """The path before the epoch-at-once one: each batch draws its crops and flips when it is
    gathered, and the normalisation constants are made again for every batch."""
    for idx in batches:
        x = self.images[idx]
        x = random_crop_flip(x, self.pad, generator) if train else second_view(x, view)
        yield normalize(x, tuple(self.mean), tuple(self.std))


def _indexed_margin_ranking(cos_scores, targets, n_old, margin=0.5, k=2):
    """Eq. 8 by boolean indexing of the anchors (a data-dependent shape), as it was written first."""
    anchors = targets < n_old
    if not anchors.any() or cos_scores.shape[1] <= n_old:
        return cos_scores.sum() * 0.0
    scores = cos_scores[anchors]
    positive = scores.gather(1, targets[anchors].unsqueeze(1))
    negatives = scores[:, n_old:].topk(min(k, scores.shape[1] - n_old), dim=1).values
    return F.relu(margin - positive + negatives).mean()


def test_epoch_augmentation_draws_the_stream_of_batch_by_batch():
    g = np.random.default_rng(0)
    store = ArrayImages(g.integers(0, 256, (37, 32, 32, 3), dtype=np.uint8), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    batches = list(torch.randperm(37).split(8))  # the last batch is smaller
    fast = list(store.iterate(batches, "cpu", train=True, generator=torch.Generator().manual_seed(5)))
    slow = list(_per_batch_iterate(store, batches, "cpu", True, torch.Generator().manual_seed(5)))
    assert len(fast) == len(slow) == 5
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    other = list(store.iterate(batches, "cpu", train=True, generator=torch.Generator().manual_seed(6)))
    assert not torch.equal(other[0], fast[0])  # the generator does decide the crops


def test_masked_margin_ranking_equals_indexed_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        scores = (torch.rand(16, 7, generator=g) * 2 - 1).requires_grad_(True)
        targets = torch.randint(0, 7, (16,), generator=g)
        if trial == 0:
            targets = torch.full((16,), 5)  # no anchor at all
        a = losses.margin_ranking(scores, targets, 4, 0.5, 2)
        (ga,) = torch.autograd.grad(a, scores)
        b = _indexed_margin_ranking(scores, targets, 4, 0.5, 2)
        (gb,) = torch.autograd.grad(b, scores)
        assert a.item() == pytest.approx(b.item(), abs=1e-6)
        assert torch.equal(ga, gb)  # the training signal is bit for bit the same
        if trial == 0:
            assert a.item() == 0.0


def test_hot_path_trains_bit_identically_to_batch_by_batch(tmp_path, monkeypatch):
    config = tiny_config("lucir", tmp_path / "cache", cache_base=False)
    fast = lucir.run_incremental(config, tmp_path / "fast")
    monkeypatch.setattr(ArrayImages, "iterate", _per_batch_iterate)
    monkeypatch.setattr(losses, "margin_ranking", _indexed_margin_ranking)
    slow = lucir.run_incremental(config, tmp_path / "slow")
    for key in ("acc_cnn", "acc_nme", "eta"):
        assert [p[key] for p in fast["phases"]] == [p[key] for p in slow["phases"]], key
    for t in range(3):
        assert _same(_weights(tmp_path / "fast", t), _weights(tmp_path / "slow", t)), f"phase {t}"


# --------------------------------------------------------------------------- amp and compile
def test_amp_run_completes_and_differs_from_fp32(tmp_path):
    fp32 = lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", epochs=1), tmp_path / "fp32")
    amp = lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", epochs=1, amp=True), tmp_path / "amp")
    assert amp["complete"] and len(amp["phases"]) == 3
    assert all(0 <= p["acc_cnn"] <= 1 and np.isfinite(p["eta"]) for p in amp["phases"])
    # bfloat16 changed the arithmetic (the base phase was not taken from the fp32 run's cache)
    assert not _same(_weights(tmp_path / "amp", 0), _weights(tmp_path / "fp32", 0))
    assert fp32["complete"]


def test_amp_and_compile_are_part_of_the_run(tmp_path):
    out = tmp_path / "run"
    lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", num_classes=4, phases=1, epochs=1), out)
    for field in ("amp", "compile"):
        with pytest.raises(lucir.ConfigError, match=field):
            lucir.run_incremental(tiny_config("lucir", tmp_path / "cache", num_classes=4, phases=1, epochs=1,
                                              **{field: True}), out)


def _compiled_tiny_run(tmp_path):
    config = tiny_config("lucir", tmp_path / "cache", num_classes=4, phases=1, train_per_class=4, test_per_class=2,
                         epochs=1, compile=True)
    metrics = lucir.run_incremental(config, tmp_path / "compiled")
    assert metrics["complete"] and len(metrics["phases"]) == 2
    assert all(0 <= p["acc_cnn"] <= 1 for p in metrics["phases"])


def test_compile_run_completes(tmp_path, monkeypatch):
    """compile=true through dynamo and AOT autograd (the `aot_eager` backend): the training step,
    the old model and the losses are captured and differentiated; the next test adds inductor's
    C++ code generation (torch.compile's default), which needs a C++ compiler."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, **(kw | {"backend": "aot_eager"})))
    _compiled_tiny_run(tmp_path)


@pytest.mark.skipif(not any(shutil.which(cxx) for cxx in (os.environ.get("CXX") or "g++", "c++", "clang++")),
                    reason="no C++ compiler here: torch.compile's default backend (inductor) cannot build its "
                           "CPU kernels")
def test_compile_run_completes_with_inductor(tmp_path):
    """compile=true as a user runs it (inductor); a few minutes on a 2-core CPU."""
    _compiled_tiny_run(tmp_path)


# --------------------------------------------------------------------------- JPEG decoding
TINY_JPEG = dict(dataset="tiny_imagenet", image_size=32, num_classes=4, base_classes=2, phases=1,
                 train_per_class=6, test_per_class=3, epochs=2, lr_milestones=(1,), memory_per_class=2,
                 batch_size=8)


def test_sample_seed_depends_on_key_and_index_only():
    assert sample_seed(7, 3) == sample_seed(7, 3)
    assert len({sample_seed(7, i) for i in range(1000)} | {sample_seed(8, 0)}) == 1001
    assert 0 <= sample_seed(2 ** 62, 10 ** 9) < 2 ** 63


def test_jpeg_batches_do_not_depend_on_workers():
    config = tiny_config(cache_dir="/tmp/unused", data_dir=str(need(TINY_IMAGENET_DIR)), **TINY_JPEG)
    store = load_dataset(config).train
    assert isinstance(store, EncodedImages)
    batches = list(torch.arange(24).flip(0).split(8))
    runs = [list(store.iterate(batches, "cpu", train=True, generator=torch.Generator().manual_seed(1), workers=w))
            for w in (0, 2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert len(runs[0]) == 3 and runs[0][0].shape == (8, 3, 32, 32)
    # the same sample in another batch position gets the same crop: its seed is its own
    alone = next(store.iterate([torch.tensor([batches[0][3].item()])], "cpu", train=True,
                               generator=torch.Generator().manual_seed(1)))
    assert torch.equal(alone[0], runs[0][0][3])
    test = [list(store.iterate(batches, "cpu", train=False, workers=w)) for w in (0, 2)]
    assert all(torch.equal(a, b) for a, b in zip(*test))


def _pid_and_index(self, i, seed=None):  # stands in for EncodedImages.decode: who decoded what
    return torch.tensor([os.getpid(), i])


def test_decoding_workers_persist_across_passes_and_passes_do_not_mix(monkeypatch):
    monkeypatch.setattr(EncodedImages, "decode", _pid_and_index)  # before the workers fork
    store = EncodedImages([b"unused"] * 8, 32)
    batches = list(torch.arange(8).split(2))

    def one_pass():
        out = torch.cat(list(store.decoded(batches, train=False, workers=2)))
        assert out[:, 1].tolist() == list(range(8))  # every image once, in order
        return set(out[:, 0].tolist())

    first = one_pass()
    assert os.getpid() not in first and 1 <= len(first) <= 2
    assert one_pass() <= first  # the second pass (the next epoch) uses the same processes
    unfinished = store.decoded(batches, train=False, workers=2)
    assert next(unfinished)[:, 1].tolist() == [0, 1]
    one_pass()  # starting a pass drops what an unfinished one left in flight
    resumed = store.decoded(batches, train=False, workers=2)
    next(resumed)
    one_pass()
    with pytest.raises(RuntimeError, match="two passes over one EncodedImages store at once"):
        next(resumed)
    assert len(store._loaders) == 1
    assert one_pass() <= first


def test_tiny_imagenet_run_is_the_same_with_0_and_2_workers(tmp_path):
    runs = {}
    for workers in (0, 2):
        config = tiny_config(cache_dir=tmp_path / "cache", cache_base=False, data_dir=str(need(TINY_IMAGENET_DIR)),
                             workers=workers, **TINY_JPEG)
        runs[workers] = lucir.run_incremental(config, tmp_path / f"w{workers}")
    assert runs[0]["complete"] and len(runs[0]["phases"]) == 2
    assert comparable(runs[0]) == comparable(runs[2])
    for t in range(2):
        assert _same(_weights(tmp_path / "w0", t), _weights(tmp_path / "w2", t))
    # workers is a runtime field: the run in w0 is finished whatever the number of workers
    config = tiny_config(cache_dir=tmp_path / "cache", cache_base=False, data_dir=str(TINY_IMAGENET_DIR),
                         workers=1, **TINY_JPEG)
    assert comparable(lucir.run_incremental(config, tmp_path / "w0")) == comparable(runs[0])


def _imagenet_folder_from_tiny(root, classes: int = 100, train: int = 3, val: int = 2):
    """ImageNet's layout (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) written from the Tiny-ImageNet
    stand-in's JPEG bytes: the first `classes` wnids (ImageNet-Subset draws 100 of them)."""
    src = need(TINY_IMAGENET_DIR)
    wnids = json.loads((src / "classes.json").read_text())["wnids"]
    for split, name, n in (("train", "train_50per_class_jpeg.npz", train), ("val", "val_jpeg.npz", val)):
        z = np.load(src / name)
        b, o, y = z["jpeg_bytes"], z["offsets"], z["labels"]
        for c in range(classes):
            folder = root / "imagenet" / split / wnids[c]
            folder.mkdir(parents=True)
            for j, i in enumerate(np.flatnonzero(y == c)[:n]):
                (folder / f"{wnids[c]}_{j}.JPEG").write_bytes(b[o[i]:o[i + 1]].tobytes())
    return sorted(wnids[:classes])


def test_imagenet_subset_folder_with_paper_choices_and_workers(tmp_path):
    wnids = _imagenet_folder_from_tiny(tmp_path / "data")
    config = tiny_config(cache_dir=tmp_path / "cache", dataset="imagenet_subset", data_dir=str(tmp_path / "data"),
                         image_size=32, num_classes=4, base_classes=2, phases=1, train_per_class=3, test_per_class=2,
                         epochs=1, lr_milestones=(), memory_per_class=2, batch_size=6, cbf_epochs=1,
                         # the paper's ImageNet choices (Sec. 4.1, official code)
                         lambda_base=10.0, weight_decay=1e-4, class_balanced_finetune=True, workers=2)
    assert config.resolved_model == "resnet18"
    data = load_dataset(config)
    # the subset drawn from 100 folders is all of them (the authors' own subset folder reads the
    # same), ordered by the class-order seed; num_classes keeps the first 4
    expected = [wnids[i] for i in class_order(100, 1993)[:4]]
    assert data.class_names == expected
    assert np.bincount(data.train_labels.numpy()).tolist() == [3] * 4
    metrics = lucir.run_incremental(config, tmp_path / "run")
    assert metrics["complete"] and "folder at" in metrics["data_source"]
    assert [p["lambda"] for p in metrics["phases"]] == pytest.approx([0.0, 10.0])  # 10 sqrt(2/2)
    state = torch.load(tmp_path / "run" / "checkpoints" / "phase_1.pt", weights_only=False)
    assert state["model"]["head.weight"].shape == (4, 512)  # ResNet-18


def test_random_resized_crop_box_lies_in_the_image_within_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    for h, w in [(64, 64), (20, 24), (300, 40), (7, 90)]:
        for _ in range(50):
            top, left, ch, cw = random_resized_crop_box(h, w, g)
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    # a square image almost always finds a crop inside the ranges within 10 tries
    boxes = [random_resized_crop_box(64, 64, g) for _ in range(200)]
    areas = [ch * cw / 64 ** 2 for _, _, ch, cw in boxes]
    assert min(areas) >= 0.05 and max(areas) <= 1.0 and np.std(areas) > 0.1
