"""The other benchmarks and protocols: NOAH's few-shot and domain-generalization layouts, VTAB-1k
prepared from an archive and verified task by task, restricted-class evaluation, and the config
rules of `protocol` and `retrain.epochs: 0`."""
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from data.__main__ import main as data_main
from data.checks import check_task_lists, read_task
from data.layout import Layout
from data.prepare import prepare_vtab, verify_vtab
from data.registry import DG_TASKS, FEWSHOT_TASKS, TASKS, published
from engine.config import load_config, validate_config
from engine.experiment import benchmark_labels
from engine.method import check
from glora.accuracy import count_correct
from glora.errors import UserError
from noah import build_dg, build_fewshot
from test_prepare import write_tar

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- registries


def test_registries_hold_the_published_figures_and_sizes():
    assert sorted(FEWSHOT_TASKS) == sorted(["food101", "standford-cars", "oxford-flowers102", "fgvc-aircraft", "oxford-pets"])
    assert {t: published("fewshot", t, 16).test_acc for t in FEWSHOT_TASKS} == {
        "food101": 75.9, "standford-cars": 74.3, "oxford-flowers102": 99.6, "fgvc-aircraft": 54.1, "oxford-pets": 91.4}
    assert all(t.test_size for t in TASKS.values()) and TASKS["dsprites_loc"].test_size == 73_728
    assert [n for n, t in DG_TASKS.items() if t.restrict] == ["imagenet-adversarial", "imagenet-rendition",
                                                              "imagenet-a", "imagenet-r"]


# ---------------------------------------------------------------- few-shot and DG layouts


def test_fewshot_layout_reads_the_k_shot_list_of_the_seed(tmp_path):
    build_fewshot(tmp_path, shots=(1, 2), seeds=(0, 1))
    lists = check_task_lists(tmp_path, "oxford-pets", layout=Layout("fewshot", 2, 1))
    assert lists.num_classes == 37  # the registry's, though this copy holds 4 classes (a note, not an error)
    assert lists.files["train800"].name == "train_meta.list.num_shot_2.seed_1" == lists.files["train800val200"].name
    assert lists.files["val200"].name == "val_meta.list" and lists.files["test"].name == "test_meta.list"
    assert len(lists.entries["train800"]) == 8 and all("/images/" in str(e.path) for e in lists.entries["test"])
    other = check_task_lists(tmp_path, "oxford-pets", layout=Layout("fewshot", 2, 0))
    assert other.fingerprint() != lists.fingerprint()  # another list: another data identity
    with pytest.raises(UserError, match=r"train_meta.list.num_shot_4.seed_0 does not exist"):
        check_task_lists(tmp_path, "oxford-pets", layout=Layout("fewshot", 4, 0))
    with pytest.raises(UserError, match="set data.shots"):
        Layout("fewshot")


def test_fewshot_checker_reports_a_missing_image_and_a_bad_label(tmp_path):
    folder = build_fewshot(tmp_path, "mine", shots=(1,), seeds=(0,))
    (folder / "images" / "test" / "c001" / "img 0.png").unlink()
    with (folder / "annotations" / "val_meta.list").open("a") as f:
        f.write("val/c000/img 0.png -1\n")
    args = ["--root", str(tmp_path), "--task", "mine", "--benchmark", "fewshot", "--shots", "1", "--img-size", "8"]
    assert data_main(args) == 2


def test_dg_layout_selects_on_the_held_out_list_and_tests_on_imagenet_val(tmp_path):
    build_dg(tmp_path, shots=2)
    lists = read_task(tmp_path, "imagenet", layout=Layout("dg", 2, 0))
    assert not lists.problems and lists.num_classes == 1000
    assert lists.files["val200"].name == "unofficial_val_list_4_shot16seed0"
    assert lists.files["test"].name == "val_meta.list"
    assert "/train/" in str(lists.entries["val200"][0].path) and "/val/" in str(lists.entries["test"][0].path)
    assert not lists.notes[1:]  # only the note about the 996 classes this copy lacks

    build_dg(tmp_path / "plain", shots=2, held_out=False)
    lists = read_task(tmp_path / "plain", "imagenet", layout=Layout("dg", 2, 0))
    assert any("test-selected" in n for n in lists.notes)  # selection on the test list is said, not hidden
    for root, held_out in ((tmp_path, True), (tmp_path / "plain", False)):  # and results.json says it too
        cfg = load_config(None, [f"data.root={root}", "data.task=imagenet", "data.benchmark=dg", "data.shots=2"])
        assert benchmark_labels(cfg)["selection_is_test"] is not held_out


