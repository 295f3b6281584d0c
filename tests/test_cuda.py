"""The CUDA-only paths, on a CUDA GPU (marker `cuda`: skipped without one; `python
benchmarks/gpu_check.py` runs them first): a one-process run (no SyncBatchNorm), pinned memory
and non-blocking copies of the JPEG path, bf16 and fp16 autocast (with its gradient scaler),
compile with inductor, and runs that repeat and resume to the bit with `deterministic`."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import lucir
from lucir import results as res
from lucir.data import EncodedImages

from conftest import comparable, tiny_config
from test_gpu_path import _counting_compile

pytestmark = pytest.mark.cuda

# A GPU run repeats only with deterministic algorithms; every run here asks for them.
CUDA = dict(device="cuda", deterministic=True, cache_base=False)


def _weights(out, phase):
    return torch.load(res.checkpoint_path(out, phase), map_location="cpu", weights_only=True)["model"]


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Stop(Exception):
    pass


def test_one_process_cuda_run_repeats_and_resumes_from_an_epoch_to_the_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.nn.SyncBatchNorm, "convert_sync_batchnorm",
                        lambda *a, **k: pytest.fail("one process needs no SyncBatchNorm"))
    config = tiny_config("lucir", tmp_path / "cache", class_balanced_finetune=True, **CUDA)
    first = lucir.run_incremental(config, tmp_path / "first")
    assert first["complete"] and all(0 <= p["acc_cnn"] <= 1 for p in first["phases"])
    second = lucir.run_incremental(config, tmp_path / "second")
    assert comparable(second) == comparable(first)
    assert _same_weights(_weights(tmp_path / "second", 2), _weights(tmp_path / "first", 2))

    def stop_after_first_epoch(desc, epoch, epochs):  # the epoch checkpoint is written just before
        if desc.startswith("phase 1 (") and epoch == 1:
            raise Stop(desc)

    with pytest.raises(Stop):
        lucir.run_incremental(config, tmp_path / "resumed", on_epoch=stop_after_first_epoch)
    assert res.epoch_checkpoint_path(tmp_path / "resumed").exists()
    resumed = lucir.run_incremental(config, tmp_path / "resumed")
    assert comparable(resumed) == comparable(first)
    assert _same_weights(_weights(tmp_path / "resumed", 2), _weights(tmp_path / "first", 2))


def _jpegs(n: int, size=(96, 72)) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_jpeg_batches_reach_the_gpu_pinned_and_equal_the_cpu_path(workers, monkeypatch):
    pinned = []
    real = torch.utils.data.DataLoader.__init__

    def recording(self, *args, **kwargs):
        pinned.append(kwargs.get("pin_memory"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", recording)
    sources = _jpegs(12)
    batches = list(torch.arange(12).split(5))
    on_gpu = list(EncodedImages(sources, 32).iterate(batches, torch.device("cuda"), train=True,
                                                     generator=torch.Generator().manual_seed(3), workers=workers))
    on_cpu = list(EncodedImages(sources, 32).iterate(batches, torch.device("cpu"), train=True,
                                                     generator=torch.Generator().manual_seed(3), workers=workers))
    assert True in pinned and all(x.is_cuda for x in on_gpu)
    for g, c in zip(on_gpu, on_cpu, strict=True):
        torch.testing.assert_close(g.cpu(), c, rtol=0, atol=1e-6)


def test_bf16_where_native_and_fp16_with_its_gradient_scaler(tmp_path, monkeypatch):
    base = dict(num_classes=4, phases=1, **CUDA)
    fp32 = lucir.run_incremental(tiny_config("lucir", tmp_path / "c", **base), tmp_path / "fp32")
    if torch.cuda.get_device_capability()[0] >= 8:
        bf16 = lucir.run_incremental(tiny_config("lucir", tmp_path / "c", amp="bf16", **base), tmp_path / "bf16")
        assert bf16["complete"] and not _same_weights(_weights(tmp_path / "bf16", 0), _weights(tmp_path / "fp32", 0))
    else:
        with pytest.raises(lucir.ConfigError, match="no native bfloat16"):
            lucir.run_incremental(tiny_config("lucir", tmp_path / "c", amp="bf16", **base), tmp_path / "bf16")
    saved = []
    save = res.save_state
    monkeypatch.setattr(res, "save_state", lambda path, state: (saved.append(state), save(path, state)))
    fp16 = lucir.run_incremental(tiny_config("lucir", tmp_path / "c", amp="fp16", **base), tmp_path / "fp16")
    assert fp16["complete"] and all(np.isfinite(p["eta"]) for p in fp16["phases"])
    assert saved and all(s["scaler"]["scale"] > 0 for s in saved)  # the scaler ran and is resumable
    assert not _same_weights(_weights(tmp_path / "fp16", 0), _weights(tmp_path / "fp32", 0))
    assert fp32["complete"]


# Inductor on CUDA reorders and fuses sums: the tolerance of compiled against eager weights after
# the tiny run (two epochs per phase at lr 0.1), and of the accuracies on its 4-image-per-class tests.
CUDA_WEIGHT_TOLERANCE = 1e-2
CUDA_ACCURACY_TOLERANCE = 0.25


def test_compile_with_inductor_on_cuda(tmp_path, monkeypatch):
    # batch 4 divides every phase's images: one graph for training and one for the old model
    values = dict(num_classes=4, phases=1, batch_size=4, **CUDA)
    eager = lucir.run_incremental(tiny_config("lucir", tmp_path / "c", **values), tmp_path / "eager")
    graphs = _counting_compile(monkeypatch, "inductor")
    compiled = lucir.run_incremental(tiny_config("lucir", tmp_path / "c", compile=True, **values),
                                     tmp_path / "compiled")
    assert 1 <= len(graphs) <= 2
    for a, b in zip(compiled["phases"], eager["phases"], strict=True):
        assert abs(a["acc_cnn"] - b["acc_cnn"]) <= CUDA_ACCURACY_TOLERANCE
    for t in range(2):
        a, b = _weights(tmp_path / "compiled", t), _weights(tmp_path / "eager", t)
        assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= CUDA_WEIGHT_TOLERANCE
    torch._dynamo.reset()
