"""Rules of a task as a whole (classes, one label per image, split overlap and union by file, paths
and links inside the root, a BOM), the checker reporting every problem at once, and a cache that
notices an image edited in place or replaced by a copy, and cleans up after a killed build."""
import fcntl
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import load_split, read_list, write_list
from data.__main__ import main
from data.cache import cache_key
from data.checks import check_task_lists, read_task
from glora.errors import UserError
from test_data import REPO, make_task


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


# --- the decode cache: copies that keep size and mtime, temp files of killed builds -----------

def _same_size_rewrite(path: Path) -> bytes:
    """The image inverted, as an uncompressed BMP: the same number of bytes, other pixels."""
    pixels = 255 - np.asarray(Image.open(path).convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


@pytest.mark.parametrize("how", ["cp -p", "tar x", "rsync -a"])
def test_an_image_replaced_by_a_copy_with_the_same_size_and_mtime_is_decoded_again(task, tmp_path, how):
    """cp -p rewrites the file in place, tar x and rsync -a write a new one, and each sets the old
    modification time: only the status-change time (and the inode, but for cp -p) tell."""
    image = task / "img sub" / "012.bmp"
    Image.open(task / "img sub" / "012.png").convert("RGB").save(image)
    os.utime(image, (1_700_000_000, 1_700_000_000))  # whole seconds: what a tar header holds
    items = lines(task, "val200")
    write_list(task / "val200.txt", [("img sub/012.bmp", items[0][1]), *items[1:]])
    write_list(task / "train800val200.txt", lines(task, "train800") + lines(task, "val200"))
    before = load_split(task.parent, "photos", "val200", img_size=16).images[:]
    corrected = tmp_path / "corrected" / "012.bmp"
    corrected.parent.mkdir()
    corrected.write_bytes(_same_size_rewrite(image))
    st = os.stat(image)
    os.utime(corrected, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert corrected.stat().st_size == st.st_size and corrected.stat().st_mtime_ns == st.st_mtime_ns
    if how == "cp -p":
        subprocess.run(["cp", "-p", str(corrected), str(image)], check=True)
    elif how == "tar x":
        subprocess.run(["tar", "-cf", str(tmp_path / "c.tar"), "-C", str(corrected.parent), "012.bmp"], check=True)
        subprocess.run(["tar", "-xf", str(tmp_path / "c.tar"), "-C", str(image.parent)], check=True)
    else:  # what rsync -a does: a temp file with the old times, renamed over the image
        tmp = image.with_name(".012.bmp.rsync")
        shutil.copy2(corrected, tmp)
        os.replace(tmp, image)
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = load_split(task.parent, "photos", "val200", img_size=16).images[:]
    assert torch.equal(after, load_split(task.parent, "photos", "val200", img_size=16, cache=False).images)
    assert not torch.equal(after[0], before[0]) and torch.equal(after[1:], before[1:])


def test_a_temp_file_of_a_killed_build_is_removed_and_never_read(task):
    """A build killed mid-write (SIGKILL) leaves its temp file; the next build removes it, reads
    none of it, and leaves alone the temp file of a build still running (it holds the file's lock)."""
    script = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
              "import data.cache, data.transforms\n"
              "real = data.cache.decode_image\n"
              "def slow(*a, **k):\n    time.sleep(2)\n    return real(*a, **k)\n"
              "data.cache.decode_image = slow\ndata.cache.CHUNK = 1\n"
              f"from data import load_split\nload_split({str(task.parent)!r}, 'photos', 'test', img_size=16, workers=1)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    cache = task / ".cache"
    try:
        deadline = time.time() + 120
        while not [p for p in cache.glob(".test_16_bicubic.safetensors.*.tmp") if p.stat().st_size > 0]:
            assert time.time() < deadline and proc.poll() is None, "the build never started writing"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    [left] = cache.glob(".*.tmp")
    running = cache / ".test_16_bicubic.safetensors.running.tmp"
    running.write_bytes(b"a build in progress")
    with open(running, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        images = load_split(task.parent, "photos", "test", img_size=16).images[:]
        assert not left.exists() and running.exists()
    assert torch.equal(images, load_split(task.parent, "photos", "test", img_size=16, cache=False).images)
    assert sorted(p.name for p in cache.iterdir()) == [running.name, "test_16_bicubic.safetensors"]


# --- one label per image, links, overlaps by file ---------------------------------------------

def test_one_image_with_two_labels_is_refused_naming_both_lines(task):
    items = lines(task, "test")
    write_list(task / "test.txt", [*items, (items[2][0], (items[2][1] + 1) % 3)])
    assert read_task(task.parent, "photos").problems == [
        f"{task}/test.txt:3 and {task}/test.txt:7 give one image ('img sub/020.jpg') two labels, 2 and 0: an image "
        "has one label; fix the wrong line"]
    os.symlink("020.jpg", task / "img sub" / "alias.jpg")  # another name of the same file, in another list
    write_list(task / "test.txt", items)
    write_list(task / "val200.txt", [*lines(task, "val200")])
    with (task / "test.txt").open("a") as f:
        f.write("img sub/alias.jpg 1\n")
    with pytest.raises(UserError, match=r"test.txt:3 and .*test.txt:7 give one image \('img sub/020.jpg' and "
                                        r"'img sub/alias.jpg'\) two labels, 2 and 1"):
        check_task_lists(task.parent, "photos")
    write_list(task / "test.txt", [*items, items[2]])  # the same line twice: a note, not a fault
    lists = check_task_lists(task.parent, "photos")
    assert lists.notes == [f"1 line(s) repeat an image of their list with the same label ({task}/test.txt:7): it "
                           "counts once more in training or in the accuracy"]


def test_links_may_not_lead_out_of_the_data_root(task, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(task / "img sub" / "018.png", outside / "x.png")
    os.symlink(outside / "x.png", task / "img sub" / "link.png")  # a file link
    os.symlink(outside, task / "linked")  # a folder link
    os.symlink(task / "img sub", task / "inside")  # a folder link that stays inside: followed
    items = lines(task, "test")
    write_list(task / "test.txt", [("img sub/link.png", 0), ("linked/x.png", 1), ("inside/019.jpg", 2), *items[2:]])
    problems = read_task(task.parent, "photos").problems
    assert problems == [
        f"{task}/test.txt:{n}: image path {rel!r} leads through a symbolic link to {outside / 'x.png'}, outside the "
        f"data root {task.parent}: links may point only inside the data root; copy the images into it, or set "
        "data.root to a folder that holds both" for n, rel in ((1, "img sub/link.png"), (2, "linked/x.png"))]
    with pytest.raises(UserError, match="test.txt:1: image path 'img sub/link.png' leads through a symbolic link"):
        load_split(task.parent, "photos", "test", img_size=8)


def test_overlaps_are_found_through_links_and_the_test_split_apart_from_training(task):
    os.symlink(task / "img sub", task / "val images")  # val200 reaches train800's images by another path
    write_list(task / "val200.txt", [(f"val images/{rel.split('/')[1]}", label) for rel, label in lines(task, "train800")[:2]]
               + lines(task, "val200")[2:])
    write_list(task / "train800val200.txt", lines(task, "train800") + lines(task, "val200"))
    write_list(task / "test.txt", [lines(task, "train800")[5], *lines(task, "test")[1:]])
    assert read_task(task.parent, "photos").problems == [
        f"{task}/val200.txt: 2 image(s) also in train800.txt (val images/000.png, val images/001.jpg): validation "
        "must be apart from training; fix the lists",
        f"{task}/test.txt: 1 image(s) also in train800 or val200 (img sub/005.jpg): the test split must be apart "
        "from them; fix the lists"]


def test_a_union_list_that_holds_copies_of_the_images_passes_as_noahs_lists_do(task):
    """NOAH's script writes train800val200's images again under images/train800val200/: the same
    files by content, so the union rule compares content where the paths differ."""
    union = []
    for i, (rel, label) in enumerate(lines(task, "train800") + lines(task, "val200")):
        copy = f"union/{i:06d}{Path(rel).suffix}"
        (task / copy).parent.mkdir(exist_ok=True)
        shutil.copy(task / rel, task / copy)
        union.append((copy, label))
    write_list(task / "train800val200.txt", union)
    check_task_lists(task.parent, "photos")
    (task / "union" / "000003.png").write_bytes((task / "img sub" / "021.png").read_bytes())  # another image
    assert read_task(task.parent, "photos").problems == [
        f"{task}/train800val200.txt is not train800 + val200: it lacks 1 of their lines (img sub/003.png 0) and "
        "has 1 others (union/000003.png 0); write it as the two lists joined"]
