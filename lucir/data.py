"""Datasets, the class order, phase splits, and augmentation of whole batches on the device.

CIFAR-100 and the synthetic set stay in memory as uint8 tensors; random crop (padding 4),
flip and normalisation run on a whole batch on the training device, so the hot path has no
per-sample PIL work. ImageNet-style data (folder layout, or JPEG bytes in the array format)
is decoded per sample with the paper's ImageNet transforms, in DataLoader worker processes
(config `workers`); each training sample's crop and flip come from its own seed, so the
result does not depend on the number of workers.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import provenance
from .config import Config, ConfigError, one_line

CIFAR_MEAN = (0.5071, 0.4866, 0.4409)  # the official code's (docs/protocol.md, settings)
CIFAR_STD = (0.2009, 0.1984, 0.2023)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(RuntimeError):
    """Missing or corrupt data; the message says where we looked and how to point at data."""


def class_order(num_classes: int, seed: int = 1993, run: int = 0) -> list[int]:
    """The random class order of run `run` (Sec. 4.1), drawn as the authors' scripts draw it:
    numpy is seeded once with `seed`, and each of their runs (--nb_runs) shuffles a fresh
    np.arange(num_classes) in turn, so run k's order is the (k+1)-th shuffle after the seed."""
    rng_state = np.random.get_state()
    np.random.seed(seed)
    for _ in range(run + 1):
        order = np.arange(num_classes)
        np.random.shuffle(order)
    np.random.set_state(rng_state)
    return [int(c) for c in order]


def imagenet_subset_order(names: list[str], seed: int = 1993, size: int = 100, run: int = 0) -> list[int]:
    """ImageNet-Subset's classes in class order, as indices into `names` (the sorted class folders),
    by the authors' procedure: gen_imagenet_subset.py seeds numpy with 1993 and draws `size`
    folders with np.random.choice(classes, size, replace=False); the subset is then read back as
    sorted folders (ImageFolder), and the training script seeds numpy with `seed` (1993) and
    shuffles np.arange(size) once per run (class_order) with no other draw in between. The subset
    is the same for every run; only the order of its classes changes."""
    chosen = np.random.RandomState(1993).choice(np.asarray(names), size, replace=False)
    subset = sorted(names.index(str(c)) for c in chosen)  # the subset's folders, sorted like `names`
    return [subset[i] for i in class_order(size, seed, run)]


def phase_classes(sizes: list[int]) -> list[range]:
    """Label ranges of each phase, in class-order positions: phase t covers range(a, b)."""
    out, start = [], 0
    for s in sizes:
        out.append(range(start, start + s))
        start += s
    return out


# --------------------------------------------------------------------------- image stores
def default_workers() -> int:
    """Decoding processes when config `workers` is None: one per core this process may use, at
    most 8 (under torchrun the cores are divided among the ranks of the machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cores // max(1, ranks_here)))


class _Normalizer:
    """The mean and std of a store as (1, 3, 1, 1) tensors, made once per device (not per batch)."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std
        self._stats: dict = {}

    def stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._stats:
            self._stats[key] = (torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                                torch.tensor(self.std, device=device).view(1, -1, 1, 1))
        return self._stats[key]


