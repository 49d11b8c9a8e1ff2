"""Timing and memory helpers: interleaved repetitions, medians, device sync, peak memory of one call."""
from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
import time
from typing import Callable, Iterable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the work it launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, `reps` times each, interleaved.

    Every repetition runs each function once, in an order rotated by one each repetition, so a
    slow spell of the machine (other processes, frequency changes) falls on all of them alike
    rather than on whichever ran last. `warmup` untimed rounds run first.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def persistent_bytes(*objects) -> int:
    """Bytes of the distinct tensor storages held by modules (parameters, buffers, gradients) and
    optimizers (their state): what stays allocated between training steps."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            key = (t.device, t.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                add(t)
                add(t.grad)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for v in state.values():
                    add(v)
    return total


def peak_bytes(fn: Callable[[], object], device: torch.device, *holders) -> int:
    """Peak tensor memory while `fn` runs: what `holders` (modules, optimizers) keep allocated
    between calls, plus the highest amount of memory allocated on top of it during the call.

    The same on both devices, so that the variants of one run (all resident at once) are counted
    one at a time: on CUDA the call's part is torch.cuda.max_memory_allocated above what was
    allocated when it began; on the CPU it comes from the torch profiler's allocation and free
    events, summed in time order (tensor memory only: no allocator slack or Python objects;
    temporaries freed inside a single op are not seen).
    """
    gc.collect()
    base = persistent_bytes(*holders)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return base + torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return base + peak


@contextlib.contextmanager
def _native_stderr_silenced():
    """Hide the profiler's native start/stop and allocator chatter, which bypasses sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
