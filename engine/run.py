"""What every stage script shares: the command line, the output folder, logging, device and seeds."""
from __future__ import annotations

import argparse
import functools
import logging
import random
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from glora.errors import UserError
from glora.io import tuples

from . import distributed, method
from .config import load_config, save_config

log = logging.getLogger("glora")


def parse_args(argv: Optional[list[str]] = None, description: Optional[str] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("config", nargs="*", help="experiment YAML(s), applied in order over configs/defaults.yaml "
                   "(e.g. configs/vtab/dtd.yaml configs/methods/lora.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=10 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue this stage from its last checkpoint")
    return p.parse_args(argv)


def cli(main: Callable[[argparse.Namespace], None], description: str) -> None:
    """Run a stage's `main`; bad input ends with one `error:` line and exit status 2."""
    args = parse_args(description=description)
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except distributed.PeerFailed:  # rank 0 has printed the error
        sys.exit(2)


class Stage:
    """One stage's run: resolved config, `<output>/<stage>/` folder, log file, device, seeds."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.cfg = load_config(args.config, args.overrides)
        method.check(self.cfg)
        self.resume = args.resume
        self.root = Path(self.cfg["output"])
        self.dir = self.root / name
        self.device = distributed.init(self.cfg["device"])
        self.main = distributed.is_main()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._setup_logging()
        seed_everything(self.cfg["seed"])  # the same on every rank: the same model, subnets and batches
        log.info("%s: output %s, device %s%s", name, self.dir, self.device, " (resuming)" if self.resume else "")

    def begin(self) -> None:
        """Inputs are checked: record the resolved config beside the outputs (bad input never gets here)."""
        if self.main:
            save_config(self.cfg, self.dir / "config.yaml")

    def _setup_logging(self) -> None:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        log.handlers.clear()
        log.setLevel(logging.INFO)
        log.propagate = False
        if not self.main:  # one rank speaks for all
            log.addHandler(logging.NullHandler())
            return
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(self.dir / "log.txt")):
            handler.setFormatter(fmt)
            log.addHandler(handler)

    @functools.cached_property
    def writer(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.dir / "tb")) if self.main else _NoWriter()

    def peak_memory_mb(self) -> float | None:
        """Peak GPU memory allocated by this process so far (None on the CPU)."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None

    def close(self) -> None:
        if "writer" in self.__dict__:
            self.writer.close()
        distributed.close()


class _NoWriter:
    """The TensorBoard writer of ranks other than 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_noise(seed: int) -> None:
    """Seed torch's generators (drop-path, dropout) from (seed, rank): each rank draws its own masks."""
    torch.manual_seed(int(np.random.SeedSequence([seed, distributed.rank()]).generate_state(1)[0]))


def rng_state(device: torch.device) -> dict:
    """This process's generator states (torch's, that of its GPU, Python's), for exact resume."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuples(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