def _shard(batch: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """Rank r's part of a global batch of `world` ranks: the r-th of `world` near-equal slices."""
    rank, world = shard
    return batch if world == 1 else batch.tensor_split(world)[rank]


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-to-device copy that does not wait: pinned memory, non_blocking (CUDA only)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class ArrayImages(_Normalizer):
    """uint8 images (N, H, W, 3) kept as one tensor; batches are augmented on the device."""

    kind = "array"

    def __init__(self, images: np.ndarray | torch.Tensor, mean, std, pad: int = 4):
        super().__init__(mean, std)
        self.images = torch.as_tensor(images).permute(0, 3, 1, 2).contiguous()  # N, 3, H, W
        self.pad = pad
        self._device_cache: dict = {}

    def __len__(self):
        return len(self.images)

    def on(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._device_cache:
            self._device_cache = {key: self.images.to(device)}
        return self._device_cache[key]

    def batch(self, idx: torch.Tensor, device, train: bool, generator: torch.Generator | None = None,
              view: str = "none") -> torch.Tensor:
        """Normalised float batch of images `idx`; random crop + flip when `train`, else the
        test images in the given `view` (see `second_view`)."""
        return next(self.iterate([idx], device, train, generator, view))

    def iterate(self, batches: list[torch.Tensor], device, train: bool, generator: torch.Generator | None = None,
                view: str = "none", workers: int = 0, shard: tuple[int, int] = (0, 1)):
        """The normalised batches of the index tensors `batches` (on the CPU), in order; with
        `shard` = (rank, world), rank's slice of each. The crop offsets and flips of the whole
        epoch are drawn first, batch by batch in the order `batch` draws them (so the stream of
        `generator` is the same), and reach the device in one copy. `workers` is unused: the
        images are in memory."""
        device = torch.device(device)
        if not len(batches):
            return
        sizes = [len(b) for b in batches]
        idx = _to_device(torch.cat(list(batches)), device)
        images = self.on(device)
        mean, std = self.stats(device)
        if train:
            drawn = [crop_flip_params(n, self.pad, generator) for n in sizes]
            offsets = _to_device(torch.cat([d[0] for d in drawn], 1), device).split(sizes, 1)
            flips = _to_device(torch.cat([d[1] for d in drawn]), device).split(sizes)
        for k, batch in enumerate(idx.split(sizes)):
            x = images[_shard(batch, shard)]
            if train:
                params = (_shard(offsets[k].t(), shard).t(), _shard(flips[k], shard))
                x = random_crop_flip(x, self.pad, params=params)
            else:
                x = second_view(x, view)
            yield normalize(x, mean, std)


def second_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """A uint8 batch (N, 3, H, W) as the NME means see its second copy (config `nme_flip`):
    `channels` reverses the colour channels before normalisation, which is what the official
    CIFAR-100 code's `prototypes[...][:, :, :, ::-1]` does to its (N, H, W, C) arrays;
    `horizontal` mirrors the columns; `none` leaves the batch as it is."""
    if view == "channels":
        return x.flip(1)
    if view == "horizontal":
        return x.flip(3)
    if view == "none":
        return x
    raise ValueError(f"unknown view '{view}'; choose channels, horizontal or none")


def crop_flip_params(n: int, pad: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets (2, n) and flips (n,) for n images, drawn on the CPU from `generator` so
    that the result does not depend on the device."""
    off = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return off, flips


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                     params: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Random crop of the original size after zero padding, and a random horizontal flip,
    for a whole uint8 batch at once; `params` = crop_flip_params(...) drawn beforehand, else
    drawn here from `generator`."""
    b, c, h, w = x.shape
    off, flips = params if params is not None else crop_flip_params(b, pad, generator)
    off, flips = off.to(x.device), flips.to(x.device)
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (off[0][:, None] + torch.arange(h, device=x.device))  # b, h
    cols = (off[1][:, None] + torch.arange(w, device=x.device))  # b, w
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # b, h, w, c
    return out.permute(0, 3, 1, 2)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 batch -> float, (x / 255 - mean) / std, channels-last; mean and std are (1, 3, 1, 1)
    tensors on x's device (see _Normalizer.stats) or sequences."""
    m = mean if torch.is_tensor(mean) else torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = std if torch.is_tensor(std) else torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    out = (x.float().div_(255) - m) / s
    return out.contiguous(memory_format=torch.channels_last)


def sample_seed(epoch_key: int, index: int) -> int:
    """The seed of one training sample's crop and flip: a hash of the epoch's key (drawn from
    the phase's generator, itself seeded by run seed and phase) and the sample's index."""
    digest = hashlib.blake2b(f"{epoch_key}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def random_resized_crop_box(height: int, width: int, generator: torch.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style random crop (the paper's RandomResizedCrop):
    area a uniform share of the image in `scale`, log aspect ratio uniform in `ratio`, up to 10
    tries, else the largest centred crop whose ratio lies in `ratio`. Draws from `generator`."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class EncodedImages(_Normalizer):
    """JPEG images (file paths or bytes) decoded per sample with the ImageNet transforms of
    Sec. 4.1: RandomResizedCrop + flip for training, Resize(256/224 * size) + CenterCrop for test.
    Batches are decoded in DataLoader worker processes (see `iterate`)."""

    kind = "encoded"

    def __init__(self, sources: list, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 origin: tuple[str, list] | None = None):
        super().__init__(mean, std)
        self.sources, self.size = sources, size
        # for images given as bytes: where they came from (a description, their index there), so
        # that one that cannot be decoded is named; a file path names itself
        self.origin = origin
        self.resize = int(round(size * 256 / 224))
        self._loaders: dict = {}  # (workers, pin) -> a DataLoader whose worker processes persist
        self._passes = 0          # passes started; a pass resumed after a newer one began is an error

    def __getstate__(self):  # worker processes belong to this process: a copy starts its own
        return {k: v for k, v in self.__dict__.items() if k != "_loaders"} | {"_loaders": {}}

    def __len__(self):
        return len(self.sources)

    def _open(self, i: int):
        from PIL import Image
        src = self.sources[i]
        try:
            fh = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else open(src, "rb")
            with fh:
                return Image.open(fh).convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
            where = f"'{src}'" if not isinstance(src, (bytes, bytearray)) else (
                f"image {self.origin[1][i]} of {self.origin[0]}" if self.origin else f"encoded image {i}")
            raise DataError(f"{where} cannot be decoded ({type(e).__name__}: {one_line(str(e), 160)}); "
                            f"replace it from a good copy of the data") from None

    def decode(self, i: int, seed: int | None = None) -> torch.Tensor:
        """Image i as uint8 (3, size, size): the test transform when `seed` is None, else the
        training crop and flip drawn from a generator seeded with `seed`."""
        from torchvision.transforms import functional as TF
        img = self._open(i)
        if seed is None:
            img = TF.center_crop(TF.resize(img, self.resize), self.size)
        else:
            g = torch.Generator().manual_seed(seed)
            top, left, h, w = random_resized_crop_box(img.height, img.width, g)
            img = TF.resized_crop(img, top, left, h, w, [self.size, self.size])
            if torch.rand(1, generator=g).item() < 0.5:
                img = TF.hflip(img)
        return TF.pil_to_tensor(img)

    def batch(self, idx: torch.Tensor, device, train: bool, generator: torch.Generator | None = None,
              view: str = "none") -> torch.Tensor:
        return next(self.iterate([idx], device, train, generator, view))

    def iterate(self, batches: list[torch.Tensor], device, train: bool, generator: torch.Generator | None = None,
                view: str = "none", workers: int = 0, shard: tuple[int, int] = (0, 1)):
        """The normalised batches of the index tensors `batches` (on the CPU), in order, decoded
        by `workers` DataLoader processes (0 = in this process) with prefetching, into pinned
        memory when the device is CUDA, copied without blocking. For training, one key per call
        (an epoch) is drawn from `generator`; sample i's crop and flip then come from
        sample_seed(key, i), the same whichever process decodes it. `shard` as in ArrayImages."""
        device = torch.device(device)
        mean, std = self.stats(device)
        for x in self.decoded(batches, train, generator, workers, shard, pin=device.type == "cuda"):
            x = x.to(device, non_blocking=True)
            if not train:
                x = second_view(x, view)
            yield normalize(x, mean, std)

    def decoded(self, batches: list[torch.Tensor], train: bool, generator: torch.Generator | None = None,
                workers: int = 0, shard: tuple[int, int] = (0, 1), pin: bool = False):
        """The uint8 batches (decoded, cropped and flipped; not yet normalised) that `iterate`
        sends to the device: the work of the DataLoader and its `workers` processes."""
        from torch.utils.data import DataLoader
        key = int(torch.randint(0, 2 ** 62, (1,), generator=generator)) if train else None
        plan = [[(i, sample_seed(key, i) if train else None) for i in _shard(b, shard).tolist()] for b in batches]
        plan = [b for b in plan if b]
        if workers == 0:
            yield from DataLoader(_Decoder(self), batch_sampler=plan, num_workers=0, pin_memory=pin)
            return
        # One DataLoader per (workers, pin) serves every pass (epoch, extraction) over this store:
        # its worker processes start once and persist, instead of once per pass. Its batch sampler
        # is set to this pass's plan; the items carry their seeds, so nothing else changes.
        loader = self._loaders.get((workers, pin))
        if loader is None:
            loader = DataLoader(_Decoder(self), batch_sampler=_Plan(), num_workers=workers, pin_memory=pin,
                                prefetch_factor=4, persistent_workers=True)
            self._loaders[(workers, pin)] = loader
        loader.batch_sampler.batches = plan
        self._passes += 1
        this_pass = self._passes
        it = iter(loader)  # what an unfinished earlier pass left in flight (batch() takes one) is dropped
        while True:
            if self._passes != this_pass:
                raise RuntimeError("two passes over one EncodedImages store at once: finish one before starting "
                                   "the next (they share its decoding workers)")
            try:
                x = next(it)
            except StopIteration:
                return
            except DataError as e:  # re-raised from a worker with its traceback: keep our line
                raise DataError(str(e).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None
            yield x


class _Plan(torch.utils.data.Sampler):
    """The batches of the current pass: the batch sampler of a DataLoader with persistent
    workers, set anew before each pass."""

    def __init__(self):
        self.batches: list = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class _Decoder(torch.utils.data.Dataset):
    """Item (index, seed) of an EncodedImages -> its uint8 image (seed None = test transform)."""

    def __init__(self, store: EncodedImages):
        self.store = store

    def __len__(self):
        return len(self.store)

    def __getitem__(self, item):
        return self.store.decode(*item)


# --------------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    """Train and test images with labels already mapped to class-order positions 0..n-1."""
    name: str
    train: ArrayImages | EncodedImages
    train_labels: torch.Tensor
    test: ArrayImages | EncodedImages
    test_labels: torch.Tensor
    class_names: list[str]  # in class-order positions
    order: list[int]        # original class id of each position
    source: str             # where the data came from, for provenance


# Classes, train and test images per class of each dataset (the full sets): for the cost model
# of lucir.scheduler and the report's settings table; the loaders read the real counts.
DATASET_SIZE = {"cifar100": (100, 500, 100), "imagenet": (1000, 1300, 50), "imagenet_subset": (100, 1300, 50),
                "tiny_imagenet": (200, 50, 50), "synthetic": (10, 50, 20)}


def default_data_root() -> Path:
    """Where data goes when neither data_dir nor $LUCIR_DATA says: ~/.cache/lucir/data (or
    $XDG_CACHE_HOME/lucir/data); CIFAR-100 is downloaded there on first use."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lucir" / "data"


def data_root(config: Config) -> Path:
    """The data folder: config.data_dir, else $LUCIR_DATA (made absolute where it is read, so that
    provenance names the folder itself), else default_data_root()."""
    if config.data_dir:
        return Path(config.data_dir).expanduser()
    if os.environ.get("LUCIR_DATA"):
        return Path(os.environ["LUCIR_DATA"]).expanduser().resolve()
    return default_data_root()


# How a data error says to point at the data: both commands take LUCIR_DATA; the config field
# data_dir is given as --set to `python -m lucir run`, in a profile's `shared` to lucir.study.
DATA_HINT = ("LUCIR_DATA=/path, or the config field data_dir (--set data_dir=/path with python -m lucir run, "
             "data_dir under shared: in a study profile)")

# torchvision's CIFAR-100 folder (python pickles), and what downloading it costs.
CIFAR100_TORCHVISION = "cifar-100-python"
CIFAR100_DOWNLOAD = "161 MiB from www.cs.toronto.edu, about 178 MiB once unpacked (the archive is then removed)"

# Where each dataset's files are looked for: subfolders of the data root (the root itself is
# tried first) and the files or folders whose presence marks the right one (any of them).
DATA_FOLDERS = {"cifar100": (("cifar100", "cifar-100"), ("labels.npz", f"{CIFAR100_TORCHVISION}/train")),
                "tiny_imagenet": (("tiny_imagenet_subset", "tiny_imagenet"), ("val_jpeg.npz",)),
                "imagenet": (("imagenet", "ILSVRC2012"), ("train",)),
                "imagenet_subset": (("imagenet", "ILSVRC2012"), ("train",))}


def find_data_folder(root: Path, dataset: str) -> Path | None:
    """The folder of `dataset` under the data root (see DATA_FOLDERS), or None when absent. For
    CIFAR-100 the array format wins over torchvision's folder where both are present."""
    names, markers = DATA_FOLDERS[dataset]
    for marker in markers:
        for cand in (root, *[root / n for n in names]):
            if (cand / marker).exists():
                return cand
    return None


def data_identity(config: Config) -> str:
    """What the data of `config` is, for the keys of what is computed from it (the base-phase
    cache), so that the same data under another path or on another machine gives the same key:
    the sha256 of its SHA256SUMS list (the array formats; the files are checked against it before
    a study trains), or of torchvision's CIFAR-100 pickles. Folders of JPEGs (ImageNet) have no
    checksum list, and data not found yet has no content: their resolved path stands for them."""
    root = data_root(config)
    folder = find_data_folder(root, config.dataset) if config.dataset in DATA_FOLDERS else None
    if folder is not None and (folder / "SHA256SUMS").is_file():
        return "sha256sums:" + _file_digest(folder / "SHA256SUMS")
    if folder is not None and config.dataset == "cifar100" and (folder / CIFAR100_TORCHVISION / "train").is_file():
        return "torchvision:" + ",".join(_file_digest(folder / CIFAR100_TORCHVISION / name)
                                         for name in ("train", "test", "meta"))
    return str(root.resolve())


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, computed once per (path, size, modification time) in a process."""
    return provenance.sha256(Path(path))


def download_cifar100(root: Path) -> Path:
    """Download CIFAR-100 through torchvision (which checks its MD5 sums) into
    root/cifar-100-python, once: under a lock, so that runs started together wait for the first,
    and unpacked beside it then moved into place, so that a broken download leaves nothing."""
    import shutil
    import sys
    import tempfile
    from .results import locked
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / f".{CIFAR100_TORCHVISION}.lock"):
        if (root / CIFAR100_TORCHVISION / "train").exists():
            return root
        print(f"CIFAR-100 not found in '{root}': downloading it through torchvision ({CIFAR100_DOWNLOAD})",
              file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
        try:
            from torchvision.datasets import CIFAR100
            CIFAR100(str(tmp), train=True, download=True)
            os.replace(tmp / CIFAR100_TORCHVISION, root / CIFAR100_TORCHVISION)
        except Exception as e:  # noqa: BLE001  (no network, disk full, bad checksum: one line)
            raise DataError(f"CIFAR-100 not found in '{root}' and the download failed ({type(e).__name__}: "
                            f"{one_line(str(e), 200)}); offline, point at the data with "
                            f"{DATA_HINT}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# What torchvision's CIFAR-100 pickles hold besides dicts, lists, strings and numbers: numpy
# arrays (and numpy scalars), rebuilt by these numpy functions, and bytes, which Python 3 writes at
# protocol 2 as _codecs.encode(text, "latin1") (the same files written again, as tests/conftest.py
# does). Nothing else is let through.
CIFAR_PICKLE_GLOBALS = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                        for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"),
                                                                    ("_codecs", "encode")}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler for torchvision's cifar-100-python files that accepts only the types they hold
    (CIFAR_PICKLE_GLOBALS): a file from elsewhere that names any other callable (os.system, say)
    is refused before anything of it runs. Python 2 strings are read as latin-1, as torchvision does."""

    def __init__(self, fh, path: Path):
        super().__init__(fh, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise DataError(f"'{self.path}' is not a CIFAR-100 file of torchvision: it asks to load "
                            f"'{module}.{name}', which those files never hold, so it was not read (nothing in it "
                            f"ran); delete '{self.path.parent}' and point at the data again")
        return super().find_class(module, name)


def read_torchvision_cifar100(folder: Path):
    """(train_x, train_y, test_x, test_y, names) from torchvision's cifar-100-python pickles in
    `folder`, in the array format's order (position i holds class i % 100, its (i // 100)-th
    image; see array_format_order), so that both formats give the same runs. A file that cannot
    be read, or does not hold what those files hold, is a DataError naming it."""
    def load(name, fields):
        path = Path(folder) / CIFAR100_TORCHVISION / name
        try:
            with open(path, "rb") as fh:
                return fields(CifarUnpickler(fh, path).load())
        except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, pickle.UnpicklingError) as e:
            raise DataError(f"'{path}' is corrupt or incomplete ({type(e).__name__}: {one_line(str(e), 200)}); "
                            f"put torchvision's file there, or delete '{path.parent}' to download it again") from None

    def images(d):
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.asarray(d["fine_labels"], dtype=np.int64)
        keep = array_format_order(y)
        return [np.ascontiguousarray(x[keep]), y[keep]]

    return (*load("train", images), *load("test", images), list(load("meta", lambda d: d["fine_label_names"])))


def array_format_order(labels: np.ndarray) -> np.ndarray:
    """The permutation that puts images in the array format's order: by rank within their class
    (the order of the original file kept), then by class."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))


def _missing(what: str, root: Path, expected: str) -> DataError:
    return DataError(f"{what} not found in '{root}' (expected {expected}); point at it with {DATA_HINT}")


@lru_cache(maxsize=2)  # loaded once per process: a notebook runs many configs
def load_cifar100(root: Path):
    """(train_x, train_y, test_x, test_y, names, source) from the array format or torchvision's
    cifar-100-python; when neither is under `root` and `root` is the default data folder (no
    data_dir, no $LUCIR_DATA), downloaded there through torchvision."""
    arr = find_data_folder(root, "cifar100")
    if arr is None and Path(root) != default_data_root():
        raise _missing("CIFAR-100", root, "the array format (train_images_*.npy.xz, labels.npz) or torchvision's "
                       f"{CIFAR100_TORCHVISION}; it is downloaded only into the default folder {default_data_root()}, "
                       "with LUCIR_DATA and data_dir unset")
    if arr is None or not (arr / "labels.npz").exists():
        folder = arr or download_cifar100(root)
        return (*read_torchvision_cifar100(folder), f"torchvision's {CIFAR100_TORCHVISION} at {folder}")
    try:
        shards = sorted(arr.glob("train_images_*.npy.xz"), key=lambda p: int(p.name.split("_")[2].split(".")[0]))
        if not shards:
            raise DataError(f"CIFAR-100 array data in '{arr}' has no train_images_*.npy.xz shards")
        train_x = np.concatenate([_load_xz(p) for p in shards])
        test_x = _load_xz(arr / "test_images.npy.xz")
        lab = np.load(arr / "labels.npz")
        train_y, test_y = lab["train_fine_labels"].astype(np.int64), lab["test_fine_labels"].astype(np.int64)
        names = json.loads((arr / "classes.json").read_text())["fine_label_names"]
    except DataError:
        raise
    except (OSError, EOFError, ValueError, KeyError, lzma.LZMAError, zipfile.BadZipFile) as e:
        raise DataError(f"CIFAR-100 data in '{arr}' is corrupt or incomplete ({type(e).__name__}: {e}); "
                        f"check it with 'sha256sum -c SHA256SUMS'") from None
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"CIFAR-100 data in '{arr}' is corrupt: {len(train_x)} train images for "
                        f"{len(train_y)} labels")
    return train_x, train_y, test_x, test_y, names, f"array format at {arr}"


def _load_xz(path: Path) -> np.ndarray:
    with lzma.open(path) as fh:
        return np.load(fh)


@lru_cache(maxsize=2)  # loaded once per process: a notebook runs many configs
def load_tiny_imagenet(root: Path):
    """The Tiny-ImageNet subset in the array format (JPEG bytes), the ImageNet stand-in."""
    d = find_data_folder(root, "tiny_imagenet")
    if d is None:
        raise _missing("Tiny-ImageNet subset", root, "train_50per_class_jpeg.npz and val_jpeg.npz")
    out = []
    try:
        for name in ("train_50per_class_jpeg.npz", "val_jpeg.npz"):
            z = np.load(d / name, allow_pickle=False)
            b, o = z["jpeg_bytes"], z["offsets"]
            out.append(([b[o[i]:o[i + 1]].tobytes() for i in range(len(o) - 1)], z["labels"].astype(np.int64)))
        names = json.loads((d / "classes.json").read_text())["class_names"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"Tiny-ImageNet data in '{d}' is corrupt or incomplete ({type(e).__name__}: {e})") from None
    (tr, tr_y), (te, te_y) = out
    return tr, tr_y, te, te_y, names, f"array format at {d}"


@lru_cache(maxsize=2)  # loaded once per process: a notebook runs many configs
def load_imagenet_folder(root: Path):
    """ImageNet in the usual layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    d = find_data_folder(root, "imagenet")
    if d is None or not (d / "val").is_dir():
        raise _missing("ImageNet", root, "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    wnids = sorted(p.name for p in (d / "train").iterdir() if p.is_dir())
    if not wnids:
        raise DataError(f"ImageNet folder '{d}/train' has no class folders")
    index = {w: i for i, w in enumerate(wnids)}

    def scan(split):
        paths, labels = [], []
        for w in wnids:
            for p in sorted((d / split / w).glob("*")):
                if p.suffix.lower() in (".jpeg", ".jpg", ".png"):
                    paths.append(str(p))
                    labels.append(index[w])
        return paths, np.array(labels, dtype=np.int64)

    tr, tr_y = scan("train")
    te, te_y = scan("val")
    return tr, tr_y, te, te_y, wnids, f"folder at {d}"


def synthetic_data(num_classes: int, train_per_class: int, test_per_class: int, seed: int = 0, size: int = 32):
    """A deterministic, learnable image set: each class is a smooth random colour pattern;
    samples add noise and a small shift. Seconds to train; for tests and the smoke preset."""
    g = np.random.default_rng(seed)
    protos = g.uniform(0, 255, (num_classes, 4, 4, 3))
    protos = np.kron(protos, np.ones((size // 4, size // 4, 1)))  # C, size, size, 3

    def make(n, rng):
        y = np.repeat(np.arange(num_classes), n)
        x = protos[y] + rng.normal(0, 40, (len(y), size, size, 3))
        shift = rng.integers(-3, 4, (len(y), 2))
        x = np.stack([np.roll(img, tuple(s), axis=(0, 1)) for img, s in zip(x, shift)])
        # interleave classes like the CIFAR array format (position i holds class i % C)
        perm = np.arange(len(y)).reshape(num_classes, n).T.reshape(-1)
        return np.clip(x, 0, 255).astype(np.uint8)[perm], y[perm]

    tr, tr_y = make(train_per_class, np.random.default_rng(seed + 1))
    te, te_y = make(test_per_class, np.random.default_rng(seed + 2))
    return tr, tr_y, te, te_y, [f"class{c}" for c in range(num_classes)], f"synthetic(seed={seed})"


def _first_per_class(labels: np.ndarray, k: int | None) -> np.ndarray:
    """Indices keeping the first k samples of each class, in dataset order."""
    if k is None:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:k]] = True
    return np.flatnonzero(keep)


def load_dataset(config: Config) -> Dataset:
    """Load config.dataset, apply the class order and the per-class reductions of the config,
    and map labels to class-order positions (phase t then holds a contiguous label range)."""
    root = data_root(config)
    if config.dataset == "synthetic":
        n = config.num_classes or 10
        raw = synthetic_data(n, config.train_per_class or 50, config.test_per_class or 20)
    elif config.dataset == "cifar100":
        raw = load_cifar100(root)
    elif config.dataset == "tiny_imagenet":
        raw = load_tiny_imagenet(root)
    elif config.dataset in ("imagenet", "imagenet_subset"):
        raw = load_imagenet_folder(root)
    else:
        raise ConfigError(f"unknown dataset '{config.dataset}'")
    tr, tr_y, te, te_y, names, source = raw
    total = len(names)
    order = class_order(total, config.class_order_seed, config.class_order_run)
    if config.dataset == "imagenet_subset":
        order = imagenet_subset_order(names, config.class_order_seed, run=config.class_order_run)
    n = config.num_classes or len(order)
    if n > len(order):
        raise ConfigError(f"num_classes={n} but {config.dataset} has {len(order)} classes")
    order = order[:n]
    position = np.full(total, -1, dtype=np.int64)
    position[order] = np.arange(n)

    def select(x, y, per_class, split):
        keep = np.flatnonzero(position[y] >= 0)
        keep = keep[_first_per_class(y[keep], per_class)]
        labels = torch.from_numpy(position[y[keep]])
        if isinstance(x, np.ndarray):
            mean, std = (CIFAR_MEAN, CIFAR_STD)
            return ArrayImages(x[keep], mean, std), labels
        return EncodedImages([x[i] for i in keep], config.image_size, origin=(f"the {split} images in {source}",
                                                                               keep.tolist())), labels

    train, train_labels = select(tr, tr_y, config.train_per_class, "training")
    test, test_labels = select(te, te_y, config.test_per_class, "test")
    return Dataset(config.dataset, train, train_labels, test, test_labels,
                   [names[c] for c in order], order, source)
