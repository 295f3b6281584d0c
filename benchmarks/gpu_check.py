"""The GPU path, checked and measured in one command.

    python benchmarks/gpu_check.py [--out reports/gpu_check] [--rates-file lucir/rates.json]
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check      # on a CPU, tiny sizes (CI runs this)

On a CUDA machine, in this order:
  1. the tests marked `cuda` (python -m pytest -m cuda): a one-process run, its repetition and
     its resume from an epoch with `deterministic`, the pinned, non-blocking JPEG path, bf16 and
     fp16 autocast, compile with inductor;
  2. the ResNet-32 training step of a run (lucir.trainer.train_epochs on 32-px synthetic images,
     batch 128: augmentation on the device, loss, SGD): the base step in fp32, bf16 (where the GPU
     has it natively), fp16 and compiled; and the LUCIR incremental step (old model, Eq. 9) in fp32;
  3. images/s of K = 1, 2, 4 processes training the fp32 base step on the one GPU at once (in all);
  4. the bare ResNet-18 training step at 224 px (batch 128), fp32 and bf16;
  5. the JPEG path: decode, RandomResizedCrop 224 and flip of synthetic 500x375 JPEGs (ImageNet's
     typical size), normalised on the device, with 0 and with N decoding workers.
It prints the figures, writes them as gpu_check.md and gpu_check.json under --out, and writes
the rates the cost model assumes (lucir.scheduler.projected_seconds: the fp32 base steps of
ResNet-32 and ResNet-18, and the K-process totals) into --rates-file, lucir/rates.json by
default. Sized to finish within 8 minutes on one GPU.

--tiny runs every part on the CPU at tiny sizes (compile through dynamo's eager backend; K = 1, 2;
fp16, which needs CUDA, is left out), so that the script cannot rot; its rates go into --out,
never into lucir/rates.json.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lucir import ConfigError, make_config
from lucir.data import EncodedImages, load_dataset
from lucir.device import AMP_DTYPES, autocast, check_amp, set_deterministic, unusable_gpu
from lucir.models import add_classes, build_model
from lucir.scheduler import RATES_FILE, rates
from lucir.trainer import train_epochs
from throughput import sgd_step, timed

REPO = Path(__file__).resolve().parents[1]
SIZES = {  # per mode: synthetic classes x images per class (a multiple of the batch), timed epochs, ...
    "full": dict(classes=100, per_class=64, batch=128, epochs=3, K=(1, 2, 4), r18_batch=128, r18_px=224,
                 r18_steps=10, jpeg_images=1024, jpeg_px=(500, 375), jpeg_batch=128, backend="inductor", threads=None),
    "tiny": dict(classes=4, per_class=8, batch=16, epochs=1, K=(1, 2), r18_batch=4, r18_px=64,
                 r18_steps=1, jpeg_images=16, jpeg_px=(100, 75), jpeg_batch=8, backend="eager", threads=1),
}  # tiny: one torch thread per process, as in the tests (on a busy shared CPU more threads ran 20x slower)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- 1. the tests
TESTS_TIMEOUT = 330  # seconds: the tests' share of the 8 minutes


def run_tests() -> dict:
    """The tests marked `cuda`, in a child process; its summary line and exit status."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", str(REPO / "tests")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    tic = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TESTS_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"command": "python -m pytest -m cuda tests", "summary": f"stopped after {TESTS_TIMEOUT} s",
                "returncode": 124, "seconds": TESTS_TIMEOUT}
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode not in (0, 5):
        print(out.stdout[-6000:], out.stderr[-2000:], sep="\n")
    return {"command": "python -m pytest -m cuda tests", "summary": lines[-1].strip("= ") if lines else out.stderr[-300:],
            "returncode": out.returncode, "seconds": round(time.perf_counter() - tic, 1)}


