"""Stage runs as a user or a fault tester drives them: each either ends in one `error:` line and exit
status 2 with nothing earlier lost, or ends exactly where an uninterrupted run ends.

One uninterrupted supernet + search (the `reference` fixture) is the yardstick; each test works on
a copy of it (`copy`), so that only what a test is about runs again.
"""
import fcntl
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import engine.trainer
import search.evolution
from data import build_demo, read_list, write_list
from engine import keys
from engine.keys import Key
from engine.rules import integer, number
from engine.run import execute, parse_args, run_stage
from engine.status import STOPPED, USER_ERROR
from glora.errors import UserError
from glora.io import file_sha256
from conftest import STAGE_OF, stage
from test_stages import Killed, cli, run, write_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted supernet (3 epochs of 13 batches, checkpoints at 2 and 3) and search (3 generations)."""
    base = tmp_path_factory.mktemp("reference")
    build_demo(base / "data")
    config = write_config(base / "exp.yaml", base / "data", base / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["epochs"] = 3
    config.write_text(yaml.safe_dump(cfg))
    run("train", config)
    run("search", config)
    return SimpleNamespace(config=config, data=base / "data", out=base / "run")


@pytest.fixture(scope="module")
def finished(reference, tmp_path_factory):
    """The reference run with its retrain too (2 epochs, checkpoints at 1 and 2): all three stages finished."""
    out = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(reference.out, out)
    run("retrain", reference.config, "--set", f"output={out}")
    return out


@pytest.fixture
def copy(reference, tmp_path):
    """A copy of the reference run to work on: `go(stage, *args)` runs a stage on it in this process."""
    out = tmp_path / "run"
    shutil.copytree(reference.out, out)
    where = ["--set", f"output={out}"]
    return SimpleNamespace(out=out, config=reference.config, where=where,
                           go=lambda name, *args: run(name, reference.config, *where, *args),
                           status=lambda name, *args: execute(STAGE_OF[name], stage(name).main,
                                                              parse_args([str(reference.config), *where, *args])))


def record(folder):
    return yaml.safe_load((folder / "run.yaml").read_text())


def tensors_equal(a, b):
    a, b = load_file(a), load_file(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def lineage_of(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["lineage"])


def on_steps(monkeypatch, actions):
    """Training steps that, after the n-th call, do `actions[n](model)` (send a signal, die, poison)."""
    real, calls = engine.trainer.train_step, []

    def step(model, *args, **kwargs):
        loss = real(model, *args, **kwargs)
        calls.append(1)
        if len(calls) in actions:
            actions[len(calls)](model)
        return loss

    monkeypatch.setattr(engine.trainer, "train_step", step)


def send(*signals):
    return lambda model: [os.kill(os.getpid(), s) for s in signals]


def die(model):
    raise Killed


# --------------------------------------------------------------------------------- run identity

def test_a_fresh_run_retires_the_old_one_so_a_resume_never_continues_it(copy, monkeypatch):
    """The issue's worst case: a fresh run in a used folder, killed before its first checkpoint, then resumed."""
    old = record(copy.out / "supernet")
    on_steps(monkeypatch, {1: die})
    with pytest.raises(Killed):
        copy.go("train", "--set", "train.epochs=2")
    monkeypatch.undo()
    previous = copy.out / "supernet" / "previous" / old["run"]
    assert (previous / "supernet.safetensors").is_file() and (previous / "checkpoint" / "manifest.json").is_file()
    assert sorted(p.name for p in (copy.out / "supernet").iterdir()) == [
        ".lock", "config.yaml", "log.txt", "previous", "run.yaml", "tb"]  # nothing old to resume or read as new
    new = record(copy.out / "supernet")
    assert new["run"] != old["run"] and new["config"]["train"]["epochs"] == 2

    with pytest.raises(UserError, match=r"--resume continues run .*, which started with other settings: "
                                        r"train.epochs \(2 → 3\) \(then → now\)"):
        copy.go("train", "--resume")
    copy.go("train", "--resume", "--set", "train.epochs=2")
    supernet = copy.out / "supernet" / "supernet.safetensors"
    assert lineage_of(supernet)["run"] == new["run"]
    assert "no checkpoint of this run" in (copy.out / "supernet" / "log.txt").read_text()
    steps = [e.step for e in EventAccumulator(str(copy.out / "supernet" / "tb")).Reload().Scalars("train/loss")]
    assert steps == [1, 2]  # a fresh run's curves start clean; the old ones went with it to previous/

    # downstream: the search made from the old supernet refuses to go on, the retrain refuses its subnet
    with pytest.raises(UserError, match=r"supernet.safetensors changed since this search run started"):
        copy.go("search", "--resume")
    with pytest.raises(UserError, match=r"best_subnet.yaml was made from another supernet/supernet.safetensors than "
                                        r"the one there now: run its stage \(search\) again"):
        copy.go("retrain")
    assert not (copy.out / "retrain").exists()


