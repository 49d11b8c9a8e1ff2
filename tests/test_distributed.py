"""Devices and ranks: torchrun's device choice (simulated CUDA host), shared subnets with per-rank
noise, rank 0 first without a collective timeout, per-rank generator states."""
import os
import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.layers import drop_path

from engine import distributed
from engine.run import rng_state, seed_everything, seed_noise, set_rng_state
from glora import SearchSpace, inject_glora, sample_subnet
from glora.errors import UserError
from conftest import tiny_vit


@pytest.fixture
def cuda_host(monkeypatch):
    """A torchrun rank on a host whose CUDA has `gpus` devices; records the backend it joins."""
    joined = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: joined.append(backend))

    def launch(gpus, local_rank, world=2):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(local_rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        return joined

    return launch


def test_torchrun_with_device_cpu_uses_gloo_on_a_cuda_host(cuda_host):
    joined = cuda_host(gpus=1, local_rank=1)
    assert distributed.init("cpu") == torch.device("cpu")
    assert joined == ["gloo"]


def test_torchrun_with_cuda_takes_gpu_local_rank_over_nccl(cuda_host):
    joined = cuda_host(gpus=2, local_rank=1)
    assert distributed.init("auto") == torch.device("cuda", 1)
    assert distributed.init("cuda") == torch.device("cuda", 1)
    assert joined == ["nccl", "nccl"]


def test_more_ranks_than_gpus_is_one_clear_error(cuda_host):
    joined = cuda_host(gpus=1, local_rank=1)
    with pytest.raises(UserError, match="--nproc_per_node 1, or --set device=cpu"):
        distributed.init("auto")
    with pytest.raises(UserError, match="names one GPU"):
        distributed.init("cuda:0")
    assert joined == []


def test_device_names_are_checked():
    for bad in ("foo", "mps", "cuda:x"):
        with pytest.raises(UserError, match="device="):
            distributed.resolve_device(bad)
    assert distributed.init("cpu") == torch.device("cpu")  # one process: no group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> torch.device:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    return distributed.init("cpu")


def _noise_worker(rank, port, out):
    device = _join(rank, port)
    seed_everything(3)
    sampler = random.Random(3)  # as train.py: the subnets' own generator, the same seed on every rank
    model = tiny_vit(drop_path_rate=0.5)
    inject_glora(model, SearchSpace((4,)), rng=sampler)
    seed_noise(3)
    subnets = [sample_subnet(model, sampler) for _ in range(3)]
    masks = [drop_path(torch.ones(32, 1, 1), 0.5, True).flatten() for _ in range(3)]
    state = rng_state(device)
    after = drop_path(torch.ones(32, 1, 1), 0.5, True).flatten()
    set_rng_state(state, device)
    replay = drop_path(torch.ones(32, 1, 1), 0.5, True).flatten()
    gathered = distributed.all_gather({"subnets": subnets, "masks": masks, "replayed": torch.equal(after, replay)})
    if rank == 0:
        torch.save(gathered, out)
    distributed.close()


def test_ranks_draw_the_same_subnets_but_their_own_drop_path_masks(tmp_path):
    out = tmp_path / "gathered.pt"
    mp.spawn(_noise_worker, args=(_free_port(), str(out)), nprocs=2)
    r0, r1 = torch.load(out, weights_only=False)
    assert r0["subnets"] == r1["subnets"]
    assert all(not torch.equal(a, b) for a, b in zip(r0["masks"], r1["masks"]))
    assert r0["replayed"] and r1["replayed"]


def _rank0_first_worker(rank, port, folder, fail):
    _join(rank, port)
    marker = os.path.join(folder, "built")

    def work():
        if rank == 0:
            if fail:
                raise UserError("bad image")
            open(marker, "w").close()
        return os.path.exists(marker)

    try:
        result = distributed.rank0_first(work)
    except (UserError, distributed.PeerFailed) as e:
        result = type(e).__name__
    open(os.path.join(folder, f"rank{rank}"), "w").write(str(result))
    distributed.barrier()  # rank 0 hosts the store here (torchrun's agent does in real runs)
    distributed.close()


@pytest.mark.parametrize("fail", [False, True])
def test_rank0_first_runs_rank0_before_the_others_and_passes_on_its_failure(tmp_path, fail):
    mp.spawn(_rank0_first_worker, args=(_free_port(), str(tmp_path), fail), nprocs=2)
    got = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    assert got == (["UserError", "PeerFailed"] if fail else ["True", "True"])
