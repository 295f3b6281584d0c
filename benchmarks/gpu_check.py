"""The GPU path, checked and measured in one command (docs/gpu.md says what to type on a GPU machine).

    python3 benchmarks/gpu_check.py --out "$OUT"                 # on a CUDA machine: within 8 minutes
    python3 benchmarks/gpu_check.py --tiny --out /tmp/gpu_check  # any CPU, tiny sizes (CI runs this)
    python3 benchmarks/gpu_check.py --land FOLDER                # back here: the returned figures into
                                                                 # lucir/rates.json and docs/performance.md

It runs from the work tree as it is (no install, no PYTHONPATH) on the GPU machine's image, which
has torch, torchvision, numpy, pandas, pyyaml, pillow, matplotlib, seaborn, scikit-learn, tqdm,
pytest, psutil and filelock, and nothing of the Jupyter stack. On a CUDA machine, in this order:
  1. the tests marked `cuda`: only the test files carrying the mark are collected (tests/test_cuda.py:
     a one-process run, its repetition and resume from an epoch with `deterministic`, the pinned,
     non-blocking JPEG path, bf16 and fp16 autocast, compile with inductor), stopped at 120 s;
  2. the ResNet-32 training step of a run (lucir.trainer.train_epochs on 32-px synthetic images,
     batch 128: augmentation on the device, loss, SGD): the base step in fp32, with fused SGD, in
     bf16 (where the GPU has it natively), fp16, compiled (and the compilation's seconds), compiled
     with CUDA graphs (compile_mode=reduce-overhead); and the LUCIR incremental step (old model,
     Eq. 9) in fp32: each speed switch on beside the fp32 step with all off;
  3. images/s of K = 1, 2, 4 processes training the fp32 base step on the one GPU at once (in all),
     and (after the paper-shaped run) of K = 4 under NVIDIA's MPS, a daemon of this command's own;
  4. the bare ResNet-18 training step at 224 px (batch 128), fp32 and bf16;
  then the paper-shaped run (benchmarks/paper_timing.py: run_incremental at the paper's CIFAR-100
  shapes for 3 epochs a phase) and its projection to the 160-epoch run, alone and K to a GPU;
  5. the JPEG path: decode, RandomResizedCrop 224 and flip of synthetic 500x375 JPEGs (ImageNet's
     typical size), normalised on the device, with 0 and with N decoding workers.
No figure starts after --budget seconds (400): one left out is reported as skipped. It writes, flat
into --out: gpu_check.md (the table), gpu_check.json (every figure), rates.json (lucir/rates.json
with this device kind's entry measured), tests.log (the tests' output) and gpu_check.log (this
output). Nothing in the work tree changes (--rates-file also writes the rates there).

--tiny runs every part on the CPU at tiny sizes (compile through dynamo's eager backend; K = 1, 2;
fp16, which needs CUDA, is left out), so that the script cannot rot; tests/test_gpu_check.py runs
it on the simulated image.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the GPU machine runs the copied work tree as it is: nothing is installed
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lucir import ConfigError, make_config  # noqa: E402
from lucir.data import EncodedImages, load_dataset  # noqa: E402
from lucir.device import (AMP_DTYPES, MPSUnavailable, autocast, check_amp, mps_daemon,  # noqa: E402
                          set_deterministic, unusable_gpu)
from lucir.models import build_model, frozen_copy, grow_head  # noqa: E402
from lucir.provenance import git_state  # noqa: E402
from lucir.scheduler import RATES_FILE, rates, run_cost  # noqa: E402
from lucir.trainer import Stage, train_epochs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/, also when imported from elsewhere
import paper_timing  # noqa: E402
from throughput import sgd_step, timed  # noqa: E402

SIZES = {  # per mode: synthetic classes x images per class (a multiple of the batch), timed epochs, ...
    "full": dict(classes=100, per_class=64, batch=128, epochs=3, K=(1, 2, 4), r18_batch=128, r18_px=224,
                 r18_steps=10, jpeg_images=1024, jpeg_px=(500, 375), jpeg_batch=128, backend="inductor", threads=None,
                 paper_epochs=3),
    "tiny": dict(classes=4, per_class=8, batch=16, epochs=1, K=(1, 2), r18_batch=4, r18_px=64,
                 r18_steps=1, jpeg_images=16, jpeg_px=(100, 75), jpeg_batch=8, backend="eager", threads=1,
                 paper_epochs=2),
}  # tiny: one torch thread per process, as in the tests (on a busy shared CPU more threads ran 20x slower)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- 1. the tests
TESTS_TIMEOUT = 120  # seconds: the tests' share of the 8 minutes (docs/gpu.md, the budget)
BUDGET = 400  # seconds: no figure starts after this (the last ones end within the 480 s call; docs/gpu.md)


def cuda_test_files() -> list[Path]:
    """The test files carrying the `cuda` mark. Only these are collected: the others import what the
    GPU machine's image lacks (IPython, papermill, nbformat, selenium)."""
    return sorted(f for f in (REPO / "tests").glob("test_*.py") if "pytest.mark.cuda" in f.read_text())