def test_resume_refuses_changed_settings_but_not_where_data_lives(copy, reference):
    with pytest.raises(UserError, match=r"train.epochs \(3 → 6\); train.lr \(0.002 → 0.01\) \(then → now\)"):
        copy.go("train", "--resume", "--set", "train.epochs=6", "--set", "train.lr=0.01")
    with pytest.raises(UserError, match=r"search.budget \(\[0.0, 0.01\] → \[0, 0.004\]\)"):
        copy.go("search", "--resume", "--set", "search.budget=[0,0.004]")
    elsewhere = f"supernet={copy.out / 'supernet' / 'supernet.safetensors'}"  # the same file, named as another
    with pytest.raises(UserError, match=r"other settings: supernet \(None → '/.*supernet.safetensors'\)"):
        copy.go("search", "--resume", "--set", elsewhere)
    with pytest.raises(UserError, match=r"supernet=/x.safetensors: this experiment reads a supernet trained elsewhere"):
        copy.go("train", "--set", "supernet=/x.safetensors")
    # a finished run resumed with a free key changed: the same result, no new curve points, stale files gone
    tmp = copy.out / "supernet" / ".supernet.safetensors.k1lld.tmp"
    tmp.write_bytes(b"half")
    before = EventAccumulator(str(copy.out / "supernet" / "tb")).Reload().Scalars("train/loss")
    copy.go("train", "--resume", "--set", "train.eval_every=1", "--set", f"data.cache_dir={copy.out / 'cache'}")
    assert tensors_equal(copy.out / "supernet" / "supernet.safetensors", reference.out / "supernet" / "supernet.safetensors")
    assert EventAccumulator(str(copy.out / "supernet" / "tb")).Reload().Scalars("train/loss") == before
    assert not tmp.exists()


def test_downstream_refuses_a_file_made_for_another_experiment(copy, reference, tmp_path):
    for override, named in (("glora.ranks=[4]", r"glora.ranks \(\[2, 4\] → \[4\]\)"),
                            ("model.kwargs.depth=1", r"model.kwargs.depth \(2 → 1\)"),
                            ("data.mean=[0.5,0.5,0.5]", r"data.mean \(\[0.485, 0.456, 0.406\] → \[0.5, 0.5, 0.5\]\)")):
        with pytest.raises(UserError, match=rf"supernet.safetensors was made for another experiment: {named} "
                                            r"\(there → here\); run its stage \(supernet\) again"):
            copy.go("search", "--set", override)
    # another task (the same images under another name), then the same task with other labels
    other = tmp_path / "data"
    (other / "digits").mkdir(parents=True)
    shutil.copytree(reference.data / "digits" / "images", other / "digits" / "images")  # a link may not leave the root
    for split in ("train800", "val200", "train800val200", "test"):
        shutil.copy(reference.data / "digits" / f"{split}.txt", other / "digits")
    os.symlink(other / "digits", other / "digits2")
    with pytest.raises(UserError, match=r"made for another experiment: data.task \('digits' → 'digits2'\)"):
        copy.go("search", "--set", f"data.root={other}", "--set", "data.task=digits2")
    for split in ("train800", "train800val200"):  # one image relabelled, in both lists that hold it
        items = [(e.rel, e.label) for e in read_list(other / "digits" / f"{split}.txt")]
        items[0] = (items[0][0], (items[0][1] + 1) % 10)
        write_list(other / "digits" / f"{split}.txt", items)
    with pytest.raises(UserError, match=r"made for another experiment: data: the task's list files \(digest\)"):
        copy.go("search", "--set", f"data.root={other}")
    assert record(copy.out / "search")["finished"]  # every refusal left the search as it was
    # a narrower space than the supernet's (the paper's) is served: the search runs within it, with a note
    copy.go("search", "--set", "glora.space.A=[vector, none]", "--set", "search.generations=1")
    assert ("supernet.safetensors: glora.space is narrower here (trained there, not used here: A: lora_2, lora_4, "
            "scalar): served") in (copy.out / "search" / "log.txt").read_text()
    best = yaml.safe_load((copy.out / "search" / "best_subnet.yaml").read_text())
    assert {layer["A"] for layer in best["layers"].values()} <= {"vector", "none"}


