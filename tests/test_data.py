"""Class order, phase splits, batched augmentation, the loaders (real CIFAR-100 and the
Tiny-ImageNet stand-in from the offline data folder), and clear errors for missing or corrupt data."""
import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch

import lucir
from lucir.config import ConfigError, phase_sizes
from lucir.data import (ArrayImages, CIFAR_MEAN, CIFAR_STD, _first_per_class, class_order, data_root,
                        imagenet_subset_order, load_cifar100, load_dataset, normalize, phase_classes, random_crop_flip, second_view, synthetic_data)

from conftest import CIFAR_DIR, TINY_IMAGENET_DIR, need, tiny_config, write_torchvision_cifar100


# --------------------------------------------------------------------------- class order, phases
def test_class_order_1993_matches_the_paper_code():
    order = class_order(100, 1993)
    assert order[:10] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    assert sorted(order) == list(range(100))
    assert class_order(100) == order  # 1993 is the default


def test_class_order_other_seed_and_global_rng_untouched():
    assert class_order(100, 1994) != class_order(100, 1993)
    assert sorted(class_order(100, 7)) == list(range(100))
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    class_order(100, 1993)
    assert np.random.rand() == expected


def test_class_orders_of_the_authors_runs_are_successive_shuffles_after_one_seed():
    """The authors' scripts seed numpy once with 1993 and shuffle a fresh np.arange(100) for each of
    their --nb_runs runs: run k's order is the (k+1)-th shuffle. Order 0 is the paper's (today's)."""
    firsts = {0: [68, 56, 78, 8, 23, 84, 90, 65, 74, 76],
              1: [82, 14, 51, 9, 75, 45, 18, 99, 42, 76],
              2: [14, 69, 22, 28, 55, 33, 85, 51, 8, 99]}
    np.random.seed(1993)
    for k in range(3):
        shuffled = np.arange(100)
        np.random.shuffle(shuffled)
        assert class_order(100, 1993, run=k) == shuffled.tolist()
        assert class_order(100, 1993, run=k)[:10] == firsts[k]
    assert class_order(100, 1993, run=0) == class_order(100, 1993) == class_order(100)


def test_class_order_run_names_and_loads_its_own_order():
    """class_order_run = 0 leaves a run's name (and so its folder and cached base phase) as it was;
    another order is another run, and the data loader maps labels through that order."""
    from lucir.config import make_config
    from lucir.data import load_dataset
    from lucir.experiments import run_name
    assert run_name(make_config("lucir", class_order_run=0)) == run_name(make_config("lucir"))
    assert run_name(make_config("lucir", phases=5)) == "cifar100-b50-p5-s0-032a76ed96d9"  # as committed
    other = run_name(make_config("lucir", seed=1, class_order_run=1))
    assert other.startswith("cifar100-b50-p5-s1-o1-") and other != run_name(make_config("lucir", seed=1))
    with pytest.raises(ConfigError, match="class_order_run"):
        make_config("lucir", class_order_run=-1)
    data = load_dataset(make_config("lucir", dataset="synthetic", num_classes=10, base_classes=5, class_order_run=2))
    assert data.order == class_order(10, 1993, run=2) and data.order != class_order(10, 1993)


def test_runs_pair_each_seed_with_its_own_order_or_share_one():
    from lucir.experiments import runs_of
    assert runs_of([0, 1, 2], [0, 1, 2]) == [(0, 0), (1, 1), (2, 2)]  # the paper's 3 runs
    assert runs_of([0, 1], [0]) == [(0, 0), (1, 0)]  # seeds on one order (the quick profile)
    with pytest.raises(ConfigError, match="one order, or one per seed"):
        runs_of([0, 1, 2], [0, 1])


def _authors_imagenet_subset(classes: list[str], run: int = 0) -> list[str]:
    """The authors' steps, line by line: gen_imagenet_subset.py draws the subset from ImageFolder's
    sorted classes, which ImageFolder then reads back sorted; class_incremental_cosine_imagenet.py
    seeds numpy again and shuffles np.arange(100) (no numpy draw in between)."""
    np.random.seed(1993)
    subset_classes = np.random.choice(sorted(classes), 100, replace=False)
    folders = sorted(subset_classes)
    np.random.seed(1993)
    for _ in range(run + 1):  # one shuffle per run (--nb_runs)
        order = np.arange(100)
        np.random.shuffle(order)
    return [str(folders[i]) for i in order]


