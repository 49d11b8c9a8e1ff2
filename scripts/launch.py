"""Run a grid of experiments (configs × tasks × seeds), one submitit job per cell, on SLURM or here.

Each cell runs the stages its method needs (train.py, search.py, retrain.py for GLoRA; retrain.py
alone for a baseline such as configs/methods/lora.yaml) with the grid's experiment YAML into
`<grid>/<task>/seed<k>/`, or with its config into `<grid>/<config>/<task>/seed<k>/` when the grid
has a config axis (experiment YAMLs or method presets applied over the experiment, and/or
overrides). A stage whose final output exists is skipped; one that started before runs again
with --resume. `--executor slurm` submits the cells as one job array (a job stopped before its
time limit or preempted is requeued and resumes); `--executor local` runs them here, one job per
GPU or CPU slot at a time. Launching a grid again runs only what is unfinished; every launch ends
by writing the grid's results table.

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

from data.registry import FEWSHOT_TASKS, GROUPS, TASKS  # noqa: E402
from engine import identity  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.method import STAGE_SCRIPTS, stages  # noqa: E402
from engine.status import STOPPED as STOPPED_RESUMABLE  # noqa: E402
from glora.errors import UserError  # noqa: E402
from glora.io import load_yaml  # noqa: E402

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
    done: str  # written last: the stage is complete when it exists
    torchrun: bool  # runs on all the job's GPUs under torchrun when it has several


STAGES = (
    StageSpec("supernet", STAGE_SCRIPTS["supernet"], "summary.json", True),
    StageSpec("search", STAGE_SCRIPTS["search"], "summary.json", False),
    StageSpec("retrain", STAGE_SCRIPTS["retrain"], "results.json", True),
)


class Cell(submitit.helpers.Checkpointable):
    """One grid cell as a job: runs its unfinished stages; submitit requeues it when SLURM stops it.

    Returns {"status": "done"}, or "stopped" / "failed" with the stage, its exit status and the log.
    """

    def __init__(self, name: str, folder: Path, config: str | list[str] | None, overrides: list[str], *,
                 gpus: int = 0, threads: int | None = None, stages: tuple[StageSpec, ...] = STAGES):
        self.name, self.folder, self.overrides = name, folder, overrides
        self.configs = [config] if isinstance(config, str) else list(config or [])  # experiment YAMLs, in order
        self.gpus, self.threads, self.stages = gpus, threads, stages
        self.python, self.cwd = sys.executable, os.getcwd()
        self.log = folder / "launch.log"  # every stage's console output
        self._running = None  # (process, exited event) of the stage running now
        self.stale: set[str] = set()  # finished stages made with other settings (see mark_stale)

    def done(self) -> bool:
        return all(self.complete(s) for s in self.stages)

    def complete(self, stage: StageSpec) -> bool:
        return stage.name not in self.stale and (self.folder / stage.name / stage.done).is_file()

    def command(self, stage: StageSpec) -> list[str]:
        cmd = [self.python]
        if stage.torchrun and self.gpus > 1:
            cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.gpus}"]
        cmd += [str(ROOT / stage.script), *self.configs]
        cmd += [arg for o in self.overrides for arg in ("--set", o)]
        return cmd + ["--resume"] * (self.folder / stage.name).is_dir()  # started before: continue it

    def env(self) -> dict[str, str]:
        """What the stages' environment adds to the job's."""
        return {"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}

    def __call__(self) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        for stage in self.stages:
            if self.complete(stage):
                continue
            code = self._run(self.command(stage))
            if code != 0:
                status = "stopped" if code == STOPPED_RESUMABLE else "failed"
                return {"status": status, "stage": stage.name, "returncode": code, "log": str(self.log)}
        return {"status": "done"}

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """submitit calls this on SLURM's timeout or preemption signal: stop the stage, requeue this cell."""
        self._stop()
        return super().checkpoint()

    def _run(self, cmd: list[str]) -> int:
        env = dict(os.environ, **self.env())
        with open(self.log, "a") as log:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        # A thread reaps the stage; this one waits on an event, which a signal handler may also wait on.
        exited = threading.Event()
        self._running = (proc, exited)
        threading.Thread(target=lambda: (proc.wait(), exited.set()), daemon=True).start()
        try:
            exited.wait()
        finally:
            self._stop()  # a signal or Ctrl-C ended the wait: the stage stops before this job does
        return proc.returncode

    def _stop(self) -> None:
        """Ask the running stage to checkpoint and stop, and wait until it has (killed after STOP_GRACE_S)."""
        running, self._running = self._running, None
        if running is None or running[1].is_set():
            return
        proc, exited = running
        proc.send_signal(STOP_SIGNAL)
        if not exited.wait(STOP_GRACE_S):
            proc.kill()
            exited.wait()


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
        spec = yaml.safe_load(path.read_text()) or {}
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


