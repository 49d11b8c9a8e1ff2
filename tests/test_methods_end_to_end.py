"""Every method preset through the stages it needs on the bundled demo task, into one table; vtab.sh --method;
a full fine-tuning retrain killed and resumed; a sweep of three budgets over one supernet."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import run_script
from data import build_demo
from engine import method
from engine.config import load_config
from engine.run import parse_args

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ["glora", "glora-random", "glora-uniform", "lora", "ssf-like", "bitfit", "full", "linear"]
SCRIPTS = {"supernet": "train", "search": "search", "retrain": "retrain"}
pytestmark = pytest.mark.slow


TINY = {
    "device": "cpu",
    "model": {"name": "vit_tiny_patch16_224", "pretrained": False,
              "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3,
                         "drop_path_rate": 0.0}},
    "data": {"img_size": 32, "batch_size": 100},
    "glora": {"ranks": [2, 4]},
    "train": {"epochs": 2, "lr": 2e-3, "warmup_epochs": 1, "eval_every": 2, "eval_subnets": 1, "ckpt_every": 2},
    "search": {"generations": 2, "population": 6, "parents": 3, "mutations": 2, "crossovers": 2,
               "budget": [0.0, 0.01]},
    "retrain": {"epochs": 1, "lr": 2e-3, "warmup_epochs": 0, "ckpt_every": 1},
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("methods")
    build_demo(folder / "data")
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "root": str(folder / "data"), "task": "digits"}}))
    return path


def run_method(experiment, name, output, *overrides, resume=False):
    """The preset's stages, in process, as scripts/vtab.sh --method runs them (what a stage holds,
    its folder lock and signal handlers, is released after each as by its CLI)."""
    args = [str(experiment), str(ROOT / "configs" / "methods" / f"{name}.yaml"), "--set", f"output={output}"]
    for o in overrides:
        args += ["--set", o]
    for s in method.stages(load_config(args[:2], args[3::2])):
        run_script(SCRIPTS[s], parse_args(args + ["--resume"] * resume))
    return json.loads((Path(output) / "retrain" / "results.json").read_text())


@pytest.fixture(scope="module")
def grid(experiment):
    """All presets on the demo task, laid out as a grid: <grid>/<method>/digits/seed0/."""
    folder = experiment.parent / "grid"
    results = {m: run_method(experiment, m, folder / m / "digits" / "seed0") for m in PRESETS}
    return folder, results


def test_every_preset_writes_the_same_results(grid):
    folder, results = grid
    for name, r in results.items():
        assert r["method"] == name and r["task"] == "digits"
        assert r["trainable_params"] == r["adapter_params"] + r["backbone_params"] + r["head_params"], name
        assert 0 <= r["test_acc"] <= 100
        if r["adapter_params"]:  # a merge applies: merged == unmerged
            assert r["test_acc_merged"] == r["test_acc"], name
        else:
            assert r["test_acc_merged"] is None, name
    stages_run = {m: sorted(p.name for p in (folder / m / "digits" / "seed0").iterdir() if p.is_dir()) for m in PRESETS}
    assert stages_run["glora"] == ["retrain", "search", "supernet"]
    assert stages_run["glora-random"] == ["retrain", "supernet"]
    assert all(stages_run[m] == ["retrain"] for m in PRESETS[2:])
    assert results["linear"]["adapter_params"] == results["linear"]["backbone_params"] == 0
    assert results["bitfit"]["adapter_params"] == 0 < results["bitfit"]["backbone_params"]
    assert results["full"]["backbone_params"] > results["bitfit"]["backbone_params"]


def test_every_preset_lands_in_one_table(grid):
    sys.path.insert(0, str(ROOT / "scripts"))
    import summarize

    folder, results = grid
    md, files = summarize.write_summary(folder)
    for name, r in results.items():
        merged = "–" if r["test_acc_merged"] is None else f"{r['test_acc_merged']:.2f}"
        assert (f"| {name} | digits | own | {r['test_acc']:.2f} | {merged} | {r['trainable_params']} | "
                f"{r['adapter_params']} | {r['head_params']} |") in md, name
    assert (folder / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"


def test_lora_trains_the_lora_formula(grid):
    import timm
    from torch import nn

    folder, results = grid
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=10, **TINY["model"]["kwargs"])
    formula = sum(8 * (m.in_features + m.out_features) for n, m in plain.named_modules()
                  if isinstance(m, nn.Linear) and n != "head")
    assert results["lora"]["adapter_params"] == formula
    assert results["lora"]["trainable_params"] == formula + plain.head.weight.numel() + plain.head.bias.numel()
    subnet = yaml.safe_load((folder / "lora" / "digits" / "seed0" / "retrain" / "subnet.yaml").read_text())
    assert {tuple(c.values()) for c in subnet["layers"].values()} == {("none", "lora_8", "none", "none", "none")}


def test_the_random_subnet_lies_within_the_budget_and_the_searched_one_within_the_space(grid):
    folder, results = grid
    assert 0 < results["glora-random"]["adapter_params"] <= 0.01e6
    run = folder / "glora" / "digits" / "seed0"
    assert yaml.safe_load((run / "retrain" / "subnet.yaml").read_text())["layers"] == \
        yaml.safe_load((run / "search" / "best_subnet.yaml").read_text())["layers"]


def test_vtab_sh_runs_the_stages_a_method_needs(experiment, tmp_path):
    tiny = [f"--set=model.kwargs.{k}={v}" for k, v in TINY["model"]["kwargs"].items()]
    sets = ["--set", "model.name=vit_tiny_patch16_224", "--set", "model.pretrained=false", *tiny,
            "--set", f"data.root={experiment.parent / 'data'}", "--set", "data.task=digits", "--set", "data.img_size=32",
            "--set", "device=cpu", "--set", "retrain.epochs=1", "--set", "retrain.warmup_epochs=0",
            "--set", f"output={tmp_path / 'linear'}"]
    r = subprocess.run(["bash", ROOT / "scripts" / "vtab.sh", "dtd", "--method", "linear", *sets],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "linear").iterdir()) == ["retrain"]
    assert json.loads((tmp_path / "linear" / "retrain" / "results.json").read_text())["method"] == "linear"
    r = subprocess.run(["bash", ROOT / "scripts" / "vtab.sh", "dtd", "--method", "adapterx"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: --method adapterx: no preset")


def test_full_fine_tuning_killed_and_resumed_equals_uninterrupted(experiment, tmp_path, monkeypatch):
    import engine.trainer

    two = ("retrain.epochs=2",)
    run_method(experiment, "full", tmp_path / "full", *two)
    real = engine.trainer.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_method(experiment, "full", tmp_path / "cut", *two)
    monkeypatch.undo()
    assert (tmp_path / "cut" / "retrain" / "checkpoint" / "backbone.safetensors").is_file()
    run_method(experiment, "full", tmp_path / "cut", *two, resume=True)
    full = load_file(tmp_path / "full" / "retrain" / "merged.safetensors")
    cut = load_file(tmp_path / "cut" / "retrain" / "merged.safetensors")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)


def test_three_budgets_share_one_supernet_and_give_three_retrained_models_a_table_and_a_figure(experiment, tmp_path):
    out = tmp_path / "sweep"
    space = {"A": ["none", "vector"], "B": ["lora_2", "lora_4", "none"], "C": ["none"], "D": ["none", "vector"],
             "E": ["none", "scalar", "vector"]}
    restricted = tmp_path / "restricted.yaml"  # GLoRA's config; the baseline's preset applies over it
    restricted.write_text(yaml.safe_dump({"glora": {"space": space}}))
    r = subprocess.run([sys.executable, ROOT / "scripts" / "budgets.py", experiment, restricted, "--budgets", "0.002",
                        "0.004", "0.008", "--baselines", "linear", "--set", f"output={out}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    commands = [line for log in out.glob("**/launch.log") for line in log.read_text().splitlines() if line.startswith("== ")]
    assert sum(f" {ROOT / 'train.py'} " in c for c in commands) == 1  # the supernet, trained once
    assert sum(f" {ROOT / 'search.py'} " in c for c in commands) == 3
    supernet = out / "supernet" / "supernet.safetensors"
    for budget in ("0.002", "0.004", "0.008"):
        run = out / f"budget-{budget}"
        assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["retrain", "search"]  # no supernet of its own
        assert yaml.safe_load((run / "search" / "config.yaml").read_text())["supernet"] == str(supernet)
        best = yaml.safe_load((run / "search" / "best_subnet.yaml").read_text())
        assert best["params"] <= float(budget) * 1e6 and best["budget"] == [0.0, float(budget)]
        for cfg in best["layers"].values():  # the searched subnet lies inside the restricted space
            assert all(c in space[t] for t, c in cfg.items()), cfg
        results = json.loads((run / "retrain" / "results.json").read_text())
        assert results["adapter_params"] == best["params"] and results["test_acc_merged"] == results["test_acc"]
        assert (run / "retrain" / "merged.safetensors").is_file()
        assert f"| budget-{budget} | digits | own | {results['test_acc']:.2f} |" in r.stdout
    assert "| linear | digits | own |" in r.stdout
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()
    assert (out / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
