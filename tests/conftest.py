"""Shared fixtures: tiny synthetic runs (seconds on a CPU), the offline data, and a cache
folder under pytest's tmp dir so that no run of a test ever touches ~/.cache (the one thing kept
there on purpose is the simulated GPU image's venv, ~/.cache/lucir-gpu-image: tests/gpu_image.py)."""
from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lucir
from lucir import results as res

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


comparable = res.without_clocks  # metrics.json without the wall-clock fields, for run-to-run comparisons


def phase_state(out_dir: Path, phase: int) -> dict:
    """The checkpoint a run wrote at the end of `phase`."""
    return torch.load(Path(out_dir) / "checkpoints" / f"phase_{phase}.pt", map_location="cpu", weights_only=False)


def phase_model(config: lucir.Config, out_dir: Path, phase: int):
    """(the model of a phase checkpoint as run_incremental holds it, in channels_last; the checkpoint)."""
    from lucir.models import build_model
    state = phase_state(out_dir, phase)
    model = build_model(config.resolved_model, state["num_classes"], config.cosine_normalization,
                        config.resolved_last_relu, config.eta_init)
    model.load_state_dict(state["model"])
    return model.to(memory_format=torch.channels_last), state


def file_hashes(folder: Path) -> dict:
    """{relative path: sha256} of every file under `folder`, to show that nothing was written."""
    import hashlib
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"offline data not found at {path} (set LUCIR_DATA)")
    return path


def write_torchvision_cifar100(arrays, root: Path, seed: int = 0) -> Path:
    """torchvision's cifar-100-python (pickles of (N, 3072) uint8 rows, fine labels, meta) made from
    the array data, with the classes interleaved in another order, as in the official files (the
    order within each class kept): what a download puts into the data folder."""
    import pickle
    train_x, train_y, test_x, test_y, names = arrays[:5]
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        # a random interleaving of the classes that keeps each class's own order
        slots = rng.permutation(np.repeat(np.arange(100), np.bincount(y, minlength=100)))
        perm = np.empty(len(y), dtype=np.int64)
        for c in range(100):
            perm[slots == c] = np.flatnonzero(y == c)
        rows = x[perm].transpose(0, 3, 1, 2).reshape(len(y), -1)
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": rows, "fine_labels": [int(v) for v in y[perm]],
                         "coarse_labels": [0] * len(y)}, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": list(names), "coarse_label_names": []}, fh, protocol=2)
    return root


@pytest.fixture(scope="session")
def torchvision_cifar100(tmp_path_factory):
    """(the array data, a data folder holding only torchvision's CIFAR-100 files made from it)."""
    from lucir.data import load_cifar100
    arrays = load_cifar100(need(CIFAR_DIR))
    return arrays, write_torchvision_cifar100(arrays, tmp_path_factory.mktemp("tv") / "data")


def process_alive(pid: int) -> bool:
    """A process that has not ended, from /proc (Linux): a zombie nobody has reaped yet has ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def submit_as_the_follower_fails(executor, pause_launch, first, second) -> dict:
    """An executor whose runs a thread follows (Ray, Slurm): submit `first`, then `second` while
    that thread fails. `pause_launch(pause)` makes the executor call pause() inside submit, after
    its check that the follower runs and before the run's future is registered (the Ray task's
    start, the Slurm job's sbatch). The follower fails there: its stop event raises. What each
    future ended with (None while it has not ended 30 s after the failure), and what a third
    submit raised."""
    import threading
    armed, failed, error = threading.Event(), threading.Event(), RuntimeError("the cluster is gone")

    class FailingStop(threading.Event):
        def is_set(self):
            return self._fail() or super().is_set()

        def wait(self, timeout=None):
            return self._fail() or super().wait(timeout)

        def _fail(self):
            if armed.is_set():
                failed.set()
                raise error
            return False

    def pause():
        armed.set()
        assert failed.wait(60), "the follower thread did not look at its stop event"
        deadline = time.time() + 2  # left alone, the follower ends the runs it knows of at once
        while executor.error is None and time.time() < deadline:
            time.sleep(0.01)

    executor.stopping = FailingStop()
    futures = {"first": executor.submit(first)}
    pause_launch(pause)
    try:
        futures["second"] = executor.submit(second)
    except RuntimeError as e:
        futures["second"] = e
    ended = {}
    for key, future in futures.items():
        if isinstance(future, Exception):
            ended[key] = ("refused", future)
            continue
        try:
            ended[key] = ("result", future.result(timeout=30))
        except concurrent.futures.TimeoutError:
            ended[key] = None
        except Exception as e:  # noqa: BLE001
            ended[key] = ("raised", e)
    try:
        executor.submit(second)
        ended["third"] = None
    except RuntimeError as e:
        ended["third"] = ("refused", e)
    ended["error"] = error
    return ended
