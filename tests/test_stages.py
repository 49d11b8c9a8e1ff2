"""The three stages end to end on the bundled demo task, resume equivalence, and clear failures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_script
from data import build_demo
from glora import load_merged
from engine.run import parse_args

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(name, config, *extra):
    """A stage in this process; what it holds (folder lock, signal handlers) is released as by its CLI."""
    run_script(name, parse_args([str(config), *extra]))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build_demo(root)
    return root


@pytest.fixture
def config(tmp_path, demo_root):
    return write_config(tmp_path / "exp.yaml", demo_root, tmp_path / "run")


def write_config(path, data_root, output):
    """The experiment of these tests: a tiny ViT on the demo task, a few epochs and generations."""
    cfg = {
        "output": str(output), "device": "cpu",
        "model": {"name": "vit_tiny_patch16_224", "pretrained": False,
                  "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3,
                             "drop_path_rate": 0.1}},
        "data": {"root": str(data_root), "task": "digits", "img_size": 32, "batch_size": 64},
        "glora": {"ranks": [2, 4]},
        "train": {"epochs": 4, "lr": 2e-3, "warmup_epochs": 1, "eval_every": 2, "eval_subnets": 2, "ckpt_every": 2},
        "search": {"generations": 3, "population": 8, "parents": 3, "mutations": 3, "crossovers": 3,
                   "budget": [0.0, 0.01]},
        "retrain": {"epochs": 2, "lr": 2e-3, "warmup_epochs": 1, "ckpt_every": 1},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


class Killed(Exception):
    pass


def kill_after_first_checkpoint(monkeypatch):
    import engine.trainer

    real = engine.trainer.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(engine.trainer, "save_checkpoint", save_then_die)


def test_pipeline_end_to_end(config, tmp_path, demo_root):
    run("train", config)
    run("search", config)
    run("retrain", config)
    out = tmp_path / "run"
    for f in ("supernet/supernet.safetensors", "supernet/summary.json", "supernet/config.yaml", "supernet/log.txt",
              "search/best_subnet.yaml", "search/candidates.jsonl", "search/summary.json",
              "retrain/merged.safetensors", "retrain/adapters.safetensors", "retrain/results.json"):
        assert (out / f).is_file(), f
    assert list((out / "supernet" / "tb").iterdir())
    best = yaml.safe_load((out / "search" / "best_subnet.yaml").read_text())
    assert 0 <= best["params"] <= 0.01e6
    lines = (out / "search" / "candidates.jsonl").read_text().splitlines()
    assert len(lines) == 24 and len({tuple(json.loads(l)["layers"]) for l in lines}) == 24
    results = json.loads((out / "retrain" / "results.json").read_text())
    assert results["test_acc"] == results["test_acc_merged"]
    assert results["adapter_params"] == best["params"]
    assert results["trainable_params"] == results["adapter_params"] + results["head_params"]
    # the merged checkpoint is an ordinary timm model
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2,
                              embed_dim=48, num_heads=3, checkpoint_path=str(out / "retrain" / "merged.safetensors"))
    assert model.head.out_features == 10
    assert type(load_merged(out / "retrain" / "merged.safetensors")) is type(model)  # from its metadata alone, strictly
    # so is the hub folder, with no other input: its own preprocessing on the test images gives the test accuracy
    assert hub_test_accuracy(out / "retrain" / "hub", demo_root / "digits") == results["test_acc"]
    for figure in ("search/candidates.png", "search/subnet.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG", figure
    events = EventAccumulator(str(out / "search" / "tb")).Reload()
    assert {"search/candidates", "search/subnet"} <= set(events.Tags()["images"])

    summary = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize.py"), str(out)],
                             capture_output=True, text=True)
    assert summary.returncode == 0 and "| digits | own |" in summary.stdout
    for f in ("results.md", "results.csv", "accuracy_per_task.png", "accuracy_vs_params.png"):
        assert (out / f).is_file(), f


def hub_test_accuracy(folder, task_root):
    """Top-1 accuracy (%) of the exported folder on a task's test list, loaded and preprocessed by timm alone."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    lines = [line.split() for line in (task_root / "test.txt").read_text().splitlines()]
    x = torch.stack([transform(Image.open(task_root / path).convert("RGB")) for path, _ in lines])
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    return 100.0 * (predicted == torch.tensor([int(label) for _, label in lines])).sum().item() / len(lines)


