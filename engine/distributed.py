"""Devices and ranks: one process, or several GPUs (or CPU processes) launched by torchrun.

What the ranks of a torchrun run share and what they do not:
- The run's seed: every rank builds the same model, draws the same subnets (from its own
  `random.Random(seed)`) and the same batch order; each trains on its share of every batch
  (`shard`) and DDP averages the gradients.
- Not the noise: torch's generator (drop-path, dropout) is seeded per rank (`engine.run.seed_noise`),
  so that each rank's samples get their own masks, as they would in one process over the whole batch.
- Only rank 0 writes files and logs; checkpoints hold every rank's generator states.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from glora.errors import UserError

T = TypeVar("T")


class PeerFailed(Exception):
    """Rank 0 failed in work the others were waiting for; its own error says why."""


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def resolve_device(name: str) -> torch.device:
    """The device the config names: auto (CUDA if available), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device={name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={name!r} but CUDA is not available here; use --set device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device={name!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def init(device: str) -> torch.device:
    """This process's device; under torchrun, join the process group first.

    Under torchrun, `device: cpu` runs gloo over CPU processes, whether or not CUDA is present;
    `cuda` (or `auto` where CUDA is present) runs NCCL with rank r on GPU LOCAL_RANK.
    """
    device_ = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device_
    if device_.type == "cpu":
        dist.init_process_group("gloo")
        return device_
    if device_.index is not None:
        raise UserError(f"device={device!r} names one GPU, but under torchrun rank r takes GPU LOCAL_RANK: "
                        "use --set device=cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)")
    local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local >= count:
        raise UserError(f"torchrun started local rank {local}, but only {count} GPU(s) are visible: "
                        f"use --nproc_per_node {count}, or --set device=cpu for CPU processes")
    device_ = torch.device("cuda", local)
    torch.cuda.set_device(device_)
    dist.init_process_group("nccl")
    return device_


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


_waits = 0  # rank0_first calls so far: the same count on every rank names the same store key


def rank0_first(work: Callable[[], T]) -> T:
    """`work()` on rank 0, then on every other rank (rank 0 builds a cache that the others read).

    The others wait by polling the process group's key-value store, with no deadline: the work
    can outlast any collective's timeout (NCCL's default is 10 minutes; decoding a 73,728-image
    test split takes longer). If rank 0 fails or is gone, the others raise PeerFailed.
    """
    global _waits
    if not dist.is_initialized():
        return work()
    _waits += 1
    key = f"glora/rank0_first/{_waits}"
    store = dist.distributed_c10d._get_default_store()  # the rendezvous store every rank holds
    if is_main():
        try:
            result = work()
        except BaseException:
            store.set(key, "failed")
            raise
        store.set(key, "done")
        return result
    try:
        while not store.check([key]):
            time.sleep(0.5)
        done = store.get(key) == b"done"
    except RuntimeError:  # the store went down with rank 0
        done = False
    if not done:
        raise PeerFailed
    return work()


def all_gather(obj: Any) -> list:
    """Every rank's `obj`, in rank order (a one-element list in one process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


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
