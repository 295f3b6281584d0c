"""Where results came from: git commit, package versions, device, date, data checksums."""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lucir", "torch", "torchvision", "numpy", "pandas", "matplotlib", "seaborn", "papermill",
            "nbconvert", "nbformat", "ipykernel")


def git_state(root: Path = REPO_ROOT) -> dict:
    """Commit and whether the working tree had uncommitted changes (None outside a checkout)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    """The accelerator if there is one, else the CPU model, and the core count."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_checksums(folder: Path) -> list[dict]:
    """sha256 of every file listed in the folder's SHA256SUMS, checked against the listed value."""
    listing = Path(folder) / "SHA256SUMS"
    if not listing.exists():
        return []
    rows = []
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        expected, name = line.split(maxsplit=1)
        path = Path(folder) / name.lstrip("*")
        actual = sha256(path) if path.exists() else None
        rows.append({"file": name, "sha256": actual, "expected": expected, "ok": actual == expected})
    return rows


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def collect() -> dict:
    """Everything above except data checksums (cheap: for every notebook's table)."""
    return {"date": now(), "git": git_state(), "versions": versions(), "device": device_info()}
