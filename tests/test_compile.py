"""train.compile: one graph serves every subnet (no recompilation, no graph break, by torch's own
counters), compiled == eager (inductor, float32), under torchrun, and a compiled run resumes exactly.

Counting tests trace with the aot_eager backend (no code generation); one test compiles with inductor."""
import json
import random

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from conftest import ROOT, tiny_vit
from engine.compile import PAYS, Compiler, wanted
from engine.loops import train_step
from engine.trainer import adamw
from glora import SearchSpace, inject_glora, mark_trainable, sample_subnet, set_subnet
from glora.inject import compact_subnet, make_static, set_sampler, used_flags, write_subnet
from test_stages import Killed, cli, demo_root, kill_after_first_checkpoint, run, write_config  # noqa: F401

CPU = torch.device("cpu")


def supernet(seed=0, depth=1, drop_path_rate=0.0):
    model = tiny_vit(dtype=torch.float32, depth=depth, drop_path_rate=drop_path_rate)
    inject_glora(model, SearchSpace((2, 4)), rng=random.Random(seed))
    torch.manual_seed(seed)
    for layer in model.modules():  # storage away from its zero init, so that every part computes
        if hasattr(layer, "adapter_parameters"):
            for p in layer.adapter_parameters().values():
                torch.nn.init.normal_(p, std=0.02)
    mark_trainable(model)
    return model.train()


def graphs():
    """(graphs compiled, graph breaks) so far in this process, by dynamo's counters."""
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def test_auto_compiles_where_the_bench_says_it_pays():
    assert wanted("auto", torch.device("cuda")) is PAYS["cuda"] is True
    assert wanted("auto", CPU) is PAYS["cpu"] is False
    assert wanted(True, CPU) and not wanted(False, torch.device("cuda"))


def test_one_graph_serves_every_subnet_and_learning_rate(monkeypatch):
    """100 random subnets, a learning rate that changes, the last smaller batch, then 100 subnets
    evaluated: after the first call of each shape nothing compiles again and nothing breaks."""
    monkeypatch.setenv("GLORA_COMPILE_BACKEND", "aot_eager")
    compiler = Compiler(True, CPU)  # resets dynamo: this process compiles afresh
    start = graphs()
    model = supernet()
    make_static(model)
    optimizer = adamw(model, 1e-3, 1e-4, CPU, flags=used_flags(model))
    optimizer.update = torch.compile(optimizer.update, backend="aot_eager", dynamic=False)  # as on CUDA
    net = compiler.module(model)
    evaluate = compiler.evaluation(net)
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 5, (6,), generator=g)
    for step in range(100):
        write_subnet(model, sample_subnet(model, rng))
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (1 + step % 7)
        batch = slice(0, 4) if step == 50 else slice(None)  # an epoch's last, smaller batch
        with compiler.tracking("train", x[batch]):
            train_step(net, x[batch], y[batch], optimizer, CPU)
        if step == 0:  # the step's forward and backward, and the update
            assert graphs() == (start[0] + 2, start[1])
    assert graphs() == (start[0] + 3, start[1])  # the smaller batch's graph, nothing else
    with torch.inference_mode():
        for _ in range(100):
            set_subnet(model, sample_subnet(model, rng))
            evaluate.eval()(x)
    assert graphs() == (start[0] + 4, start[1])
    report = compiler.report()
    assert (report["graphs"], report["recompilations"], report["graph_breaks"]) == (4, 0, 0)


def test_static_draws_the_subnets_eager_layers_draw():
    """The trainer draws a compiled supernet's subnet before the step, in module order: the configs
    that eager layers draw in their forward, from the same generator."""
    eager, static = supernet(seed=3, depth=2), supernet(seed=3, depth=2)
    set_sampler(eager, random.Random(7))  # eager layers draw from the generator the trainer draws from
    rng = random.Random(7)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(5):
        eager(x)
        drawn = {n: l.sampled for n, l in eager.named_modules() if hasattr(l, "sampled")}
        assert sample_subnet(static, rng) == drawn