def test_a_retrain_resumed_after_a_new_search_refuses_cleanly(copy, monkeypatch):
    on_steps(monkeypatch, {1: die})
    with pytest.raises(Killed):
        copy.go("retrain")
    monkeypatch.undo()
    copy.go("search", "--set", "search.generations=1")  # a new search: a new best_subnet.yaml
    assert copy.status("retrain", "--resume") == USER_ERROR
    with pytest.raises(UserError, match=r"best_subnet.yaml changed since this retrain run started \(made again, "
                                        r"or edited\): run without --resume to start afresh from it"):
        copy.go("retrain", "--resume")


def test_a_subnet_file_is_an_upstream_file_and_one_from_another_experiment_a_transfer(copy, monkeypatch, tmp_path):
    subnet = tmp_path / "subnet.yaml"
    shutil.copy(copy.out / "search" / "best_subnet.yaml", subnet)
    use = ("--set", f"retrain.subnet={subnet}")
    on_steps(monkeypatch, {1: die})
    with pytest.raises(Killed):
        copy.go("retrain", *use)
    monkeypatch.undo()
    assert record(copy.out / "retrain")["upstream"][str(subnet)] == file_sha256(subnet)
    subnet.write_text(subnet.read_text() + "# edited\n")
    with pytest.raises(UserError, match=r"subnet.yaml changed since this retrain run started \(made again, or edited\)"):
        copy.go("retrain", *use, "--resume")
    # searched for another task on another supernet: retrained here from this run's supernet, with a note
    content = yaml.safe_load(subnet.read_text())
    content["lineage"]["experiment"]["data.task"] = "svhn"
    content["lineage"]["upstream"] = {"supernet/supernet.safetensors": "0" * 64}
    subnet.write_text(yaml.safe_dump(content))
    copy.go("retrain", *use)
    assert "was made for another experiment (data.task ('svhn' → 'digits')" in (copy.out / "retrain" / "log.txt").read_text()
    assert (copy.out / "retrain" / "merged.safetensors").is_file()


# --------------------------------------------------------------------------------- the stage's order

def test_a_stage_cannot_skip_its_begin_nor_write_before_it(copy):
    args = parse_args([str(copy.config), *copy.where])
    with pytest.raises(RuntimeError, match=r"the retrain stage ended without `with stage.begin\(...\)`"):
        run_stage("retrain", lambda stage: None, args)
    with pytest.raises(RuntimeError, match="writes TensorBoard curves before it began"):
        run_stage("retrain", lambda stage: stage.writer, args)
    assert not (copy.out / "retrain").exists()  # nothing recorded, nothing written, the lock released

    def twice(stage):
        with stage.begin(), stage.begin():
            pass

    with pytest.raises(RuntimeError, match="began twice"):
        run_stage("retrain", twice, args)
    assert "finished" not in record(copy.out / "retrain")


# --------------------------------------------------------------------------------- a key declared once

