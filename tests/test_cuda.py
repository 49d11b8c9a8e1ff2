"""What only a GPU can show: the fused layer under CUDA bf16 autocast, the stages on CUDA with exact
resume, CUDA generator states, bench memory on CUDA, torchrun on a one-GPU host, the compiled step with
CUDA graphs (equal to eager, exact resume).

Marked `cuda` and skipped where no GPU is visible; `bash scripts/gpu_check.sh` runs them."""
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bench.timing import peak_bytes
from engine.run import rng_state, set_rng_state
from test_layer import all_configs, make_layer
from test_stages import ROOT, Killed, cli, config, demo_root, kill_after_first_checkpoint, run  # noqa: F401

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
CUDA = torch.device("cuda")


def test_fused_layer_under_cuda_bf16_autocast_matches_dense():
    layer = make_layer((4,)).float().to(CUDA)
    for cfg in list(all_configs(layer.space, True))[::5]:
        layer.set_config(cfg)
        x = torch.randn(4, 50, layer.in_features, device=CUDA, requires_grad=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast, dense = layer(x), layer.forward_dense(x)
        assert fast.dtype == dense.dtype == torch.bfloat16
        torch.testing.assert_close(fast.float(), dense.float(), rtol=0.05, atol=0.1)
        layer.zero_grad()
        fast.float().sum().backward()
        assert all(p.grad is None or (p.grad.dtype == torch.float32 and p.grad.is_cuda) for p in layer.parameters())


def test_cuda_generator_state_round_trip_replays_dropout():
    torch.manual_seed(0)
    x = torch.ones(4096, device=CUDA)
    state = rng_state(CUDA)
    first = torch.nn.functional.dropout(x, 0.5)
    set_rng_state(state, CUDA)
    assert torch.equal(first, torch.nn.functional.dropout(x, 0.5))
    assert state["cuda"].device.type == "cpu"  # one state, of this process's GPU only


def test_bench_peak_memory_on_cuda_counts_only_the_measured_call():
    resident = torch.empty(64 * 2**20, dtype=torch.uint8, device=CUDA)  # another variant's memory
    peak = peak_bytes(lambda: torch.empty(16 * 2**20, dtype=torch.uint8, device=CUDA), CUDA)
    assert 16 * 2**20 <= peak < 17 * 2**20
    del resident


def test_three_stages_on_cuda_with_bf16_and_exact_resume(config, tmp_path, monkeypatch):  # noqa: F811 (a fixture)
    cuda = ["--set", "device=cuda", "--set", "train.amp=true"]
    run("train", config, *cuda)
    run("search", config, *cuda)
    run("retrain", config, *cuda)
    import json
    results = json.loads((tmp_path / "run" / "retrain" / "results.json").read_text())
    assert results["test_acc"] == results["test_acc_merged"]

    assert_killed_and_resumed_supernet_equals_uninterrupted(config, tmp_path, monkeypatch, cuda)


def assert_killed_and_resumed_supernet_equals_uninterrupted(config, tmp_path, monkeypatch, cuda):
    """A supernet killed after its first checkpoint and resumed (into <tmp>/cut) ends with the tensors
    of the uninterrupted run already in <tmp>/run."""
    kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(Killed):
        run("train", config, *cuda, "--set", f"output={tmp_path / 'cut'}")
    monkeypatch.undo()
    run("train", config, *cuda, "--set", f"output={tmp_path / 'cut'}", "--resume")
    full = load_file(tmp_path / "run" / "supernet" / "supernet.safetensors")
    cut = load_file(tmp_path / "cut" / "supernet" / "supernet.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)


@pytest.mark.skipif(torch.cuda.device_count() != 1, reason="needs a host with exactly one GPU")
def test_torchrun_two_ranks_on_one_gpu(config, tmp_path):  # noqa: F811 (a fixture)
    """With device=cuda, one clear line; with device=cpu, gloo over CPU processes, as on any host."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ROOT / "train.py"),
                str(config), "--set", "train.epochs=1"]
    r = subprocess.run(torchrun + ["--set", "device=cuda", "--set", f"output={tmp_path / 'gpu'}"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "--nproc_per_node 1, or --set device=cpu" in r.stderr
    r = cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", ROOT / "train.py", config,
            "--set", "train.epochs=1", "--set", "device=cpu", "--set", f"output={tmp_path / 'cpu'}")
    assert r.returncode == 0, r.stderr[-2000:]


def test_compiled_static_supernet_with_cuda_graphs_equals_eager():
    """train.compile on CUDA: CUDA graphs replay one graph while the subnet changes in its switch table
    (written in place) and MaskedAdamW's compiled update reads the flags; the losses are eager's,
    including the epoch's last, smaller batch, and nothing recompiles."""
    import random

    from engine.compile import Compiler
    from engine.loops import train_step
    from engine.trainer import adamw
    from glora import sample_subnet
    from glora.inject import make_static, used_flags, write_subnet
    from test_compile import supernet

    eager, static = supernet(seed=5).to(CUDA), supernet(seed=5).to(CUDA)
    sampler = random.Random(5)  # the generator eager's layers draw from
    compiler = Compiler(True, CUDA)
    assert compiler.report()["cuda_graphs"]
    make_static(static)
    opt_eager = adamw(eager, 1e-3, 1e-4, CUDA)
    opt_static = compiler.optimizer(adamw(static, 1e-3, 1e-4, CUDA, used_flags(static)))
    compiler.prepare(opt_static)
    net = compiler.module(static)
    g = torch.Generator(device=CUDA).manual_seed(0)
    for step in range(20):
        n = 5 if step in (9, 19) else 8  # each epoch's last batch is smaller
        x, y = torch.randn(n, 3, 32, 32, device=CUDA, generator=g), torch.randint(0, 5, (n,), device=CUDA, generator=g)
        eager_loss = train_step(eager, x, y, opt_eager, CUDA, amp=False)
        write_subnet(static, sample_subnet(static, sampler))
        with compiler.tracking("train", x):
            static_loss = train_step(net, x, y, opt_static, CUDA, amp=False)
        torch.testing.assert_close(static_loss, eager_loss, rtol=2e-3, atol=2e-4)
    report = compiler.report()
    assert report["recompilations"] == 0 and report["graph_breaks"] == 0


def test_compiled_run_on_cuda_resumes_exactly(config, tmp_path, monkeypatch):
    cuda = ["--set", "device=cuda", "--set", "train.compile=true"]
    run("train", config, *cuda)
    assert_killed_and_resumed_supernet_equals_uninterrupted(config, tmp_path, monkeypatch, cuda)
    import json
    report = json.loads((tmp_path / "run" / "supernet" / "summary.json").read_text())["compile"]
    assert report["cuda_graphs"] and report["recompilations"] == 0 and report["graph_breaks"] == 0