def test_supernet_resume_equals_uninterrupted(config, tmp_path, monkeypatch):
    run("train", config, "--set", f"output={tmp_path / 'full'}")
    kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(Killed):
        run("train", config, "--set", f"output={tmp_path / 'cut'}")
    assert not (tmp_path / "cut" / "supernet" / "supernet.safetensors").exists()
    monkeypatch.undo()
    run("train", config, "--set", f"output={tmp_path / 'cut'}", "--resume")
    full = load_file(tmp_path / "full" / "supernet" / "supernet.safetensors")
    cut = load_file(tmp_path / "cut" / "supernet" / "supernet.safetensors")
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_search_and_retrain_resume_equal_uninterrupted(config, tmp_path, monkeypatch):
    run("train", config)
    run("search", config)
    run("retrain", config)
    out = tmp_path / "run"
    best = (out / "search" / "best_subnet.yaml").read_text()
    cands = (out / "search" / "candidates.jsonl").read_text()
    results = json.loads((out / "retrain" / "results.json").read_text())
    merged = load_file(out / "retrain" / "merged.safetensors")

    import search.evolution

    real_step = search.evolution.EvolutionSearch.step
    calls = []

    def step_then_die(self):
        if len(calls) == 2:
            raise Killed
        calls.append(1)
        return real_step(self)

    for f in ("search", "retrain"):
        import shutil
        shutil.rmtree(out / f)
    monkeypatch.setattr(search.evolution.EvolutionSearch, "step", step_then_die)
    with pytest.raises(Killed):
        run("search", config)
    monkeypatch.undo()
    run("search", config, "--resume")
    assert without_run_id((out / "search" / "best_subnet.yaml").read_text()) == without_run_id(best)
    assert (out / "search" / "candidates.jsonl").read_text() == cands

    kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(Killed):
        run("retrain", config)
    monkeypatch.undo()
    run("retrain", config, "--resume")
    again = json.loads((out / "retrain" / "results.json").read_text())
    assert again["test_acc"] == results["test_acc"]
    merged2 = load_file(out / "retrain" / "merged.safetensors")
    assert all(torch.equal(merged[k], merged2[k]) for k in merged)


def without_run_id(subnet_yaml):
    """A subnet file's content but the id of the run that wrote it (two runs, one result)."""
    content = yaml.safe_load(subnet_yaml)
    assert content["lineage"].pop("run")
    return content


