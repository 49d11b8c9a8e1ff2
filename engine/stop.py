"""Stopping a stage on a signal.

SIGTERM, SIGUSR1 (what SLURM can send before a time limit) and SIGINT (Ctrl-C) ask the stage to
stop: it finishes its current step (a training batch, a search generation), writes its checkpoint
and exits with engine.status.STOPPED; `--resume` then ends where an uninterrupted run ends. Under
torchrun the ranks agree each step (a collective), so all stop after the same one. In one
process, a second signal stops at once (the last checkpoint is intact, so --resume still works).
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from . import distributed

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Stopped(Exception):
    """A signal stopped the stage at a step boundary, after its checkpoint was written."""


class StopSignals:
    """While installed, the signals above set a flag that the stage's loops poll between steps."""

    def __init__(self, device: torch.device):
        self.device = device
        self.received: str | None = None  # name of the first signal received
        self._previous = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        # Nothing is printed here: the main thread may be inside a write to the same stream.
        if self.received is not None and distributed.world_size() == 1:
            raise KeyboardInterrupt  # asked twice: stop now
        self.received = self.received or signal.Signals(signum).name

    def requested(self) -> bool:
        """Whether to stop now; under torchrun, whether any rank received a signal (all ranks call it)."""
        if not dist.is_initialized():
            return self.received is not None
        flag = torch.tensor(int(self.received is not None), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