# --------------------------------------------------------------------------- 2. the ResNet-32 step
def synthetic(size: dict, device):
    config = make_config("lucir", dataset="synthetic", num_classes=size["classes"], base_classes=size["classes"] // 2,
                         phases=1, train_per_class=size["per_class"], test_per_class=1, device=str(device))
    return load_dataset(config)


def resnet32_rate(size: dict, device, data=None, incremental: bool = False, **overrides) -> float:
    """Images/s of train_epochs over the synthetic set (epochs after a warm-up one, which runs
    cuDNN's search and the compilation): the base step, or with `incremental` the LUCIR step with
    half the classes old (old model forward, Eq. 6-8)."""
    data = data if data is not None else synthetic(size, device)
    c = make_config("lucir", dataset="synthetic", batch_size=size["batch"], progress=False, device=str(device),
                    checkpoint_every=0, **overrides)
    n = size["classes"]
    torch.manual_seed(0)
    model = build_model("resnet32", n // 2 if incremental else n, True, False)
    model.to(device=device, memory_format=torch.channels_last)
    old, n_old, lam = None, 0, 0.0
    if incremental:
        old = copy.deepcopy(model).eval().requires_grad_(False)
        add_classes(model, n - n // 2)
        model.head.old_weight.requires_grad_(False)
        n_old, lam = n // 2, 5.0
    params = [p for p in model.parameters() if p.requires_grad]
    idx, gen = torch.arange(len(data.train_labels)), torch.Generator().manual_seed(0)

    def epoch():
        train_epochs(model, old, data, idx, c, params, 1, 0.1, (), n_old, lam, device, gen, desc="gpu_check")

    epoch()
    sync(device)
    tic = time.perf_counter()
    for _ in range(size["epochs"]):
        epoch()
    sync(device)
    return size["epochs"] * len(idx) / (time.perf_counter() - tic)


@contextlib.contextmanager
def compiled_with(backend: str):
    """Inside, compile=true compiles with `backend` (inductor, torch.compile's default, as is)."""
    real = torch.compile
    if backend != "inductor":
        torch.compile = lambda model, **kw: real(model, **(kw | {"backend": backend}))
    try:
        yield
    finally:
        torch.compile = real


# --------------------------------------------------------------------------- 3. K runs on one GPU
def _shared_worker(k: int, size: dict, device: str, threads: int, barrier, queue) -> None:
    torch.set_num_threads(threads)
    device = torch.device(device)
    set_deterministic(False, device)
    data = synthetic(size, device)
    c = make_config("lucir", dataset="synthetic", batch_size=size["batch"], progress=False, device=str(device),
                    checkpoint_every=0)
    torch.manual_seed(k)
    model = build_model("resnet32", size["classes"], True, False).to(device=device, memory_format=torch.channels_last)
    idx, gen = torch.arange(len(data.train_labels)), torch.Generator().manual_seed(k)

    def epoch():
        train_epochs(model, None, data, idx, c, model.parameters(), 1, 0.1, (), 0, 0.0, device, gen, desc="gpu_check")

    epoch()
    sync(device)
    barrier.wait()
    tic = time.monotonic()
    for _ in range(size["epochs"] + 1):
        epoch()
    sync(device)
    queue.put(((size["epochs"] + 1) * len(idx), tic, time.monotonic()))


def shared_rate(K: int, size: dict, device) -> float:
    """Images/s of K processes training at once on one device, in all: their images over the time
    from their common start to the last one's end."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(K), ctx.Queue()
    threads = size["threads"] or max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1) // K)
    procs = [ctx.Process(target=_shared_worker, args=(k, size, str(device), threads, barrier, queue))
             for k in range(K)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(r[0] for r in results) / (max(r[2] for r in results) - min(r[1] for r in results))


# --------------------------------------------------------------------------- 4. and 5.
def resnet18_rate(size: dict, device, amp: str = "off") -> float:
    torch.manual_seed(0)
    model = build_model("resnet18", 100, True, False).to(device=device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    bs, px = size["r18_batch"], size["r18_px"]
    x = torch.randn(bs, 3, px, px, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (bs,), device=device)
    step = sgd_step(model, opt, x, y)

    def under_amp():
        with autocast(device, amp):
            step()

    return size["r18_steps"] * bs / timed(under_amp, size["r18_steps"], 2, device)


def synthetic_jpegs(n: int, px: tuple[int, int]) -> list[bytes]:
    """JPEG bytes (quality 90) of smooth colour patterns with noise, about a photo's size to decode."""
    from PIL import Image
    rng, out = np.random.default_rng(0), []
    for _ in range(n):
        img = np.kron(rng.uniform(0, 255, (8, 8, 3)), np.ones((px[1] // 8 + 1, px[0] // 8 + 1, 1)))[:px[1], :px[0]]
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def jpeg_rate(sources: list[bytes], size: dict, device, workers: int) -> float:
    """Images/s of EncodedImages.iterate (the trainer's path: decode, crop and flip in `workers`
    processes, pinned and non-blocking on CUDA, normalised on the device) after a first pass that
    starts the workers."""
    store = EncodedImages(sources, 224)
    batches = list(torch.arange(len(sources)).split(size["jpeg_batch"]))
    gen = torch.Generator().manual_seed(0)
    for _ in store.iterate(batches, device, train=True, generator=gen, workers=workers):
        pass
    sync(device)
    tic = time.perf_counter()
    for _ in store.iterate(batches, device, train=True, generator=gen, workers=workers):
        pass
    sync(device)
    return len(sources) / (time.perf_counter() - tic)


# --------------------------------------------------------------------------- the table and the rates
def write_outputs(out: Path, header: dict, figures: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(header | {"figures": figures}, indent=2) + "\n")
    lines = [f"# GPU check: {header['device_name']}, {header['date']}", "",
             f"torch {header['torch']}, CUDA {header['cuda']}, {header['threads']} CPU threads; "
             f"{header['mode']} sizes; {header['seconds']:.0f} s in all.", "",
             f"Tests (`{header['tests']['command']}`): {header['tests']['summary']}", "",
             "| what | setting | images/s |", "|---|---|---|"]
    lines += [f"| {f['what']} | {f['setting']} | {figure(f['images_per_s']):,g} |" if f["images_per_s"] is not None
              else f"| {f['what']} | {f['setting']} | n/a: {f['note']} |" for f in figures]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def figure(images_per_s: float) -> float:
    """Three significant digits (tiny mode's rates are below one image per second on a busy CPU)."""
    return float(f"{images_per_s:.3g}")


def update_rates(path: Path, kind: str, figures: list[dict], header: dict) -> dict:
    """The measured images/s as the cost model's rates for `kind`, in the file at `path` (the
    committed lucir/rates.json, or a copy of it)."""
    get = {(f["what"], f["setting"]): f["images_per_s"] for f in figures}
    table = rates(path if Path(path).exists() else RATES_FILE)
    table[kind] = {"resnet32": figure(get[(STEP32, "base step, fp32")]),
                   "resnet18": figure(get[(STEP18, "fp32")]),
                   "resnet32_processes_sharing_one_device": {str(k): figure(get[(SHARED, f"K = {k}")])
                                                             for k in header["K"]},
                   "source": f"measured on {header['device_name']}, {header['date']} (benchmarks/gpu_check.py"
                             f"{', --tiny' if header['mode'] == 'tiny' else ''})"}
    Path(path).write_text(json.dumps(table, indent=2) + "\n")
    return table[kind]


STEP32 = "ResNet-32 training step (train_epochs, 32 px)"
SHARED = "K processes training the ResNet-32 fp32 base step at once, in all"
STEP18 = "bare ResNet-18 training step, 224 px"
JPEG = "JPEG path to the device (decode, crop 224, flip, normalise)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default=str(REPO / "reports" / "gpu_check"), help="folder of gpu_check.md and .json")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (CI)")
    ap.add_argument("--rates-file", help="where the measured rates go (default: lucir/rates.json on a GPU, "
                                         "OUT/rates.json with --tiny)")
    ap.add_argument("--skip-tests", action="store_true", help="measure only")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    mode = "tiny" if args.tiny else "full"
    size = SIZES[mode]
    if args.tiny:
        device = torch.device("cpu")
        torch.set_num_threads(size["threads"])
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print(f"error: no CUDA GPU here{f' ({unusable_gpu()})' if unusable_gpu() else ''}; "
              f"--tiny checks this script on the CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    rates_file = Path(args.rates_file) if args.rates_file else (out / "rates.json" if args.tiny else RATES_FILE)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"gpu_check ({mode}): {name}, torch {torch.__version__}", flush=True)
    tests = {"command": "not run (--skip-tests)", "summary": "not run", "returncode": 0}
    if not args.skip_tests:
        tests = run_tests()
        print(f"tests marked cuda: {tests['summary']}", flush=True)

    figures, failed = [], []

    def record(what, setting, measure, note=None):
        """Measure one figure, unless `note` says why it does not apply here."""
        tic = time.perf_counter()
        try:
            value = measure() if note is None else None
        except Exception as e:  # noqa: BLE001  one failing figure is reported, the others still measured
            value, note = None, f"failed, {type(e).__name__}: {' '.join(str(e).split())[:200]}"
            failed.append(setting)
        figures.append({"what": what, "setting": setting, "images_per_s": value, "note": note,
                        "seconds": round(time.perf_counter() - tic, 1)})
        shown = f"{figure(value):10,g} images/s" if value is not None else f"n/a: {note}"
        print(f"{what}, {setting}: {shown}  ({time.perf_counter() - started:.0f} s)", flush=True)

    set_deterministic(False, device)  # as a run: cuDNN's benchmark search on CUDA
    data = synthetic(size, device)

    def native(amp):
        try:
            check_amp(amp, device)
        except ConfigError as e:
            return str(e)
        return None

    record(STEP32, "base step, fp32", lambda: resnet32_rate(size, device, data))
    for amp in AMP_DTYPES:
        record(STEP32, f"base step, {amp} autocast", lambda: resnet32_rate(size, device, data, amp=amp), native(amp))
    with compiled_with(size["backend"]):
        record(STEP32, f"base step, fp32, compiled ({size['backend']})",
               lambda: resnet32_rate(size, device, data, compile=True))
    record(STEP32, "LUCIR incremental step (old model, Eq. 9), fp32",
           lambda: resnet32_rate(size, device, data, incremental=True))
    for K in size["K"]:
        record(SHARED, f"K = {K}", lambda: shared_rate(K, size, device))
    record(STEP18, "fp32", lambda: resnet18_rate(size, device))
    record(STEP18, "bf16 autocast", lambda: resnet18_rate(size, device, "bf16"), native("bf16"))
    sources = synthetic_jpegs(size["jpeg_images"], size["jpeg_px"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for workers in sorted({0, min(8, cores) if not args.tiny else 1}):
        record(JPEG, f"{size['jpeg_px'][0]}x{size['jpeg_px'][1]} px JPEGs, {workers} workers",
               lambda: jpeg_rate(sources, size, device, workers))

    header = {"device_name": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "threads": torch.get_num_threads(), "mode": mode, "K": list(size["K"]),
              "tests": tests, "seconds": time.perf_counter() - started}
    write_outputs(out, header, figures)
    try:
        new = update_rates(rates_file, device.type, figures, header)
        print(f"rates for {device.type} written to {rates_file}: {new}")
    except (KeyError, TypeError) as e:  # a figure the rates need is missing
        print(f"rates not written: the figure {e} is missing", file=sys.stderr)
        return 1
    print(f"table: {out / 'gpu_check.md'}; {time.perf_counter() - started:.0f} s in all")
    return 0 if tests["returncode"] in (0, 5) and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