def cli(*args, cwd=ROOT, env=None):
    """A script in a fresh process; `env`: variables to set on top of this process's."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})


def test_missing_inputs_fail_with_one_line_and_status_2(config, tmp_path):
    for script, needle in (("search.py", "no trained supernet"), ("retrain.py", "no searched subnet")):
        r = cli(ROOT / script, config)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().startswith("error: ") and needle in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = cli(ROOT / "train.py", config, "--set", "train.lrr=1")
    assert r.returncode == 2 and "unknown key 'train.lrr'" in r.stderr
    r = cli(ROOT / "train.py", config, "--set", f"data.root={tmp_path / 'nowhere'}")
    assert r.returncode == 2 and "nowhere" in r.stderr


def test_infeasible_budget_fails_at_once(config, tmp_path):
    run("train", config, "--set", "train.epochs=1")
    r = cli(ROOT / "search.py", config, "--set", "search.budget=[5,6]")
    assert r.returncode == 2 and "infeasible" in r.stderr and "between 0M" in r.stderr
    assert not (tmp_path / "run" / "search" / "best_subnet.yaml").exists()
    assert not (tmp_path / "run" / "search" / "config.yaml").exists()  # bad input records nothing


def test_torchrun_two_processes_equal_one(config, tmp_path):
    """DDP over 2 CPU processes (gloo): same subnets on every rank, half a batch each, averaged grads."""
    no_drop = ["--set", "model.kwargs.drop_path_rate=0.0", "--set", "train.epochs=2"]
    r = cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", ROOT / "train.py", config, *no_drop,
            "--set", f"output={tmp_path / 'ddp'}")
    assert r.returncode == 0, r.stderr[-2000:]
    run("train", config, *no_drop, "--set", f"output={tmp_path / 'one'}")
    ddp = load_file(tmp_path / "ddp" / "supernet" / "supernet.safetensors")
    one = load_file(tmp_path / "one" / "supernet" / "supernet.safetensors")
    assert ddp.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-3, atol=1e-4)


def test_torchrun_two_processes_killed_and_resumed_equal_uninterrupted(config, tmp_path):
    """Drop-path on: every rank restores its own generator states, so the resumed run is exact."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = [config, "--set", "train.epochs=4", "--set", "model.kwargs.drop_path_rate=0.2"]
    r = cli(*torchrun, ROOT / "train.py", *args, "--set", f"output={tmp_path / 'full'}")
    assert r.returncode == 0, r.stderr[-2000:]
    cut = ["--set", f"output={tmp_path / 'cut'}"]
    r = cli(*torchrun, ROOT / "tests" / "kill_after_checkpoint.py", ROOT / "train.py", *args, *cut)
    assert r.returncode != 0 and (tmp_path / "cut" / "supernet" / "checkpoint").is_dir()
    assert not (tmp_path / "cut" / "supernet" / "supernet.safetensors").exists()
    r = cli(*torchrun, ROOT / "train.py", *args, *cut, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    full = load_file(tmp_path / "full" / "supernet" / "supernet.safetensors")
    resumed = load_file(tmp_path / "cut" / "supernet" / "supernet.safetensors")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_demo_backbone_is_a_loadable_pretrained_file(config, tmp_path):
    out = tmp_path / "backbone.safetensors"
    r = cli(ROOT / "scripts" / "demo_backbone.py", config, out, "--epochs", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rotation pretraining epoch 1/1" in r.stdout and out.is_file()
    run("train", config, "--set", f"model.pretrained={out}", "--set", "train.epochs=1")
    assert (tmp_path / "run" / "supernet" / "supernet.safetensors").is_file()


def test_import_a_supernet_state_dict_from_elsewhere(config, tmp_path):
    """A release-style checkpoint (whole model state dict, DDP prefix) becomes our supernet file."""
    run("train", config, "--set", "train.epochs=1")
    supernet = load_file(tmp_path / "run" / "supernet" / "supernet.safetensors")
    from engine.experiment import build_model
    from engine.config import load_config
    cfg = load_config(str(config))
    model = build_model(cfg, 10)
    state = {**model.state_dict(), **supernet}
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "release.pth")
    out = tmp_path / "imported"
    r = cli(ROOT / "scripts" / "import_supernet.py", config, tmp_path / "release.pth", "--set", f"output={out}")
    assert r.returncode == 0, r.stderr
    imported = load_file(out / "supernet" / "supernet.safetensors")
    assert imported.keys() == supernet.keys() and all(torch.equal(imported[k], supernet[k]) for k in supernet)
    run("search", config, "--set", f"output={out}")  # the search takes it as its own
    before = (out / "supernet" / "supernet.safetensors").read_bytes()
    run("train", config, "--set", f"output={out}", "--resume")  # an import is finished: nothing to resume
    assert (out / "supernet" / "supernet.safetensors").read_bytes() == before
    assert (out / "search" / "best_subnet.yaml").is_file()
    r = cli(ROOT / "scripts" / "import_supernet.py", config, tmp_path / "release.pth", "--set", "glora.ranks=[8]",
            "--set", f"output={tmp_path / 'other'}")
    assert r.returncode == 2 and "check glora.ranks" in r.stderr
    assert not (tmp_path / "other" / "supernet").exists()


def curves(tb_dir):
    """Every TensorBoard scalar of a run, {tag: {step: value}} (a resumed run may log a step again)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def search_outputs(out):
    folder = Path(out) / "search"
    return without_run_id((folder / "best_subnet.yaml").read_text()), (folder / "candidates.jsonl").read_text()


def with_supernet_of(src, dst):
    import shutil
    shutil.copytree(Path(src) / "supernet", Path(dst) / "supernet")
    return dst


# val200 in batches of 5: early stopping decides between batches, and these candidates are close
SEARCH = ["--set", "data.eval_batch_size=5", "--set", "search.generations=6", "--set", "device=cpu"]


def test_early_stopping_search_equals_exhaustive(config, tmp_path):
    run("train", config)
    run("search", config, *SEARCH, "--set", "search.early_stop=false")
    exhaustive = search_outputs(tmp_path / "run")
    full = json.loads((tmp_path / "run" / "search" / "summary.json").read_text())
    run("search", config, *SEARCH)
    best, cands = search_outputs(tmp_path / "run")
    assert best == exhaustive[0]
    lines = [json.loads(l) for l in cands.splitlines()]
    stopped = [c for c in lines if c["pruned"]]
    assert stopped and all(c["images"] < 200 for c in stopped)
    assert [c["layers"] for c in lines] == [json.loads(l)["layers"] for l in exhaustive[1].splitlines()]
    summary = json.loads((tmp_path / "run" / "search" / "summary.json").read_text())
    assert summary["candidates_pruned"] == len(stopped) and full["candidates_pruned"] == 0
    assert summary["images_forwarded"] < full["images_forwarded"] == 200 * len(lines)


def worker_pid(parent: int, rank: int):
    """The pid of torchrun's worker of `rank` (Linux /proc), or None while it is not started."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    return None


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]


