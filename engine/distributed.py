"""Several GPUs (or CPU processes) through torchrun: the process group, this process's rank, barriers.

Every rank draws the same subnets (same seed, same order of draws), trains on its shard of
each batch, and DDP averages the gradients; only rank 0 writes files and logs.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> torch.device | None:
    """Join the torchrun process group if launched by torchrun; returns this rank's CUDA device, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's share of a batch (every rank sees the same batch order)."""
    return x[rank()::world_size()] if dist.is_initialized() else x


def mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size()
    return value


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
