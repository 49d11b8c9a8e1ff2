"""scripts/launch.py: grid cells, stage exit statuses, requeue through submitit, SLURM submission, bad input,
and a 2-task × 2-seed grid of the three real stages through the local executor (interrupted twice)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY
from data import TASKS, build_demo
from data.checks import check_task_lists
from engine import identity
from engine.config import load_config
from glora.io import file_sha256

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "scripts" / "launch.py"
sys.path.insert(0, str(ROOT / "scripts"))

import launch  # noqa: E402

cloudpickle.register_pickle_by_value(launch)  # as when launch.py runs as a script: jobs need not import it

# A stand-in for a stage script: records each call, then behaves as MODE says. "wait" stops as ours do:
# on SIGTERM (or SIGINT) it takes a moment to write its checkpoint and exits 75; every signal it
# receives is recorded (two would mean it lost its partial epoch). A finished one writes its run
# record saying so, as ours do last.
FAKE_STAGE = """
import os, signal, sys, time
from pathlib import Path

args = sys.argv[1:]
folder = Path(next(a[len("output="):] for a in args if a.startswith("output="))) / Path(__file__).stem
resume = "--resume" in args
folder.mkdir(parents=True, exist_ok=True)
with open(folder / "calls.txt", "a") as f:
    f.write(("resume" if resume else "fresh") + "\\n")
(folder / "threads").write_text(os.environ.get("OMP_NUM_THREADS", ""))
if MODE == "fail":
    print("error: the fake stage failed; fix it", file=sys.stderr)
    sys.exit(3)
if MODE == "stop" and not resume:
    sys.exit(75)
if MODE == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (folder / "started").write_text("")
    time.sleep(120)
if MODE == "wait" and not resume:
    def stop(signum, frame):
        with open(folder / "signals", "a") as f:
            f.write(signal.Signals(signum).name + "\\n")
        if not (folder / "stopped").exists():
            (folder / "stopped").write_text(signal.Signals(signum).name)
            time.sleep(1)  # writing the checkpoint
            sys.exit(75)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    (folder / "job_pid").write_text(str(os.getppid()))
    time.sleep(120)
    sys.exit(1)
print("12:00:00 " + folder.name + ": working")
print(folder.name + ": 100%|##########| 3/3 [00:01<00:00, 2.00it/s, loss=0.5]", file=sys.stderr)
(folder / "done").write_text("")
(folder / "run.yaml").write_text("run: fake\\nfinished: now\\n")
"""


def fake_stage(tmp_path, name, mode):
    path = tmp_path / "stages" / f"{name}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"MODE = {mode!r}\n{FAKE_STAGE}")
    return launch.StageSpec(name, str(path), "done", False)


def fake_cell(tmp_path, *stages):
    folder = tmp_path / "cell"
    return launch.Cell("cell", folder, None, [f"output={folder}"], stages=stages)


def calls(cell, stage):
    path = cell.folder / stage / "calls.txt"
    return path.read_text().split() if path.exists() else []


def wait_for(condition, timeout=300):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_cell_skips_complete_stages_resumes_started_ones_and_reports_exit_statuses(tmp_path):
    cell = fake_cell(tmp_path, fake_stage(tmp_path, "first", "stop"), fake_stage(tmp_path, "second", "ok"))
    stopped = cell()
    assert stopped == {"status": "stopped", "stage": "first", "returncode": launch.STOPPED_RESUMABLE, "log": str(cell.log)}
    assert launch.report(cell, stopped) == "cell: stopped in first (exit 75); launch the grid again to resume it"
    assert calls(cell, "first") == ["fresh"] and calls(cell, "second") == []
    assert cell() == {"status": "done"}
    assert calls(cell, "first") == ["fresh", "resume"] and calls(cell, "second") == ["fresh"]
    assert cell.done() and cell() == {"status": "done"}
    assert calls(cell, "first") == ["fresh", "resume"] and calls(cell, "second") == ["fresh"]  # nothing reran
    assert (cell.folder / "first" / "threads").read_text() == os.environ.get("OMP_NUM_THREADS", "")  # the job's own

    failing = launch.Cell("bad", tmp_path / "bad", None, [f"output={tmp_path / 'bad'}"],
                          stages=(fake_stage(tmp_path, "broken", "fail"),))
    result = failing()
    assert result["status"] == "failed" and result["returncode"] == 3
    line = launch.report(failing, result)
    assert line == f"bad: failed in broken (exit 3): error: the fake stage failed; fix it [log: {failing.log}]"


def tiny_task(root: Path) -> Path:
    """A task of one's own with 3 classes and 12 (unread) images: enough for the lists' checks."""
    task = root / "tiny"
    (task / "img").mkdir(parents=True)
    for i in range(12):
        (task / "img" / f"{i}.png").write_bytes(b"x")
    lines = [f"img/{i}.png {i % 3}" for i in range(12)]
    for split, part in {"train800": lines[:6], "val200": lines[6:9], "train800val200": lines[:9],
                        "test": lines[9:]}.items():
        (task / f"{split}.txt").write_text("\n".join(part) + "\n")
    return task


def finished_stage(cell, stage, finished=True, upstream=None):
    """A stage folder as the stage leaves it: its final output and its run record (of the cell's settings now)."""
    folder = cell.folder / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / stage.output).write_text("{}")
    cfg = load_config(cell.configs, cell.overrides)
    d = cfg["data"]
    record = {"run": "r", "config": cfg, "upstream": upstream or {},
              "data": identity.data_identity(check_task_lists(d["root"], d["task"], d["num_classes"]))}
    (folder / identity.RECORD).write_text(yaml.safe_dump({**record, **({"finished": "now"} if finished else {})}))


