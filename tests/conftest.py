"""Shared fixtures: tiny synthetic runs (seconds on a CPU), the offline data, and a cache
folder under pytest's tmp dir so that no test ever touches ~/.cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import lucir

# One intra-op thread: the runs here are tiny, and on a 2-core machine shared with other
# processes, OpenMP threads waiting on a busy core made single tests 20x slower.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the `python -m lucir` subprocesses

# Tiny end-to-end runs: 6 synthetic classes, base 2 + 2 phases of 2, 8 train / 4 test images per
# class, 2 epochs. Every field the cost depends on is set here, so a test reads as "TINY plus
# what this test is about".
TINY = dict(dataset="synthetic", num_classes=6, base_classes=2, phases=2, train_per_class=8,
            test_per_class=4, epochs=2, lr_milestones=(1,), batch_size=16, memory_per_class=2,
            eval_batch_size=64, cbf_epochs=1, cbf_lr_milestones=(), device="cpu", progress=False)

# The offline data: $LUCIR_DATA (what .ci/run sets), else ../shared/data beside the clone.
DATA_ROOT = Path(os.environ.get("LUCIR_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CIFAR_DIR = DATA_ROOT / "cifar100"
TINY_IMAGENET_DIR = DATA_ROOT / "tiny_imagenet_subset"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run on a CUDA GPU only (python benchmarks/gpu_check.py runs them there)."""
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (python benchmarks/gpu_check.py on one runs it)")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """LUCIR_CACHE under the session tmp dir, as a safety net behind the explicit cache_dir."""
    old = os.environ.get("LUCIR_CACHE")
    os.environ["LUCIR_CACHE"] = str(tmp_path_factory.mktemp("lucir_cache_env"))
    yield
    if old is None:
        os.environ.pop("LUCIR_CACHE", None)
    else:
        os.environ["LUCIR_CACHE"] = old


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """The base-phase cache shared by the session's runs (so its reuse can be tested)."""
    return str(tmp_path_factory.mktemp("base_cache"))


def tiny_config(preset: str = "lucir", cache_dir: str | os.PathLike | None = None, **overrides) -> lucir.Config:
    """TINY with `overrides`, on the preset's switches; cache_dir is always a tmp path."""
    assert cache_dir is not None, "every test run must set cache_dir to a tmp path"
    values = dict(TINY)
    values.update(overrides)
    values["cache_dir"] = str(cache_dir)
    return lucir.make_config(preset, **values)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, cache_dir):
    """One uninterrupted LUCIR run on TINY: (config, out_dir, metrics). Several tests compare to it."""
    out = tmp_path_factory.mktemp("reference_run")
    config = tiny_config("lucir", cache_dir)
    metrics = lucir.run_incremental(config, out)
    return config, out, metrics


def comparable(metrics: dict) -> dict:
    """metrics.json without the wall-clock fields, for run-to-run comparisons."""
    drop = {"train_seconds", "wall_seconds_this_call"}
    out = {k: v for k, v in metrics.items() if k not in drop}
    out["phases"] = [{k: v for k, v in p.items() if k != "seconds"} for p in metrics["phases"]]
    return out


def need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"offline data not found at {path} (set LUCIR_DATA)")
    return path