@pytest.mark.slow
def test_compiled_equals_eager_with_inductor():
    """20 steps of float32 on the CPU, drop-path on: today's eager carving supernet (torch's AdamW,
    subnets drawn in the forward) and the compiled static one (inductor, MaskedAdamW) see the same
    subnets, batches and drop-path masks, and agree in every loss and in the trained function; so do
    the retrain's model (one compacted subnet, computed by structure) eager and compiled."""
    compiler = Compiler(True, CPU)
    eager, static = supernet(seed=11, drop_path_rate=0.1), supernet(seed=11, drop_path_rate=0.1)
    sampler = random.Random(11)  # the generator eager's layers draw from, as the trainer's
    make_static(static)
    net = compiler.module(static)
    opt_eager = adamw(eager, 1e-3, 1e-4, CPU)
    opt_static = adamw(static, 1e-3, 1e-4, CPU, flags=used_flags(static))
    g = torch.Generator().manual_seed(0)
    for step in range(20):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 5, (8,), generator=g)
        torch.manual_seed(step)
        loss_eager = train_step(eager, x, y, opt_eager, CPU)
        write_subnet(static, sample_subnet(static, sampler))
        torch.manual_seed(step)
        with compiler.tracking("train", x):
            loss_static = train_step(net, x, y, opt_static, CPU)
        torch.testing.assert_close(loss_static, loss_eager, rtol=1e-4, atol=1e-5)
    report = compiler.report()
    assert (report["backend"], report["graphs"], report["recompilations"], report["graph_breaks"]) == \
        ("inductor", 1, 0, 0)
    subnet = sample_subnet(eager, random.Random(5))
    set_subnet(eager, subnet)
    set_subnet(static, subnet)
    with torch.no_grad():
        x = torch.randn(8, 3, 32, 32, generator=g)
        torch.testing.assert_close(static.eval()(x), eager.eval()(x), rtol=1e-3, atol=1e-4)

    # The retrain's model: one fixed, compacted subnet, computed by structure (its fused autograd
    # function traced into the graph), against the same model eager.
    compiler = Compiler(True, CPU)
    models = [supernet(seed=12, drop_path_rate=0.1) for _ in range(2)]
    for model in models:
        set_subnet(model, subnet)
        compact_subnet(model)
        mark_trainable(model)
    opts = [adamw(model, 1e-3, 1e-4, CPU) for model in models]
    nets = [models[0], compiler.module(models[1])]
    for step in range(5):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 5, (8,), generator=g)
        losses = []
        for net, opt in zip(nets, opts):
            torch.manual_seed(step)
            losses.append(train_step(net, x, y, opt, CPU))
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)


def compiled_config(tmp_path, demo_root, **train):
    """The stages' tiny experiment with batches of 100 (8 full batches an epoch: one training graph)."""
    config = write_config(tmp_path / "exp.yaml", demo_root, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["batch_size"] = 100
    cfg["train"].update(train)
    config.write_text(yaml.safe_dump(cfg))
    return config


@pytest.mark.slow
def test_compiled_run_killed_and_resumed_ends_where_an_uninterrupted_one_ends(tmp_path, demo_root, monkeypatch):
    monkeypatch.setenv("GLORA_COMPILE_BACKEND", "aot_eager")
    config = compiled_config(tmp_path, demo_root, epochs=4, eval_every=2, eval_subnets=1, ckpt_every=2)
    compiled = ["--set", "train.compile=true", "--set", "model.kwargs.drop_path_rate=0.2"]
    run("train", config, *compiled)
    summary = json.loads((tmp_path / "run" / "supernet" / "summary.json").read_text())
    report = summary["compile"]
    assert report["parts"] == ["training step (forward and backward)", "evaluation forward"]
    assert (report["graphs"], report["recompilations"], report["graph_breaks"]) == (2, 0, 0)
    assert "compiled training step" in (tmp_path / "run" / "supernet" / "log.txt").read_text()

    cut = ["--set", f"output={tmp_path / 'cut'}"]
    kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(Killed):
        run("train", config, *compiled, *cut)
    monkeypatch.undo()
    monkeypatch.setenv("GLORA_COMPILE_BACKEND", "aot_eager")
    run("train", config, *compiled, *cut, "--resume")
    full = load_file(tmp_path / "run" / "supernet" / "supernet.safetensors")
    resumed = load_file(tmp_path / "cut" / "supernet" / "supernet.safetensors")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    cut_summary = json.loads((tmp_path / "cut" / "supernet" / "summary.json").read_text())
    assert cut_summary["val_acc1_reference_subnets"] == summary["val_acc1_reference_subnets"]

    run("retrain", config, *compiled, "--set", "retrain.subnet=random")
    results = json.loads((tmp_path / "run" / "retrain" / "results.json").read_text())
    assert results["compile"]["parts"] == ["training step (forward and backward)"]
    assert (results["compile"]["graphs"], results["compile"]["recompilations"]) == (1, 0)
    assert results["test_acc"] == results["test_acc_merged"]


@pytest.mark.slow
def test_torchrun_compiled_equals_eager(tmp_path, demo_root):
    """2 gloo processes, each compiling its static step (DDP inside the graph), against one eager process."""
    config = compiled_config(tmp_path, demo_root, epochs=2, eval_subnets=0)
    args = [config, "--set", "model.kwargs.drop_path_rate=0.0"]
    env = {"GLORA_COMPILE_BACKEND": "aot_eager"}
    r = cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", ROOT / "train.py", *args,
            "--set", "train.compile=true", "--set", f"output={tmp_path / 'ddp'}", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "ddp" / "supernet" / "summary.json").read_text())["compile"]
    assert report["compiled"] and (report["recompilations"], report["graph_breaks"]) == (0, 0)
    run("train", *args, "--set", f"output={tmp_path / 'one'}")
    ddp = load_file(tmp_path / "ddp" / "supernet" / "supernet.safetensors")
    one = load_file(tmp_path / "one" / "supernet" / "supernet.safetensors")
    assert ddp.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-3, atol=1e-4)
