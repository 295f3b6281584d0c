"""One run on several processes (torchrun): DistributedDataParallel helpers.

`python -m lucir run` started by torchrun (WORLD_SIZE > 1 in the environment) trains one run
with DistributedDataParallel: gloo on the CPU, nccl on CUDA with each rank on the GPU of its
LOCAL_RANK. Every rank draws the same epoch permutation from the same generator and takes its
slice of every global batch (global batch = `batch_size`, per rank batch_size // world).
The forward passes over whole class sets and the test set (imprinting, herding, evaluation:
lucir.trainer.extract) are split too: each rank computes a block of the batches (`rank_slice`)
and every rank receives all rows in order (`gather_rows`), the numbers of one process. Herding's
selection and the accuracies are then computed on every rank from the same features; `share`
hands rank 0's memory and metric rows to the others, so every rank holds the same. Writing
outputs happens on rank 0. A rank waits in a collective at most `dist_timeout_minutes` (config)
before the job stops. Without torchrun every function here is the identity (rank 0 of 1) and
nothing is initialised.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched_world_size() -> int:
    """The number of processes torchrun (or an equivalent launcher) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def requested() -> bool:
    """True when torchrun (or an equivalent launcher) asked for more than one process."""
    return launched_world_size() > 1


def setup(device: torch.device, timeout_minutes: float = 60.0) -> torch.device:
    """Join the process group when launched with WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA);
    returns this rank's device (cuda:LOCAL_RANK on CUDA). A rank waiting in a collective longer
    than `timeout_minutes` stops the job (config `dist_timeout_minutes`; torch's default is 10
    minutes for nccl). A no-op without a launcher."""
    if not requested():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=timeout_minutes))
    return device


def rank_from_env() -> int:
    """This process's rank as the launcher set it (0 without one); valid after shutdown too."""
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def share(obj):
    """Rank 0's `obj` on every rank (broadcast_object_list); the object itself without DDP."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_slice(items: list) -> list:
    """This rank's contiguous block of `items`: the r-th of `world` near-equal blocks (the first
    len % world ranks take one item more), so that the blocks joined in rank order are `items`
    (a rank may get none). All of `items` without DDP."""
    if not active():
        return items
    size, extra = divmod(len(items), world_size())
    start = rank() * size + min(rank(), extra)
    return items[start:start + size + (rank() < extra)]


def _collective_device() -> torch.device:
    """Where the collectives take tensors: this rank's GPU under nccl, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` joined along dim 0 in rank order, on every rank (all_gather): with
    `rank_slice`, what one process computing all rows gets. The ranks may hold different numbers
    of rows; a rank holding none may pass an empty tensor of any shape (torch.zeros(0)). Each
    rank's rows travel padded to the longest rank's (all_gather takes equal shapes) on the device
    the collective needs, the rank's GPU under nccl, the CPU under gloo; the result is there.
    Without DDP, or when every rank's `t` is empty, `t` itself."""
    if not active():
        return t
    metas = [None] * world_size()  # (shape, dtype) of each rank's rows, None for none
    dist.all_gather_object(metas, (tuple(t.shape), t.dtype) if t.numel() else None)
    full = [m for m in metas if m is not None]
    if not full:
        return t
    rows = [m[0][0] if m else 0 for m in metas]
    shape, dtype = full[0]
    padded = torch.zeros((max(rows), *shape[1:]), dtype=dtype, device=_collective_device())
    if t.numel():
        padded[:len(t)] = t
    parts = [torch.empty_like(padded) for _ in metas]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, rows)])


def sync_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers (BatchNorm statistics) into every rank's module."""
    if not active():
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the ranks (in place); `t` itself without DDP."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model in DistributedDataParallel (a new wrapper per training call, since the head
    grows between phases; building it broadcasts rank 0's weights); the model itself without."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
