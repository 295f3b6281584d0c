"""Where a run computes and how: the device (and a GPU that this PyTorch cannot use), the
precision of the forward passes (config `amp`), and deterministic algorithms (`deterministic`)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import torch

from .config import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NVIDIA_PROC = Path("/proc/driver/nvidia/version")  # present where NVIDIA's kernel driver is loaded


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here; use device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None


def nvidia_gpu() -> str | None:
    """The machine's NVIDIA GPU and driver as nvidia-smi names them (or the driver's kernel
    module when nvidia-smi is missing); None on a machine without one."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
            if first:
                name, _, driver = first.partition(",")
                return f"{name.strip()}, driver {driver.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    if NVIDIA_PROC.exists():
        words = NVIDIA_PROC.read_text().split()
        driver = next((w for w in words if w[:1].isdigit() and w.count(".") >= 1), "of unknown version")
        return f"NVIDIA driver {driver}"
    return None


def unusable_gpu() -> str | None:
    """One line when the machine has an NVIDIA GPU that this PyTorch cannot use (a wheel built for
    a newer CUDA than the driver supports, or a CPU-only build); None otherwise."""
    if torch.cuda.is_available():
        return None
    gpu = nvidia_gpu()
    if gpu is None:
        return None
    build = (f"built for CUDA {torch.version.cuda}, which the driver is probably too old for"
             if torch.version.cuda else "a CPU-only build")
    return (f"a GPU is present ({gpu}) but PyTorch {torch.__version__} ({build}) cannot use it, so device=auto "
            f"trains on the CPU")


# --------------------------------------------------------------------------- precision
def check_amp(amp: str, device: torch.device) -> None:
    """A one-line ConfigError when the device cannot run `amp` natively."""
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"amp=fp16 (float16 with a gradient scaler) is for CUDA GPUs without bfloat16; on "
                          f"{device.type} use amp=bf16 or amp=off")
    if amp == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(f"amp=bf16: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
                          f"has no native bfloat16 (8.0 or newer has); use amp=fp16")


def autocast(device: torch.device, amp: str):
    """The forward passes under `amp` (bf16 or fp16 autocast); with amp=off a context that changes
    nothing, so the default stays the paper's fp32."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """The loss scaling float16 needs (bfloat16 has float32's range and needs none). Disabled, its
    scale, step and update are loss.backward() and opt.step() unchanged."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


# --------------------------------------------------------------------------- determinism
def set_deterministic(enabled: bool, device: torch.device) -> None:
    """Deterministic cuDNN convolutions (no benchmark search) and torch.use_deterministic_algorithms
    (an op without a deterministic version is then an error) when `enabled`, so that a GPU run
    repeats to the bit; otherwise torch's defaults, with cuDNN's benchmark search on CUDA. Process-
    wide: each run sets it at its start, so a worker training several runs gives each its own."""
    if enabled:
        # cuBLAS repeats its sums only with a fixed workspace, read when CUDA creates its handle; it
        # stays set, not scoped (environment below): torch checks it again at every cuBLAS call
        # under use_deterministic_algorithms. The one write to os.environ the run makes, and only
        # in the GPU's repeat mode.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = device.type == "cuda" and not enabled
    torch.use_deterministic_algorithms(enabled)


# --------------------------------------------------------------------------- runs sharing one GPU
MPS_CONTROL = "nvidia-cuda-mps-control"


class MPSUnavailable(RuntimeError):
    """NVIDIA's Multi-Process Service could not be started here (no control binary, no GPU, a
    refused start); the runs then share the GPU by time slicing, as without it."""


@contextlib.contextmanager
def environment(**values: str):
    """os.environ with `values` (those not set already) for the duration of the block, and as it
    was after it: for what another library reads from the environment while the block runs (a
    spawned worker's OpenMP, Ray starting its raylet), so that a call of ours leaves the caller's
    environment unchanged."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def mps_daemon(folder: Path):
    """NVIDIA's Multi-Process Service for the processes started inside the block: a control
    daemon of this user's own, its pipe and log folders under `folder` (nothing machine-wide is
    changed: a process joins it only with the environment yielded here, and the daemon is told to
    quit when the block ends). Several training processes then run their kernels at once on the
    GPU instead of taking turns. Yields the environment (CUDA_MPS_PIPE_DIRECTORY,
    CUDA_MPS_LOG_DIRECTORY) a process must start with; raises MPSUnavailable where it cannot run."""
    control = shutil.which(MPS_CONTROL)
    if control is None:
        raise MPSUnavailable(f"{MPS_CONTROL} is not on PATH")
    pipes, logs = Path(folder) / "pipe", Path(folder) / "log"
    pipes.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipes), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    try:
        started = subprocess.run([control, "-d"], env=os.environ | env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise MPSUnavailable(f"{MPS_CONTROL} -d: {e}") from None
    if started.returncode != 0:
        said = " ".join((started.stderr or started.stdout).split())[:200]
        raise MPSUnavailable(f"{MPS_CONTROL} -d exited {started.returncode}: {said}")
    try:
        yield env
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([control], input="quit\n", env=os.environ | env, capture_output=True, text=True, timeout=30)
