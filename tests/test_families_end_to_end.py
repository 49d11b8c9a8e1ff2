"""Every adapter family in the same harness: one launcher grid runs GLoRA, NOAH, VPT-deep, AdaptFormer,
RepAdapter and LoRA (their presets, as a --configs axis) on a task of the tests' own, into one results
table; every count is its closed form from the architecture; RepAdapter's merged file loads strictly
in plain timm and predicts as the unmerged model; NOAH's best subnet lies within its budget; the
adapters file of a family that does not merge loads back onto the plain backbone; kill -9 and
--resume end where the uninterrupted run ended, for a NOAH supernet and a VPT-deep retrain."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import TINY, tiny_vit
from data import build_demo
from engine.config import load_config
from engine.experiment import eval_loader, load_data
from engine.loops import evaluate
from glora.family import attach
from glora.model import create_model, load_merged

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["glora", "noah", "vpt-deep", "adaptformer", "repadapter", "lora"]
TASK, CLASSES = "svhn", 10  # a VTAB-1k name (10 classes, as the demo's digits): the published rows print beside
BUDGET = 0.008  # millions: NOAH's and GLoRA's searches stay within it
SCHEDULE = ["train.epochs=2", "train.ckpt_every=1", "train.eval_every=0", "train.eval_subnets=1", "train.lr=2e-3",
            "train.warmup_epochs=1", "search.generations=2", "search.population=6", "search.parents=2",
            "search.mutations=2", "search.crossovers=2", f"search.budget=[0,{BUDGET}]", "retrain.epochs=2",
            "retrain.ckpt_every=1", "retrain.lr=2e-3", "retrain.warmup_epochs=1"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The six presets on the demo digits (named svhn), through scripts/launch.py's local executor."""
    root = tmp_path_factory.mktemp("families").resolve()
    build_demo(root / "data")
    (root / "data" / "digits").rename(root / "data" / TASK)
    backbone = root / "backbone.safetensors"  # a "pretrained" backbone file, so the tests can rebuild it
    save_file({k: v.contiguous() for k, v in tiny_vit(num_classes=CLASSES, dtype=torch.float32).state_dict().items()},
              backbone)
    experiment = root / "tiny.yaml"
    experiment.write_text(yaml.safe_dump({
        "device": "cpu",
        "model": {"name": "vit_tiny_patch16_224", "pretrained": str(backbone),
                  "kwargs": {**TINY, "drop_path_rate": 0.1}},
        "data": {"root": str(root / "data"), "img_size": 32, "batch_size": 100},
    }))
    out = root / "grid"
    cmd = [sys.executable, str(ROOT / "scripts" / "launch.py"), "--output", str(out), "--experiment", str(experiment),
           "--configs", *CONFIGS, "--tasks", TASK, "--slots", "2", "--gpus-per-job", "0", "--cpus-per-job", "1",
           *[a for s in SCHEDULE for a in ("--set", s)]]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = {c: out / c / TASK / "seed0" for c in CONFIGS}
    return SimpleNamespace(root=root, out=out, stdout=r.stdout, experiment=experiment, runs=runs,
                           results={c: json.loads((run / "retrain" / "results.json").read_text())
                                    for c, run in runs.items()})


def cell_config(grid, name, output):
    """The files and overrides of the grid's cell for preset `name`, writing into `output`."""
    files = [str(grid.experiment), str(ROOT / "configs" / "methods" / f"{name}.yaml")]
    sets = [*SCHEDULE, f"data.task={TASK}", f"output={output}", "seed=0"]
    return files, sets


def plain_backbone(grid):
    return create_model("vit_tiny_patch16_224", CLASSES, str(grid.root / "backbone.safetensors"),
                        **{**TINY, "drop_path_rate": 0.1})


def test_one_grid_runs_every_family_into_one_table(grid):
    md = (grid.out / "results.md").read_text()
    assert md in grid.stdout
    for config in CONFIGS:
        r = grid.results[config]
        merged = "–" if r["test_acc_merged"] is None else f"{r['test_acc_merged']:.2f}"
        assert (f"| {config} | {TASK} | natural | {r['test_acc']:.2f} | {merged} | {r['trainable_params']} | "
                f"{r['adapter_params']} | {r['head_params']} |") in md, config
    assert "| noah | published: V-PETL Bench |" in md and "| repadapter | published: RepAdapter README |" in md
    assert "| vpt-deep | this code (vpt-deep) |" in md and "mean over the 19 tasks" in md
    for config in ("noah", "vpt-deep", "adaptformer"):  # no merge: said in the table's notes
        assert f"test_acc_merged – for {config}: family {config} does not merge:" in md
    assert (grid.out / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["method"] for r in grid.results.values()] == CONFIGS
    stages = {c: sorted(p.name for p in run.iterdir() if p.is_dir()) for c, run in grid.runs.items()}
    assert stages["glora"] == stages["noah"] == ["retrain", "search", "supernet"]
    assert all(stages[c] == ["retrain"] for c in ("vpt-deep", "adaptformer", "repadapter", "lora"))