def test_a_stage_is_complete_only_when_its_run_finished_with_the_settings_and_data_of_now(tmp_path):
    """What each stage's --resume compares, the launcher compares: config keys, the data read now (an
    edited label changes the lists' digest), upstream files; a stage after one that runs is stale too."""
    tiny_task(tmp_path / "data")
    out = tmp_path / "cell"
    supernet, search, retrain = launch.STAGES

    def cell(*sets):
        c = launch.Cell("c", out, [str(ROOT / "configs" / "demo.yaml")],
                        [f"output={out}", f"data.root={tmp_path / 'data'}", "data.task=tiny", *sets])
        launch.mark_stale([c])
        return c

    for stage in launch.STAGES:
        finished_stage(cell(), stage, upstream={"supernet/supernet.safetensors": "x"} if stage is search else None)
    (out / "supernet" / "supernet.safetensors").write_text("x")
    assert cell().stale == {"search": "supernet/supernet.safetensors changed since it ran",
                            "retrain": "made from the outputs of search, which runs now"}
    finished_stage(cell(), search, upstream={"supernet/supernet.safetensors": file_sha256(out / "supernet" /
                                                                                          "supernet.safetensors")})
    assert cell().done() and cell().stale == {}
    changed = cell("retrain.epochs=4")
    assert changed.stale == {"retrain": "retrain.epochs (40 → 4) (then → now)"} and not changed.done()
    assert "--resume" not in changed.command(retrain)  # if it runs, it runs afresh

    lists = tmp_path / "data" / "tiny" / "train800.txt"
    lists.write_text(lists.read_text().replace("img/0.png 0", "img/0.png 1"))  # a label edited
    for name in ("train800val200",):
        union = tmp_path / "data" / "tiny" / f"{name}.txt"
        union.write_text(union.read_text().replace("img/0.png 0", "img/0.png 1"))
    edited = cell()
    assert list(edited.stale) == ["supernet", "search", "retrain"]
    assert edited.stale["supernet"].startswith("data: the task's list files (digest) (")
    assert edited.stale["search"] == "made from the outputs of supernet, which runs now"
    for stage in launch.STAGES:
        finished_stage(cell(), stage)

    (out / "retrain" / "results.json").unlink()  # a finished run whose output is gone
    assert cell().stale == {"retrain": "it finished, but its results.json is gone"}
    finished_stage(cell(), retrain, finished=False)  # killed after results.json, before its Hub folder
    unfinished = cell()
    assert unfinished.stale == {} and not unfinished.complete(retrain) and unfinished.complete(search)
    assert unfinished.command(retrain)[-1] == "--resume"
    (out / "retrain" / identity.RECORD).write_text("[damaged")
    assert cell().stale == {"retrain": "no readable run record (run.yaml: damaged, or written by an older version)"}

    lists.unlink()  # the data cannot be read now: the finished runs cannot be checked
    broken = cell()
    assert broken.error.startswith("its finished runs cannot be checked against the data: ") and not broken.done()


