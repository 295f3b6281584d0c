"""The data of a study: where each real dataset its runs read is, in which format, with
checksums (recorded in study.json's provenance), the dry run's lines about it, and the check
before any run starts (missing or corrupt data stops the study; CIFAR-100 missing from the
default folder is downloaded there once)."""
from __future__ import annotations

from pathlib import Path

from . import provenance
from .profiles import Pair
from .studies import StudyError


def data_provenance(pairs: list[Pair]) -> list[dict]:
    """Where the data of every real dataset the study uses is, in which format, with checksums
    (the array format's SHA256SUMS, checked; sha256 of torchvision's CIFAR-100 files), or, for
    CIFAR-100 missing from the default data folder, that it will be downloaded there."""
    from . import data as data_mod
    out, seen = [], set()
    for pair in pairs:
        for planned in pair.plan[:1]:
            c = planned.config()
            if c.dataset == "synthetic" or c.dataset in seen:
                continue
            seen.add(c.dataset)
            root = data_mod.data_root(c)
            folder = data_mod.find_data_folder(root, c.dataset)
            entry = {"dataset": c.dataset, "folder": str(folder or root), "found": folder is not None,
                     "format": None, "download": False, "files": []}
            if folder is not None and c.dataset == "cifar100" and not (folder / "labels.npz").exists():
                tv = folder / data_mod.CIFAR100_TORCHVISION
                entry["format"] = "torchvision"
                entry["files"] = [{"file": f"{tv.name}/{name}", "sha256": provenance.sha256(tv / name),
                                   "expected": None, "ok": None} for name in ("train", "test", "meta")]
            elif folder is not None:
                entry["format"] = "array" if c.dataset in ("cifar100", "tiny_imagenet") else "folders"
                entry["files"] = provenance.data_checksums(folder)
            elif c.dataset == "cifar100" and root == data_mod.default_data_root():
                entry["download"] = True
            out.append(entry)
    return out


def data_plan_lines(data: list[dict]) -> list[str]:
    """One line per dataset: where it is and in which format, or what will be downloaded."""
    from .data import CIFAR100_DOWNLOAD, CIFAR100_TORCHVISION
    lines = []
    for d in data:
        if d["found"]:
            lines.append(f"{d['dataset']}: {d['format']} format in {d['folder']}")
        elif d["download"]:
            lines.append(f"{d['dataset']}: not in {d['folder']}; downloaded there through torchvision into "
                         f"{CIFAR100_TORCHVISION}/ before the runs start ({CIFAR100_DOWNLOAD})")
        else:
            lines.append(f"{d['dataset']}: NOT FOUND under {d['folder']}")
    return lines


def preflight_data(data: list[dict]) -> None:
    """Stop with one line when data is missing or fails its checksums; download CIFAR-100 into
    the default data folder when it is missing there (once, before any run starts)."""
    from .data import DataError, download_cifar100
    for d in data:
        if d["download"]:
            try:
                download_cifar100(Path(d["folder"]))
            except DataError as e:
                raise StudyError(str(e)) from None
            continue
        if not d["found"]:
            raise StudyError(f"{d['dataset']} data not found under '{d['folder']}'; point at it with "
                             f"LUCIR_DATA=/path (or data_dir in the profile's shared overrides)")
        bad = [f["file"] for f in d["files"] if f["ok"] is False]
        if bad:
            raise StudyError(f"{d['dataset']} data in '{d['folder']}' fails its SHA256SUMS check: {', '.join(bad)}")