def run_tests(log: Path) -> dict:
    """The tests marked `cuda`, in a child process; its summary line and exit status, its output in `log`."""
    files = cuda_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
           *[str(f.relative_to(REPO)) for f in files]]
    shown = "python -m pytest -m cuda " + " ".join(str(f.relative_to(REPO)) for f in files)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    tic = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TESTS_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        log.write_text(f"$ {shown}\nstopped after {TESTS_TIMEOUT} s\n{_text(e.stdout)}\n{_text(e.stderr)}")
        return {"command": shown, "summary": f"stopped after {TESTS_TIMEOUT} s", "returncode": 124,
                "seconds": TESTS_TIMEOUT}
    log.write_text(f"$ {shown}\n(exit status {out.returncode})\n{out.stdout}\n{out.stderr}")
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode not in (0, 5):
        print(out.stdout[-6000:], out.stderr[-2000:], sep="\n")
    return {"command": shown, "summary": lines[-1].strip("= ") if lines else out.stderr[-300:],
            "returncode": out.returncode, "seconds": round(time.perf_counter() - tic, 1)}


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


# --------------------------------------------------------------------------- 2. the ResNet-32 step
def synthetic(size: dict, device):
    config = make_config("lucir", dataset="synthetic", num_classes=size["classes"], base_classes=size["classes"] // 2,
                         phases=1, train_per_class=size["per_class"], test_per_class=1, device=str(device))
    return load_dataset(config)