def test_restricted_evaluation_scores_the_classes_present_alone():
    """ImageNet-A/R: 200 of 1,000 classes; a logit outside them must not win."""
    subset = torch.arange(0, 1000, 5)  # 200 classes
    labels = subset[torch.arange(8) * 7]

    class Fixed(nn.Module):
        def forward(self, x):
            logits = torch.zeros(len(x), 1000)
            logits[torch.arange(len(x)), labels] = 1.0  # the right class, among the 200
            logits[:, 1] = 5.0  # a class not in the set beats it over all 1,000
            return logits

    batches = [(torch.zeros(8, 3, 4, 4), labels)]
    assert count_correct(Fixed(), batches, torch.device("cpu"), amp=False) == (0, 8)
    assert count_correct(Fixed(), batches, torch.device("cpu"), amp=False, classes=subset) == (8, 8)


# ---------------------------------------------------------------- VTAB-1k: prepare and verify


def _png(size=8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _vtab_members(tasks, registry=TASKS, test_lines=None):
    """name -> bytes of a VTAB-1k copy in the NOAH layout under `vtab-1k/`, each image a shared tiny PNG.

    Lists keep the published line counts (test: the registry's); only the first images are written,
    the rest of a list points at them again (with the same label), so the copy stays tiny."""
    png, members = _png(), {}
    for name in tasks:
        k = registry[name].num_classes
        images = [f"images/{i}.png" for i in range(max(k, 4))]
        for rel in images:
            members[f"vtab-1k/{name}/{rel}"] = png
        train = [(images[i % len(images)], i % k) for i in range(800)]
        val = [(images[i % len(images)], (i + 3) % k) for i in range(200)]
        # train800 and val200 must not share an image: val200 uses its own names for the same PNG
        val = [(f"val/{i}.png", label) for i, (_, label) in enumerate(val)]
        for i in range(200):
            members[f"vtab-1k/{name}/val/{i}.png"] = png
        n_test = test_lines if test_lines is not None else registry[name].test_size
        for rel in images:  # test images apart from training ones (the same PNG under test/)
            members[f"vtab-1k/{name}/test/{rel}"] = png
        test = [(f"test/{images[i % len(images)]}", i % k) for i in range(n_test)]
        for split, items in (("train800", train), ("val200", val), ("train800val200", train + val), ("test", test)):
            members[f"vtab-1k/{name}/{split}.txt"] = "".join(f"{r} {lab}\n" for r, lab in items).encode()
    return members


def test_prepare_vtab_from_a_tar_and_verify_every_task(tmp_path, monkeypatch):
    # Keep it small: the test lists of dtd and kitti hold 1,880 and 711 lines.
    subset = {t: TASKS[t] for t in ("dtd", "kitti")}
    monkeypatch.setattr("data.prepare.TASKS", subset)
    archive = write_tar(tmp_path / "vtab.tar.gz", _vtab_members(subset), mode="w:gz")
    root = tmp_path / "root"
    assert sorted(prepare_vtab(archive, root, log=lambda *_: None)) == ["dtd", "kitti"]
    rows = list(verify_vtab(root, img_size=8))
    assert [(r.task, r.status) for r in rows] == [("dtd", "ok"), ("kitti", "ok")], [r.problems for r in rows]
    # the command line: unpack again (nothing new to write) and verify: a complete copy passes
    assert data_main(["prepare-vtab", str(archive), "--root", str(root), "--img-size", "8"]) == 0
    assert data_main(["--root", str(root), "--all", "--img-size", "8"]) == 0


def test_prepare_vtab_refuses_an_archive_member_that_leaves_the_root(tmp_path):
    members = {"vtab-1k/dtd/train800.txt": b"a.png 0\n", "vtab-1k/dtd/../../evil.txt": b"x"}
    archive = write_tar(tmp_path / "evil.tar", members)
    with pytest.raises(UserError, match="outside"):
        prepare_vtab(archive, tmp_path / "root", log=lambda *_: None)
    assert not (tmp_path / "evil.txt").exists()
    link = tarfile.TarInfo("vtab-1k/dtd/images/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = write_tar(tmp_path / "link.tar", {"vtab-1k/dtd/train800.txt": b"a.png 0\n"}, extra=[link])
    with pytest.raises(UserError, match="is a symbolic link; a VTAB-1k archive holds files and folders only"):
        prepare_vtab(archive, tmp_path / "root2", log=lambda *_: None)
    assert not (tmp_path / "root2").exists()  # nothing written: not even the root


def test_all_reports_a_broken_copy_task_by_task_with_exit_2(tmp_path, capsys, monkeypatch):
    """A missing task, a truncated test list, a line pointing at a missing image, a label out of range."""
    members = _vtab_members(["dtd", "kitti", "eurosat", "resisc45"], test_lines=0)
    root = tmp_path / "vtab"
    with zipfile.ZipFile(tmp_path / "vtab.zip", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    prepare_vtab(tmp_path / "vtab.zip", root, log=lambda *_: None)
    # fill each test list to its published size, cheaply, then break one thing per task
    for task in ("dtd", "kitti", "eurosat", "resisc45"):
        k, n = TASKS[task].num_classes, TASKS[task].test_size
        (root / task / "test.txt").write_text("".join(f"test/images/{i % max(k, 4)}.png {i % k}\n" for i in range(n)))
    lines = (root / "dtd" / "test.txt").read_text().splitlines()
    (root / "dtd" / "test.txt").write_text("\n".join(lines[:-10]) + "\n")  # truncated
    (root / "kitti" / "images" / "2.png").unlink()  # listed, missing
    text = (root / "eurosat" / "train800.txt").read_text().replace(" 1\n", " 10\n", 1)  # 10 classes: 10 is out
    (root / "eurosat" / "train800.txt").write_text(text)
    union = (root / "eurosat" / "train800val200.txt").read_text().replace(" 1\n", " 10\n", 1)
    (root / "eurosat" / "train800val200.txt").write_text(union)
    monkeypatch.setattr("data.prepare.TASKS", {t: TASKS[t] for t in ("dtd", "kitti", "eurosat", "resisc45", "cifar")})
    assert data_main(["--root", str(root), "--all", "--img-size", "8"]) == 2
    out = capsys.readouterr()
    rows = {line.split("|")[1].strip(): line for line in out.out.splitlines() if line.startswith("| ") and "---" not in line}
    assert "wrong" in rows["dtd"] and "1870 lines where the published dtd test list has 1880" in rows["dtd"]
    assert "wrong" in rows["kitti"] and "2.png" in rows["kitti"]
    assert "wrong" in rows["eurosat"] and "label 10 is outside [0, 10)" in rows["eurosat"]
    assert "| resisc45 | specialized | ok |" in rows["resisc45"]
    assert "missing" in rows["cifar"]
    assert "1 of 5 tasks ok" in out.out
    assert "error: dtd:" in out.err and "error: kitti:" in out.err


# ---------------------------------------------------------------- config rules


def test_protocol_and_zero_epoch_rules():
    cfg = load_config(None, ["data.task=dtd", "protocol=release-2023"])
    validate_config(cfg)
    with pytest.raises(UserError, match="release-2023 has no retrain"):
        check(cfg)
    check(load_config([str(ROOT / "configs" / "protocols" / "release-2023.yaml")], ["data.task=dtd"]))
    cfg = load_config(None, ["data.task=dtd", "retrain.epochs=0"])
    validate_config(cfg)
    check(cfg)
    with pytest.raises(UserError, match="retrain.init=scratch"):
        check(load_config(None, ["data.task=dtd", "retrain.epochs=0", "retrain.init=scratch"]))
    with pytest.raises(UserError, match="train.epochs=0"):
        validate_config(load_config(None, ["data.task=dtd", "train.epochs=0"]))
    with pytest.raises(UserError, match="protocol='paper'"):
        validate_config(load_config(None, ["data.task=dtd", "protocol=paper"]))


def test_launch_shots_axis_and_fewshot_group(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "launch.py"), "--name", "fs", "--output", str(tmp_path / "g"),
                        "--experiment", str(ROOT / "configs" / "fewshot.yaml"), "--tasks", "fewshot",
                        "--shots", "1", "16", "--seeds", "0", "2", "--dry-run"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "20 cells" in r.stdout
    assert "standford-cars/shot16/seed2: next" in r.stdout and "--set data.shots=16" in r.stdout