def test_a_key_declared_here_alone_flows_through_rules_resume_and_results(copy, monkeypatch, capsys):
    """README's example: one declaration (this test's) and nothing else; the line that would use it aside."""
    smoothing = Key("retrain.label_smoothing", 0.0, number(hi=1.0), "label smoothing of the retrain's loss",
                    stages=("retrain",))
    every = Key("retrain.print_every", 10, integer(1), "batches between progress lines; --resume may change it: "
                "logging only", stages=("retrain",), resume_free=True)
    with keys.declared(smoothing, every):
        assert re.search(r"\n  label_smoothing: 0.0 +# label smoothing of the retrain's loss\n", keys.defaults_yaml())
        assert "\nretrain.label_smoothing = 0.0   [retrain]\n" in keys.help_text()
        assert copy.status("retrain", "--set", "retrain.label_smoothing=2") == USER_ERROR
        assert capsys.readouterr().err == ("error: retrain.label_smoothing=2: expected a finite number ≥ 0 and ≤ 1; "
                                           "fix it in the config or with --set retrain.label_smoothing=...\n")
        on_steps(monkeypatch, {1: die})
        with pytest.raises(Killed):
            copy.go("retrain", "--set", "retrain.label_smoothing=0.1")
        monkeypatch.undo()
        with pytest.raises(UserError, match=r"other settings: retrain.label_smoothing \(0.1 → 0.2\) \(then → now\)"):
            copy.go("retrain", "--resume", "--set", "retrain.label_smoothing=0.2")
        copy.go("retrain", "--resume", "--set", "retrain.label_smoothing=0.1", "--set", "retrain.print_every=3")
        assert "note: --resume with retrain.print_every (10 → 3): allowed" in (copy.out / "retrain" / "log.txt").read_text()
        assert record(copy.out / "retrain")["config"]["retrain"]["label_smoothing"] == 0.1
        results = json.loads((copy.out / "retrain" / "results.json").read_text())
        assert results["config"]["retrain"]["label_smoothing"] == 0.1 and results["config"]["retrain"]["print_every"] == 3
        # the supernet and the search do not use it: their finished runs resume as they were
        copy.go("train", "--resume", "--set", "retrain.label_smoothing=0.3")
        assert "already finished" in capsys.readouterr().out
    with pytest.raises(UserError, match="unknown key 'retrain.label_smoothing'"):
        copy.go("retrain", "--set", "retrain.label_smoothing=0.1")  # gone with its declaration


# --------------------------------------------------------------------------------- finished runs resumed

