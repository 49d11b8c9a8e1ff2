"""The benchmark suite on a tiny ViT, one repetition: every section runs and its rows keep the
JSON schema. Timings are not asserted (tests keep the fast paths correct, not fast)."""
import json
import math
import sys
import types

import pytest
import torch

import bench.__main__ as cli
from bench import steps as steps_mod
from bench import variants as V
from bench.inference import bench_inference
from bench.memory import bench_memory
from bench.pruning import bench_pruning
from bench.report import row
from bench.search import bench_search
from bench.settings import make_settings
from bench.steps import bench_steps
from conftest import TINY

REQUIRED = {"name": str, "ours_s": float, "baseline": str, "baseline_s": float, "ratio": float}


@pytest.fixture
def tiny(monkeypatch):
    threads = torch.get_num_threads()

    def settings(device="cpu", quick=True, threads=1, reps=1):
        s = make_settings("cpu", quick, 1, 1)
        s.model, s.kwargs, s.img_size = "vit_tiny_patch16_224", dict(TINY), TINY["img_size"]
        s.val_images, s.batch_size, s.warmup = 6, 2, 0
        return s

    monkeypatch.setattr(cli, "make_settings", settings)
    yield settings()
    torch.set_num_threads(threads)


def check_rows(rows):
    assert rows
    for r in rows:
        for key, kind in REQUIRED.items():
            assert isinstance(r[key], kind), (key, r)
        assert r["ours_s"] > 0 and r["baseline_s"] > 0
        assert r["ratio"] == pytest.approx(r["ours_s"] / r["baseline_s"])
        assert (r["target"] is None) == (r["met"] is None)
        json.dumps(r)


def test_steps_rows_cover_every_baseline(tiny):
    rows = bench_steps(tiny)
    check_rows(rows)
    pairs = {(r["section"], r["baseline"]) for r in rows}
    for base in ("bias-only", "full fine-tuning", "dense reference supernet", "peft LoRA r4", "peft GLoRA"):
        assert ("supernet step", base) in pairs
    assert ("fixed-config step", "peft GLoRA") in pairs
    assert {("retrain step", b) for b in ("bias-only", "full fine-tuning", "dense reference retrain")} <= pairs
    floor = next(r for r in rows if r["section"] == "supernet step" and r["baseline"] == "bias-only")
    assert floor["target"] == "ratio <= 1.25" and floor["ours_mb"] > 0 and floor["baseline_mb"] > 0


def test_search_and_inference_rows(tiny):
    tiny.quick = False  # the full mode also scores through the structured (unmerged) forward
    rows = bench_search(tiny) + bench_inference(tiny)
    check_rows(rows)
    assert [r["baseline"] for r in rows] == ["supernet forward, dense reference", "supernet forward, structured (ours)",
                                             "plain timm model", "unmerged GLoRA model (fixed subnet)"]
    assert rows[0]["target"].startswith("ratio <= 0.5") and rows[0]["weight_build_s"] > 0


def test_evaluation_memory_does_not_grow_with_the_split(tiny):
    """Fresh processes build a split's cache and evaluate it: 300 images, then 3000 (64 px). The
    streamed peak stays put; the former whole-split evaluation grows by the float copy it made."""
    rows = bench_memory(tiny, images=300, factor=10, img_size=64, batch_size=50)
    check_rows(rows)
    streamed, whole = rows
    float_mb = 3000 * 3 * 64 * 64 * 4 / 2**20  # 141 MB: the large split in float32
    assert streamed["ours_s"] - streamed["baseline_s"] < 0.1 * float_mb and streamed["met"]
    assert whole["ours_s"] - whole["baseline_s"] > 0.5 * float_mb
    assert "top-1 streamed == whole: True" in streamed["note"]


@pytest.mark.slow
def test_pruning_rows_forward_fewer_images_for_the_same_best(tiny):
    rows = bench_pruning(tiny, epochs=2, generations=3, population=8, backbone_epochs=1)
    check_rows(rows)
    time_row, images_row = rows
    assert time_row["same_best"] is True and images_row["same_best"] is True
    assert len(images_row["images_per_generation"]) == 3 and images_row["baseline_s"] == 3 * 8 * 200
    assert images_row["ours_s"] == sum(images_row["images_per_generation"]) <= images_row["baseline_s"]


def test_retrain_model_is_compacted_near_the_scaled_budget(tiny):
    v = V.fixed(tiny)
    layers = V.glora_layers(v.model)
    assert all(l.compacted for l in layers.values())
    budget = V.retrain_budget(tiny, v.model)
    n = sum(p.numel() for l in layers.values() for p in l.adapter_parameters().values())
    assert abs(n - budget) <= 0.05 * budget + 1


