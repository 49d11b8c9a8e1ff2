"""Rules of a task as a whole (classes, split overlap and union, paths inside the root, a BOM), the
checker reporting every problem at once, and a cache that notices an image edited in place."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from data import load_split, read_list, write_list
from data.__main__ import main
from data.cache import cache_key
from data.checks import check_task_lists, read_task
from glora.errors import UserError
from test_data import make_task


@pytest.fixture
def task(tmp_path):
    return make_task(tmp_path)  # photos: 3 classes, train800 12 / val200 6 / union 18 / test 6


def lines(folder, split):
    return [(e.rel, e.label) for e in read_list(folder / f"{split}.txt")]


def test_a_byte_order_mark_is_not_part_of_the_first_path(task):
    text = (task / "train800.txt").read_text()
    (task / "train800.txt").write_bytes("\ufeff".encode() + text.encode())
    assert read_list(task / "train800.txt")[0].rel == "img sub/000.png"
    check_task_lists(task.parent, "photos")


def test_paths_may_not_leave_the_data_root(task, tmp_path):
    write_list(task / "test.txt", [("../../outside.png", 0), (str(tmp_path / "abs.png"), 1), ("../photos/x.png", 2)])
    problems = read_task(task.parent, "photos").problems
    assert len(problems) == 2  # ../photos/x.png stays inside the root
    assert problems[0].startswith(f"{task}/test.txt:1: image path '../../outside.png' leaves the data root {task.parent}")
    assert problems[1].startswith(f"{task}/test.txt:2: image path '{tmp_path / 'abs.png'}' leaves the data root")
    with pytest.raises(UserError, match=r"test.txt:1: .* leaves the data root"):
        read_list(task / "test.txt")


def test_one_class_is_not_a_classification_task(task):
    for split in ("train800", "val200", "train800val200", "test"):
        write_list(task / f"{split}.txt", [(rel, 0) for rel, _ in lines(task, split)])
    with pytest.raises(UserError, match=r"task photos has 1 class \(derived as max label \+ 1 in train800val200.txt\): "
                                        "classification needs at least two"):
        check_task_lists(task.parent, "photos")


def test_a_label_typo_that_adds_classes_is_refused(task):
    for split in ("train800", "train800val200"):
        items = lines(task, split)
        items[1] = (items[1][0], 7)  # meant 1
        write_list(task / f"{split}.txt", items)
    with pytest.raises(UserError, match=r"train800val200.txt: classes 3, 4, 5, 6 have no training example \(8 classes"):
        check_task_lists(task.parent, "photos")
    with pytest.raises(UserError, match=r"classes 3, 4, 5, 6, 8, ... 1 more have no training example \(10 classes, given\)"):
        check_task_lists(task.parent, "photos", num_classes=10)


def test_a_vtab_task_may_miss_classes_in_its_1000_samples(tmp_path):
    make_task(tmp_path, "svhn")  # the registry says 10 classes; these lists hold 3
    lists = check_task_lists(tmp_path, "svhn")
    assert lists.num_classes == 10 and lists.notes == ["train800val200: 7 of 10 classes have no example (3, 4, 5, 6, 7, ... 2 more)"]


def test_val200_apart_from_train800_and_the_union_exact(task):
    train, val = lines(task, "train800"), lines(task, "val200")
    write_list(task / "val200.txt", [train[0], *val[1:]])
    write_list(task / "train800val200.txt", train + [train[0], *val[1:]])
    problems = read_task(task.parent, "photos").problems
    assert problems == [f"{task}/val200.txt: 1 image(s) also in train800.txt (img sub/000.png): validation must "
                        "be apart from training; fix the lists"]
    write_list(task / "val200.txt", val)
    write_list(task / "train800val200.txt", train[:-1] + val + [("img sub/023.jpg", 2)])
    assert read_task(task.parent, "photos").problems == [
        f"{task}/train800val200.txt is not train800 + val200: it lacks 1 of their lines (img sub/011.jpg 2) and has "
        "1 others (img sub/023.jpg 2); write it as the two lists joined"]


def test_the_stage_check_names_how_many_more_problems(task):
    write_list(task / "test.txt", [("../../a.png", 0), ("../../b.png", 0), ("img sub/018.png", 0)])
    with pytest.raises(UserError, match=r"leaves the data root .* \(1 more problem: python -m data --root .* "
                                        "--task photos lists them all\\)$"):
        check_task_lists(task.parent, "photos")


def test_the_checker_reports_every_problem_in_one_run(task, capsys):
    train = (task / "train800.txt").read_text().splitlines()
    train[1] = "img sub/001.jpg one"
    (task / "train800.txt").write_text("\n".join(train) + "\n")
    write_list(task / "val200.txt", [("../../escape.png", 0), *lines(task, "val200")[1:]])
    (task / "img sub/020.jpg").unlink()
    (task / "img sub/021.png").write_bytes(b"not an image")
    assert main(["--root", str(task.parent), "--task", "photos", "--img-size", "16"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"error: {task}/train800.txt:2: malformed line 'img sub/001.jpg one': expected '<relative/image/path> <integer label>'",
        f"error: {task}/val200.txt:1: image path '../../escape.png' leaves the data root {task.parent}: give paths "
        "relative to the task folder, inside the data root",
        # the rules go on over the lines that could be read
        f"error: {task}/train800val200.txt is not train800 + val200: it has 2 others (img sub/001.jpg 1, "
        "img sub/012.png 0); write it as the two lists joined",
        f"error: {task}/test.txt:3: image {task}/img sub/020.jpg does not exist: restore it or drop its line from the list",
        f"error: {task}/test.txt:4: cannot read image {task}/img sub/021.png (cannot identify image file "
        f"'{task}/img sub/021.png'): replace the file or drop its line from the list",
    ]
    assert "test: 6 images, 3 classes" in out  # and it went on through every split


def test_the_fingerprint_is_the_lists_not_where_they_are(task, tmp_path):
    first = read_task(task.parent, "photos").fingerprint()
    moved = tmp_path / "elsewhere"
    shutil.copytree(task, moved / "photos")
    assert read_task(moved, "photos").fingerprint() == first
    items = lines(moved / "photos", "test")
    write_list(moved / "photos" / "test.txt", [items[1], items[0], *items[2:]])
    assert read_task(moved, "photos").fingerprint() != first


def test_an_image_edited_in_place_is_decoded_again(task):
    before = load_split(task.parent, "photos", "val200", img_size=16).images[:]
    path = task / "img sub/012.png"
    key = cache_key(read_list(task / "val200.txt"), 16, "bicubic")
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)  # same size on disk, other pixels
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache_key(read_list(task / "val200.txt"), 16, "bicubic") != key
    after = load_split(task.parent, "photos", "val200", img_size=16).images[:]
    assert torch.equal(after, load_split(task.parent, "photos", "val200", img_size=16, cache=False).images)
    assert not torch.equal(after[0], before[0])
