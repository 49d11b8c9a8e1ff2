"""The machinery behind run identity, without running a stage: run records and lineage, the stage
folder (lock, retire, stale files), checksummed checkpoints, atomic writes and stop signals."""
import errno
import fcntl
import os
import signal

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from engine import identity
from engine.checkpoint import find_checkpoint, latest_state, load_checkpoint, save_checkpoint
from engine.config import load_config
from engine.folder import StageFolder, os_error_message
from engine.stop import StopSignals
from glora import SearchSpace, inject_glora, mark_trainable
from glora.errors import UserError
from glora.family import get_family
from glora.io import save_json
from glora.merge import load_adapters, save_adapters

DATA = {"num_classes": 10, "fingerprint": "ab" * 32}


def cfg(*overrides):
    return load_config(None, ["data.task=digits", *overrides])


def test_resume_differences_name_the_changed_keys_of_the_stage_only():
    record = {"config": cfg(), "data": DATA}
    uses = identity.USES
    assert identity.resume_differences(record, cfg(), DATA, uses["supernet"]) == []
    changed = cfg("train.epochs=10", "train.lr=0.002", "retrain.epochs=7", "search.budget=[0,0.5]")
    assert identity.resume_differences(record, changed, DATA, uses["supernet"]) == [
        "train.epochs (500 → 10)", "train.lr (0.0001 → 0.002)"]
    assert identity.resume_differences(record, changed, DATA, uses["search"]) == ["search.budget ([0.0, 1.0] → [0, 0.5])"]
    # what cannot change a result may change (each is named in a note); the data itself may not
    free = cfg("data.root=/elsewhere", "data.cache=false", "data.cache_dir=/tmp/c", "train.eval_every=1", "device=cpu",
               "data.eval_batch_size=5", "data.resident_mb=0", "search.early_stop=false", "train.ckpt_every=3")
    assert identity.resume_differences(record, free, DATA, uses["supernet"]) == []
    assert identity.resume_differences(record, free, DATA, uses["search"]) == []
    assert identity.resume_changes(record, free, "search") == [
        "data.cache (True → False)", "data.cache_dir (None → '/tmp/c')", "data.eval_batch_size (256 → 5)",
        "data.resident_mb (512 → 0)", "data.root ('datasets/vtab-1k' → '/elsewhere')", "device ('auto' → 'cpu')",
        "search.early_stop (True → False)"]  # not train.*: the search does not use them
    # a preset switched: the retrain names the method and the supernet it reads; the supernet stage neither
    preset = cfg("method=lora", "supernet=/x/supernet.safetensors")
    assert identity.resume_differences(record, preset, DATA, uses["retrain"]) == [
        "method ('glora' → 'lora')", "supernet (None → '/x/supernet.safetensors')"]
    assert identity.resume_differences(record, preset, DATA, uses["supernet"]) == []
    other = identity.resume_differences(record, cfg("model.kwargs.depth=2"), {**DATA, "fingerprint": "cd" * 32},
                                        uses["search"])
    assert other == ["data: the task's list files (digest) (abababababab… → cdcdcdcdcdcd…)",
                     "model.kwargs.depth (absent → 2)"]
    # each stage compares what it uses: the search neither data.batch_size nor data.test_sets
    assert identity.resume_differences(record, cfg("data.batch_size=8", "data.test_sets=[x]"), DATA, uses["search"]) == []
    assert "data.test_sets ([] → ['x'])" in identity.resume_differences(record, cfg("data.test_sets=[x]"), DATA,
                                                                         uses["retrain"])


def test_lineage_refuses_another_task_backbone_space_or_data(tmp_path):
    made = identity.lineage(cfg(), DATA, {"supernet/supernet.safetensors": "0" * 64}, "run-1", "search")
    path = tmp_path / "best_subnet.yaml"
    identity.check_lineage(path, made, cfg("train.epochs=3", "data.root=/x"), DATA)  # neither matters
    for override, named in (("data.task=svhn", "data.task ('digits' → 'svhn')"),
                            ("model.name=vit_small_patch16_224", "model.name"),
                            ("model.kwargs.qkv_bias=false", "model.kwargs.qkv_bias (absent → False)"),
                            ("glora.ranks=[8]", "glora.ranks ([4] → [8])"), ("data.img_size=32", "data.img_size"),
                            ("data.mean=[0.5,0.5,0.5]", "data.mean")):
        with pytest.raises(UserError, match="was made for another experiment") as info:
            identity.check_lineage(path, made, cfg(override), DATA)
        assert named in str(info.value) and "run its stage (search) again" in str(info.value)
    with pytest.raises(UserError, match=r"data: class count \(10 → 12\)"):
        identity.check_lineage(path, made, cfg(), {**DATA, "num_classes": 12})
    with pytest.raises(UserError, match="says nothing of how it was made"):
        identity.check_lineage(path, None, cfg(), DATA)
    # what a transfer (a subnet file from elsewhere) is told: the differences, or None where it says nothing
    assert identity.lineage_differences(made, cfg("data.task=svhn"), DATA) == (["data.task ('digits' → 'svhn')"], [])
    assert identity.lineage_differences(None, cfg(), DATA) is None