def contents(out):
    """Every file of a run's stage folders and its bytes (but the locks, which hold the pid)."""
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_a_finished_stage_resumed_changes_no_byte(finished, reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = contents(out)
    where = [str(reference.config), "--set", f"output={out}", "--resume"]
    for name in ("train", "search", "retrain"):
        for free in ([], ["--set", "data.eval_batch_size=9", "--set", "device=auto"]):  # what cannot change a result
            assert execute(STAGE_OF[name], stage(name).main, parse_args(where + free)) == 0
            said = capsys.readouterr().out
            assert f"{STAGE_OF[name]}: run {record(out / STAGE_OF[name])['run']} already finished" in said
            assert ("note: --resume with data.eval_batch_size (256 → 9); device ('cpu' → 'auto')" in said) == bool(free)
    assert contents(out) == before

    # an output lost since: the last checkpoint writes it again, the same bytes as ever; the rest stays
    (out / "supernet" / "summary.json").unlink()
    assert execute("supernet", stage("train").main, parse_args(where)) == 0
    assert "summary.json changed or went missing since: its outputs are written again" in capsys.readouterr().out
    assert (out / "supernet" / "supernet.safetensors").read_bytes() == before[Path("supernet/supernet.safetensors")]
    assert execute("search", stage("search").main, parse_args(where)) == 0  # its supernet is the same file
    assert "already finished" in capsys.readouterr().out


def test_vtab_sh_resume_after_a_stop_in_any_stage_ends_with_the_uninterrupted_results(finished, reference, tmp_path):
    """scripts/vtab.sh stopped (SIGTERM) in the supernet, resumed and stopped in the search, resumed and stopped
    in the retrain, resumed to the end (where eval_batch_size and device change, which cannot change a result):
    every stage ends where the uninterrupted run ended, and a finished stage is never written again."""
    python = tmp_path / "python"  # vtab.sh's $PYTHON: the stage named by $STOP_SCRIPT signals itself
    python.write_text(f'#!/bin/sh\nif [ "$1" = "$STOP_SCRIPT" ]; then exec {sys.executable} '
                      f'{ROOT / "tests" / "signal_at_step.py"} SIGTERM "$STOP_STEP" "$@"; fi\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "run"

    def vtab_sh(*args, stop=("-", 0)):
        env = {**os.environ, "PYTHON": str(python), "STOP_SCRIPT": stop[0], "STOP_STEP": str(stop[1])}
        return subprocess.run(["bash", ROOT / "scripts" / "vtab.sh", "dtd", reference.config, "--set", f"output={out}",
                               *args], capture_output=True, text=True, env=env)

    for args, stop in (((), ("train.py", 20)), (("--resume",), ("search.py", 2)), (("--resume",), ("retrain.py", 20))):
        r = vtab_sh(*args, stop=stop)
        assert r.returncode == STOPPED and r.stderr.strip().splitlines()[-1].startswith("stopped: SIGTERM"), r.stderr[-2000:]
        if stop[0] == "search.py":
            supernet = (out / "supernet" / "supernet.safetensors").read_bytes()
    r = vtab_sh("--resume", "--set", "data.eval_batch_size=50", "--set", "device=auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("already finished") == 2 and "note: --resume with data.eval_batch_size (256 → 50)" in r.stdout
    assert "resumed from the checkpoint of run" in (out / "retrain" / "log.txt").read_text()

    assert (out / "supernet" / "supernet.safetensors").read_bytes() == supernet
    assert tensors_equal(out / "supernet" / "supernet.safetensors", finished / "supernet" / "supernet.safetensors")
    assert (out / "search" / "candidates.jsonl").read_text() == (finished / "search" / "candidates.jsonl").read_text()
    ours, theirs = (json.loads((o / "retrain" / "results.json").read_text()) for o in (out, finished))
    for key in ("test_acc", "test_acc_merged", "adapter_params", "trainable_params", "epochs"):
        assert ours[key] == theirs[key], key
    assert tensors_equal(out / "retrain" / "merged.safetensors", finished / "retrain" / "merged.safetensors")


# --------------------------------------------------------------------------------- integrity

def test_non_finite_weights_are_refused_before_anything_is_written(copy, monkeypatch):
    supernet = copy.out / "supernet" / "supernet.safetensors"
    with safe_open(str(supernet), "pt") as f:
        meta = f.metadata()
    tensors = load_file(supernet)
    tensors["blocks.0.mlp.fc1.Ad"][0, 0] = float("nan")
    save_file(tensors, supernet, meta)  # lineage intact: the search would take it but for the NaN
    with pytest.raises(UserError, match=r"blocks.0.mlp.fc1.Ad holds non-finite values \(the run that wrote it diverged\)"):
        copy.go("search")

    steps = []

    def step(model, *args):  # no training: a finite loss, then at the last step of epoch 1 (1,000 images) an inf
        steps.append(1)
        if len(steps) == 16:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad and p.numel()).fill_(float("inf"))
        return torch.tensor(1.0)

    monkeypatch.setattr(engine.trainer, "train_step", step)
    with pytest.raises(UserError, match=r"training diverged: .* holds non-finite values after epoch 1 \(the last "
                                        r"good checkpoint is kept\): lower retrain.lr"):
        copy.go("retrain", "--set", "retrain.init=scratch")
    assert sorted(p.name for p in (copy.out / "retrain").iterdir()) == [".lock", "config.yaml", "log.txt", "run.yaml", "tb"]
    monkeypatch.undo()
    monkeypatch.setattr(engine.trainer, "train_step", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(UserError, match=r"training diverged \(loss nan\) at epoch 1: lower train.lr"):
        copy.go("train")


@pytest.mark.parametrize("damage", ["state file deleted", "byte flipped", "manifest deleted"])
def test_a_damaged_checkpoint_is_an_error_never_a_silent_restart(copy, damage):
    ckpt = copy.out / "supernet" / "checkpoint"
    if damage == "state file deleted":
        (ckpt / "state.pt").unlink()
    elif damage == "byte flipped":
        data = bytearray((ckpt / "adapters.safetensors").read_bytes())
        data[-5] ^= 1
        (ckpt / "adapters.safetensors").write_bytes(bytes(data))
    else:
        (ckpt / "manifest.json").unlink()
    # A finished stage whose outputs are intact reads no checkpoint: --resume has nothing to do.
    before = (copy.out / "supernet" / "run.yaml").read_bytes()
    copy.go("train", "--resume")
    assert (copy.out / "supernet" / "run.yaml").read_bytes() == before
    # With an output gone, the outputs are written again from the last checkpoint, which is read: refused.
    (copy.out / "supernet" / "supernet.safetensors").unlink()
    with pytest.raises(UserError, match=r"checkpoint: damaged checkpoint .* start afresh without --resume"):
        copy.go("train", "--resume")


# --------------------------------------------------------------------------------- signals

def test_signals_stop_after_a_step_and_resume_ends_where_an_uninterrupted_run_ends(copy, reference, monkeypatch, capsys):
    """SIGUSR1 mid-epoch 1, SIGINT mid-epoch 2 (each stops after its step, with a checkpoint), then two
    SIGINTs in epoch 3 (the second stops at once: epoch 2 was logged after the last checkpoint)."""
    shutil.rmtree(copy.out / "supernet")
    # (steps of this run, then these signals): global steps 9, 25 and 36 (13 a epoch)
    for n, (steps, signals) in enumerate(((9, [signal.SIGUSR1]), (16, [signal.SIGINT]),
                                          (11, [signal.SIGINT, signal.SIGINT]))):
        on_steps(monkeypatch, {steps: send(*signals)})
        assert copy.status("train", *(["--resume"] if n else [])) == STOPPED
        monkeypatch.undo()
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("stopped: ") and line.endswith("--resume)") and "run the same command with --resume" in line
        assert line in (copy.out / "supernet" / "log.txt").read_text()
    said = (copy.out / "supernet" / "log.txt").read_text()
    # the stop and the resume name the same point the same way
    assert "SIGUSR1 in epoch 1 of 3, after its batch 9 of 13 (checkpoint written)" in said
    assert "in epoch 1 of 3, after its batch 9 of 13\n" in said and "SIGINT in epoch 2 of 3, after its batch 12 of" in said
    # the last resume evaluates in other batches, wherever `auto` puts it: what cannot change the result
    assert copy.status("train", "--resume", "--set", "data.eval_batch_size=7", "--set", "device=auto") == 0
    assert "note: --resume with data.eval_batch_size (256 → 7); device ('cpu' → 'auto'): allowed" in capsys.readouterr().out
    assert tensors_equal(copy.out / "supernet" / "supernet.safetensors", reference.out / "supernet" / "supernet.safetensors")
    for tag in ("train/loss", "perf/val_acc1"):  # epoch 2 once, no duplicate; the same validation accuracies
        ours = EventAccumulator(str(copy.out / "supernet" / "tb")).Reload().Scalars(tag)
        theirs = EventAccumulator(str(reference.out / "supernet" / "tb")).Reload().Scalars(tag)
        assert [(e.step, e.value) for e in ours] == [(e.step, e.value) for e in theirs]


def test_sigterm_from_outside_exits_75_and_the_search_stops_after_its_generation(copy, reference, monkeypatch, tmp_path):
    r = cli(ROOT / "tests" / "signal_at_step.py", "SIGTERM", 3, ROOT / "train.py", copy.config,
            "--set", f"output={tmp_path / 'cut'}")
    assert r.returncode == STOPPED, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("stopped: SIGTERM in epoch 1 of 3, after its batch 3 of 13 "
                                                        "(checkpoint written); to continue, run the same command with --resume")
    assert (tmp_path / "cut" / "supernet" / "checkpoint" / "manifest.json").is_file()

    real_step, generations = search.evolution.EvolutionSearch.step, []

    def step_then_signal(self):
        records = real_step(self)
        generations.append(1)
        if len(generations) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return records

    monkeypatch.setattr(search.evolution.EvolutionSearch, "step", step_then_signal)
    assert copy.status("search") == STOPPED
    monkeypatch.undo()
    assert not (copy.out / "search" / "best_subnet.yaml").exists()
    copy.go("search", "--resume")
    assert "SIGTERM after generation 2 of 3 (checkpoint written)" in (copy.out / "search" / "log.txt").read_text()
    ours, theirs = (yaml.safe_load((out / "search" / "best_subnet.yaml").read_text()) for out in (copy.out, reference.out))
    assert [ours[k] for k in ("layers", "params", "val_acc1")] == [theirs[k] for k in ("layers", "params", "val_acc1")]
    assert (copy.out / "search" / "candidates.jsonl").read_text() == (reference.out / "search" / "candidates.jsonl").read_text()


def test_torchrun_ranks_stop_after_the_same_step_and_resume_exactly(reference, tmp_path):
    """SIGUSR1 reaches rank 1 only: both ranks stop after the same step (they agree each step)."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = [reference.config, "--set", "train.epochs=2", "--set", "model.kwargs.drop_path_rate=0.2"]
    r = cli(*torchrun, ROOT / "train.py", *args, "--set", f"output={tmp_path / 'full'}")
    assert r.returncode == 0, r.stderr[-2000:]
    cut = ["--set", f"output={tmp_path / 'cut'}"]
    r = cli(*torchrun, ROOT / "tests" / "signal_at_step.py", "SIGUSR1", 16, ROOT / "train.py", *args, *cut)
    assert r.returncode != 0 and "stopped: a signal to another rank in epoch 2 of 2, after its batch 3 of 13" in r.stderr
    state = torch.load(tmp_path / "cut" / "supernet" / "checkpoint" / "state.pt", weights_only=True)
    assert (state["epoch"], state["batches"], len(state["rng"])) == (1, 3, 2)
    r = cli(*torchrun, ROOT / "train.py", *args, *cut, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert tensors_equal(tmp_path / "full" / "supernet" / "supernet.safetensors",
                         tmp_path / "cut" / "supernet" / "supernet.safetensors")


# --------------------------------------------------------------------------------- the folder and the disk

def test_a_second_run_on_a_stage_folder_is_refused(copy, capsys):
    with open(copy.out / "supernet" / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert copy.status("train", "--resume") == USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {copy.out / 'supernet'} is in use by another run")
    assert copy.status("train", "--resume") == 0  # once it is free


def test_bad_config_and_output_paths_stop_before_any_file(copy, tmp_path, capsys):
    r = cli(ROOT / "train.py", cwd=tmp_path)  # no config at all
    assert r.returncode == USER_ERROR and r.stderr.startswith("error: data.task=None: expected the name of a task folder")
    assert r.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == [copy.out]
    assert copy.status("train", "--set", "train.epochs=0", "--set", f"output={tmp_path / 'new'}") == USER_ERROR
    assert capsys.readouterr().err == "error: train.epochs=0: expected an integer ≥ 1; fix it in the config or with " \
                                      "--set train.epochs=...\n"
    assert not (tmp_path / "new").exists()
    (tmp_path / "a_file").write_text("")
    assert copy.status("train", "--set", f"output={tmp_path / 'a_file'}") == USER_ERROR


def test_a_full_disk_is_one_line_and_keeps_the_earlier_outputs(copy):
    """Files over 40 kB cannot be written (RLIMIT_FSIZE, as a full disk): the supernet file (70 kB), which
    a finished run writes again from its last checkpoint once one of its outputs is gone, fails."""
    supernet = copy.out / "supernet" / "supernet.safetensors"
    before = supernet.read_bytes()
    (copy.out / "supernet" / "summary.json").unlink()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    r = subprocess.run([sys.executable, ROOT / "train.py", copy.config, *copy.where, "--resume"],
                       capture_output=True, text=True, preexec_fn=small_files)
    assert r.returncode == USER_ERROR and r.stderr.count("error: ") == 1
    assert r.stderr.strip().splitlines()[-1] == f"error: {supernet}: File too large; the disk (or your quota) is full: " \
                                                "free space, or set output to another disk"
    assert supernet.read_bytes() == before and not list(supernet.parent.glob(".*.tmp"))
    assert r.stderr.strip().splitlines()[-1] in (copy.out / "supernet" / "log.txt").read_text()
