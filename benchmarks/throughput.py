"""Throughput and memory of the training pipeline; prints its figures (not a test).

    python benchmarks/throughput.py [--device cpu|cuda] [--batches 20] [--data /path/to/cifar100]
    python benchmarks/throughput.py --only jpeg [--jpeg-data /path/to/data] [--jpeg-images 512] [--workers 0,2]

Measures, on the given device:
  1. the bare ResNet-32 training step (cosine head, cross-entropy, SGD) on random tensors;
  2. the bare forward pass of a frozen copy (eval mode, no grad) on random tensors;
  3. one real LUCIR incremental training step through the real pipeline: a CIFAR-100 batch
     gathered from the uint8 array data, augmentation on the device, old-model forward, the
     three losses of Eq. 9 and the optimiser step (lucir.trainer.train_epochs itself);
and the ratio of 3 to the bound the bare parts allow, 1 / (1/train + 1/forward).
Then the peak resident memory of a real CIFAR-100 run (all 100 classes loaded, B50 + 1
phase, 100 train images per class, one epoch per phase) in a child process.

The JPEG part (`--only jpeg` runs it alone) measures the ImageNet-style path:
  4. decode and augment (RandomResizedCrop 224 + flip, normalisation) of the Tiny-ImageNet
     stand-in's JPEG bytes through EncodedImages.iterate, the DataLoader path the trainer
     uses, with each number of worker processes in --workers: the rate of a pass with the
     workers already running (they persist across passes, as from a run's second epoch on),
     and of the first pass, which starts them;
  5. the bare ResNet-18 training step at 224 px (cosine head, cross-entropy, SGD).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from lucir import make_config
from lucir.data import EncodedImages, load_dataset
from lucir.models import build_model, frozen_copy, grow_head
from lucir.trainer import Stage, resolve_device, train_epochs


def sgd_step(model, opt, x, y):
    """One bare training step (cross-entropy on the logits, SGD) on fixed tensors, as a callable."""
    def step():
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _reencoded(store: EncodedImages, i: int, size: tuple[int, int]) -> bytes:
    """Image i of a JPEG store, resized to `size` (width, height) and encoded again as JPEG bytes."""
    out = io.BytesIO()
    store._open(i).resize(size).save(out, format="JPEG", quality=90)
    return out.getvalue()


def jpeg_benchmark(args, device) -> None:
    """Decode-and-augment images/s per number of workers, and the bare ResNet-18 step at 224 px."""
    cfg = make_config("lucir", dataset="tiny_imagenet", data_dir=args.jpeg_data, image_size=224, progress=False,
                      device=str(device))
    data = load_dataset(cfg)
    bs = args.jpeg_batch
    idx = torch.arange(min(args.jpeg_images, len(data.train)))
    batches = list(idx.split(bs))
    store, what = data.train, "Tiny-ImageNet images (64 px JPEG)"
    if args.jpeg_size:
        # The stand-in's 64 px JPEGs decode ~50x faster than ImageNet's (~500x375 px, ~110 kB): re-encode
        # them at ImageNet's typical size so that decoding costs what it costs on ImageNet.
        store = EncodedImages([_reencoded(data.train, int(i), args.jpeg_size) for i in idx], 224)
        idx = torch.arange(len(idx))
        w, h = args.jpeg_size
        what = f"Tiny-ImageNet images re-encoded as {w}x{h} px JPEG (quality 90, ImageNet's typical size)"
    print(f"JPEG path: {len(idx)} {what} to 224 px crops, batch {bs}, device {device}")
    store.decode(0, seed=0)  # imports PIL and torchvision's transforms here, before any timing

    def rate(passes) -> float:
        tic = time.perf_counter()
        for _ in passes:
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(idx) / (time.perf_counter() - tic)

    for workers in (int(w) for w in args.workers.split(",")):
        fresh = EncodedImages(store.sources, 224)  # no worker processes yet
        gen = torch.Generator().manual_seed(0)
        # What the workers do: the first pass starts them (a run's first epoch), the second reuses
        # them (every later epoch and extraction pass: they persist); then with the copy and
        # normalisation of iterate, what the training loop receives.
        first = rate(fresh.decoded(batches, train=True, generator=gen, workers=workers))
        later = rate(fresh.decoded(batches, train=True, generator=gen, workers=workers))
        normalised = rate(fresh.iterate(batches, device, train=True, generator=gen, workers=workers))
        print(f"decode + augment, {workers} workers:       {later:8.0f} images/s  "
              f"(first pass, workers starting: {first:.0f}; with normalisation on {device.type}: "
              f"{normalised:.0f} images/s)")
    model = build_model("resnet18", 100, True, False).to(device=device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(bs, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (bs,), device=device)
    model.train()
    t = timed(sgd_step(model, opt, x, y), args.jpeg_steps, 1, device)
    print(f"bare ResNet-18 training step, 224 px:  {args.jpeg_steps * bs / t:8.1f} images/s "
          f"({torch.get_num_threads()} threads)")


def incremental_model(device):
    """The model of an incremental phase of B50 + 5 phases: 50 old classes with fixed weights, 10
    new, and the frozen old model beside it. Returns (model, old model, trainable parameters)."""
    model = build_model("resnet32", 50, True, False).to(device=device, memory_format=torch.channels_last)
    old = frozen_copy(model)
    return model, old, grow_head(model, 10)


def timed(fn, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    ap.add_argument("--data", default=os.environ.get("LUCIR_DATA", "../shared/data/cifar100"))
    ap.add_argument("--skip-memory", action="store_true", help="skip the peak-memory run")
    ap.add_argument("--compile", action="store_true",
                    help="also time the real step with compile=true against eager, in turns")
    ap.add_argument("--only", choices=("cifar", "jpeg"), help="run one part only (default: both)")
    ap.add_argument("--jpeg-data", default=os.environ.get("LUCIR_DATA", "../shared/data"),
                    help="folder of the Tiny-ImageNet stand-in (or its parent)")
    ap.add_argument("--jpeg-images", type=int, default=512, help="images decoded per worker setting")
    ap.add_argument("--jpeg-batch", type=int, default=32, help="batch size of the JPEG part")
    ap.add_argument("--jpeg-steps", type=int, default=5, help="timed ResNet-18 steps")
    ap.add_argument("--workers", default="0,2", help="comma-separated numbers of decoding workers")
    ap.add_argument("--jpeg-size", default="500x375", type=lambda v: None if v in ("0", "native") else
                    tuple(int(p) for p in v.split("x")),
                    help="re-encode the JPEGs at WxH px first (default 500x375, ImageNet's typical size); "
                         "'native' keeps the stand-in's 64 px JPEGs")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.only == "jpeg":
        jpeg_benchmark(args, device)
        return
    torch.manual_seed(0)
    bs, n = 128, args.batches
    cfg = make_config("lucir", data_dir=args.data, progress=False, device=str(device))

    model, old, params = incremental_model(device)
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(bs, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 60, (bs,), device=device)
    train_step = sgd_step(model, opt, x, y)

    def frozen_forward():
        with torch.no_grad():
            old(x)

    model.train()
    t_train = timed(train_step, n, 3, device)
    t_fwd = timed(frozen_forward, n, 3, device)
    train_ips, fwd_ips = n * bs / t_train, n * bs / t_fwd
    bound = 1 / (1 / train_ips + 1 / fwd_ips)

    # the real step: lucir.trainer.train_epochs over n batches of real CIFAR-100 images
    tic = time.perf_counter()
    data = load_dataset(cfg)
    load_s = time.perf_counter() - tic
    idx = torch.nonzero(data.train_labels < 60).flatten()[: (n + 3) * bs]
    gen = torch.Generator().manual_seed(0)
    warm = idx[: 3 * bs]
    stage = Stage("bench", epochs=1, lr=0.1, n_old=50, lam=5.0)  # the LUCIR step of B50 + 5 phases
    run = lambda ids: train_epochs(model, old, data, ids, params, stage, cfg, device, gen)  # noqa: E731
    run(warm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    run(idx[3 * bs:])
    if device.type == "cuda":
        torch.cuda.synchronize()
    real_ips = n * bs / (time.perf_counter() - tic)

    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, batch {bs}")
    print(f"CIFAR-100 load (array format, decompress + class order): {load_s:.1f} s")
    print(f"bare ResNet-32 training step:        {train_ips:8.0f} images/s")
    print(f"bare frozen forward (old model):     {fwd_ips:8.0f} images/s")
    print(f"bound from the bare parts:           {bound:8.0f} images/s")
    print(f"real LUCIR incremental step:         {real_ips:8.0f} images/s")
    print(f"real / bound:                        {real_ips / bound:8.1%}  (target >= 90%)")
    if args.compile:  # the same real step with config compile=true (torch.compile, inductor), side by side
        ccfg = make_config("lucir", data_dir=args.data, progress=False, device=str(device), compile=True)
        crun = lambda ids: train_epochs(model, old, data, ids, params, stage, ccfg, device, gen)  # noqa: E731
        tic = time.perf_counter()
        crun(warm)
        compile_s = time.perf_counter() - tic
        rates = {}
        for name, fn in (("eager", run), ("compiled", crun), ("eager", run), ("compiled", crun)):
            tic = time.perf_counter()
            fn(idx[3 * bs:])
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.setdefault(name, []).append(n * bs / (time.perf_counter() - tic))
        print(f"compile=true: first call (compiling) {compile_s:.0f} s; real step in turns, eager / compiled: "
              f"{' '.join(f'{r:.0f}' for r in rates['eager'])} / {' '.join(f'{r:.0f}' for r in rates['compiled'])} "
              f"images/s")

    if args.only != "cifar":
        jpeg_benchmark(args, device)
    if args.skip_memory:
        return
    with tempfile.TemporaryDirectory() as tmp:
        # all 100 classes and the whole data set are loaded; 100 train images per class are trained on
        overrides = dict(data_dir=args.data, phases=1, epochs=1, base_epochs=1, lr_milestones="", progress="false",
                         train_per_class=100,
                         device=str(device), cache_base="false", cache_dir=tmp)
        cmd = [sys.executable, "-m", "lucir", "run", "--preset", "lucir", "--out", os.path.join(tmp, "run")]
        for k, v in overrides.items():
            cmd += ["--set", f"{k}={v}"]
        tic = time.perf_counter()
        subprocess.run(cmd, check=True)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        m = json.load(open(os.path.join(tmp, "run", "metrics.json")))
    print(f"CIFAR-100 run (100 classes, B50 + 1 phase, 100 train images per class, 1 epoch each): {time.perf_counter() - tic:.0f} s, "
          f"peak resident memory {peak_kb / 2**20:.2f} GB (target < 3 GB); "
          f"final accuracy CNN {m['final_accuracy_cnn']:.3f}")


if __name__ == "__main__":
    main()