def test_every_count_is_its_closed_form_from_the_architecture(grid):
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=CLASSES, **TINY)
    d, depth = plain.embed_dim, len(plain.blocks)
    linears = {n: (m.in_features, m.out_features) for n, m in plain.named_modules()
               if isinstance(m, torch.nn.Linear) and n != "head"}
    head = d * CLASSES + CLASSES

    def glora(cfg, i, o):  # the choices' closed form
        def lowrank(c, width):
            return int(c[5:]) * width if c.startswith("lora_") else 0
        count = sum(lowrank(cfg[t], i + o) or {"vector": o, "scalar": 1}.get(cfg[t], 0) for t in "AB")
        count += lowrank(cfg["C"], i + 1) or {"vector": i}.get(cfg["C"], 0)
        return count + sum({"vector": o, "scalar": 1}.get(cfg[t], 0) for t in "DE")

    def subnet(config):
        return yaml.safe_load((grid.runs[config] / "retrain" / "subnet.yaml").read_text())["layers"]

    expected = {
        "glora": sum(glora(cfg, *linears[n]) for n, cfg in subnet("glora").items()),
        "lora": sum(8 * (i + o) for i, o in linears.values()),
        "noah": sum(c["prompt"] * d + c["lora"] * (d + 3 * d) + (c["adapter"] * (2 * d + 1) + d if c["adapter"] else 0)
                    for c in subnet("noah").values()),
        "vpt-deep": depth * 50 * d,
        "adaptformer": depth * (2 * d * 64 + 64 + d),
        "repadapter": depth * 2 * (8 * d + 8 + d * 8 // 2 + d),
    }
    for config, count in expected.items():
        r = grid.results[config]
        assert r["adapter_params"] == count and r["head_params"] == head, config
        assert r["trainable_params"] == count + head, config
    for config in ("noah", "vpt-deep", "adaptformer"):  # what the adapters add at inference, counted in the model
        assert grid.results[config]["inference"]["extra_params"] == expected[config]


def test_noahs_best_subnet_lies_within_its_budget_and_is_the_one_retrained(grid):
    best = yaml.safe_load((grid.runs["noah"] / "search" / "best_subnet.yaml").read_text())
    assert best["family"] == "noah" and 0 <= best["params"] <= BUDGET * 1e6
    assert yaml.safe_load((grid.runs["noah"] / "retrain" / "subnet.yaml").read_text())["layers"] == best["layers"]
    assert grid.results["noah"]["adapter_params"] == best["params"]
    for line in (grid.runs["noah"] / "search" / "candidates.jsonl").read_text().splitlines():
        assert json.loads(line)["params"] <= BUDGET * 1e6


def test_repadapter_exports_a_plain_timm_model_that_predicts_as_the_unmerged_one(grid):
    r, run = grid.results["repadapter"], grid.runs["repadapter"]
    assert r["test_acc_merged"] == r["test_acc"] and "why_not_merged" not in r and "inference" not in r
    merged = load_merged(run / "retrain" / "merged.safetensors")  # strict, from its metadata alone
    assert type(merged) is type(timm.create_model("vit_tiny_patch16_224", **TINY))
    unmerged = attach(plain_backbone(grid), run / "retrain" / "adapters.safetensors")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), unmerged(x), rtol=1e-4, atol=1e-5)
    assert (run / "retrain" / "hub" / "model.safetensors").is_file()
    assert "RepAdapter (Luo et al., arXiv 2302.08106), merged into the plain model" in \
        (run / "retrain" / "hub" / "README.md").read_text()


@pytest.mark.parametrize("config", ["vpt-deep", "adaptformer", "noah"])
def test_an_unmerged_family_says_why_exports_its_adapters_and_their_measured_cost(grid, config):
    r, run = grid.results[config], grid.runs[config]
    assert r["test_acc_merged"] is None and r["merged_checkpoint"] is None
    assert r["why_not_merged"].startswith(f"family {config} does not merge: ")
    cost = r["inference"]
    assert cost["plain_ms"] > 0 and cost["adapted_ms"] > 0
    assert cost["time_ratio"] == cost["adapted_ms"] / cost["plain_ms"]
    card = (run / "retrain" / "README.md").read_text()
    assert f"Extra inference cost: {cost['extra_params']:,} parameters" in card and "attach(backbone" in card
    # the adapters file on the plain pretrained backbone is the retrained model: the same test accuracy
    model = attach(plain_backbone(grid), r["adapters_checkpoint"])
    cfg = load_config(*cell_config(grid, config, run))
    test = eval_loader(cfg, load_data(cfg, "test"), torch.device("cpu"))
    assert evaluate(model, test, torch.device("cpu"), amp=False) == r["test_acc"]


@pytest.mark.parametrize("config, script, output", [("noah", "train.py", "supernet/supernet.safetensors"),
                                                    ("vpt-deep", "retrain.py", "retrain/adapters.safetensors")])
def test_kill_9_and_resume_end_where_the_uninterrupted_run_ended(grid, tmp_path, config, script, output):
    files, sets = cell_config(grid, config, tmp_path / "cut")
    if script == "retrain.py":
        assert json.loads((grid.runs[config] / "retrain" / "results.json").read_text())["init"] == "scratch"
    args = [*files, *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the grid's jobs ran (--cpus-per-job 1): the same arithmetic
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_after_checkpoint.py"), str(ROOT / script),
                             *args], capture_output=True, text=True, cwd=grid.root, env=env)
    assert killed.returncode == 9 and not (tmp_path / "cut" / output).exists(), killed.stderr[-2000:]
    resumed = subprocess.run([sys.executable, str(ROOT / script), *args, "--resume"], capture_output=True, text=True,
                             cwd=grid.root, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from the checkpoint" in (tmp_path / "cut" / output.split("/")[0] / "log.txt").read_text()
    full, cut = load_file(grid.runs[config] / output), load_file(tmp_path / "cut" / output)
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    if script == "retrain.py":
        again = json.loads((tmp_path / "cut" / "retrain" / "results.json").read_text())
        assert again["test_acc"] == grid.results[config]["test_acc"]
    shutil.rmtree(tmp_path / "cut")