def resnet32_rate(size: dict, device, data=None, incremental: bool = False, warmup: dict | None = None,
                  **overrides) -> float:
    """Images/s of train_epochs over the synthetic set (epochs after a warm-up one, which runs
    cuDNN's search and the compilation): the base step, or with `incremental` the LUCIR step with
    half the classes old (old model forward, Eq. 6-8)."""
    data = data if data is not None else synthetic(size, device)
    c = make_config("lucir", dataset="synthetic", batch_size=size["batch"], progress=False, device=str(device),
                    checkpoint_every=0, **overrides)
    n = size["classes"]
    if c.compile:  # a fresh dynamo cache: each figure's new model would count toward its recompile limit
        torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model("resnet32", n // 2 if incremental else n, True, False)
    model.to(device=device, memory_format=torch.channels_last)
    old, n_old, lam = None, 0, 0.0
    if incremental:
        old = frozen_copy(model)
        grow_head(model, n - n // 2)
        n_old, lam = n // 2, 5.0
    params = [p for p in model.parameters() if p.requires_grad]
    idx, gen = torch.arange(len(data.train_labels)), torch.Generator().manual_seed(0)

    stage = Stage("gpu_check", epochs=1, lr=0.1, n_old=n_old, lam=lam)

    def epoch():
        train_epochs(model, old, data, idx, params, stage, c, device, gen)

    tic = time.perf_counter()
    epoch()
    sync(device)
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    for _ in range(size["epochs"]):
        epoch()
    sync(device)
    steady = (time.perf_counter() - tic) / size["epochs"]
    if warmup is not None:  # the first epoch's extra time: cuDNN's search, and the compilation
        warmup["seconds"] = max(0.0, first - steady)
    return len(idx) / steady


@contextlib.contextmanager
def compiled_with(backend: str):
    """Inside, compile=true compiles with `backend` (inductor, torch.compile's default, as is; another
    backend takes no `mode`: compile_mode then goes through the config and the trainer, unused)."""
    real = torch.compile
    if backend != "inductor":
        torch.compile = lambda model, **kw: real(model, **({k: v for k, v in kw.items() if k != "mode"}
                                                           | {"backend": backend}))
    try:
        yield
    finally:
        torch.compile = real


# --------------------------------------------------------------------------- 3. K runs on one GPU
def _shared_worker(k: int, size: dict, device: str, threads: int, barrier, queue, env: dict) -> None:
    os.environ.update(env)  # MPS's pipe folder, before this process creates its CUDA context
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
        train_epochs(model, None, data, idx, model.parameters(), Stage("gpu_check", epochs=1, lr=0.1), c, device, gen)

    epoch()
    sync(device)
    barrier.wait()
    tic = time.monotonic()
    for _ in range(size["epochs"] + 1):
        epoch()
    sync(device)
    queue.put(((size["epochs"] + 1) * len(idx), tic, time.monotonic()))


def shared_rate(K: int, size: dict, device, env: dict | None = None) -> float:
    """Images/s of K processes training at once on one device, in all: their images over the time
    from their common start to the last one's end. `env`: more environment for the processes
    (lucir.device.mps_daemon's, to run them under MPS)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(K), ctx.Queue()
    threads = size["threads"] or max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1) // K)
    procs = [ctx.Process(target=_shared_worker, args=(k, size, str(device), threads, barrier, queue, env or {}))
             for k in range(K)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(r[0] for r in results) / (max(r[2] for r in results) - min(r[1] for r in results))


def record_mps(record, K: int, size: dict, device) -> None:
    """The K-process figure again with the processes under NVIDIA's MPS (a daemon of this command's
    own, quit after), beside the one without: the campaign shares the GPU the faster way."""
    if device.type != "cuda":
        record(SHARED_MPS, f"K = {K}", None, "not measured: MPS is for CUDA GPUs")
        return
    try:
        with tempfile.TemporaryDirectory(prefix="lucir-mps-") as folder, mps_daemon(Path(folder)) as env:
            record(SHARED_MPS, f"K = {K}", lambda: shared_rate(K, size, device, env))
    except MPSUnavailable as e:
        record(SHARED_MPS, f"K = {K}", None, f"not measured: {e}")


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
OUTPUT_FILES = ("gpu_check.md", "gpu_check.json", "rates.json", "tests.log", "gpu_check.log")  # flat, under --out


def write_outputs(out: Path, header: dict, figures: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(header | {"figures": figures}, indent=2) + "\n")
    (out / "gpu_check.md").write_text("\n".join(table_lines(header, figures)) + "\n")


def table_lines(header: dict, figures: list[dict]) -> list[str]:
    commit = header.get("commit") or "unknown (no git here)"
    lines = [f"# GPU check: {header['device_name']}, {header['date']}", "",
             f"torch {header['torch']}, CUDA {header['cuda']}, {header['threads']} CPU threads; "
             f"{header['mode']} sizes; {header['seconds']:.0f} s in all; commit {commit}.", "",
             f"Tests (`{header['tests']['command']}`): {header['tests']['summary']}", "",
             "| what | setting | images/s |", "|---|---|---|"]
    lines += [f"| {f['what']} | {f['setting']} | {figure(f['images_per_s']):,g} |" if f["images_per_s"] is not None
              else f"| {f['what']} | {f['setting']} | n/a: {f['note']} |" for f in figures]
    if header.get("paper"):
        lines += ["", "## The paper's CIFAR-100 run (benchmarks/paper_timing.py)", "",
                  *[f"- {line}" for line in header["paper"]["lines"]]]
    if header.get("compile_seconds") is not None:
        lines += [f"- Measured: compiling the ResNet-32 backbone took {header['compile_seconds']:.1f} s (first "
                  f"compiled epoch less a steady one); a compiled run compiles one graph per mode (training, old "
                  f"model), so about {2 * header['compile_seconds']:.0f} s a run (extrapolated)."]
    return lines


def figure(images_per_s: float) -> float:
    """Three significant digits (tiny mode's rates are below one image per second on a busy CPU)."""
    return float(f"{images_per_s:.3g}")


def update_rates(path: Path, kind: str, figures: list[dict], header: dict, base: Path = RATES_FILE) -> dict:
    """The measured images/s as the cost model's rates for `kind`, written to `path`: the rates of
    `base` (the committed lucir/rates.json) with `kind`'s entry replaced."""
    get = {(f["what"], f["setting"]): f["images_per_s"] for f in figures}
    table = rates(base)
    table[kind] = {"resnet32": figure(get[(STEP32, "base step, fp32")]),
                   "resnet18": figure(get[(STEP18, "fp32")]),
                   "resnet32_processes_sharing_one_device": {str(k): figure(get[(SHARED, f"K = {k}")])
                                                             for k in header["K"]},
                   "resnet32_processes_sharing_one_device_mps": {k.split(" = ")[1]: figure(v) for (what, k), v
                                                                 in get.items() if what == SHARED_MPS and v},
                   "source": f"measured on {header['device_name']}, {header['date']} (benchmarks/gpu_check.py"
                             f"{', --tiny' if header['mode'] == 'tiny' else ''}"
                             f"{', commit ' + header['commit'][:12] if header.get('commit') else ''})"}
    Path(path).write_text(json.dumps(table, indent=2) + "\n")
    return table[kind]


STEP32 = "ResNet-32 training step (train_epochs, 32 px)"
SHARED = "K processes training the ResNet-32 fp32 base step at once, in all"
SHARED_MPS = "K processes training the ResNet-32 fp32 base step at once under MPS, in all"
STEP18 = "bare ResNet-18 training step, 224 px"
PAPER = "paper-shaped run (run_incremental, every part), image-steps/s as lucir.scheduler.run_cost counts"
JPEG = "JPEG path to the device (decode, crop 224, flip, normalise)"


# --------------------------------------------------------------------------- landing the returned files
PERFORMANCE_FILE = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- gpu_check: begin -->", "<!-- gpu_check: end -->"


def land(folder: Path, rates_file: Path = RATES_FILE, performance_file: Path = PERFORMANCE_FILE) -> str:
    """Put a returned --out folder's figures where they are read: its device kind's entry of
    rates.json into `rates_file` (the other kinds kept), and its table into `performance_file`
    between the gpu_check markers (added at the end the first time). Returns the kind landed."""
    header = json.loads((folder / "gpu_check.json").read_text())
    if header["mode"] == "tiny" and Path(rates_file).resolve() == RATES_FILE.resolve():
        raise SystemExit(f"{folder} holds a --tiny check on a CPU; only a GPU's figures go into lucir/rates.json")
    kind = "cuda" if header.get("cuda_device") else "cpu"
    measured = json.loads((folder / "rates.json").read_text())[kind]
    table = rates(rates_file)
    table[kind] = measured
    Path(rates_file).write_text(json.dumps(table, indent=2) + "\n")
    section = [BEGIN, f"## Measured by benchmarks/gpu_check.py: {header['device_name']}, {header['date']}", "",
               *table_lines(header, header["figures"])[2:], "", END]
    text = Path(performance_file).read_text()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + "\n".join(section) + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    Path(performance_file).write_text(text)
    return kind


class Tee:
    """This process's output, also into a log file under --out (the call's output comes back cut)."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, open(path, "w", buffering=1)

    def write(self, text):
        self.file.write(text)
        return self.stream.write(text)

    def flush(self):
        self.file.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default=str(REPO / "reports" / "gpu_check"),
                    help="folder of the files written (flat, at most 8: " + ", ".join(OUTPUT_FILES) + ")")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (CI)")
    ap.add_argument("--rates-file", help="also write the rates here (OUT/rates.json always holds them)")
    ap.add_argument("--skip-tests", action="store_true", help="measure only")
    ap.add_argument("--budget", type=float, default=BUDGET,
                    help=f"seconds after which the figures not yet measured are skipped (default {BUDGET})")
    ap.add_argument("--land", metavar="FOLDER", help="put a returned --out folder's rates into lucir/rates.json "
                                                     "and its table into docs/performance.md, then stop")
    args = ap.parse_args(argv)
    if args.land:
        kind = land(Path(args.land), Path(args.rates_file) if args.rates_file else RATES_FILE)
        print(f"landed the {kind} figures of {args.land} in {args.rates_file or RATES_FILE} and {PERFORMANCE_FILE}")
        return 0
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
    out.mkdir(parents=True, exist_ok=True)
    sys.stdout = Tee(sys.stdout, out / "gpu_check.log")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"gpu_check ({mode}): {name}, torch {torch.__version__}, budget {args.budget:.0f} s", flush=True)
    tests = {"command": "not run (--skip-tests)", "summary": "not run", "returncode": 0}
    if not args.skip_tests:
        tests = run_tests(out / "tests.log")
        print(f"tests marked cuda: {tests['summary']} ({tests['seconds']} s; output in {out / 'tests.log'})",
              flush=True)

    figures, failed = [], []

    def record(what, setting, measure, note=None):
        """Measure one figure, unless `note` says why it does not apply here, or the budget is spent."""
        tic = time.perf_counter()
        if note is None and tic - started > args.budget:
            note = f"skipped: past the budget of {args.budget:.0f} s"
            failed.append(setting)
        try:
            value = measure() if note is None else None
        except Exception as e:  # noqa: BLE001  one failing figure is reported, the others still measured
            value, note = None, f"failed, {type(e).__name__}: {' '.join(str(e).split())[:200]}"
            failed.append(setting)
        figures.append({"what": what, "setting": setting, "images_per_s": value, "note": note,
                        "seconds": round(time.perf_counter() - tic, 1)})
        shown = f"{figure(value):10,g} images/s" if value is not None else f"n/a: {note}"
        print(f"{what}, {setting}: {shown}  ({time.perf_counter() - started:.0f} s)", flush=True)
        return value

    set_deterministic(False, device)  # as a run: cuDNN's benchmark search on CUDA
    data = synthetic(size, device)

    def native(amp):
        try:
            check_amp(amp, device)
        except ConfigError as e:
            return str(e)
        return None

    record(STEP32, "base step, fp32", lambda: resnet32_rate(size, device, data))
    record(STEP32, "base step, fp32, fused SGD (fused_sgd=true)", lambda: resnet32_rate(size, device, data,
                                                                                       fused_sgd=True))
    for amp in AMP_DTYPES:
        record(STEP32, f"base step, {amp} autocast", lambda: resnet32_rate(size, device, data, amp=amp), native(amp))
    compile_warmup: dict = {}
    with compiled_with(size["backend"]):
        record(STEP32, f"base step, fp32, compiled ({size['backend']})",
               lambda: resnet32_rate(size, device, data, warmup=compile_warmup, compile=True))
        record(STEP32, f"base step, fp32, compiled ({size['backend']}), compile_mode=reduce-overhead (CUDA graphs)",
               lambda: resnet32_rate(size, device, data, compile=True, compile_mode="reduce-overhead"))
    record(STEP32, "LUCIR incremental step (old model, Eq. 9), fp32",
           lambda: resnet32_rate(size, device, data, incremental=True))
    shared = {}
    for K in size["K"]:
        shared[K] = record(SHARED, f"K = {K}", lambda: shared_rate(K, size, device))

    paper = {}

    def paper_run():
        """The paper-shaped run (benchmarks/paper_timing.py); its projection; images/s of its training."""
        timed, full = paper_timing.timed_config(size["paper_epochs"], args.tiny, str(device))
        with tempfile.TemporaryDirectory() as tmp:
            timing = paper_timing.time_run(timed, Path(tmp) / "run", device)
        projection = paper_timing.project(timing, timed, full, {k: v for k, v in shared.items() if v})
        paper.update(projection=projection, lines=paper_timing.describe(projection, device.type),
                     acc_cnn=timing["acc_cnn"])
        for line in paper["lines"]:
            print(line, flush=True)
        return sum(run_cost(timed)) / timing["seconds"]  # comparable with the rates: run_cost / rate = time

    record(STEP18, "fp32", lambda: resnet18_rate(size, device))
    record(STEP18, "bf16 autocast", lambda: resnet18_rate(size, device, "bf16"), native("bf16"))
    record(PAPER, f"{size['paper_epochs']} epochs a phase, fp32", paper_run)
    record_mps(record, max(size["K"]), size, device)  # after the paper run: the budget leaves out the last
    sources = synthetic_jpegs(size["jpeg_images"], size["jpeg_px"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for workers in sorted({0, min(8, cores) if not args.tiny else 1}):
        record(JPEG, f"{size['jpeg_px'][0]}x{size['jpeg_px'][1]} px JPEGs, {workers} workers",
               lambda: jpeg_rate(sources, size, device, workers))

    header = {"device_name": name, "cuda_device": device.type == "cuda", "date": datetime.date.today().isoformat(),
              "commit": git_state(REPO)["commit"], "torch": torch.__version__, "python": sys.version.split()[0],
              "cuda": torch.version.cuda, "threads": torch.get_num_threads(), "mode": mode, "K": list(size["K"]),
              "tests": tests, "seconds": time.perf_counter() - started, "paper": paper or None,
              "compile_seconds": compile_warmup.get("seconds")}
    write_outputs(out, header, figures)
    code = 0 if tests["returncode"] in (0, 5) and not failed else 1
    try:
        new = update_rates(out / "rates.json", device.type, figures, header)
        if args.rates_file:
            update_rates(Path(args.rates_file), device.type, figures, header)
        print(f"rates for {device.type} written to {out / 'rates.json'}: {new}")
    except (KeyError, TypeError) as e:  # a figure the rates need is missing
        print(f"rates not written: the figure {e} is missing", file=sys.stderr)
        code = 1
    print(f"table: {out / 'gpu_check.md'}; {time.perf_counter() - started:.0f} s in all")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