def test_peft_targets_only_the_block_linears(tiny):
    pytest.importorskip("peft")
    model = V.peft_lora(tiny).model
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert len(adapted) == 4 * TINY["depth"] and not any("patch_embed" in n for n in adapted)


def test_missing_peft_is_a_skipped_row(tiny, monkeypatch):
    def no_peft(*args, **kwargs):
        raise ImportError("No module named 'peft'", name="peft")

    monkeypatch.setattr(V, "peft_lora", no_peft)
    monkeypatch.setattr(V, "peft_glora", no_peft)
    real = steps_mod.builders
    monkeypatch.setattr(steps_mod, "builders", lambda s: {k: f for k, f in real(s).items()
                                                          if k in ("supernet", "peft LoRA r4", "peft GLoRA")})
    rows = bench_steps(tiny)
    assert [r["note"] for r in rows] == ["skipped: peft is not installed"] * 2


def test_cli_writes_the_json_list(tiny, tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("bench.data")
    fake.bench_data = lambda quick=True: [row("data", "epoch (cache in memory)", 0.1, "PIL", 1.0)]
    monkeypatch.setitem(sys.modules, "bench.data", fake)
    out = tmp_path / "bench.json"
    assert cli.main(["--quick", "--only", "search,inference,data", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["section"] for r in rows] == ["search", "inference", "inference", "data"]
    for r in rows:
        assert set(REQUIRED) <= set(r) and r["env"]["device"] == "cpu" and r["env"]["quick"] is True
    assert all(math.isfinite(r["ratio"]) for r in rows)
    printed = capsys.readouterr().out
    assert "== search ==" in printed and "targets met:" in printed


def test_unknown_section_is_refused():
    with pytest.raises(SystemExit):
        cli.main(["--only", "steps,nope"])


@pytest.mark.slow
def test_compiled_section_counts_and_times_each_method_eager_and_compiled(tiny, monkeypatch):
    """The section's every path on the CPU (kernel counts extrapolated in depth; eager and compiled
    timed side by side; the ratios the compiled step is held to), traced with aot_eager to keep it
    cheap (inductor's kernels then count 0: the figures check the plumbing, not the speed)."""
    from bench.compiled import bench_compiled, kernel_count, build

    monkeypatch.setenv("GLORA_COMPILE_BACKEND", "aot_eager")
    methods = ("supernet", "full fine-tuning", "retrain")
    rows = bench_compiled(tiny, methods, timed=methods)
    check_rows(rows)
    for figure in ("kernels", "launches"):
        counts = {r["name"]: r for r in rows if r["section"] == f"{figure} per step"}
        assert set(counts) == {f"{m} step, compiled" for m in methods}
        for r in counts.values():
            assert r["counts_eager"]["aten_ops"] > 0 and "extrapolated to 2 blocks" in r["note"]
            assert r["counts_eager"]["launches"] == r["counts_eager"]["kernels"] == r["counts_eager"]["aten_ops"]
            assert r["counts_compiled"]["launches"] < r["counts_eager"]["launches"]  # a graph call, not its operators
    timed = {(r["name"], r["baseline"]) for r in rows if r["section"] == "compiled step"}
    assert ("supernet step, compiled", "full fine-tuning step, compiled") in timed
    assert ("supernet step, compiled", "supernet step, eager (today's)") in timed
    assert ("retrain step, compiled", "full fine-tuning step, compiled") in timed
    assert ("supernet peak memory, compiled", "supernet peak memory, eager") in timed
    # the count's rules: an eager step's operators grow by the same number with every block
    one, two, three = (kernel_count(build(dataclass_replace(tiny, d), "bias-only", False), tiny.device)["aten_ops"]
                       for d in (1, 2, 3))
    assert two - one == three - two > 0


def dataclass_replace(s, depth):
    import dataclasses
    return dataclasses.replace(s, kwargs={**s.kwargs, "depth": depth})


def test_kernel_count_leaves_out_views_and_allocations(tiny):
    from bench.compiled import Step, kernel_count

    x = torch.randn(4, 4)
    counts = kernel_count(Step(lambda: (x.view(16).view(4, 4).t() @ x).relu_(), None, None), tiny.device)
    assert counts["aten_ops"] == 2  # mm and relu_'s clamp_min_: no view, transpose or resolve_conj
    counts = kernel_count(Step(lambda: x.t().reshape(16), None, None), tiny.device)
    assert counts["aten_ops"] == 1  # the copy that reshaping a transposed tensor makes (not its allocation)
