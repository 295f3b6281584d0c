"""One run on several processes (torchrun): DistributedDataParallel helpers.

`python -m lucir run` started by torchrun (WORLD_SIZE > 1 in the environment) trains one run
with DistributedDataParallel: gloo on the CPU, nccl on CUDA with each rank on the GPU of its
LOCAL_RANK. Every rank draws the same epoch permutation from the same generator and takes its
slice of every global batch (global batch = `batch_size`, per rank batch_size // world).
Herding, evaluation and writing outputs happen on rank 0; `share` hands its results to the
other ranks, so every rank holds the same exemplar memory and metrics. Without torchrun every
function here is the identity (rank 0 of 1) and nothing is initialised.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_world_size() -> int:
    """The number of processes torchrun (or an equivalent launcher) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def requested() -> bool:
    """True when torchrun (or an equivalent launcher) asked for more than one process."""
    return launched_world_size() > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched with WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA);
    returns this rank's device (cuda:LOCAL_RANK on CUDA). A no-op without a launcher."""
    if not requested():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
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