def kill_rank_mid_run(cmd, ckpt, rank, after):
    """Start `cmd` (torchrun), kill -9 its rank `rank` once checkpoint `ckpt` is past generation
    `after`, and wait for torchrun to give up."""
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def generation():
        try:
            return torch.load(ckpt / "state.pt", weights_only=True)["evolution"]["generation"]
        except Exception:  # not written yet, or caught between the checkpoint's renames
            return 0

    while generation() < after and proc.poll() is None:
        time.sleep(0.01)
    pid = worker_pid(proc.pid, rank)
    assert pid is not None, "the search ended before a rank could be killed"
    os.kill(pid, signal.SIGKILL)
    assert proc.wait() != 0


def test_torchrun_search_equals_one_process_even_after_kills(config, tmp_path):
    """Two CPU processes score disjoint halves of each generation; rank 1, then rank 0, is killed
    (-9) mid-run and the run resumed each time: the files and curves of one uninterrupted process."""
    run("train", config, "--set", "train.epochs=2")
    run("search", config, *SEARCH)
    two = with_supernet_of(tmp_path / "run", tmp_path / "two")
    cmd = torchrun(ROOT / "search.py", config, *SEARCH, "--set", f"output={two}")
    kill_rank_mid_run(cmd, two / "search" / "checkpoint", rank=1, after=1)
    kill_rank_mid_run(cmd + ["--resume"], two / "search" / "checkpoint", rank=0, after=3)
    assert not (two / "search" / "best_subnet.yaml").exists()
    r = cli(*(cmd + ["--resume"])[1:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert search_outputs(two) == search_outputs(tmp_path / "run")
    assert curves(two / "search" / "tb") == curves(tmp_path / "run" / "search" / "tb")
    assert json.loads((two / "search" / "summary.json").read_text())["processes"] == 2


def test_retrain_streams_a_test_split_larger_than_resident_mb(config, tmp_path, monkeypatch):
    """Held whole or read from the cache file batch by batch, the test split gives the same results."""
    from data.cache import CachedImages

    run("train", config, "--set", "train.epochs=1")
    run("search", config, "--set", "search.generations=1")
    run("retrain", config)
    out = tmp_path / "run" / "retrain"
    held = json.loads((out / "results.json").read_text())
    merged = load_file(out / "merged.safetensors")
    reads, real = [], CachedImages.__getitem__

    def counted(self, rows):
        batch = real(self, rows)
        reads.append(len(batch))
        return batch

    monkeypatch.setattr(CachedImages, "__getitem__", counted)
    run("retrain", config, "--set", "data.resident_mb=0", "--set", "data.eval_batch_size=100")
    streamed = json.loads((out / "results.json").read_text())
    # train800val200 streams too (in batches of 64); the 797 test images come in batches of 100, twice
    assert reads.count(97) == 2 and max(reads) <= 100
    for key in ("test_acc", "test_acc_merged", "adapter_params"):
        assert streamed[key] == held[key]
    again = load_file(out / "merged.safetensors")
    assert all(torch.equal(merged[k], again[k]) for k in merged)
