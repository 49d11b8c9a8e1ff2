"""What every stage script shares: the command line and its exit statuses, the output folder and
its run (lock, identity, resume), logging, device, seeds and stop signals."""
from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from data.checks import check_task_lists
from glora.errors import UserError
from glora.io import file_sha256, load_yaml, save_yaml, tuples

from . import distributed, identity, keys, method
from .config import load_config, save_config, validate_config
from .experiment import layout as experiment_layout
from .folder import StageFolder, os_error_message
from .status import OK, STOPPED, USER_ERROR
from .stop import StopSignals, Stopped

log = logging.getLogger("glora")


class _HelpConfig(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(keys.help_text())
        parser.exit()


def parse_args(argv: Optional[list[str]] = None, description: Optional[str] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=description,
        epilog=f"exit status: {OK} done (or finished before: a resumed finished run changes nothing); "
               f"{USER_ERROR} bad input or a refused resume (one `error:` line says why); {STOPPED} stopped by "
               "SIGTERM, SIGUSR1 or SIGINT after a checkpoint: run again with --resume")
    p.add_argument("config", nargs="*", help="experiment YAML(s), applied in order over configs/defaults.yaml "
                   "(e.g. configs/vtab/dtd.yaml configs/methods/lora.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=10 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue this stage's run from its last checkpoint")
    p.add_argument("--help-config", action=_HelpConfig, nargs=0,
                   help="list every config key with its default, the stages that use it and its help, and exit")
    return p.parse_args(argv)


def cli(name: str, main: Callable[["Stage"], None], description: str) -> None:
    """Run stage `name` with the command line's arguments and exit with its status (see `execute`)."""
    sys.exit(execute(name, main, parse_args(description=description)))


def execute(name: str, main: Callable[["Stage"], None], args: argparse.Namespace) -> int:
    """`run_stage(name, main, args)`: 0 when it is done (or was done before); 2 after one `error:`
    line (bad input, an OS error on the outputs, a refused resume); 75 when a signal stopped it
    (one line says how to resume)."""
    try:
        run_stage(name, main, args)
        return OK
    except _ENDINGS as e:
        status, line = _outcome(e)
        if line:
            print(line, file=sys.stderr, flush=True)
        return status


def run_stage(name: str, main: Callable[["Stage"], None], args: argparse.Namespace) -> None:
    """The one order of a stage: every input is checked (Stage), then `main(stage)` builds what it
    needs and does its work inside `with stage.begin(...)`, which records the run and, once the
    block ends, marks it finished; all is released at the end, whatever happens. A finished run
    resumed with its outputs intact does nothing (and writes nothing)."""
    with Stage(name, args) as stage:
        if not stage.already_finished:
            main(stage)


_ENDINGS = (UserError, OSError, distributed.PeerFailed, Stopped, KeyboardInterrupt)  # what a stage may end with


def _outcome(e: BaseException) -> tuple[int, Optional[str]]:
    """The exit status of a stage that ended with `e`, and its one line (None: another rank says it)."""
    if isinstance(e, UserError):
        return USER_ERROR, f"error: {e}"
    if isinstance(e, OSError):
        return USER_ERROR, f"error: {os_error_message(e)}"
    if isinstance(e, distributed.PeerFailed):  # rank 0 has printed the error
        return USER_ERROR, None
    how = str(e) if isinstance(e, Stopped) else "interrupted: stopped at once; the last checkpoint is intact"
    line = f"stopped: {how}; to continue, run the same command with --resume ({resume_command()})"
    return STOPPED, line if distributed.is_main() else None


def resume_command() -> str:
    argv = [*sys.argv, *(["--resume"] if "--resume" not in sys.argv else [])]
    return " ".join(shlex.quote(a) for a in ["python", *argv])


class Stage:
    """One stage's run: the checked config, `<output>/<stage>/` and its lock, the upstream files it
    reads, the run's identity, log file, device, seeds and stop signals. A context manager
    (engine.run.run_stage enters it): whatever happens, leaving it releases all.

    Constructing it checks every input before anything is written: the config (every key's rule,
    then the rules across keys), the task's lists, the output folder and the upstream files
    (engine.method.upstream_files). A --resume that changes what the stage's result depends on
    (engine.identity.USES) is refused; one that changes only what cannot change it (engine.keys:
    resume_free) continues with a note. Outputs are written inside `with stage.begin(...)`.
    """

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.began = False
        self._writer = None
        try:
            self._check(args)
        except BaseException:
            self.release()
            raise

    def _check(self, args: argparse.Namespace) -> None:
        self.cfg = load_config(args.config, args.overrides)
        validate_config(self.cfg)
        method.check(self.cfg)
        self.root = Path(self.cfg["output"])
        self.dir = self.root / self.name
        self.device = distributed.init(self.cfg["device"])
        self.main = distributed.is_main()
        self.stop = StopSignals(self.device).install()
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
        for upstream in method.upstream_files(self.cfg, self.name):
            self._upstream(upstream)
        self.already_finished = self._finished_before()
        if not self.already_finished:
            log.info("%s: output %s, device %s%s", self.name, self.dir, self.device,
                     f" (resuming run {self.run})" if self.resume else "")

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if isinstance(error, _ENDINGS):
                self._log_only(_outcome(error)[1])  # the line execute prints, in log.txt too
            elif error is None and not self.began and not self.already_finished:
                raise RuntimeError(f"the {self.name} stage ended without `with stage.begin(...)`: "
                                   "nothing was recorded (a bug in its script)")
        finally:
            self.release()

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
        if record.get("imported_from") and not record.get("finished"):
            raise UserError(f"{self.dir}: its supernet was imported from {record['imported_from']}, not trained here: "
                            "nothing to resume; run without --resume to train one (the import moves to previous/)")
        diffs = identity.resume_differences(record, self.cfg, self.data, identity.USES[self.name])
        if diffs:
            raise UserError(f"{path}: --resume continues run {record['run']}, which started with other settings: "
                            f"{'; '.join(diffs)} (then → now); resume with those, or start afresh: without --resume "
                            "(the old run moves to previous/) or in another output folder")
        changes = identity.resume_changes(record, self.cfg, self.name)
        if changes:
            log.info("note: --resume with %s: allowed, as none of them can change the result (--help-config says "
                     "why)", "; ".join(changes))
        return True, record

    def _upstream(self, up: method.Upstream) -> None:
        """The upstream file `<output>/<rel>` (or `rel` itself where absolute) this stage reads, checked: it
        exists (else `missing` says how to make it), it was made for this experiment and data, it agrees
        with the other upstream files (made from the same ones), and on --resume it is the file the run
        started with. A transfer may come from another experiment or none: a note says so."""
        rel, path = up.rel, self.root / up.rel
        if not path.is_file():
            raise UserError(f"{path}: not found; {up.missing}")
        theirs = identity.read_lineage(path)
        digest = file_sha256(path)
        if up.transfer:
            found = identity.lineage_differences(theirs, self.cfg, self.data)
            if found and found[0] + found[1]:
                log.info("note: %s was made for another experiment (%s; there → here): used as a transfer",
                         path, "; ".join(found[0] + found[1]))
        else:
            for note in identity.check_lineage(path, theirs, self.cfg, self.data):
                log.info("note: %s: %s: served", path, note)
            for other, made in self._lineages.items():
                if made["upstream"].get(rel, digest) != digest:
                    raise UserError(f"{self.root / other} was made from another {rel} than the one there now: "
                                    f"run its stage ({made['stage']}) again")
            for up_rel, was in theirs["upstream"].items():
                if self.upstream_digests.get(up_rel, was) != was:
                    raise UserError(f"{path} was made from another {up_rel} than the one there now: "
                                    f"run its stage ({theirs['stage']}) again")
            self._lineages[rel] = theirs
        if self.resume and self.record["upstream"].get(rel) != digest:
            raise UserError(f"{path} changed since this {self.name} run started (made again, or edited): run without "
                            "--resume to start afresh from it (the old run moves to previous/)")
        self.upstream_digests[rel] = digest

    def _finished_before(self) -> bool:
        """A resumed run that finished: done, if its outputs are as it wrote them (nothing is written);
        else its last checkpoint writes them again."""
        if not (self.resume and self.record.get("finished")):
            return False
        written = self.record.get("outputs")
        changed = [] if written is None else [
            rel for rel, digest in written.items()
            if not (self.dir / rel).is_file() or file_sha256(self.dir / rel) != digest]
        if changed and self.record.get("imported_from"):
            raise UserError(f"{self.dir}: its supernet was imported from {self.record['imported_from']}, and "
                            f"{', '.join(changed)} changed or went missing since: import it again (or train one: "
                            "without --resume)")
        if changed:
            log.info("note: run %s finished, but %s changed or went missing since: its outputs are written again "
                     "from its last checkpoint", self.run, ", ".join(changed))
            return False
        if self.main:
            self.folder.clean()  # what killed writes left (never an output)
        log.info("%s: run %s already finished (%s) and its outputs are intact: nothing to do (to run it again, "
                 "leave out --resume)", self.name, self.run, self.record["finished"])
        return True

    def lineage(self) -> dict:
        """What this stage's outputs carry: its run, the experiment, the data and the upstream digests."""
        return identity.lineage(self.cfg, self.data, self.upstream_digests, self.run, self.name)

    @contextlib.contextmanager
    def begin(self, done_steps: int = 0) -> Iterator["Stage"]:
        """Every input is checked: the stage begins. A fresh run retires the previous run of the stage
        and records itself, and the log file opens; when the block ends (without an exception) the
        run is recorded as finished, with the digests of its outputs. `done_steps`: epochs or
        generations a resumed run has done already (TensorBoard drops the points a killed run
        logged after them)."""
        if self.began:
            raise RuntimeError(f"the {self.name} stage began twice")
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
        yield self
        if self.main:
            self.record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            self.record["outputs"] = {str(p.relative_to(self.dir)): file_sha256(p) for p in self.folder.outputs()}
            save_yaml(self.dir / identity.RECORD, self.record)

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

    def _log_only(self, line: Optional[str]) -> None:
        """A line in the stage's log file, if it has one (execute prints it on stderr)."""
        if not line:
            return
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
        for handler in log.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    @property
    def writer(self):
        """TensorBoard writer, inside `begin()`. A resumed run continues its curves (purge_step drops
        what a killed run logged after its checkpoint); a finished run resumed again adds nothing."""
        if not self.began:
            raise RuntimeError(f"the {self.name} stage writes TensorBoard curves before it began")
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = _NoWriter() if not self.main or self.record.get("finished") else SummaryWriter(
                str(self.dir / "tb"), purge_step=self._done_steps + 1 if self.resume else None)
        return self._writer

    def peak_memory_mb(self) -> float | None:
        """Peak GPU memory allocated by this process so far (None on the CPU)."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None

    def release(self) -> None:
        """Close the TensorBoard writer and the log file, restore the signal handlers, unlock the folder."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for handler in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
            handler.close()
            log.removeHandler(handler)
        if hasattr(self, "stop"):
            self.stop.restore()
        if hasattr(self, "folder"):
            self.folder.unlock()
        distributed.close()


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
