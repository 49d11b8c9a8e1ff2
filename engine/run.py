"""What every stage script shares: the command line and its exit statuses, the output folder and
its run (lock, identity, resume), logging, device, seeds and stop signals."""
from __future__ import annotations

import argparse
import functools
import logging
import logging.handlers
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from data.checks import check_task_lists
from glora.errors import UserError
from glora.io import file_sha256, load_yaml, save_yaml, tuples

from . import distributed, identity, method
from .config import load_config, save_config
from .experiment import layout as experiment_layout
from .folder import StageFolder, os_error_message
from .status import OK, STOPPED, USER_ERROR
from .stop import StopSignals, Stopped
from .validate import validate_config

log = logging.getLogger("glora")


def parse_args(argv: Optional[list[str]] = None, description: Optional[str] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=description,
        epilog=f"exit status: {OK} done; {USER_ERROR} bad input or a refused resume (one `error:` line says "
               f"why); {STOPPED} stopped by SIGTERM, SIGUSR1 or SIGINT after a checkpoint: run again with --resume")
    p.add_argument("config", nargs="*", help="experiment YAML(s), applied in order over configs/defaults.yaml "
                   "(e.g. configs/vtab/dtd.yaml configs/methods/lora.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=10 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue this stage's run from its last checkpoint")
    return p.parse_args(argv)


def cli(main: Callable[[argparse.Namespace], None], description: str) -> None:
    """Run a stage's `main` and exit with its status (see `execute`)."""
    sys.exit(execute(main, parse_args(description=description)))