def test_imagenet_subset_classes_and_order_follow_the_authors_procedure():
    rng = np.random.default_rng(7)
    names = sorted(f"n{k:08d}" for k in rng.choice(10 ** 8, 1000, replace=False))  # 1,000 made-up wnids
    ours = [names[i] for i in imagenet_subset_order(names)]
    expected = _authors_imagenet_subset(names)
    assert ours == expected
    assert len(set(ours)) == 100
    assert ours[:2] != sorted(ours)[:2]  # ordered by the shuffle, not left sorted
    # the class-order seed reorders the same 100 classes
    other = [names[i] for i in imagenet_subset_order(names, seed=1994)]
    assert sorted(other) == sorted(ours) and other != ours
    # run 1's order: the same 100 classes, the second shuffle after the seed
    second = [names[i] for i in imagenet_subset_order(names, run=1)]
    assert second == _authors_imagenet_subset(names, run=1) and sorted(second) == sorted(ours) and second != ours


def test_phase_sizes_b50_and_b0():
    assert phase_sizes(100, 50, 5) == [50, 10, 10, 10, 10, 10]
    assert phase_sizes(100, 50, 1) == [50, 50]
    assert phase_sizes(100, 50, 2) == [50, 25, 25]
    assert phase_sizes(100, 50, 10) == [50] + [5] * 10
    assert phase_sizes(100, 0, 10) == [10] * 10
    assert phase_sizes(1000, 500, 10) == [500] + [50] * 10


def test_phase_sizes_errors():
    with pytest.raises(ConfigError, match="3 phases do not divide the 50 classes"):
        phase_sizes(100, 50, 3)
    with pytest.raises(ConfigError):
        phase_sizes(10, 10, 1)


def test_phase_classes_ranges():
    assert phase_classes([50, 10, 10, 10, 10, 10]) == [range(0, 50), range(50, 60), range(60, 70),
                                                       range(70, 80), range(80, 90), range(90, 100)]
    assert phase_classes(phase_sizes(100, 0, 10))[3] == range(30, 40)