def test_a_relaunch_refuses_stale_cells_in_its_own_terms_and_leaves_the_table(tmp_path, capsys):
    tiny_task(tmp_path / "data")
    grid = tmp_path / "g"
    argv = ["--output", str(grid), "--experiment", str(ROOT / "configs" / "demo.yaml"), "--tasks", "tiny",
            "--configs", "lora", "--gpus-per-job", "0", "--set", f"data.root={tmp_path / 'data'}"]
    [cell] = launch.make_cells(launch.load_grid(launch.parse_args(argv)), 0, None)
    finished_stage(cell, launch.STAGES[2])
    (cell.folder / "retrain" / "results.json").write_text(json.dumps(
        {"task": "tiny", "test_acc": 50.0, "test_acc_merged": 50.0, "trainable_params": 10, "adapter_params": 8,
         "head_params": 2}))
    assert launch.main(argv) == 0
    table = (grid / "results.md").read_text()
    assert "| lora | tiny | own | 50.00 |" in table and "1 cells, 1 done, 0 to run" in capsys.readouterr().out

    argv += ["--set", "retrain.lr=0.5"]
    assert launch.main(argv) == 2
    out = capsys.readouterr().out
    assert "1 cells, 0 done, 0 to run, 1 refused (settings or data changed since they ran)" in out
    assert "lora/tiny/seed0: refused: retrain: retrain.lr (0.003 → 0.5) (then → now)" in out
    assert "launch again with --rerun-stale" in out and "without --resume" not in out
    assert "results.md and its figures were not rewritten" in out and (grid / "results.md").read_text() == table

    assert launch.main([*argv, "--rerun-stale", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lora/tiny/seed0: retrain runs afresh: retrain.lr (0.003 → 0.5)" in out
    assert "lora/tiny/seed0: next " in out and "--resume" not in out


def test_a_budget_sweep_stopped_by_a_signal_stops_its_stage_and_exits_75(tmp_path, monkeypatch, capsys):
    import budgets

    cell = fake_cell(tmp_path, fake_stage(tmp_path, "first", "wait"))
    monkeypatch.setattr(budgets, "sweep_cells", lambda *args: [cell])
    pid = cell.folder / "first" / "job_pid"
    sender = ThreadPoolExecutor(1).submit(lambda: (wait_for(pid.is_file, 60), os.kill(os.getpid(), signal.SIGTERM)))
    assert budgets.main(["exp.yaml", "--budgets", "1"]) == launch.STOPPED_RESUMABLE
    sender.result()
    assert (cell.folder / "first" / "stopped").read_text() == "SIGTERM"  # the stage checkpointed, not orphaned
    assert capsys.readouterr().err.endswith("stopped: the running stage wrote its checkpoint; run the same command "
                                            "again to resume\n")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_budget_sweep_refuses_a_cell_whose_data_changed_and_runs_nothing(tmp_path, monkeypatch, capsys):
    import budgets

    tiny_task(tmp_path / "data")
    out = tmp_path / "sweep"
    sets = [f"output={out}", f"data.root={tmp_path / 'data'}", "data.task=tiny"]
    supernet = launch.Cell("supernet", out, [str(ROOT / "configs" / "demo.yaml")], sets, stages=launch.STAGES[:1])
    finished_stage(supernet, launch.STAGES[0])
    test = tmp_path / "data" / "tiny" / "test.txt"
    test.write_text(test.read_text().replace("img/9.png 0", "img/9.png 2"))  # a test label corrected
    monkeypatch.setattr(budgets, "sweep_cells", lambda *args: [supernet])
    assert budgets.main(["exp.yaml", "--budgets", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("supernet: refused: supernet: data: the task's list files (digest) (")
    assert "run the same command again with --rerun-stale" in err and "nothing ran" in err
    assert "without --resume" not in err and not (out / "supernet" / "previous").exists()


def test_a_budget_sweep_trains_its_own_supernet():
    import budgets

    with pytest.raises(budgets.UserError, match=r"supernet=/x.safetensors: a budget sweep trains its own supernet"):
        budgets.sweep_cells([], ["data.task=digits", "supernet=/x.safetensors"], [0.5], [])


def test_checkpoint_stops_the_stage_kills_it_after_the_grace_period_and_requeues_the_same_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "STOP_GRACE_S", 0.5)
    cell = fake_cell(tmp_path, fake_stage(tmp_path, "first", "stubborn"))
    cell.threads = 3
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(cell)
        wait_for((cell.folder / "first" / "started").is_file, timeout=60)
        requeue = cell.checkpoint()  # as submitit calls it on SLURM's signal; the stage ignores SIGTERM
        assert running.result(timeout=30)["returncode"] == -signal.SIGKILL
    assert requeue.function is cell and cell._running is None
    assert (cell.folder / "first" / "threads").read_text() == "3"


def test_commands_resume_started_stages_and_use_torchrun_for_several_gpus(tmp_path):
    cell = launch.Cell("c", tmp_path / "c", "/x/exp.yaml", ["seed=1"], gpus=2)
    supernet, search, _ = launch.STAGES
    for stage, script in ((supernet, "train.py"), (search, "search.py")):
        assert cell.command(stage)[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                            str(ROOT / script)]
    cell.gpus = 1
    assert cell.command(search)[1:] == [str(ROOT / "search.py"), "/x/exp.yaml", "--set", "seed=1"]
    (tmp_path / "c" / "search").mkdir(parents=True)
    assert cell.command(search)[-1] == "--resume"


def test_a_job_stopped_by_the_scheduler_stops_its_stage_is_requeued_and_resumes(tmp_path):
    """SLURM signals a job (USR2) before its time limit; submitit calls Cell.checkpoint and requeues the job."""
    cell = fake_cell(tmp_path, fake_stage(tmp_path, "first", "wait"), fake_stage(tmp_path, "second", "ok"))
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(launch.run_local, [cell], [()], tmp_path / "submitit" / "%j", 10)
        job_pid = cell.folder / "first" / "job_pid"
        wait_for(job_pid.is_file, timeout=60)
        os.kill(int(job_pid.read_text()), signal.SIGUSR2)
        [result] = future.result(timeout=120)
    assert result == {"status": "done"}
    assert (cell.folder / "first" / "stopped").read_text() == "SIGTERM"  # the job asked its stage to stop
    assert calls(cell, "first") == ["fresh", "resume"] and calls(cell, "second") == ["fresh"]
    record = json.loads((cell.folder / "job.json").read_text())
    log = Path(record["submitit_folder"]) / f"{record['job_id']}_0_log.out"
    assert "Requeued job" in log.read_text()


@pytest.mark.parametrize("to_group", [True, False], ids=["process group", "launcher alone"])
def test_ctrl_c_stops_the_running_stage_once_starts_no_other_cell_and_says_how_to_continue(tmp_path, to_group):
    """One slot, four cells: Ctrl-C (SIGINT to the terminal's process group, or `kill -INT` to the
    launcher) stops the running stage with one signal (it checkpoints and exits 75), starts no other
    cell, and the launcher ends with one line and exit 75, no traceback."""
    first = fake_stage(tmp_path, "first", "wait")
    folder = tmp_path / "g"
    runner = subprocess.Popen([sys.executable, "-c", f"""
import sys, cloudpickle
sys.path.insert(0, {str(ROOT / "scripts")!r})
import launch
cloudpickle.register_pickle_by_value(launch)
spec = launch.StageSpec(*{tuple(first)!r})
launch.make_cells = lambda grid, gpus, threads: [
    launch.Cell(f"c{{i}}", grid.output / f"c{{i}}", None, [f"output={{grid.output / f'c{{i}}'}}"], stages=(spec,))
    for i in range(4)]
sys.exit(launch.main(["--output", {str(folder)!r}, "--tasks", "x", "--gpus-per-job", "0", "--slots", "1"]))
"""], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stage = folder / "c0" / "first"
    wait_for((stage / "job_pid").is_file, timeout=120)
    if to_group:
        os.killpg(runner.pid, signal.SIGINT)  # as the terminal does on Ctrl-C
    else:
        os.kill(runner.pid, signal.SIGINT)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == launch.STOPPED_RESUMABLE, err
    assert (stage / "signals").read_text() == "SIGTERM\n"  # one signal: it kept its partial epoch
    assert not any((folder / f"c{i}").exists() for i in (1, 2, 3))  # no other cell started
    assert err == ("stopped: 1 running cell(s) stopped at a checkpoint, 3 not started; launch the grid again with "
                   "the same command to continue where it stopped\n")
    assert "Traceback" not in out


def test_local_slots():
    assert launch.local_slots([0, 1, 2, 3], 1, None) == [(0,), (1,), (2,), (3,)]
    assert launch.local_slots([2, 3, 5], 2, None) == [(2, 3)]
    assert launch.local_slots([0, 1], 1, 1) == [(0,)]
    assert launch.local_slots([], 0, 3) == [(), (), ()]
    for gpus, per_job, slots in (([0], 2, None), ([0, 1], 1, 3)):
        with pytest.raises(launch.UserError, match="GPU"):
            launch.local_slots(gpus, per_job, slots)


def test_task_names_expand():
    assert launch.expand_task("vtab") == list(TASKS) and len(TASKS) == 19
    assert launch.expand_task("specialized") == ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
    assert launch.expand_task("my_task") == ["my_task"]


def test_grid_file_with_a_config_axis(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "big.yaml").write_text("train:\n  epochs: 7\n")
    (tmp_path / "budgets.yaml").write_text(yaml.safe_dump({
        "tasks": ["dtd"], "seeds": [0, 1], "set": ["train.lr=0.01"],
        "configs": {"small": {"set": ["search.budget=[0,0.1]"]}, "big": {"file": "big.yaml"}}}))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert launch.main(["budgets.yaml", "--seeds", "3", "--slots", "2", "--gpus-per-job", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    grid = tmp_path / "outputs" / "budgets"  # named after the file; --seeds replaced the file's seeds
    assert f"grid {grid}: 2 cells, 0 done, 2 to run" in out
    train = f"OMP_NUM_THREADS=4 {sys.executable} {ROOT / 'train.py'}"  # 8 CPUs shared by 2 slots
    assert (f"small/dtd/seed3: next {train} --set train.lr=0.01 --set search.budget=[0,0.1] "
            f"--set data.task=dtd --set output={grid / 'small' / 'dtd' / 'seed3'} --set seed=3") in out
    assert f"big/dtd/seed3: next {train} {tmp_path / 'big.yaml'} --set train.lr=0.01" in out
    assert not grid.exists()  # a dry run writes nothing


def fake_slurm(tmp_path, monkeypatch, states="", sbatch=None):
    """srun, sbatch (keeps each script, answers job 4242) and sacct (answers `states`) on PATH."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    scripts = {"srun": "exit 0",
               "sbatch": sbatch or f'n=$(ls {tmp_path} | grep -c sbatch_); cp "$1" {tmp_path}/sbatch_$n.sh; '
                                   'echo "Submitted batch job 4242"',
               "sacct": f"printf 'JobID|State|NodeList\\n{states}'"}
    for name, body in scripts.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")


def test_slurm_gets_one_job_array_with_the_options_and_a_relaunch_skips_cells_still_queued(tmp_path, monkeypatch,
                                                                                             capsys):
    fake_slurm(tmp_path, monkeypatch)
    argv = ["--output", str(tmp_path / "g"), "--tasks", "dtd", "cifar", "--seeds", "0", "1", "--executor", "slurm",
            "--partition", "gpu", "--account", "lab", "--gpus-per-job", "2", "--cpus-per-job", "8", "--time", "90",
            "--array-parallelism", "3"]
    assert launch.main(argv) == 0
    assert "submitted 4 cells as SLURM job array 4242" in capsys.readouterr().out
    [script] = sorted(tmp_path.glob("sbatch_*.sh"))
    text = script.read_text()
    for line in ("--partition=gpu", "--account=lab", "--gpus-per-node=2", "--cpus-per-task=8", "--time=90",
                 "--array=0-3%3", "--signal=USR2@90", "--job-name=g", "--ntasks-per-node=1"):
        assert f"#SBATCH {line}\n" in text
    records = [json.loads((tmp_path / "g" / t / f"seed{s}" / "job.json").read_text())
               for t in ("dtd", "cifar") for s in (0, 1)]
    assert [r["job_id"] for r in records] == ["4242_0", "4242_1", "4242_2", "4242_3"]

    fake_slurm(tmp_path, monkeypatch, states="4242_0|RUNNING|n1\\n4242_1|PENDING|\\n4242_2|TIMEOUT|n1\\n"
                                             "4242_3|CANCELLED by 7|n1\\n")
    assert launch.main(argv) == 0
    assert "4 cells, 0 done, 2 to run, 2 still on SLURM: dtd/seed0, dtd/seed1" in capsys.readouterr().out
    second = sorted(tmp_path.glob("sbatch_*.sh"))[1].read_text()
    assert "#SBATCH --array=0-1%2\n" in second


def test_a_job_array_sbatch_refuses_is_one_error_line(tmp_path, monkeypatch, capsys):
    fake_slurm(tmp_path, monkeypatch, sbatch='echo "sbatch: error: invalid partition specified: nope" >&2; exit 1')
    argv = ["--output", str(tmp_path / "g"), "--tasks", "dtd", "--executor", "slurm", "--partition", "nope"]
    assert launch.main(argv) == 2
    err = capsys.readouterr().err
    assert err == ("error: sbatch refused the job array: sbatch: error: invalid partition specified: nope; "
                   "check --partition, --account, --time, --gpus-per-job\n")
    assert not (tmp_path / "g" / "dtd" / "seed0" / "job.json").exists()


@pytest.mark.parametrize("argv, message", [
    ([], "name the grid with --name NAME"),
    (["--name", "g"], "no tasks"),
    (["--name", "g", "--tasks", "dtd", "--bogus"], "unrecognized arguments: --bogus"),
    (["--name", "g", "--tasks", "dtd", "--seeds", "x"], "invalid int value: 'x'"),
    (["--name", "g", "--tasks", "d/t"], "task 'd/t' is not a folder name"),
    (["--name", "g", "--tasks", "dtd", "--slots", "0"], "--slots 0: must be at least 1"),
    (["--name", "g", "--tasks", "dtd", "--partition", "gpu"], "--partition is an option of the other executor"),
    (["--name", "g", "--tasks", "dtd", "--set", "seed=3"], "the grid sets output, seed, data.task"),
    (["--name", "g", "--tasks", "dtd", "--set", "train.lrr=1"], "cell dtd/seed0: --set train.lrr: unknown key"),
    (["--name", "g", "--tasks", "dtd", "--configs", "nope.yaml"], "no experiment config nope.yaml"),
    (["nope.yaml"], "nope.yaml: no such grid file"),
    (["grid.yaml"], "grid.yaml: a grid file is a mapping with keys name, output, experiment"),
    (["broken.yaml"], "broken.yaml: invalid YAML at line 2, column 6: expected ',' or ']', but got ':'"),
    (["latin1.yaml"], "latin1.yaml: not UTF-8 text (byte 9); save it as UTF-8"),
    (["--name", "g", "--tasks", "dtd", "--progress", "-1"], "--progress -1: give seconds, at least 0"),
    (["--name", "g", "--tasks", "dtd", "--executor", "slurm"], "no SLURM here (srun not found)"),
])
def test_bad_input_is_one_error_line_and_status_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    (tmp_path / "grid.yaml").write_text("tasks: [dtd]\nseed: [1]\n")
    (tmp_path / "broken.yaml").write_text("tasks: [dtd\nseeds: [1]\n")
    (tmp_path / "latin1.yaml").write_bytes("tasks: [d\xe9t]\n".encode("latin-1"))
    assert launch.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_vtab_all_is_the_grid_of_the_19_tasks(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "scripts" / "vtab_all.sh"), "--output", str(tmp_path / "g"), "--seeds", "0",
                        "1", "--dry-run", "--set", "data.root=/data/vtab-1k"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"grid {tmp_path / 'g'}: 38 cells, 0 done, 38 to run" in r.stdout
    for task in TASKS:
        assert f"\n{task}/seed1: next " in r.stdout
    assert "--set data.root=/data/vtab-1k --set data.task=cifar" in r.stdout


def test_the_script_exits_2_on_bad_input(tmp_path):
    r = subprocess.run([sys.executable, str(LAUNCH), "--tasks", "dtd"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: name the grid") and len(r.stderr.splitlines()) == 1


# ---------------------------------------------------------------- the three real stages

TWINS = ("svhn", "eurosat")  # VTAB-1k tasks with 10 classes, like the demo's digits: two copies of it


def find_stage(cell: Path, script: str) -> tuple[int, int]:
    """(pid, parent pid) of the stage `script` running for `cell` (its parent is the cell's job), from /proc."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if str(ROOT / script) in argv and f"output={cell}" in argv:
            return int(proc.name), int(stat.rsplit(")", 1)[1].split()[1])
    raise AssertionError(f"no {script} running for {cell}")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """svhn, eurosat × seeds 0, 1 through the local executor, 2 jobs at a time; each task is a copy of the
    demo digits, so svhn/seedK and eurosat/seedK are the same run. Launch 1: svhn/seed1's job gets the
    scheduler's stop signal mid-supernet (requeued within the launch); eurosat/seed0's job and stage are
    killed mid-retrain. Launch 2 resumes eurosat/seed0; launch 3 finds nothing to do."""
    root = tmp_path_factory.mktemp("grid").resolve()
    build_demo(root / "data")
    for task in TWINS:
        shutil.copytree(root / "data" / "digits", root / "data" / task)
    (root / "exp.yaml").write_text(yaml.safe_dump({
        "device": "cpu",
        "model": {"name": "vit_tiny_patch16_224", "pretrained": False, "kwargs": {**TINY, "drop_path_rate": 0.1}},
        "data": {"root": str(root / "data"), "img_size": 32, "batch_size": 64},
        "glora": {"ranks": [2, 4]},
        "train": {"epochs": 3, "lr": 2e-3, "warmup_epochs": 1, "eval_every": 0, "eval_subnets": 0, "ckpt_every": 1},
        "search": {"generations": 2, "population": 6, "parents": 2, "mutations": 2, "crossovers": 2,
                   "budget": [0.0, 0.01]},
        "retrain": {"epochs": 2, "lr": 2e-3, "warmup_epochs": 1, "ckpt_every": 1},
    }))
    out = root / "out"
    cmd = [sys.executable, str(LAUNCH), "--output", str(out), "--experiment", str(root / "exp.yaml"),
           "--tasks", *TWINS, "--seeds", "0", "1", "--slots", "2", "--gpus-per-job", "0", "--cpus-per-job", "1"]

    def run():
        return subprocess.run(cmd, capture_output=True, text=True, cwd=root)

    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root,
                             start_new_session=True)
    try:
        requeued, killed = out / "svhn" / "seed1", out / "eurosat" / "seed0"
        wait_for((requeued / "supernet" / "checkpoint" / "state.pt").is_file)
        os.kill(find_stage(requeued, "train.py")[1], signal.SIGUSR2)  # SLURM's warning before a time limit
        wait_for((killed / "retrain" / "checkpoint" / "state.pt").is_file)
        stage, job = find_stage(killed, "retrain.py")
        os.kill(job, signal.SIGKILL)  # the node went down
        os.kill(stage, signal.SIGKILL)
        first_out = first.communicate(timeout=600)[0]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    second = run()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/**/*")}
    third = run()
    return {"out": out, "first": (first.returncode, first_out), "second": second, "third": third, "mtimes": mtimes}


def assert_same_run(a: Path, b: Path):
    ra, rb = (json.loads((r / "retrain" / "results.json").read_text()) for r in (a, b))
    assert [ra[k] for k in ("test_acc", "test_acc_merged", "adapter_params")] == \
        [rb[k] for k in ("test_acc", "test_acc_merged", "adapter_params")]
    sa, sb = (yaml.safe_load((r / "search" / "best_subnet.yaml").read_text()) for r in (a, b))
    assert sa.pop("lineage")["run"] != sb.pop("lineage")["run"]  # which run made it (and for which task)
    assert sa == sb
    ma, mb = (load_file(r / "retrain" / "merged.safetensors") for r in (a, b))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.slow
def test_grid_ends_with_the_table(grid):
    out, second = grid["out"], grid["second"]
    assert second.returncode == 0, second.stdout + second.stderr
    accs = {t: [json.loads((out / t / f"seed{s}" / "retrain" / "results.json").read_text())["test_acc"]
                for s in (0, 1)] for t in TWINS}
    mean = {t: sum(a) / 2 for t, a in accs.items()}
    std = {t: abs(a[0] - a[1]) / 2 ** 0.5 for t, a in accs.items()}  # sample std of two values
    md = (out / "results.md").read_text()
    assert md in second.stdout
    assert f"| svhn | natural | 2 | {mean['svhn']:.2f} ± {std['svhn']:.2f} |" in md
    assert f"| eurosat | specialized | 2 | {mean['eurosat']:.2f} ± {std['eurosat']:.2f} |" in md
    assert f"| natural | 1/7 | {mean['svhn']:.2f} |" in md and f"| specialized | 1/4 | {mean['eurosat']:.2f} |" in md
    assert f"| mean of tasks | 2/19 | {(mean['svhn'] + mean['eurosat']) / 2:.2f} |" in md
    assert f"| mean of group means | 2/19 | {(mean['svhn'] + mean['eurosat']) / 2:.2f} |" in md
    assert (out / "results.csv").is_file() and (out / "results_groups.csv").is_file()


@pytest.mark.slow
def test_the_console_shows_each_cells_stages_and_epochs_as_they_go(grid):
    first = grid["first"][1]
    for line in ("svhn/seed0 | starts train.py", "svhn/seed0 | supernet 3/3 [", "svhn/seed0 | starts search.py",
                 "svhn/seed0 | search 2/2 [", "svhn/seed0 | retrain 2/2 [", "svhn/seed0 | test acc1 ", "svhn/seed0: done"):
        assert line in first, line
    assert first.index("svhn/seed0 | supernet 3/3") < first.index("svhn/seed0: done")


@pytest.mark.slow
def test_a_requeued_job_resumes_its_stage_and_ends_as_an_uninterrupted_cell(grid):
    out = grid["out"]
    assert "svhn/seed1: done" in grid["first"][1]
    assert "resumed from" in (out / "svhn" / "seed1" / "supernet" / "log.txt").read_text()
    record = json.loads((out / "svhn" / "seed1" / "job.json").read_text())
    assert "Requeued job" in (Path(record["submitit_folder"]) / f"{record['job_id']}_0_log.out").read_text()
    assert_same_run(out / "svhn" / "seed1", out / "eurosat" / "seed1")


@pytest.mark.slow
def test_a_killed_cell_is_resumed_by_the_next_launch_and_ends_as_an_uninterrupted_cell(grid):
    out = grid["out"]
    code, text = grid["first"]
    assert code == 1 and "eurosat/seed0: job failed" in text and "launch the grid again to resume it" in text
    assert f"grid {out}: 4 cells, 3 done, 1 to run" in grid["second"].stdout
    assert "resumed from" in (out / "eurosat" / "seed0" / "retrain" / "log.txt").read_text()
    assert_same_run(out / "eurosat" / "seed0", out / "svhn" / "seed0")


@pytest.mark.slow
def test_a_finished_grid_launched_again_runs_nothing(grid):
    out, third = grid["out"], grid["third"]
    assert third.returncode == 0, third.stderr
    assert f"grid {out}: 4 cells, 4 done, 0 to run" in third.stdout and "running" not in third.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/**/*")} == grid["mtimes"]
    assert (out / "results.md").read_text() in third.stdout
