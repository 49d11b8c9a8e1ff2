"""Tests of data/: registry, list files, every bad-input error (and the CLI's exit 2), transforms,
the decode-once cache."""

import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load, load_file, save_file
from torchvision import transforms as T

import data.cache
from data import (GROUPS, IMAGENET_MEAN, IMAGENET_STD, TASKS, VTABDataset, decode_image, get_task,
                  load_split, normalize, read_list, task_num_classes, write_list)
from data.__main__ import main
from data.cache import CachedImages, cache_file, cache_key
from glora.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def make_task(root: Path, task: str = "photos", num_classes: int = 3) -> Path:
    """A small VTAB-layout task of real photo crops (JPEG and PNG, varied sizes, a space in the path)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    folder = root / task
    (folder / "img sub").mkdir(parents=True)
    items = []
    for i in range(24):
        crop = photos[i % 2][7 * i: 7 * i + 30 + i, 11 * i: 11 * i + 40 + 2 * i]
        rel = f"img sub/{i:03d}.{'png' if i % 3 == 0 else 'jpg'}"
        Image.fromarray(crop).save(folder / rel)
        items.append((rel, i % num_classes))
    write_list(folder / "train800.txt", items[:12])
    write_list(folder / "val200.txt", items[12:18])
    write_list(folder / "train800val200.txt", items[:18])
    write_list(folder / "test.txt", items[18:])
    return folder


@pytest.fixture
def task(tmp_path) -> Path:
    return make_task(tmp_path)


# --- registry ---------------------------------------------------------------------------------

def test_registry_has_the_19_vtab_tasks_with_their_class_counts():
    expected = {
        "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
        "svhn": 10, "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45,
        "diabetic_retinopathy": 5, "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4,
        "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azi": 18, "smallnorb_ele": 9,
    }
    assert {name: t.num_classes for name, t in TASKS.items()} == expected
    assert list(GROUPS) == ["natural", "specialized", "structured"]
    assert [len(v) for v in GROUPS.values()] == [7, 4, 8]
    assert list(sum(GROUPS.values(), ())) == list(expected)  # groups keep the release's order
    assert all(get_task(n).group == g for g, names in GROUPS.items() for n in names)
    assert get_task("my_own_task") is None
    with pytest.raises(FrozenInstanceError):
        get_task("cifar").num_classes = 10


def test_registry_num_classes_needs_no_data():
    assert task_num_classes("/nonexistent", "sun397") == 397


# --- list files and class counts --------------------------------------------------------------

def test_read_list_splits_on_last_whitespace_and_skips_blank_lines(tmp_path):
    path = tmp_path / "train800.txt"
    path.write_bytes(b"\nimages/a b/c d.jpg 3\r\n   \n  x.png\t0  \n")
    entries = read_list(path)
    assert [(e.rel, e.label) for e in entries] == [("images/a b/c d.jpg", 3), ("x.png", 0)]
    assert entries[0].path == tmp_path / "images/a b/c d.jpg"
    assert [e.where for e in entries] == [f"{path}:2", f"{path}:4"]


def test_user_task_derives_num_classes_from_train800val200(task):
    root = task.parent
    assert task_num_classes(root, "photos") == 3
    data = load_split(root, "photos", "test", img_size=16, cache=False)
    assert data.num_classes == 3 and len(data) == 6 and data.images.shape == (6, 3, 16, 16)
    (task / "train800val200.txt").unlink()  # falls back to train800.txt
    write_list(task / "train800.txt", [("img sub/001.jpg", 4)])
    assert task_num_classes(root, "photos") == 5


def test_user_task_takes_given_num_classes(task):
    data = load_split(task.parent, "photos", "val200", num_classes=7, img_size=16, cache=False)
    assert data.num_classes == 7 and data.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_registry_task_uses_registry_count(tmp_path):
    make_task(tmp_path, "svhn")
    assert load_split(tmp_path, "svhn", "val200", img_size=8, cache=False).num_classes == 10
    assert load_split(tmp_path, "svhn", "val200", num_classes=10, img_size=8, cache=False).num_classes == 10


# --- bad input: one line each, naming the place, and the CLI exits 2 ----------------------------

def _rewrite_line(folder: Path, split: str, lineno: int, text: str) -> None:
    path = folder / f"{split}.txt"
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _corrupt(folder: Path, rel: str, data: bytes) -> None:
    (folder / rel).write_bytes(data)


# (name, how to break the task, load_split kwargs, what the message must contain)
BAD_INPUTS = [
    ("missing root", lambda f: None, dict(root="{tmp}/nowhere"),
     ["data root {tmp}/nowhere does not exist", "NOAH/GLoRA"]),
    ("missing task", lambda f: None, dict(task="nope"),
     ["task folder {tmp}/nope does not exist", "photos", "VTAB-1k layout"]),
    ("missing list", lambda f: (f / "test.txt").unlink(), {}, ["list file {task}/test.txt does not exist"]),
    ("no label", lambda f: _rewrite_line(f, "test", 2, "img sub/019.jpg"), {},
     ["{task}/test.txt:2: malformed line 'img sub/019.jpg'", "<integer label>"]),
    ("word label", lambda f: _rewrite_line(f, "test", 3, "a.jpg three"), {},
     ["{task}/test.txt:3: malformed line 'a.jpg three'"]),
    ("empty list", lambda f: (f / "test.txt").write_text("\n\n"), {}, ["{task}/test.txt has no entries"]),
    ("label too big", lambda f: _rewrite_line(f, "test", 4, "img sub/021.png 3"), {},
     ["{task}/test.txt:4: label 3 is outside [0, 3)", "derived as max label + 1 in train800val200.txt",
      "data.num_classes"]),
    ("negative label", lambda f: _rewrite_line(f, "test", 1, "img sub/018.png -1"), {},
     ["{task}/test.txt:1: label -1 is outside [0, 3)"]),
    ("label over given", lambda f: None, dict(num_classes=2),  # train800 first in the CLI, test here
     [".txt:3: label 2 is outside [0, 2) (2 classes, given)"]),
    ("missing image", lambda f: (f / "img sub/020.jpg").unlink(), {},
     ["{task}/test.txt:3: image {task}/img sub/020.jpg does not exist"]),
    ("garbage image", lambda f: _corrupt(f, "img sub/021.png", b"not an image"), {},
     ["{task}/test.txt:4: cannot read image {task}/img sub/021.png"]),
    ("truncated jpeg", lambda f: _corrupt(f, "img sub/022.jpg", (f / "img sub/022.jpg").read_bytes()[:300]),
     {},
     ["{task}/test.txt:5: cannot read image {task}/img sub/022.jpg"]),
    ("registry mismatch", lambda f: f.rename(f.parent / "cifar"), dict(task="cifar", num_classes=10),
     ["num_classes=10 disagrees with the VTAB-1k registry", "cifar has 100 classes"]),
    ("bad num_classes", lambda f: None, dict(num_classes=0), ["num_classes must be a positive integer"]),
]


def _case(tmp_path, breaker, kwargs):
    folder = make_task(tmp_path)
    breaker(folder)
    call = dict(root=str(tmp_path), task="photos", split="test") | kwargs
    call["root"] = call["root"].format(tmp=tmp_path)
    return folder, call


@pytest.mark.parametrize("name,breaker,kwargs,expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_clear_line(tmp_path, capsys, name, breaker, kwargs, expected):
    folder, call = _case(tmp_path, breaker, kwargs)
    expected = [e.format(tmp=tmp_path, task=folder) for e in expected]
    for read in (lambda: load_split(**call, img_size=16, cache=False),
                 lambda: load_split(**call, img_size=16, cache_dir=tmp_path / "c"),
                 lambda: [VTABDataset(**call, img_size=16)[i] for i in range(6)]):
        with pytest.raises(UserError) as info:
            read()
        message = str(info.value)
        assert "\n" not in message and "\r" not in message
        for part in expected:
            assert part in message
    argv = ["--root", call["root"], "--task", call["task"]]
    if "num_classes" in kwargs:
        argv += ["--num-classes", str(kwargs["num_classes"])]
    assert main(argv + ["--img-size", "16"]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()  # the checker goes on: one line per problem (label 2 is on 14 lines of 4 lists)
    assert len(lines) == (14 if name == "label over given" else 1) and all(l.startswith("error: ") for l in lines)
    assert all(part in err for part in expected)


@pytest.mark.parametrize("kwargs,expected", [
    (dict(split="train"), "unknown split 'train': use one of train800, val200, train800val200, test"),
    (dict(interpolation="lanczos"), "unknown interpolation 'lanczos': use one of bicubic, bilinear, nearest"),
    (dict(img_size=0), "img_size must be a positive integer"),
])
def test_bad_arguments_are_user_errors(task, kwargs, expected):
    with pytest.raises(UserError, match=expected):
        load_split(**(dict(root=task.parent, task="photos", split="val200") | kwargs))


def test_cli_exits_2_with_one_error_line(tmp_path):
    command = [sys.executable, "-m", "data", "--root", str(tmp_path / "x"), "--task", "cifar"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: data root {tmp_path / 'x'} does not exist")


def test_cli_reports_each_split(task, capsys):
    assert main(["--root", str(task.parent), "--task", "photos", "--img-size", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "task photos: 3 classes (derived as max label + 1 in train800val200.txt)",
        "train800: 12 images, 3 classes", "  per class: 0:4 1:4 2:4",
        "val200: 6 images, 3 classes", "  per class: 0:2 1:2 2:2",
        "train800val200: 18 images, 3 classes", "  per class: 0:6 1:6 2:6",
        "test: 6 images, 3 classes", "  per class: 0:2 1:2 2:2",
        "ok: task photos passes every rule and every image reads",
    ]


# --- preprocessing ----------------------------------------------------------------------------

def _test_images(folder: Path) -> list[Path]:
    """Real images in several modes: JPEG and PNG RGB, grey (L), RGBA and palette (P)."""
    from sklearn.datasets import load_digits, load_sample_images

    photo = load_sample_images().images[1][100:275, 200:433]
    grey = np.round(load_digits().images[5] * 255 / 16).astype(np.uint8)
    images = {"photo.jpg": Image.fromarray(photo), "photo.png": Image.fromarray(photo),
              "grey.png": Image.fromarray(grey), "rgba.png": Image.fromarray(photo).convert("RGBA"),
              "palette.png": Image.fromarray(photo).convert("P")}
    for name, image in images.items():
        image.save(folder / name)
    return [folder / name for name in images]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_decode_and_normalize_equal_torchvision_bitwise(tmp_path, interpolation):
    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
            "nearest": T.InterpolationMode.NEAREST}[interpolation]
    paths = _test_images(tmp_path)
    for size in (224, 32, 8):
        for mean, std in ((IMAGENET_MEAN, IMAGENET_STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
            reference = T.Compose([T.Resize((size, size), interpolation=mode), T.ToTensor(),
                                   T.Normalize(mean, std)])
            expected = torch.stack([reference(Image.open(p).convert("RGB")) for p in paths])
            decoded = torch.stack([decode_image(p, size, interpolation) for p in paths])
            assert decoded.dtype == torch.uint8 and decoded.shape == (len(paths), 3, size, size)
            assert torch.equal(normalize(decoded, mean, std), expected)  # the batch at once
            assert torch.equal(normalize(decoded[2], mean, std), expected[2])  # one image
            as_bf16 = normalize(decoded, mean, std, dtype=torch.bfloat16)
            assert torch.equal(as_bf16, expected.to(torch.bfloat16))


def test_uncached_dataset_normalizes_like_torchvision(task):
    reference = T.Compose([T.Resize((24, 24), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = VTABDataset(task.parent, "photos", "train800", img_size=24, normalize=True)
    image, label = dataset[4]
    assert label == 1 and torch.equal(image, reference(Image.open(task / "img sub/004.jpg").convert("RGB")))


# --- the decode-once cache --------------------------------------------------------------------

def _load(task, split="train800", **kwargs):
    return load_split(task.parent, "photos", split, img_size=20, **kwargs)


def _no_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although a valid cache exists")
    monkeypatch.setattr(data.cache, "decode_chunks", fail)


def test_cache_equals_uncached_exactly(task, monkeypatch):
    built = _load(task)  # decodes and writes the cache
    path = task / ".cache" / "train800_20_bicubic.safetensors"
    assert path.is_file()
    _no_decoding(monkeypatch)
    cached = _load(task)
    monkeypatch.undo()
    uncached = _load(task, cache=False)
    dataset = VTABDataset(task.parent, "photos", "train800", img_size=20)
    reference = torch.stack([dataset[i][0] for i in range(len(dataset))])
    for d in (built, cached, uncached):
        assert d.images.dtype == torch.uint8 and d.labels.dtype == torch.int64
        assert torch.equal(d.images[:], reference)
        assert d.labels.tolist() == [dataset[i][1] for i in range(len(dataset))]
        assert (d.task, d.split, d.num_classes, len(d)) == ("photos", "train800", 3, 12)
    # written chunk by chunk, the file is the safetensors file that save_file would write
    assert isinstance(built.images, CachedImages) and isinstance(cached.images, CachedImages)
    on_disk = load_file(path)
    assert on_disk.keys() == {"images", "labels"} and torch.equal(on_disk["images"], reference)
    assert torch.equal(on_disk["labels"], uncached.labels)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format_version"] == str(data.cache.FORMAT_VERSION)


def test_cache_is_written_chunk_by_chunk(task, monkeypatch):
    whole = _load(task, cache=False).images
    real, sizes = data.cache.decode_chunks, []

    def spy(*args, **kwargs):
        for start, chunk in real(*args, **kwargs):
            sizes.append(len(chunk))
            yield start, chunk

    monkeypatch.setattr(data.cache, "CHUNK", 5)
    monkeypatch.setattr(data.cache, "decode_chunks", spy)
    d = _load(task)
    assert sizes == [5, 5, 2] and torch.equal(d.images[:], whole)


def test_cached_images_read_rows_on_demand(task):
    d = _load(task)
    whole = _load(task, cache=False).images
    assert d.images.shape == whole.shape and d.nbytes == whole.nbytes == 12 * 3 * 20 * 20
    assert torch.equal(d.images[3:7], whole[3:7]) and d.images[5:5].shape == (0, 3, 20, 20)
    rows = torch.tensor([11, 0, 4, 4])
    assert torch.equal(d.images[rows], whole[rows])
    assert torch.equal(d.images.to("cpu"), whole)


def test_cache_cut_short_while_in_use_is_a_user_error(task):
    d = _load(task)
    path = task / ".cache" / "train800_20_bicubic.safetensors"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(UserError, match="cut short while in use.*delete it"):
        d.images[10:12]


@pytest.mark.parametrize("shuffle", [False, True])
def test_split_larger_than_resident_mb_streams_the_same_batches(task, shuffle):
    d = _load(task)
    kw = dict(shuffle=shuffle, seed=3)
    resident = d.loader(5, resident_mb=d.nbytes / 1e6, **kw)  # fits exactly: held whole
    streamed = d.loader(5, resident_mb=(d.nbytes - 1) / 1e6, **kw)  # one byte over: read batch by batch
    assert isinstance(resident.images, torch.Tensor) and isinstance(streamed.images, CachedImages)
    for _ in range(2):  # two epochs: a new order each
        for (xr, yr), (xs, ys) in zip(resident, streamed, strict=True):
            assert torch.equal(xr, xs) and torch.equal(yr, ys) and xs.dtype == torch.float32


def test_cache_dir_override_and_one_file_per_size_and_method(task, tmp_path):
    _load(task, cache_dir=tmp_path / "elsewhere")
    _load(task, cache_dir=tmp_path / "elsewhere", interpolation="nearest")
    load_split(task.parent, "photos", "train800", img_size=12, cache_dir=tmp_path / "elsewhere")
    names = sorted(p.name for p in (tmp_path / "elsewhere").iterdir())
    assert names == ["train800_12_bicubic.safetensors", "train800_20_bicubic.safetensors",
                     "train800_20_nearest.safetensors"]
    assert not (task / ".cache").exists()


@pytest.mark.parametrize("change", ["relabel", "drop a line", "reorder"])
def test_changed_list_rebuilds_the_cache(task, change):
    _load(task)
    items = [(e.rel, e.label) for e in read_list(task / "train800.txt")]
    if change == "relabel":
        items[5] = (items[5][0], 0)
    elif change == "drop a line":
        items = items[:-1]
    else:
        items = items[::-1]
    write_list(task / "train800.txt", items)
    rebuilt = _load(task)
    assert torch.equal(rebuilt.images[:], _load(task, cache=False).images)
    assert rebuilt.labels.tolist() == [label for _, label in items]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _bad_header(path):
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])


def _garbage(path):
    path.write_bytes(b"not a safetensors file")


def _wrong_shape(task):
    def corrupt(path):
        d = _load(task, cache=False)
        key = cache_key(read_list(task / "train800.txt"), 20, "bicubic")
        save_file({"images": d.images[:, :, :10].contiguous(), "labels": d.labels}, str(path), {"key": key})
    return corrupt


def _wrong_key(path):
    save_file(load(path.read_bytes()), str(path), {"key": "0" * 64})


def _flipped_label(path):
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load(path.read_bytes())  # a copy: the file is rewritten in place below
    tensors["labels"][0] += 1
    save_file(tensors, str(path), meta)


@pytest.mark.parametrize("corruption", ["truncated", "bad header", "garbage", "wrong shape", "wrong key",
                                        "labels differ"])
def test_corrupt_cache_is_rebuilt_not_trusted(task, monkeypatch, corruption):
    expected = _load(task, cache=False)
    _load(task)
    path = task / ".cache" / "train800_20_bicubic.safetensors"
    corrupt = {"truncated": _truncate, "bad header": _bad_header, "garbage": _garbage,
               "wrong shape": _wrong_shape(task), "wrong key": _wrong_key, "labels differ": _flipped_label}
    corrupt[corruption](path)
    rebuilt = _load(task)
    assert torch.equal(rebuilt.images[:], expected.images) and torch.equal(rebuilt.labels, expected.labels)
    _no_decoding(monkeypatch)  # and the repaired file is trusted next time
    assert torch.equal(_load(task).images[:], expected.images)


def test_unwritable_cache_dir_only_loses_the_cache(task, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    d = _load(task, cache_dir=blocker / "cache")
    assert torch.equal(d.images[:], _load(task, cache=False).images)
    assert "cannot write cache" in caplog.text


def test_cache_key_covers_size_method_and_entries(task):
    entries = read_list(task / "train800.txt")
    keys = {cache_key(entries, 20, "bicubic"), cache_key(entries, 21, "bicubic"),
            cache_key(entries, 20, "bilinear"), cache_key(entries[:-1], 20, "bicubic")}
    assert len(keys) == 4
    assert cache_file("/c", "val200", 224, "bicubic").name == "val200_224_bicubic.safetensors"
