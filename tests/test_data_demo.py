"""Tests of the bundled `digits` demo task: counts, stratification, determinism, idempotence, CLI."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from data import build_demo, load_split, read_list
from data.__main__ import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"))


def _labels(demo, split):
    return [e.label for e in read_list(demo / f"{split}.txt")]


def test_demo_counts_and_stratified_splits(demo):
    from sklearn.datasets import load_digits

    counts = {s: len(read_list(demo / f"{s}.txt")) for s in ("train800", "val200", "train800val200", "test")}
    assert counts == {"train800": 800, "val200": 200, "train800val200": 1000, "test": 797}
    everything = Counter(load_digits().target.tolist())
    for split, size in (("train800", 800), ("val200", 200), ("test", 797)):
        per_class = Counter(_labels(demo, split))
        assert sorted(per_class) == list(range(10))
        for c in range(10):  # stratified: each class in proportion, within one image
            assert abs(per_class[c] - everything[c] * size / 1797) <= 1


def test_demo_splits_partition_the_digits(demo):
    rel = {s: [e.rel for e in read_list(demo / f"{s}.txt")]
           for s in ("train800", "val200", "train800val200", "test")}
    assert rel["train800val200"] == rel["train800"] + rel["val200"]
    assert len(set(rel["train800val200"]) | set(rel["test"])) == 1797
    assert not set(rel["train800val200"]) & set(rel["test"])


def test_demo_images_are_the_digits(demo):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for e in read_list(demo / "test.txt")[:50]:
        i = int(e.rel.split("/")[1].split(".")[0])
        pixels = np.asarray(Image.open(e.path))
        assert pixels.shape == (8, 8) and e.label == digits.target[i]
        assert np.array_equal(pixels, np.round(digits.images[i] * 255 / 16).astype(np.uint8))


def test_demo_loads_with_derived_ten_classes(demo):
    d = load_split(demo.parent, "digits", "val200", img_size=16, cache=False)
    assert d.num_classes == 10 and d.images.shape == (200, 3, 16, 16)


def _snapshot(folder):
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_is_deterministic_and_idempotent(demo, tmp_path):
    other = build_demo(tmp_path)
    assert other == tmp_path / "digits"
    before = _snapshot(other)
    assert {k: v[0] for k, v in before.items()} == {k: v[0] for k, v in _snapshot(demo).items()}
    assert len(before) == 1797 + 4
    build_demo(tmp_path)
    assert _snapshot(other) == before  # nothing rewritten
    (other / "images/0007.png").write_bytes(b"broken")
    (other / "test.txt").unlink()
    build_demo(tmp_path)
    assert {k: v[0] for k, v in _snapshot(other).items()} == {k: v[0] for k, v in before.items()}


def test_cli_builds_and_checks_the_demo(tmp_path, capsys):
    assert main(["build-demo", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "digits")
    assert main(["--root", str(tmp_path), "--task", "digits", "--img-size", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = [line for line in lines if not line.startswith(" ")]
    assert summary == ["task digits: 10 classes (derived as max label + 1 in train800val200.txt)",
                       "train800: 800 images, 10 classes", "val200: 200 images, 10 classes",
                       "train800val200: 1000 images, 10 classes", "test: 797 images, 10 classes",
                       "ok: task digits passes every rule and every image reads"]
    assert lines[2].startswith("  per class: 0:")
    assert sum(int(count.split(":")[1]) for count in lines[2].split()[2:]) == 800


def test_cli_build_demo_into_unwritable_root_exits_2(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["build-demo", "--root", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: cannot write the demo task to {tmp_path / 'file' / 'digits'}")


def test_synthetic_task_has_the_vtab_layout_and_is_reproducible(tmp_path):
    from data import build_synthetic, load_split, read_list

    folder = build_synthetic(tmp_path, "syn", num_classes=4, test=30, img_size=16)
    sizes = {s: len(read_list(folder / f"{s}.txt")) for s in ("train800", "val200", "train800val200", "test")}
    assert sizes == {"train800": 800, "val200": 200, "train800val200": 1000, "test": 30}
    union = read_list(folder / "train800.txt") + read_list(folder / "val200.txt")
    assert [(e.rel, e.label) for e in read_list(folder / "train800val200.txt")] == [(e.rel, e.label) for e in union]
    test = load_split(tmp_path, "syn", "test", img_size=16, cache=False)
    assert test.num_classes == 4 and test.images.shape == (30, 3, 16, 16)
    assert sorted(set(test.labels.tolist())) == [0, 1, 2, 3]
    first = (folder / "images" / "000000.jpg").read_bytes()
    (folder / "images" / "000000.jpg").unlink()
    build_synthetic(tmp_path, "syn", num_classes=4, test=30, img_size=16)
    assert (folder / "images" / "000000.jpg").read_bytes() == first
    # the classes differ in colour: per-class mean images are far apart
    means = torch.stack([test.images[test.labels == c].float().mean(0) for c in range(4)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 100