def execute(main: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run `main(args)`: 0 when it is done; 2 after one `error:` line (bad input, an OS error on the
    outputs, a refused resume); 75 when a signal stopped it (one line says how to resume)."""
    try:
        main(args)
        return OK
    except UserError as e:
        return _error(str(e))
    except OSError as e:
        return _error(os_error_message(e))
    except distributed.PeerFailed:  # rank 0 has printed the error
        return USER_ERROR
    except (Stopped, KeyboardInterrupt) as e:
        how = str(e) if isinstance(e, Stopped) else "interrupted: stopped at once; the last checkpoint is intact"
        if distributed.is_main():
            _say(f"stopped: {how}; to continue, run the same command with --resume ({resume_command()})")
        return STOPPED
    finally:
        Stage.release_all()


def _error(message: str) -> int:
    _say(f"error: {message}")
    return USER_ERROR


def _say(line: str) -> None:
    """One line on stderr, and in the stage's log file if it has one."""
    print(line, file=sys.stderr, flush=True)
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def resume_command() -> str:
    argv = [*sys.argv, *(["--resume"] if "--resume" not in sys.argv else [])]
    return " ".join(shlex.quote(a) for a in ["python", *argv])


class Stage:
    """One stage's run: the checked config, `<output>/<stage>/` and its lock, the run's identity,
    log file, device, seeds and stop signals.

    A --resume that changes the config the stage's result depends on (engine.identity.USES) is refused.
    Nothing is written before `begin()`, which the script calls once every input is checked (the
    lock is taken at once where the folder exists, else when begin() makes it).
    """

    _open: list = []  # stages of this process not released yet (see release_all)

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.cfg = load_config(args.config, args.overrides)
        validate_config(self.cfg)
        method.check(self.cfg)
        self.root = Path(self.cfg["output"])
        self.dir = self.root / name
        self.device = distributed.init(self.cfg["device"])
        self.main = distributed.is_main()
        self.stop = StopSignals(self.device).install()
        Stage._open.append(self)
        self._setup_logging()
        seed_everything(self.cfg["seed"])  # the same on every rank: the same model, subnets and batches
        d = self.cfg["data"]
        lists = check_task_lists(d["root"], d["task"], d["num_classes"], experiment_layout(self.cfg))  # decodes nothing
        self.data = identity.data_identity(lists)
        for note in lists.notes:
            log.info("note: %s", note)
        self.folder = StageFolder(self.dir)
        self.folder.check()
        if self.main and self.dir.is_dir():  # else nothing is there to guard until begin() makes it
            self.folder.lock()
        self.upstream_digests: dict[str, str] = {}
        self._lineages: dict[str, dict] = {}
        self.resume, self.record = self._open_run(args.resume)
        self.began = False
        self._done_steps = 0
        log.info("%s: output %s, device %s%s", name, self.dir, self.device,
                 f" (resuming run {self.run})" if self.resume else "")

    @property
    def run(self) -> str:
        """This run's id (a resumed run keeps the id it started with)."""
        return self.record["run"]

    def _open_run(self, resume: bool) -> tuple[bool, dict]:
        """(whether this continues a run, its record): a resume must find the same config and data."""
        path = self.dir / identity.RECORD
        fresh = {"run": identity.new_run_id(), "stage": self.name, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": resume_command().removesuffix(" --resume"), "config": self.cfg, "data": self.data,
                 "upstream": {}}
        if not resume:
            return False, fresh
        if not path.is_file():
            if self.folder.contents():
                raise UserError(f"{self.dir}: no run record ({identity.RECORD}) to resume (made by an older version, "
                                "or damaged); run without --resume to start afresh (its files move to previous/)")
            log.info("nothing to resume in %s: starting afresh", self.dir)
            return False, fresh
        record = load_yaml(path)
        if not isinstance(record, dict) or not {"run", "config", "data", "upstream"} <= set(record):
            raise UserError(f"{path}: damaged run record; run without --resume to start afresh")
        if record.get("imported_from"):
            raise UserError(f"{self.dir}: its supernet was imported from {record['imported_from']}, not trained here: "
                            "nothing to resume; run without --resume to train one (the import moves to previous/)")
        diffs = identity.resume_differences(record, self.cfg, self.data, identity.USES[self.name])
        if diffs:
            raise UserError(f"{path}: --resume continues run {record['run']}, which started with other settings: "
                            f"{'; '.join(diffs)} (then → now); resume with those, or start afresh: without --resume "
                            "(the old run moves to previous/) or in another output folder")
        return True, record

    def upstream(self, rel: str, missing: str, transfer: bool = False) -> Path:
        """The upstream file `<output>/<rel>` (or `rel` itself where absolute) this stage reads, checked: it
        exists (else `missing` says how to make it), it was made for this experiment and data, it agrees
        with the other upstream files (made from the same ones), and on --resume it is the file the run
        started with. A `transfer` (a subnet file named by retrain.subnet) may come from another
        experiment or none: a note says so, and the reader checks that it fits the model."""
        path = self.root / rel
        if not path.is_file():
            raise UserError(f"{path}: not found; {missing}")
        theirs = identity.read_lineage(path)
        digest = file_sha256(path)
        if transfer:
            diffs = identity.lineage_differences(theirs, self.cfg, self.data)
            if diffs:
                log.info("note: %s was made for another experiment (%s; there → here): used as a transfer",
                         path, "; ".join(diffs))
        else:
            identity.check_lineage(path, theirs, self.cfg, self.data)
            for other, made in self._lineages.items():
                if made["upstream"].get(rel, digest) != digest:
                    raise UserError(f"{self.root / other} was made from another {rel} than the one there now: "
                                    f"run its stage ({made['stage']}) again")
            for up, was in theirs["upstream"].items():
                if self.upstream_digests.get(up, was) != was:
                    raise UserError(f"{path} was made from another {up} than the one there now: "
                                    f"run its stage ({theirs['stage']}) again")
            self._lineages[rel] = theirs
        if self.resume and self.record["upstream"].get(rel) != digest:
            raise UserError(f"{path} changed since this {self.name} run started (made again, or edited): run without "
                            "--resume to start afresh from it (the old run moves to previous/)")
        self.upstream_digests[rel] = digest
        return path

    def lineage(self) -> dict:
        """What this stage's outputs carry: its run, the experiment, the data and the upstream digests."""
        return identity.lineage(self.cfg, self.data, self.upstream_digests, self.run, self.name)

    def begin(self, done_steps: int = 0) -> None:
        """Inputs are checked: a fresh run retires the previous run of the stage and records itself;
        the log file opens. `done_steps`: epochs or generations a resumed run has done already
        (TensorBoard drops the points a killed run logged after them)."""
        if self.main:
            if not self.folder.locked:
                self.folder.lock()
            self.folder.clean()
            retired = None if self.resume else self.folder.retire(self._previous_run())
            if not self.resume:
                self.record["upstream"] = dict(self.upstream_digests)
                save_yaml(self.dir / identity.RECORD, self.record)
            save_config(self.cfg, self.dir / "config.yaml")
            self._open_log_file()
            if retired is not None:
                log.info("the previous run of this stage moved to %s", retired)
        self._done_steps = done_steps
        self.began = True

    def _previous_run(self) -> str:
        """The id of the run whose files are in the folder (its run record's, else when it was retired)."""
        try:
            return str(load_yaml(self.dir / identity.RECORD)["run"])
        except (UserError, TypeError, KeyError):
            return "unrecorded-" + time.strftime("%Y%m%d-%H%M%S")

    def _setup_logging(self) -> None:
        log.handlers.clear()
        log.setLevel(logging.INFO)
        log.propagate = False
        if not self.main:  # one rank speaks for all
            log.addHandler(logging.NullHandler())
            return
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(_FORMAT)
        # Until begin() opens log.txt (after retiring the previous run's), its lines wait here.
        self._early = logging.handlers.BufferingHandler(capacity=100_000)
        log.addHandler(console)
        log.addHandler(self._early)

    def _open_log_file(self) -> None:
        handler = logging.FileHandler(self.dir / "log.txt")
        handler.setFormatter(_FORMAT)
        for record in self._early.buffer:
            handler.handle(record)
        log.removeHandler(self._early)
        log.addHandler(handler)

    @functools.cached_property
    def writer(self):
        """TensorBoard writer. A resumed run continues its curves (purge_step drops what a killed run
        logged after its checkpoint); a finished run resumed again adds nothing."""
        from torch.utils.tensorboard import SummaryWriter

        if not self.main or self.record.get("finished"):
            return _NoWriter()
        return SummaryWriter(str(self.dir / "tb"), purge_step=self._done_steps + 1 if self.resume else None)

    def peak_memory_mb(self) -> float | None:
        """Peak GPU memory allocated by this process so far (None on the CPU)."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None

    def close(self) -> None:
        """The stage is done: its run is recorded as finished, and everything is released."""
        if self.main and self.began:
            self.record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            save_yaml(self.dir / identity.RECORD, self.record)
        self.release()

    def release(self) -> None:
        """Close the TensorBoard writer and the log file, restore the signal handlers, unlock the folder."""
        if "writer" in self.__dict__:
            self.writer.close()
        for handler in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
            handler.close()
            log.removeHandler(handler)
        self.stop.restore()
        if hasattr(self, "folder"):
            self.folder.unlock()
        distributed.close()
        if self in Stage._open:
            Stage._open.remove(self)

    @classmethod
    def release_all(cls) -> None:
        """Release every stage of this process that was not closed (one that stopped on an error)."""
        for stage in list(cls._open):
            stage.release()


_FORMAT = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")


class _NoWriter:
    """The TensorBoard writer of ranks other than 0 (and of a finished run resumed again)."""

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