# --------------------------------------------------------------------------- augmentation
def _images(n=6, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def test_random_crop_flip_keeps_shape_and_dtype():
    x = _images(5, 32, 32)
    out = random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8


def test_random_crop_flip_pad0_is_identity_or_flip():
    x = _images(64)
    out = random_crop_flip(x, 0, torch.Generator().manual_seed(1))
    flipped = 0
    for a, b in zip(x, out):
        assert torch.equal(b, a) or torch.equal(b, a.flip(2))
        flipped += int(not torch.equal(b, a))
    assert 10 < flipped < 54  # both cases happen, about half each


def test_random_crop_flip_is_a_crop_of_the_zero_padded_image():
    x = _images(12) + 1  # no zero pixels in the image itself (padding is 0)
    pad = 2
    out = random_crop_flip(x, pad, torch.Generator().manual_seed(2))
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = set()
    for a, b in zip(xp, out):
        crops = {(i, j, f): a[:, i:i + 8, j:j + 8].flip(2) if f else a[:, i:i + 8, j:j + 8]
                 for i in range(2 * pad + 1) for j in range(2 * pad + 1) for f in (0, 1)}
        matches = [key for key, crop in crops.items() if torch.equal(b, crop)]
        assert matches, "output is not a (flipped) crop of the padded image"
        offsets.add(matches[0][:2])
    assert len(offsets) > 1  # offsets vary over the batch


def test_random_crop_flip_repeats_with_the_same_generator():
    x = _images(8)
    a = random_crop_flip(x, 4, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 4, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, 4, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_by_hand():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x, CIFAR_MEAN, CIFAR_STD)
    for ch in range(3):
        assert out[0, ch, 0, 0].item() == pytest.approx((1.0 - CIFAR_MEAN[ch]) / CIFAR_STD[ch], rel=1e-5)


def test_array_images_test_batch_and_flip():
    imgs = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    store = ArrayImages(imgs, CIFAR_MEAN, CIFAR_STD)
    idx = torch.tensor([2, 0])
    x = store.batch(idx, "cpu", train=False)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    ref = normalize(torch.from_numpy(imgs[[2, 0]]).permute(0, 3, 1, 2), CIFAR_MEAN, CIFAR_STD)
    assert torch.allclose(x, ref)
    assert torch.allclose(store.batch(idx, "cpu", train=False, view="horizontal"), ref.flip(3))


# One 2x2 RGB image, (H, W, C), every value distinct: the three NME views by hand.
HAND_IMAGE = np.array([[[10, 20, 30], [40, 50, 60]],
                       [[70, 80, 90], [100, 110, 120]]], dtype=np.uint8)


def test_nme_view_channels_is_the_official_codes_channel_reversal():
    # the official CIFAR-100 code: prototypes[k][:, :, :, ::-1] on (N, H, W, C) uint8 arrays
    official = HAND_IMAGE[None][:, :, :, ::-1]
    assert official[0, 0, 0].tolist() == [30, 20, 10]          # RGB -> BGR, pixels stay in place
    store = ArrayImages(HAND_IMAGE[None], (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    out = store.batch(torch.tensor([0]), "cpu", train=False, view="channels")
    assert out[0].permute(1, 2, 0).round().to(torch.uint8).tolist() == official[0].tolist()


def test_nme_view_horizontal_mirrors_columns_and_none_is_identity():
    store = ArrayImages(HAND_IMAGE[None], (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    hwc = lambda t: t[0].permute(1, 2, 0).round().to(torch.uint8).tolist()  # noqa: E731
    flipped = hwc(store.batch(torch.tensor([0]), "cpu", train=False, view="horizontal"))
    assert flipped == [[[40, 50, 60], [10, 20, 30]], [[100, 110, 120], [70, 80, 90]]]
    assert hwc(store.batch(torch.tensor([0]), "cpu", train=False, view="none")) == HAND_IMAGE.tolist()
    assert hwc(store.batch(torch.tensor([0]), "cpu", train=False)) == HAND_IMAGE.tolist()
    with pytest.raises(ValueError, match="unknown view"):
        second_view(torch.from_numpy(HAND_IMAGE[None]).permute(0, 3, 1, 2), "vertical")


# --------------------------------------------------------------------------- synthetic set and selection
def test_synthetic_data_deterministic_and_interleaved():
    a = synthetic_data(5, 6, 3, seed=0)
    b = synthetic_data(5, 6, 3, seed=0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
    tr, tr_y, te, te_y, names, _ = a
    assert tr.shape == (30, 32, 32, 3) and tr.dtype == np.uint8 and te.shape == (15, 32, 32, 3)
    assert tr_y[:10].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert np.bincount(te_y).tolist() == [3] * 5
    assert names == [f"class{c}" for c in range(5)]


def test_first_per_class():
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2])
    assert _first_per_class(labels, 2).tolist() == [0, 1, 2, 3, 4, 6]
    assert _first_per_class(labels, None).tolist() == list(range(8))


def test_load_dataset_synthetic_maps_labels_to_order_positions(tmp_path):
    config = tiny_config(cache_dir=tmp_path, num_classes=6, train_per_class=5, test_per_class=3)
    data = load_dataset(config)
    order = class_order(6, 1993)
    assert data.order == order
    tr, tr_y, *_ = synthetic_data(6, 5, 3)
    # every kept image sits at the class-order position of its original class
    for img, label in zip(data.train.images, data.train_labels):
        original = order[int(label)]
        matches = [i for i in np.flatnonzero(tr_y == original)
                   if np.array_equal(tr[i], img.permute(1, 2, 0).numpy())]
        assert matches
    assert np.bincount(data.train_labels.numpy()).tolist() == [5] * 6
    assert data.class_names == [f"class{c}" for c in order]


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("LUCIR_DATA", str(tmp_path / "env"))
    assert data_root(tiny_config(cache_dir=tmp_path, data_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert data_root(tiny_config(cache_dir=tmp_path)) == tmp_path / "env"
    monkeypatch.delenv("LUCIR_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root(tiny_config(cache_dir=tmp_path)) == tmp_path / "xdg" / "lucir" / "data"


# --------------------------------------------------------------------------- real CIFAR-100
CIFAR_SMALL = dict(dataset="cifar100", num_classes=4, base_classes=2, phases=2, train_per_class=20,
                   test_per_class=10, epochs=1, memory_per_class=2, batch_size=32)


@pytest.fixture(scope="module")
def cifar_small(tmp_path_factory):
    config = tiny_config(cache_dir=tmp_path_factory.mktemp("cifar_cache"), data_dir=str(need(CIFAR_DIR)),
                         **CIFAR_SMALL)
    return config, load_dataset(config)


def test_cifar_loader_label_mapping_against_labels_npz(cifar_small):
    _, data = cifar_small
    assert data.order == [68, 56, 78, 8]
    names = json.loads((CIFAR_DIR / "classes.json").read_text())["fine_label_names"]
    assert data.class_names == [names[c] for c in (68, 56, 78, 8)]
    lab = np.load(CIFAR_DIR / "labels.npz")
    train_y, test_y = lab["train_fine_labels"], lab["test_fine_labels"]
    assert np.bincount(data.train_labels.numpy()).tolist() == [20] * 4
    assert np.bincount(data.test_labels.numpy()).tolist() == [10] * 4
    # the kept images are the first 20 of each class in file order, in file order, and
    # their label is the class-order position of the original fine label
    keep = np.flatnonzero(np.isin(train_y, [68, 56, 78, 8]))
    keep = np.concatenate([keep[train_y[keep] == c][:20] for c in (68, 56, 78, 8)])
    keep.sort()
    expected_labels = [[68, 56, 78, 8].index(c) for c in train_y[keep]]
    assert data.train_labels.tolist() == expected_labels
    # pixels: these positions all lie in shard 0 (position i holds class i % 100)
    assert keep.max() < 10000
    shard0 = np.load(lzma.open(CIFAR_DIR / "train_images_0.npy.xz"))
    np.testing.assert_array_equal(data.train.images.permute(0, 2, 3, 1).numpy(), shard0[keep])
    test_keep = np.flatnonzero(np.isin(test_y, [68, 56, 78, 8]))
    test_keep = np.sort(np.concatenate([test_keep[test_y[test_keep] == c][:10] for c in (68, 56, 78, 8)]))
    assert data.test_labels.tolist() == [[68, 56, 78, 8].index(c) for c in test_y[test_keep]]


def test_cifar_batch_is_normalised_32px(cifar_small):
    _, data = cifar_small
    x = data.train.batch(torch.arange(8), "cpu", train=True, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert -3 < x.mean().item() < 3


def test_cifar_short_run(cifar_small, tmp_path):
    config, _ = cifar_small
    metrics = lucir.run_incremental(config, tmp_path / "run")
    assert metrics["complete"]
    assert metrics["class_order"] == [68, 56, 78, 8]
    assert [p["classes_seen"] for p in metrics["phases"]] == [2, 3, 4]
    assert "array format" in metrics["data_source"]
    conf = np.load(tmp_path / "run" / "confusion_phase2.npy")
    assert conf.shape == (4, 4) and conf.sum() == 40
    for p in metrics["phases"]:
        assert 0 <= p["acc_cnn"] <= 1 and 0 <= p["acc_nme"] <= 1


def test_cifar_num_classes_too_large(tmp_path):
    config = tiny_config(cache_dir=tmp_path, data_dir=str(need(CIFAR_DIR)),
                         **(CIFAR_SMALL | dict(num_classes=102, base_classes=2, phases=1, train_per_class=1)))
    with pytest.raises(ConfigError, match="102"):
        load_dataset(config)


# --------------------------------------------------------------------------- Tiny-ImageNet stand-in
TINY_IMAGENET_SMALL = dict(dataset="tiny_imagenet", image_size=32, num_classes=4, base_classes=2, phases=1,
                           train_per_class=5, test_per_class=3, epochs=1, memory_per_class=2, batch_size=10)


def test_tiny_imagenet_loads_and_runs(tmp_path):
    config = tiny_config(cache_dir=tmp_path / "cache", data_dir=str(need(TINY_IMAGENET_DIR)),
                         **TINY_IMAGENET_SMALL)
    assert config.resolved_model == "resnet18"
    data = load_dataset(config)
    order = class_order(200, 1993)[:4]
    assert data.order == order
    names = json.loads((TINY_IMAGENET_DIR / "classes.json").read_text())["class_names"]
    assert data.class_names == [names[c] for c in order]
    val = np.load(TINY_IMAGENET_DIR / "val_jpeg.npz")["labels"]
    expected = np.sort(np.concatenate([np.flatnonzero(val == c)[:3] for c in order]))
    assert data.test_labels.tolist() == [order.index(c) for c in val[expected]]
    assert np.bincount(data.train_labels.numpy()).tolist() == [5] * 4
    x = data.test.batch(torch.arange(3), "cpu", train=False)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    x = data.train.batch(torch.arange(3), "cpu", train=True)
    assert x.shape == (3, 3, 32, 32)

    metrics = lucir.run_incremental(config, tmp_path / "run")
    assert metrics["complete"] and len(metrics["phases"]) == 2
    state = torch.load(tmp_path / "run" / "checkpoints" / "phase_1.pt", weights_only=False)
    assert state["model"]["head.weight"].shape == (4, 512)  # ResNet-18 features


# --------------------------------------------------------------------------- missing and corrupt data
# --------------------------------------------------------------------------- torchvision's format
def test_torchvision_format_reads_as_the_array_format(torchvision_cifar100):
    arrays, root = torchvision_cifar100
    loaded = load_cifar100(root)
    for ours, theirs in zip(loaded[:4], arrays[:4]):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)  # same images, labels and order
    assert loaded[4] == arrays[4] and "torchvision" in loaded[5]


def test_download_goes_to_the_default_folder_once(tmp_path, monkeypatch):
    """No LUCIR_DATA, no data_dir: CIFAR-100 is fetched through torchvision into the default data
    folder (here a fake torchvision that writes a small cifar-100-python, offline), then read."""
    import torchvision.datasets
    monkeypatch.delenv("LUCIR_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calls = []
    small = synthetic_data(100, 3, 2)

    def fake_cifar100(root, train=True, download=False, **kw):
        calls.append(root)
        write_torchvision_cifar100((small[0], small[1], small[2], small[3], [f"c{k}" for k in range(100)]), Path(root))
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_cifar100)
    config = tiny_config(cache_dir=tmp_path, dataset="cifar100", num_classes=4, base_classes=2, phases=1,
                         train_per_class=3, test_per_class=2)
    default = tmp_path / "xdg" / "lucir" / "data"
    assert lucir.data.default_data_root() == default == data_root(config)
    data = load_dataset(config)
    assert len(calls) == 1 and (default / "cifar-100-python" / "train").exists()
    assert not any(p.name.startswith(".download-") for p in default.iterdir())  # the temporary folder is gone
    assert data.source == f"torchvision's cifar-100-python at {default}" and len(data.train_labels) == 12
    load_cifar100.cache_clear()
    load_dataset(config)
    assert len(calls) == 1  # found, not fetched again


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    _offline(monkeypatch)
    monkeypatch.delenv("LUCIR_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = tiny_config(cache_dir=tmp_path, dataset="cifar100", num_classes=4, base_classes=2, phases=1)
    with pytest.raises(lucir.DataError) as info:
        load_dataset(config)
    message = str(info.value)
    assert "download failed" in message and "LUCIR_DATA" in message and "\n" not in message
    assert not (tmp_path / "xdg" / "lucir" / "data" / "cifar-100-python").exists()


def _offline(monkeypatch):
    """torchvision's CIFAR-100 download fails as on an offline machine (never hit the network)."""
    import torchvision.datasets

    def fail(*args, **kwargs):
        raise RuntimeError("offline")
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fail)


@pytest.mark.parametrize("dataset", ["cifar100", "tiny_imagenet", "imagenet", "imagenet_subset"])
def test_missing_data_folder_raises_data_error(dataset, tmp_path, monkeypatch):
    _offline(monkeypatch)
    monkeypatch.delenv("LUCIR_DATA", raising=False)
    missing = tmp_path / "no_such_folder"
    config = tiny_config(cache_dir=tmp_path, dataset=dataset, data_dir=str(missing), image_size=32)
    with pytest.raises(lucir.DataError) as info:
        lucir.run_incremental(config, tmp_path / "out")
    message = str(info.value)
    assert str(missing) in message
    assert "LUCIR_DATA" in message
    assert "\n" not in message


def _cifar_copy(src: Path, dst: Path, truncate: str) -> Path:
    """Links to the real files, with `truncate` replaced by its first 100 kB."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name == truncate:
            (dst / f.name).write_bytes(f.read_bytes()[:100_000])
        else:
            (dst / f.name).symlink_to(f)
    return dst


def test_corrupt_cifar_shard_raises_data_error(tmp_path, monkeypatch):
    _offline(monkeypatch)
    bad = _cifar_copy(need(CIFAR_DIR), tmp_path / "cifar100", truncate="train_images_0.npy.xz")
    config = tiny_config(cache_dir=tmp_path, **(CIFAR_SMALL | dict(data_dir=str(bad))))
    with pytest.raises(lucir.DataError) as info:
        load_dataset(config)
    assert str(bad) in str(info.value) and "corrupt" in str(info.value)


def _write_small_cifar(folder: Path, n_train=200, n_test=100, labels_for=None):
    """A small folder in the CIFAR array format (xz shards, labels.npz, classes.json)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train_images_0.npy.xz", n_train), ("test_images.npy.xz", n_test)):
        with lzma.open(folder / name, "wb") as fh:
            np.save(fh, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    n_lab = labels_for or n_train
    np.savez(folder / "labels.npz", train_fine_labels=(np.arange(n_lab) % 100).astype(np.uint8),
             test_fine_labels=(np.arange(n_test) % 100).astype(np.uint8))
    (folder / "classes.json").write_text(json.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return folder


def test_small_array_folder_loads(tmp_path):
    folder = _write_small_cifar(tmp_path / "ok")
    train_x, train_y, test_x, test_y, names, source = load_cifar100(folder)
    assert train_x.shape == (200, 32, 32, 3) and train_y.tolist()[:3] == [0, 1, 2] and len(names) == 100


def test_corrupt_cifar_labels_raise_data_error(tmp_path):
    folder = _write_small_cifar(tmp_path / "bad_labels")
    (folder / "labels.npz").write_bytes((folder / "labels.npz").read_bytes()[:200])
    with pytest.raises(lucir.DataError, match="corrupt"):
        load_cifar100(folder)


def test_cifar_label_count_mismatch_raises_data_error(tmp_path):
    folder = _write_small_cifar(tmp_path / "mismatch", labels_for=300)
    with pytest.raises(lucir.DataError, match="corrupt"):
        load_cifar100(folder)


def test_cifar_missing_classes_json_raises_data_error(tmp_path):
    folder = _write_small_cifar(tmp_path / "no_names")
    (folder / "classes.json").unlink()
    with pytest.raises(lucir.DataError, match="corrupt or incomplete"):
        load_cifar100(folder)


@pytest.mark.parametrize("truncate", ["val_jpeg.npz", "train_50per_class_jpeg.npz"])
def test_corrupt_tiny_imagenet_raises_data_error(truncate, tmp_path):
    bad = _cifar_copy(need(TINY_IMAGENET_DIR), tmp_path / "tiny_imagenet_subset", truncate=truncate)
    config = tiny_config(cache_dir=tmp_path, **(TINY_IMAGENET_SMALL | dict(data_dir=str(bad))))
    with pytest.raises(lucir.DataError) as info:
        load_dataset(config)
    assert str(bad) in str(info.value)


def test_imagenet_folder_layout(tmp_path):
    # train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; labels are the sorted wnids' indices
    from PIL import Image
    wnids = ["n003", "n001", "n002"]
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for w in wnids:
            (tmp_path / "imagenet" / split / w).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "imagenet" / split / w / f"{i}.JPEG")
    config = tiny_config(cache_dir=tmp_path, dataset="imagenet", data_dir=str(tmp_path), image_size=16,
                         num_classes=3, base_classes=1, phases=2)
    data = load_dataset(config)
    order = class_order(3, 1993)
    assert data.order == order
    assert data.class_names == [sorted(wnids)[c] for c in order]
    assert np.bincount(data.train_labels.numpy()).tolist() == [3, 3, 3]
    assert np.bincount(data.test_labels.numpy()).tolist() == [2, 2, 2]
    first = data.train.sources[0]
    assert Path(first).parent.name == sorted(wnids)[order[int(data.train_labels[0])]]
    assert data.train.batch(torch.arange(4), "cpu", train=True).shape == (4, 3, 16, 16)
    assert data.test.batch(torch.arange(2), "cpu", train=False).shape == (2, 3, 16, 16)