def test_a_supernet_serves_a_narrower_space_and_refuses_a_wider_naming_what_never_trained(tmp_path):
    path = tmp_path / "supernet.safetensors"
    made = identity.lineage(cfg("glora.ranks=[4,8]", "glora.space={A: [lora_8, vector, none], C: [none]}"), DATA,
                            {}, "run-1", "supernet")
    narrower = cfg("glora.ranks=[4,8]", "glora.space={A: [vector, none], C: [none], E: [scalar]}")
    assert identity.check_lineage(path, made, narrower, DATA) == [
        "glora.space is narrower here (trained there, not used here: A: lora_8; E: vector, none)"]
    assert identity.check_lineage(path, made, cfg("glora.ranks=[4,8]", "glora.space={A: [lora_8, vector, none], "
                                                  "C: [none]}"), DATA) == []  # the same space: nothing to say
    wider = cfg("glora.ranks=[4,8]", "glora.space={A: [lora_4, vector], C: [vector, none]}")
    with pytest.raises(UserError, match=r"made for another experiment: glora.space \(choices that never trained "
                                        r"there: A: lora_4; C: vector\) \(there → here\)"):
        identity.check_lineage(path, made, wider, DATA)
    with pytest.raises(UserError, match=r"glora.ranks \(\[4, 8\] → \[4\]\)"):  # other storage: never served
        identity.check_lineage(path, made, cfg("glora.space={A: [vector, none], C: [none]}"), DATA)
    # a file of a version before glora.space was recorded holds the paper's whole space
    old = {**made, "experiment": {k: v for k, v in made["experiment"].items() if not k.startswith("glora.space")}}
    assert identity.check_lineage(path, old, narrower, DATA) == [
        "glora.space is narrower here (trained there, not used here: A: lora_4, lora_8, scalar; C: lora_4, lora_8, "
        "vector; E: vector, none)"]


def test_the_lock_refuses_a_second_holder_until_released(tmp_path):
    first, second = StageFolder(tmp_path / "run" / "supernet"), StageFolder(tmp_path / "run" / "supernet")
    first.lock()
    with pytest.raises(UserError, match=rf"supernet is in use by another run \(pid {os.getpid()} on .*\): wait"):
        second.lock()
    first.unlock()
    second.lock()
    with open(tmp_path / "run" / "supernet" / ".lock") as f:  # another process's view: held
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    second.unlock()


