"""The GPU machine's image, simulated on a CPU: a virtual environment with exactly its packages
(issue 31), built once and cached outside the repository, keyed by the package list.

The image has Python 3.12; this machine has only 3.11, so the venv is made with the Python that
runs the tests (`sys.executable -m venv`, 3.11 here). The image's torch and torchvision are the
pinned versions below, from PyPI (its Linux wheels carry the CUDA libraries; there is no CPU-only
wheel there): about 5 GB and a minute to install, then seconds for every later run. Nothing of
the Jupyter stack, Ray, Submitit or Selenium is installed, and neither is the project: the GPU
command must run from the copied work tree as it is.

    python3 tests/gpu_image.py        # build (or find) the venv and print its python
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

# The image's packages (issue 31, "Why"), exactly.
IMAGE_PACKAGES = ("torch==2.11.0", "torchvision==0.26.0", "numpy", "pandas", "pyyaml", "pillow", "matplotlib",
                  "seaborn", "scikit-learn", "tqdm", "pytest", "psutil", "filelock")
# What the image does not have; none of it may be importable in the venv.
NOT_ON_IMAGE = ("IPython", "ipykernel", "jupyter_client", "nbformat", "nbconvert", "papermill", "ray", "submitit",
                "selenium", "lucir")


def venv_root() -> Path:
    """Where the venvs are kept: $LUCIR_IMAGE_VENVS, else ~/.cache/lucir-gpu-image (never in the repo,
    never under the per-session LUCIR_CACHE, so that a later CI run finds it)."""
    if os.environ.get("LUCIR_IMAGE_VENVS"):
        return Path(os.environ["LUCIR_IMAGE_VENVS"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lucir-gpu-image"


def venv_key(packages=IMAGE_PACKAGES) -> str:
    """The package list and the Python's version: a different list or Python is a different venv."""
    text = "\n".join(sorted(packages)) + f"\npython {sys.version_info.major}.{sys.version_info.minor}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_python(packages=IMAGE_PACKAGES, timeout: float = 1500) -> Path:
    """The python of the image's venv, built first if it is not there (under a file lock, into a
    temporary folder renamed when complete, so that an interrupted build is never used)."""
    from filelock import FileLock
    root = venv_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / venv_key(packages)
    with FileLock(str(final) + ".lock"):
        if not (final / "complete").exists():
            building = root / (final.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, timeout=300)
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_USER")}
            subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", *packages],
                           check=True, timeout=timeout, env=env)
            (building / "complete").write_text("\n".join(packages) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            building.rename(final)
    return final / "bin" / "python"


if __name__ == "__main__":
    print(image_python())
