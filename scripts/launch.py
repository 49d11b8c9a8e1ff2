"""Run a grid of experiments (configs × tasks × seeds), one submitit job per cell, on SLURM or here.

Each cell runs the stages its method needs (train.py, search.py, retrain.py for GLoRA; retrain.py
alone for a baseline such as configs/methods/lora.yaml) with the grid's experiment YAML into
`<grid>/<task>/seed<k>/`, or with its config into `<grid>/<config>/<task>/seed<k>/` when the grid
has a config axis (experiment YAMLs or method presets applied over the experiment, and/or
overrides). A stage whose run record says finished is skipped; one that started before runs again
with --resume. Before anything runs, every finished or started stage is compared with what its
--resume compares (config keys, the task's lists as they are now, upstream files): a cell whose
runs no longer hold is refused, naming what changed, or with --rerun-stale those stages run afresh.
`--executor slurm` submits the cells as one job array (a job stopped before its time limit or
preempted is requeued and resumes); `--executor local` runs them here, one job per GPU or CPU slot
at a time, showing each cell's progress; Ctrl-C stops them all at a checkpoint. Launching a grid
again runs only what is unfinished; every launch ends by writing the grid's results table.

    python scripts/launch.py --name seeds --tasks dtd cifar --seeds 0 1 2 --set data.root=/data/vtab-1k
    python scripts/launch.py --name demo --experiment configs/demo.yaml --tasks digits --seeds 0 1
    python scripts/launch.py --name methods --tasks natural --configs glora lora bitfit linear --set data.root=...
    python scripts/launch.py grid.yaml --executor slurm --partition gpu --time 600
    python scripts/launch.py --name fewshot --experiment configs/fewshot.yaml --tasks fewshot --shots 1 2 4 8 16 --seeds 0 1 2

With `--shots K...` (few-shot), every task × seed cell runs once per K into `<grid>/[<config>/]<task>/shot<K>/seed<S>/`
with data.shots=K (the list train_meta.list.num_shot_<K>.seed_<S> follows the seed unless data.shot_seed is set).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import submitit
import yaml
from submitit.core.utils import FailedJobError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data.checks import check_task_lists  # noqa: E402
from data.registry import FEWSHOT_TASKS, GROUPS, TASKS  # noqa: E402
from engine import identity  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.experiment import layout as experiment_layout  # noqa: E402
from engine.folder import StageFolder  # noqa: E402
from engine.method import STAGE_SCRIPTS, stages  # noqa: E402
from engine.progress import LogFollower  # noqa: E402
from engine.status import STOPPED as STOPPED_RESUMABLE  # noqa: E402
from glora.errors import UserError  # noqa: E402
from glora.io import file_sha256, load_yaml  # noqa: E402

# A stage that exits with STOPPED_RESUMABLE stopped at a checkpoint on request and continues with
# --resume (EX_TEMPFAIL of sysexits.h); any other non-zero status fails the cell.
STOP_SIGNAL = signal.SIGTERM  # how a job asks its running stage to checkpoint and stop
STOP_GRACE_S = 60  # then the stage is killed; below submitit's 90 s between SLURM's warning and the kill
GRID_KEYS = ("name", "output", "experiment", "tasks", "seeds", "shots", "configs", "set")
GRID_SETS = ("output", "seed", "data.task")  # keys each cell sets itself (and data.shots with a shots axis)
NAME = re.compile(r"[\w.-]+")
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}


class StageSpec(NamedTuple):
    name: str  # also its output folder
    script: str
    output: str  # its final output: a run finished without it (deleted since) is not complete
    torchrun: bool  # runs on all the job's GPUs under torchrun when it has several


STAGES = (
    StageSpec("supernet", STAGE_SCRIPTS["supernet"], "summary.json", True),
    StageSpec("search", STAGE_SCRIPTS["search"], "summary.json", True),
    StageSpec("retrain", STAGE_SCRIPTS["retrain"], "results.json", True),
)
RECORD = identity.RECORD  # a stage's run record: it says `finished` once the stage is done


def finished(folder: Path) -> bool:
    """Whether the run record in a stage folder says that its run finished (the stage's last act)."""
    try:
        record = yaml.safe_load((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(record, dict) and bool(record.get("finished"))


class Cell(submitit.helpers.Checkpointable):
    """One grid cell as a job: runs its unfinished stages; submitit requeues it when SLURM stops it.

    Returns {"status": "done"}, or "stopped" / "failed" with the stage, its exit status and the log.
    The launcher decides before the job starts which finished stages are stale (`stale`: run afresh,
    without --resume); the job itself imports nothing of the project.
    """

    def __init__(self, name: str, folder: Path, config: str | list[str] | None, overrides: list[str], *,
                 gpus: int = 0, threads: int | None = None, stages: tuple[StageSpec, ...] = STAGES):
        self.name, self.folder, self.overrides = name, folder, overrides
        self.configs = [config] if isinstance(config, str) else list(config or [])  # experiment YAMLs, in order
        self.gpus, self.threads, self.stages = gpus, threads, stages
        self.python, self.cwd = sys.executable, os.getcwd()
        self.log = folder / "launch.log"  # every stage's console output
        self._running = None  # (process, exited event) of the stage running now
        self.stale: dict[str, str] = {}  # stage name: why its run cannot stand or continue (see mark_stale)
        self.error: str | None = None  # why the launcher could not check the cell's runs (see mark_stale)
        self.stop_file: Path | None = None  # local jobs: once it exists, no further stage starts
        self.stop_requests = self._passed = 0  # local jobs: SIGTERMs received, and passed on to the running stage

    def done(self) -> bool:
        return all(self.complete(s) for s in self.stages)

    def complete(self, stage: StageSpec) -> bool:
        return stage.name not in self.stale and finished(self.folder / stage.name)

    def command(self, stage: StageSpec) -> list[str]:
        cmd = [self.python]
        if stage.torchrun and self.gpus > 1:
            cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.gpus}"]
        cmd += [str(ROOT / stage.script), *self.configs]
        cmd += [arg for o in self.overrides for arg in ("--set", o)]
        resume = (self.folder / stage.name).is_dir() and stage.name not in self.stale  # started before: continue it
        return cmd + ["--resume"] * resume

    def env(self) -> dict[str, str]:
        """What the stages' environment adds to the job's."""
        return {"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}

    def __call__(self) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        local = self.stop_file is not None and threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._stop_request) if local else None
        try:
            for stage in self.stages:
                if self.complete(stage):
                    continue
                if self.stop_requests or (self.stop_file and self.stop_file.exists()):
                    return {"status": "stopped", "stage": stage.name, "returncode": None, "log": str(self.log)}
                cmd = self.command(stage)
                self.stale.pop(stage.name, None)  # a fresh run starts now: a requeued job resumes it
                code = self._run(cmd)
                if code != 0:  # asked to stop, torchrun reports its workers' 75 as a failure of its own
                    status = "stopped" if code == STOPPED_RESUMABLE or self.stop_requests else "failed"
                    return {"status": status, "stage": stage.name, "returncode": code, "log": str(self.log)}
            return {"status": "done"}
        finally:
            if local:
                signal.signal(signal.SIGTERM, previous)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """submitit calls this on SLURM's timeout or preemption signal: stop the stage, requeue this cell."""
        self._stop()
        return super().checkpoint()

    def _stop_request(self, signum, frame) -> None:
        """A local job asked to stop (the launcher's Ctrl-C): pass the signal on to the running stage,
        once per request (a second request stops it at once), and start no further stage."""
        self.stop_requests += 1
        self._pass_stop_requests()

    def _pass_stop_requests(self) -> None:
        """Send the running stage one STOP_SIGNAL per stop request not yet passed on (signal handlers run
        in the main thread, between its steps, so none is sent twice)."""
        running = self._running
        while running is not None and not running[1].is_set() and self._passed < self.stop_requests:
            running[0].send_signal(STOP_SIGNAL)
            self._passed += 1

    def _run(self, cmd: list[str]) -> int:
        env = dict(os.environ, **self.env())
        with open(self.log, "a") as log:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            log.flush()
            # The stage starts with SIGINT blocked: a Ctrl-C in the terminal reaches its launcher, which
            # asks it to stop with one SIGTERM (two signals would stop it at once, losing its partial epoch).
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        # A thread reaps the stage; this one waits on an event, which a signal handler may also wait on.
        exited = threading.Event()
        self._running = (proc, exited)
        self._pass_stop_requests()  # one that came while the stage was starting
        threading.Thread(target=lambda: (proc.wait(), exited.set()), daemon=True).start()
        try:
            exited.wait()
        finally:
            self._stop()  # a signal ended the wait: the stage stops before this job does
        return proc.returncode

    def _stop(self) -> None:
        """Ask the running stage to checkpoint and stop, and wait until it has (killed after STOP_GRACE_S)."""
        running, self._running = self._running, None
        if running is None or running[1].is_set():
            return
        proc, exited = running
        proc.send_signal(STOP_SIGNAL)
        deadline = time.monotonic() + STOP_GRACE_S
        while not exited.is_set():
            try:
                if not exited.wait(max(0.0, deadline - time.monotonic())):
                    proc.kill()
                    exited.wait()
            except KeyboardInterrupt:  # asked again (a second Ctrl-C): the stage stops at once
                proc.send_signal(STOP_SIGNAL)


# ---------------------------------------------------------------- the grid


class Config(NamedTuple):
    """One value of the config axis: an experiment YAML and/or overrides."""
    name: str
    file: str | None
    overrides: tuple[str, ...]


class Grid(NamedTuple):
    output: Path
    experiment: str | None  # the YAML of every cell, under its config's file if any (None: configs/defaults.yaml only)
    configs: list[Config | None]  # [None]: no config axis
    tasks: list[str]
    seeds: list[int]
    overrides: list[str]  # for every cell
    shots: list[int | None] = [None]  # [None]: no shots axis


def load_grid(args: argparse.Namespace) -> Grid:
    """The grid of the grid YAML, with the command line's options in place of the file's."""
    spec: dict = {}
    if args.grid:
        path = Path(args.grid)
        if not path.is_file():
            raise UserError(f"{path}: no such grid file")
        spec = load_yaml(path) or {}
        if not isinstance(spec, dict) or set(spec) - set(GRID_KEYS):
            raise UserError(f"{path}: a grid file is a mapping with keys {', '.join(GRID_KEYS)}; "
                            f"got {sorted(spec) if isinstance(spec, dict) else type(spec).__name__}")
    where = args.grid or "command line"
    name = args.name or spec.get("name") or (Path(args.grid).stem if args.grid else None)
    if not name and not args.output:
        raise UserError("name the grid with --name NAME (its folder: outputs/NAME) or --output FOLDER, or give a grid YAML")
    output = Path(args.output or spec.get("output") or Path("outputs") / _name(name, "grid name", where)).resolve()
    tasks = [t for task in args.tasks or _list(spec, "tasks", str, where) for t in expand_task(_name(task, "task", where))]
    if not tasks:
        raise UserError(f"{where}: no tasks; give --tasks (VTAB-1k names, natural/specialized/structured, vtab, or your own)")
    seeds = args.seeds or _list(spec, "seeds", int, where) or [0]
    experiment = args.experiment or spec.get("experiment")
    if args.configs:
        configs = [Config(_name(Path(f).stem, "config name", where), _file(f, where), ()) for f in args.configs]
    else:
        configs = [_config(n, c, where) for n, c in (spec.get("configs") or {}).items()]
    if len({c.name for c in configs}) < len(configs):
        raise UserError(f"{where}: two configs share the name {[c.name for c in configs]}; give them distinct names")
    overrides = _list(spec, "set", str, where) + args.set
    shots = args.shots or _list(spec, "shots", int, where)
    if any(k < 1 for k in shots):
        raise UserError(f"{where}: shots {shots}: each K is a positive integer (NOAH's lists: 1 2 4 8 16)")
    grid_sets = GRID_SETS + ("data.shots",) * bool(shots)
    for item in [o for c in configs for o in c.overrides] + overrides:
        if item.partition("=")[0].strip() in grid_sets:
            raise UserError(f"{where}: --set {item}: the grid sets {', '.join(grid_sets)} of every cell itself "
                            "(use --tasks, --seeds, --shots, --output)")
    return Grid(output, experiment and _file(experiment, where), configs or [None], list(dict.fromkeys(tasks)),
                list(dict.fromkeys(seeds)), overrides, list(dict.fromkeys(shots)) or [None])


def expand_task(name: str) -> list[str]:
    """`vtab`: the 19 VTAB-1k tasks; a group name: its tasks; `fewshot`: NOAH's five few-shot FGVC
    datasets; anything else: that task."""
    if name == "fewshot":
        return list(FEWSHOT_TASKS)
    return list(TASKS) if name == "vtab" else list(GROUPS.get(name, [name]))


def _name(value, what: str, where: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise UserError(f"{where}: {what} {value!r} is not a folder name (letters, digits, _ . -)")
    return value


def _list(spec: dict, key: str, kind: type, where: str) -> list:
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise UserError(f"{where}: {key} should be a list of {kind.__name__}, got {value!r}")
    return value


def _file(path: str, where: str) -> str:
    preset = ROOT / "configs" / "methods" / f"{path}.yaml"
    if not Path(path).is_file() and preset.is_file():
        path = preset  # a method preset by its name
    if not Path(path).is_file():
        raise UserError(f"{where}: no experiment config {path} (nor a method preset configs/methods/{path}.yaml)")
    return str(Path(path).resolve())


def _config(name, value, where: str) -> Config:
    if not isinstance(value, dict) or not value or set(value) - {"file", "set"}:
        raise UserError(f"{where}: configs.{name} should be a mapping with file: and/or set: [key=value, ...]")
    return Config(_name(name, "config name", where), value.get("file") and _file(value["file"], where),
                  tuple(_list(value, "set", str, f"{where}: configs.{name}")))


def make_cells(grid: Grid, gpus: int, threads: int | None) -> list[Cell]:
    cells = []
    for config in grid.configs:
        for task in grid.tasks:
            for shots in grid.shots:
                for seed in grid.seeds:
                    rel = Path(*([config.name] if config else []), task, *([f"shot{shots}"] if shots else []),
                               f"seed{seed}")
                    folder = grid.output / rel
                    overrides = [*grid.overrides, *(config.overrides if config else ()), f"data.task={task}",
                                 *([f"data.shots={shots}"] if shots else []), f"output={folder}", f"seed={seed}"]
                    files = [f for f in (grid.experiment, config and config.file) if f]
                    cells.append(Cell(str(rel), folder, files, overrides, gpus=gpus, threads=threads,
                                      stages=method_stages(files, overrides, f"cell {rel}")))
    return cells


def method_stages(files: list[str], overrides: list[str], where: str) -> tuple[StageSpec, ...]:
    """The stages the resolved config's method needs; resolving it here makes a wrong key fail now
    rather than in every job."""
    try:
        names = stages(load_config(files, overrides))
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return tuple(s for s in STAGES if s.name in names)


# ---------------------------------------------------------------- executors


def visible_gpus() -> list[int]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        import torch

        return list(range(torch.cuda.device_count()))
    try:
        return [int(g) for g in env.split(",") if g.strip()]
    except ValueError:
        raise UserError(f"CUDA_VISIBLE_DEVICES={env}: the local executor needs GPU indices, e.g. 0,1") from None


def local_slots(gpus: list[int], gpus_per_job: int, slots: int | None) -> list[tuple[int, ...]]:
    """The GPUs of each local job slot: disjoint groups of `gpus_per_job` GPUs, or CPU slots (no GPU)."""
    if gpus_per_job == 0:
        return [()] * (slots or 1)
    groups = [tuple(gpus[i:i + gpus_per_job]) for i in range(0, len(gpus) - gpus_per_job + 1, gpus_per_job)]
    if not groups or (slots or 0) > len(groups):
        raise UserError(f"{slots or 1} job(s) × {gpus_per_job} GPU(s) but {len(gpus)} GPU(s) visible here; "
                        "lower --slots or --gpus-per-job (0: CPU only)")
    return groups[:slots] if slots else groups


class GridStopped(Exception):
    """Ctrl-C or SIGTERM stopped a local grid; `results` as run_local's (None: the cell did not start)."""

    def __init__(self, results: list):
        super().__init__("stopped")
        self.results = results


def run_local(cells: list[Cell], slots: list[tuple[int, ...]], folder: Path, timeout_min: int,
              progress: float = 0) -> list[dict]:
    """Run the cells here, one job per slot at a time, and return their outcomes.

    Each cell's end is printed as it comes, and with `progress` (seconds) what its stages log and
    their progress bars at most that often. Ctrl-C (SIGINT to the launcher or to its process
    group) or SIGTERM stops the grid: no further cell starts, each running job passes one SIGTERM to
    its stage, which checkpoints and exits 75 (a second Ctrl-C stops the stages at once), then
    GridStopped is raised. The jobs and their stages start with SIGINT blocked, so the terminal's
    Ctrl-C reaches the launcher alone and a stage receives exactly the signals its job passes on.
    """
    pending, results = iter(range(len(cells))), [None] * len(cells)
    jobs, lock, stopping = {}, threading.Lock(), threading.Event()
    stop_file = Path(folder).parent / f"stop-{os.getpid()}"  # tells a job that starts late not to run
    stop_file.unlink(missing_ok=True)
    followers: dict[str, LogFollower] = {}
    printing = threading.Lock()

    def say(line: str) -> None:
        if not stopping.is_set():
            with printing:
                print(line, flush=True)

    def show(cell: Cell, follower: LogFollower) -> None:
        for event in follower.poll():
            say(f"{time.strftime('%H:%M:%S')} {cell.name} | {event}")

    ended = threading.Semaphore(0)  # released as each slot ends (Thread.join is unsafe to interrupt before 3.13)

    def slot(gpus: tuple[int, ...]) -> None:
        try:
            run_slot(gpus)
        finally:
            ended.release()

    def run_slot(gpus: tuple[int, ...]) -> None:  # takes the next cell whenever its job has ended
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # the jobs started from here inherit it
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=timeout_min, gpus_per_node=len(gpus), visible_gpus=gpus)
        while True:
            with lock:
                i = next(pending, None)
                if i is None or stopping.is_set():
                    return
                cells[i].stop_file = stop_file
                follower = LogFollower(cells[i].log, progress)
                jobs[i] = executor.submit(cells[i])
                if progress:
                    followers[cells[i].name] = follower
            record(cells[i], "local", jobs[i])
            results[i] = outcome(jobs[i])
            with lock:
                del jobs[i]
                followers.pop(cells[i].name, None)
            if progress:
                show(cells[i], follower)  # its last lines
            say(report(cells[i], results[i]))

    def watch() -> None:
        while not stopping.wait(1.0):
            with lock:
                watched = [(c, followers[c.name]) for c in cells if c.name in followers]
            for cell, follower in watched:
                show(cell, follower)

    threads = [threading.Thread(target=slot, args=(gpus,), daemon=True) for gpus in slots]
    threads += [threading.Thread(target=watch, daemon=True)] * bool(progress)
    in_main = threading.current_thread() is threading.main_thread()  # where Python handles signals
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main else None  # as Ctrl-C
    for t in threads:
        t.start()
    asked, waiting = 0, len(slots)  # Ctrl-Cs so far; slots still running
    try:
        while waiting:
            try:
                ended.acquire()
                waiting -= 1
            except KeyboardInterrupt:  # each one asks the running stages once more (the second: at once)
                asked += 1
                with lock:
                    stopping.set()
                    stop_file.touch()
                    running = list(jobs.values())
                for job in running:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(job.job_id), signal.SIGTERM)  # a local job's id is its controller's pid
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        stopping.set()
        stop_file.unlink(missing_ok=True)
    if asked:
        raise GridStopped(results)
    return results


def submit_slurm(cells: list[Cell], args: argparse.Namespace, name: str, folder: Path) -> list:
    """Submit the cells as one SLURM job array; returns the jobs (this does not wait for them)."""
    if shutil.which("srun") is None:
        raise UserError("--executor slurm: no SLURM here (srun not found); use --executor local")
    executor = submitit.AutoExecutor(folder, cluster="slurm")
    params = {"name": name, "timeout_min": args.time, "gpus_per_node": args.gpus_per_job, "tasks_per_node": 1,
              "cpus_per_task": args.cpus_per_job, "slurm_partition": args.partition, "slurm_account": args.account,
              "slurm_array_parallelism": args.array_parallelism}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's error; it is said once below
            jobs = executor.submit_array(cells)
    except FailedJobError as e:
        raise UserError(f"sbatch refused the job array: {' '.join(str(e).split())}; "
                        "check --partition, --account, --time, --gpus-per-job") from None
    for cell, job in zip(cells, jobs):
        record(cell, "slurm", job)
    return jobs


def record(cell: Cell, executor: str, job) -> None:
    """`<cell>/job.json`: which job runs the cell and where submitit keeps its logs."""
    cell.folder.mkdir(parents=True, exist_ok=True)
    (cell.folder / "job.json").write_text(json.dumps(
        {"executor": executor, "job_id": job.job_id, "submitit_folder": str(job.paths.folder)}) + "\n")


def on_slurm(cells: list[Cell]) -> set[str]:
    """The cells whose last SLURM job is still pending or running (one sacct call for all of them)."""
    records = {c.name: json.loads((c.folder / "job.json").read_text()) for c in cells if (c.folder / "job.json").is_file()}
    jobs = {n: submitit.SlurmJob(r["submitit_folder"], r["job_id"]) for n, r in records.items() if r["executor"] == "slurm"}
    return {n for n, job in jobs.items() if job.state.split(" ")[0] in SLURM_ACTIVE}


def outcome(job) -> dict:
    try:
        return job.result()
    except Exception as e:  # the job itself died (killed, out of memory): its cell is unfinished
        return {"status": "failed", "stage": None, "returncode": None, "error": str(e).strip().splitlines()[0]}


def report(cell: Cell, result: dict, again: str = "launch the grid again") -> str:
    """One line on how a cell's job ended; `again`: how to run the same thing again."""
    if result["status"] == "done":
        return f"{cell.name}: done"
    if result["stage"] is None:
        return f"{cell.name}: job failed ({result['error']}); {again} to resume it"
    if result["returncode"] is None:  # asked to stop before the stage started
        return f"{cell.name}: stopped before {result['stage']}; {again} to resume it"
    where = f"{cell.name}: {result['status']} in {result['stage']} (exit {result['returncode']})"
    if result["status"] == "stopped":
        return f"{where}; {again} to resume it"
    lines = [line for line in Path(result["log"]).read_text(errors="replace").splitlines() if line.strip()]
    return f"{where}: {lines[-1].strip() if lines else ''} [log: {result['log']}]"


# ---------------------------------------------------------------- command line


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", nargs="?", help="a grid YAML (keys: " + ", ".join(GRID_KEYS) + "); the options below override it")
    p.add_argument("--name", help="grid name (default: the grid file's name); its folder is outputs/NAME")
    p.add_argument("--output", help="grid folder (default: outputs/NAME)")
    p.add_argument("--experiment", help="the experiment YAML of every cell (default: configs/defaults.yaml)")
    p.add_argument("--tasks", nargs="+", help="task names; vtab = all 19, natural/specialized/structured = a group, "
                   "fewshot = NOAH's five few-shot datasets")
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0")
    p.add_argument("--shots", nargs="+", type=int, help="few-shot: a K axis (data.shots), e.g. 1 2 4 8 16; each "
                   "cell's list is train_meta.list.num_shot_<K>.seed_<seed>")
    p.add_argument("--configs", nargs="+", help="a config axis of experiment YAMLs or method presets (NAME for "
                   "configs/methods/NAME.yaml), each applied over --experiment and named by its file name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every cell (repeatable)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--gpus-per-job", type=int, help="default: 1 on SLURM or where GPUs are visible, else 0")
    p.add_argument("--cpus-per-job", type=int, help="SLURM cpus-per-task, and each job's OMP_NUM_THREADS "
                   "(local default: the CPUs shared among the slots)")
    p.add_argument("--time", type=int, default=24 * 60, help="minutes per job before it is stopped and requeued")
    p.add_argument("--dry-run", action="store_true", help="print each cell's state and next command; run nothing")
    p.add_argument("--rerun-stale", action="store_true", help="run afresh the stages whose settings, data or upstream "
                   "files changed since they ran (default: refuse those cells); each old run moves to previous/")
    local = p.add_argument_group("local executor")
    local.add_argument("--slots", type=int, help="jobs at once (default: one per GPU group, or 1)")
    local.add_argument("--progress", type=float, default=10, metavar="SECONDS", help="show each running cell's "
                       "log lines and progress bar (epochs, generations) at most this often (default 10; 0: only "
                       "each cell's end)")
    slurm = p.add_argument_group("slurm executor")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--array-parallelism", type=int, help="cells running at once (default: all)")
    args = p.parse_args(argv)
    if args.progress < 0:
        raise UserError(f"--progress {args.progress:g}: give seconds, at least 0")
    for opt in ("gpus_per_job", "cpus_per_job", "time", "slots", "array_parallelism"):
        value = getattr(args, opt)
        if value is not None and value < (0 if opt == "gpus_per_job" else 1):
            raise UserError(f"--{opt.replace('_', '-')} {value}: must be at least {0 if opt == 'gpus_per_job' else 1}")
    wrong = ("slots",) if args.executor == "slurm" else ("partition", "account", "array_parallelism")
    for opt in wrong:
        if getattr(args, opt) is not None:
            raise UserError(f"--{opt.replace('_', '-')} is an option of the other executor, not --executor {args.executor}")
    return args


def mark_stale(cells: list[Cell]) -> None:
    """Find, in each cell, the stages whose run a --resume would refuse or whose finished result no
    longer holds (`cell.stale`: stage → why), comparing what the stage's --resume compares: the
    config keys its result depends on, the task's data as it is now (its lists' digest and class
    count, read from the lists), and the upstream files it read; and every stage after one that
    runs again (its outputs will be new). A cell whose data cannot be read now gets `cell.error`.
    Runs in the launcher; the jobs only read `stale`."""
    data: dict = {}  # each task's data, read once
    digests: dict = {}  # each upstream file's SHA-256, read once
    for cell in cells:
        cell.stale, cell.error = {}, None
        try:
            cell.stale = stale_stages(cell, data, digests)
        except UserError as e:
            cell.error = str(e)


def stale_stages(cell: Cell, data: dict, digests: dict) -> dict[str, str]:
    stale, cfg, runs = {}, None, None  # runs: the first stage that runs (afresh or resumed)
    for stage in cell.stages:
        folder = StageFolder(cell.folder / stage.name)
        if not folder.contents():
            runs = runs or stage.name
            continue
        if runs:
            stale[stage.name] = f"made from the outputs of {runs}, which runs now"
            continue
        try:
            record = load_yaml(folder.path / RECORD)
            upstream = record["upstream"]
            if not all(isinstance(x, dict) for x in (record["config"], record["data"], upstream)):
                raise TypeError
        except (UserError, KeyError, TypeError):
            stale[stage.name] = f"no readable run record ({RECORD}: damaged, or written by an older version)"
            runs = stage.name
            continue
        cfg = cfg or load_config(cell.configs, cell.overrides)
        diffs = identity.resume_differences(record, cfg, task_data(cfg, data), identity.USES[stage.name])
        why = [f"{'; '.join(diffs)} (then → now)"] * bool(diffs)
        for rel, digest in upstream.items():
            now = file_digest(cell.folder / rel, digests)
            if now != digest:
                why.append(f"{rel} {'is gone' if now is None else 'changed since it ran'}")
        if why:
            stale[stage.name] = "; ".join(why)
            runs = stage.name
        elif not record.get("finished"):
            runs = stage.name  # resumes
        elif not (folder.path / stage.output).is_file():
            stale[stage.name] = f"it finished, but its {stage.output} is gone"
            runs = stage.name
    return stale


def task_data(cfg: dict, cache: dict) -> dict:
    """What a stage records of its task's data, read from the lists as they are now."""
    d, layout = cfg["data"], experiment_layout(cfg)
    key = (str(d["root"]), d["task"], d["num_classes"], layout)
    if key not in cache:
        try:
            cache[key] = identity.data_identity(check_task_lists(d["root"], d["task"], d["num_classes"], layout))
        except UserError as e:
            cache[key] = UserError(f"its finished runs cannot be checked against the data: {e}")
    if isinstance(cache[key], UserError):
        raise cache[key]
    return cache[key]


def file_digest(path: Path, cache: dict) -> str | None:
    """A file's SHA-256 (None: it is gone)."""
    if path not in cache:
        cache[path] = file_sha256(path) if path.is_file() else None
    return cache[path]


def refusal(cell: Cell) -> str:
    """Why a cell is not run: in launcher terms, what changed."""
    if cell.error:
        return f"{cell.name}: refused: {cell.error}"
    return f"{cell.name}: refused: " + "; ".join(f"{stage}: {why}" for stage, why in cell.stale.items())


def refused_hint(again: str) -> str:
    """What to do about refused cells, `again` being how to run the same thing again."""
    return (f"refused cells keep their runs and are left out of the table; to run their stale stages afresh, {again} "
            "with --rerun-stale (each old run moves to its stage folder's previous/), or into another output folder")


def launch(args: argparse.Namespace) -> int:
    grid = load_grid(args)
    if args.executor == "slurm":
        args.gpus_per_job = 1 if args.gpus_per_job is None else args.gpus_per_job
        slots, threads = [], args.cpus_per_job
    else:
        gpus = visible_gpus() if args.gpus_per_job != 0 else []
        args.gpus_per_job = (1 if gpus else 0) if args.gpus_per_job is None else args.gpus_per_job
        slots = local_slots(gpus, args.gpus_per_job, args.slots)
        threads = args.cpus_per_job or max(1, (os.cpu_count() or 1) // len(slots))
    cells = make_cells(grid, args.gpus_per_job, threads)
    mark_stale(cells)
    refused = [c for c in cells if c.error or (c.stale and not args.rerun_stale)]
    todo = [c for c in cells if c not in refused and not c.done()]
    running = on_slurm(todo)
    todo = [c for c in todo if c.name not in running]
    done = len(cells) - len(todo) - len(running) - len(refused)
    print(f"grid {grid.output}: {len(cells)} cells, {done} done, {len(todo)} to run"
          + (f", {len(refused)} refused (settings or data changed since they ran)" if refused else "")
          + (f", {len(running)} still on SLURM: {', '.join(sorted(running))}" if running else ""))
    for cell in refused:
        print(refusal(cell))
    if any(c.stale and not c.error for c in refused):
        print(refused_hint("launch again"))
    for cell in todo:
        for stage, why in cell.stale.items():
            print(f"{cell.name}: {stage} runs afresh: {why}")
    if args.dry_run:
        for cell in todo:
            stage = next(s for s in cell.stages if not cell.complete(s))
            print(f"{cell.name}: next {' '.join([f'{k}={v}' for k, v in cell.env().items()] + cell.command(stage))}")
        return 0
    failed = False
    submitit_folder = grid.output / ".submitit" / "%j"
    if todo and args.executor == "slurm":
        jobs = submit_slurm(todo, args, grid.output.name, submitit_folder)
        print(f"submitted {len(jobs)} cells as SLURM job array {jobs[0].job_id.split('_')[0]} "
              f"(logs: {grid.output / '.submitit'}); launch again to see progress and resume what stopped")
    elif todo:
        print(f"running {len(todo)} cells, {len(slots)} at a time" + (f" (GPUs {slots})" if args.gpus_per_job else ""),
              flush=True)
        results = run_local(todo, slots, submitit_folder, args.time, args.progress)
        failed = any(r["status"] != "done" for r in results)
    import summarize

    stale = {c.folder: "settings or data changed since it ran (refused above)" for c in refused}
    summary = summarize.write_summary(grid.output, stale)
    if summary:
        text, files = summary
        print(f"\n{text}(written to {grid.output}: {', '.join(f.name for f in files)})")
    elif refused and (grid.output / "results.md").is_file():
        print(f"{grid.output / 'results.md'} and its figures were not rewritten: no finished cell holds now, "
              "so they still show an earlier launch's runs")
    return 1 if failed else 2 if refused else 0


def main(argv: list[str] | None = None) -> int:
    try:
        return launch(parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (GridStopped, KeyboardInterrupt) as e:
        results = e.results if isinstance(e, GridStopped) else []
        stopped = sum(r is not None and r["status"] == "stopped" for r in results)
        unstarted = sum(r is None for r in results)
        what = (f"{stopped} running cell(s) stopped at a checkpoint, {unstarted} not started; " if results else "")
        print(f"stopped: {what}launch the grid again with the same command to continue where it stopped",
              file=sys.stderr)
        return STOPPED_RESUMABLE


if __name__ == "__main__":
    sys.exit(main())