def test_a_file_in_the_way_or_a_read_only_place_is_refused_before_work(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(UserError, match=r"cannot make the output folder .*out/supernet: .*out is a file"):
        StageFolder(tmp_path / "out" / "supernet").check()
    StageFolder(tmp_path / "fresh" / "deep" / "supernet").check()  # creatable
    assert not (tmp_path / "fresh").exists()
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(UserError, match="read-only"):
            StageFolder(tmp_path / "ro" / "supernet").check()


def test_retire_moves_a_run_into_previous_and_clean_removes_stale_files(tmp_path):
    folder = StageFolder(tmp_path / "search")
    folder.lock()
    for name in ("run.yaml", "best_subnet.yaml", ".best_subnet.yaml.x1.tmp", "tb/events", "checkpoint/state.pt",
                 "checkpoint.new/state.pt"):
        (folder.path / name).parent.mkdir(parents=True, exist_ok=True)
        (folder.path / name).write_text(name)
    removed = folder.clean()
    assert sorted(p.name for p in removed) == [".best_subnet.yaml.x1.tmp", "checkpoint.new"]
    retired = folder.retire("run-1")
    assert retired == folder.path / "previous" / "run-1"
    assert sorted(p.name for p in folder.path.iterdir()) == [".lock", "previous"]
    assert (retired / "checkpoint" / "state.pt").read_text() == "checkpoint/state.pt"
    (folder.path / "run.yaml").write_text("again")
    assert folder.retire("run-1") == folder.path / "previous" / "run-1.2"
    assert folder.retire("run-2") is None  # nothing left to retire
    # a checkpoint caught between its two renames comes back under its name
    (folder.path / "checkpoint.old").mkdir()
    folder.clean()
    assert (folder.path / "checkpoint").is_dir() and not (folder.path / "checkpoint.old").exists()
    folder.unlock()


GLORA = get_family("glora")()  # what saves and loads the checkpoints' adapters


def tiny_model():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    inject_glora(model, SearchSpace((2,)), targets=["0"])
    mark_trainable(model)
    return model


def test_checkpoints_carry_checksums_checked_on_resume(tmp_path):
    model, folder = tiny_model(), tmp_path / "checkpoint"
    save_checkpoint(folder, "run-1", {"epoch": 3}, model, GLORA)
    assert sorted(p.name for p in folder.iterdir()) == ["adapters.safetensors", "manifest.json", "state.pt"]
    assert latest_state(folder, "run-1", tiny_model(), GLORA) == {"epoch": 3}
    assert latest_state(tmp_path / "none", "run-1") is None
    with pytest.raises(UserError, match="a checkpoint of run run-1, not of this run"):
        load_checkpoint(folder, "run-2")

    data = bytearray((folder / "adapters.safetensors").read_bytes())
    data[-3] ^= 0x10  # a flipped bit in a weight
    (folder / "adapters.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"damaged checkpoint \(adapters.safetensors is not the file that was written\)"):
        load_checkpoint(folder, "run-1", tiny_model(), GLORA)
    save_checkpoint(folder, "run-1", {"epoch": 4}, model, GLORA)
    (folder / "state.pt").unlink()
    with pytest.raises(UserError, match=r"damaged checkpoint \(state.pt is missing\); .*start afresh without --resume"):
        latest_state(folder, "run-1")
    (folder / "manifest.json").unlink()
    with pytest.raises(UserError, match="no readable manifest.json"):
        latest_state(folder, "run-1")
    # a kill between the swap's two renames leaves the previous checkpoint, complete, as name.old
    folder.rename(tmp_path / "checkpoint.old")
    save_json(tmp_path / "checkpoint.old" / "manifest.json", {"run": "run-1", "sha256": {}})
    assert find_checkpoint(folder) == tmp_path / "checkpoint.old"


def test_non_finite_adapters_are_neither_saved_nor_loaded(tmp_path):
    model = tiny_model()
    save_adapters(model, tmp_path / "good.safetensors")
    with torch.no_grad():
        model[0].Bd[1, 0] = float("nan")
    with pytest.raises(UserError, match=r"not written, 0.Bd holds non-finite values"):
        save_adapters(model, tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match=r"0.Bd holds non-finite values"):
        save_checkpoint(tmp_path / "checkpoint", "run-1", {}, model, GLORA)
    assert not (tmp_path / "bad.safetensors").exists() and not (tmp_path / "checkpoint").exists()

    with safe_open(str(tmp_path / "good.safetensors"), "pt") as f:
        meta = f.metadata()
    tensors = load_file(tmp_path / "good.safetensors")
    tensors["0.E"][0] = float("inf")
    save_file(tensors, tmp_path / "inf.safetensors", metadata=meta)
    with pytest.raises(UserError, match=r"0.E holds non-finite values \(the run that wrote it diverged\)"):
        load_adapters(tiny_model(), tmp_path / "inf.safetensors")


def test_a_failed_write_keeps_the_old_file_and_names_the_new(tmp_path, monkeypatch):
    path = save_json(tmp_path / "summary.json", {"old": True})
    real = os.replace

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError) as info:
        save_json(path, {"new": True})
    monkeypatch.setattr(os, "replace", real)
    assert info.value.filename == str(path) and path.read_text() == '{\n  "old": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left
    assert os_error_message(info.value) == (f"{path}: No space left on device; the disk (or your quota) is full: "
                                            "free space, or set output to another disk")
    assert "not writable" in os_error_message(OSError(errno.EROFS, "Read-only file system", "x"))


def test_a_signal_asks_to_stop_and_a_second_stops_at_once():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopSignals(torch.device("cpu")).install()
    try:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested() and stop.received == "SIGUSR1"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == "SIGUSR1"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is before