def run_local(cells: list[Cell], slots: list[tuple[int, ...]], folder: Path, timeout_min: int) -> list[dict]:
    """Run the cells here, one job per slot at a time, and return their outcomes; Ctrl-C cancels every job."""
    pending, results = iter(range(len(cells))), [None] * len(cells)
    jobs, lock, stopping = [], threading.Lock(), threading.Event()

    def slot(gpus: tuple[int, ...]) -> None:  # takes the next cell whenever its job has ended
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=timeout_min, gpus_per_node=len(gpus), visible_gpus=gpus)
        while True:
            with lock:
                i = next(pending, None)
                if i is None or stopping.is_set():
                    return
                job = executor.submit(cells[i])
                jobs.append(job)
            record(cells[i], "local", job)
            results[i] = outcome(job)

    threads = [threading.Thread(target=slot, args=(gpus,), daemon=True) for gpus in slots]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        with lock:
            stopping.set()
            for job in jobs:
                job.cancel(check=False)
        raise
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


def report(cell: Cell, result: dict) -> str:
    if result["status"] == "done":
        return f"{cell.name}: done"
    if result["stage"] is None:
        return f"{cell.name}: job failed ({result['error']}); launch the grid again to resume it"
    where = f"{cell.name}: {result['status']} in {result['stage']} (exit {result['returncode']})"
    if result["status"] == "stopped":
        return f"{where}; launch the grid again to resume it"
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
    local = p.add_argument_group("local executor")
    local.add_argument("--slots", type=int, help="jobs at once (default: one per GPU group, or 1)")
    slurm = p.add_argument_group("slurm executor")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--array-parallelism", type=int, help="cells running at once (default: all)")
    args = p.parse_args(argv)
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
    """Mark each finished stage whose run (its run.yaml) was made with other settings than its cell
    has now: it is not complete, so the cell runs it with --resume, which refuses naming the keys
    that changed, instead of the old result passing for the new one. Runs in the launcher: the
    jobs, which unpickle a Cell without the launcher's imports, only read `stale`."""
    for cell in cells:
        cfg = None
        for stage in cell.stages:
            folder = cell.folder / stage.name
            if not (folder / stage.done).is_file() or not (folder / identity.RECORD).is_file():
                continue  # not finished, or made by hand or an older version: nothing to compare
            try:
                cfg = cfg or load_config(cell.configs, cell.overrides)
                record = load_yaml(folder / identity.RECORD)
                stale = bool(identity.resume_differences(record, cfg, record["data"], identity.USES[stage.name]))
            except (UserError, KeyError, TypeError):  # a damaged record: the stage's resume says what is wrong
                stale = True
            if stale:
                cell.stale.add(stage.name)


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
    todo = [c for c in cells if not c.done()]
    running = on_slurm(todo)
    todo = [c for c in todo if c.name not in running]
    print(f"grid {grid.output}: {len(cells)} cells, {len(cells) - len(todo) - len(running)} done, {len(todo)} to run"
          + (f", {len(running)} still on SLURM: {', '.join(sorted(running))}" if running else ""))
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
        print(f"running {len(todo)} cells, {len(slots)} at a time" + (f" (GPUs {slots})" if args.gpus_per_job else ""))
        results = run_local(todo, slots, submitit_folder, args.time)
        for cell, result in zip(todo, results):
            print(report(cell, result))
        failed = any(r["status"] != "done" for r in results)
    import summarize

    summary = summarize.write_summary(grid.output)
    if summary:
        text, files = summary
        print(f"\n{text}(written to {grid.output}: {', '.join(f.name for f in files)})")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    try:
        return launch(parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every job of this launch was stopped; launch the grid again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
