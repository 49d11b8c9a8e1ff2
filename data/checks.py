"""A task as a whole, checked before any image is decoded: its four lists read, labels in range, one
label per image, at least two classes, every class with a training example, val200 and test apart
from training, and train800val200 their union (VTAB-1k; a few-shot list is both training splits);
then, for the checker, every image decoded; for a VTAB-1k copy, also the published sizes
(`published_problems`).

An image is a file, whatever the names that reach it: two lines name the same image when their
paths lead to the same file (through a symbolic link, a linked folder or a second hard link), so
no rule is dodged by another spelling of a path.

`read_task` collects every problem (`python -m data` reports them all; a bad line is skipped, the
rules apply to the others); `check_task_lists` is what
the stages call: the first problem is an error, else the lists, their class count and fingerprint.
"""

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from glora.errors import UserError
from glora.io import file_sha256

from .cache import default_workers
from .classes import label_problems, resolve_num_classes
from .layout import SPLITS, VTAB, Layout
from .lists import Entry, read_list, task_dir
from .modes import describe
from .registry import get_task, lookup
from .transforms import decode_image_mode

_SHOWN = 5  # examples named in a message about many lines


@dataclass
class TaskLists:
    """The lists of a task as read (a list that cannot be read is missing), and what is wrong."""

    task: str
    entries: dict[str, list[Entry]]
    num_classes: int | None = None  # None when the lists leave it unknown
    source: str = ""  # where the class count comes from
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth a line, not wrong
    files: dict = field(default_factory=dict)  # split -> the list file it was read from
    layout: Layout = field(default_factory=Layout)
    missing_classes: list[int] = field(default_factory=list)  # classes with no example in train800val200

    def fingerprint(self) -> str:
        """A digest of every list's image paths and labels: what the task's data is."""
        h = hashlib.sha256()
        for split in SPLITS:
            h.update(f"[{split}]\n".encode())
            for e in self.entries.get(split, ()):
                h.update(f"{e.rel}\t{e.label}\n".encode())
        return h.hexdigest()


def read_task(root, task: str, num_classes: int | None = None, layout: Layout | None = None) -> TaskLists:
    """Read the four lists of `<root>/<task>` (which files: `layout`, default VTAB-1k) and apply
    every rule that needs no image.

    A missing data root or task folder raises at once (nothing else can be checked).
    """
    layout = layout or Layout()
    folder = task_dir(root, task, layout)
    lists = TaskLists(task, {})
    lists.layout = layout
    read: dict = {}  # a few-shot list is both training splits: read once
    for split in SPLITS:
        found = layout.list_file(folder, split)
        if found is None:
            lists.problems.append(f"list file {layout.expected(folder, split)} does not exist: {layout.hint}")
            continue
        lists.files[split] = found.path
        if found.path in read:
            lists.entries[split] = read[found.path]
            continue
        try:
            lists.entries[split] = read[found.path] = read_list(found, root, lists.problems)
        except UserError as e:  # not UTF-8
            lists.problems.append(str(e))
    if len(lists.entries) < len(SPLITS):  # the class count and the rules below need the four lists
        return lists
    try:
        lists.num_classes, lists.source = resolve_num_classes(root, task, num_classes, layout, lists.entries)
    except UserError as e:
        lists.problems.append(str(e))
        return lists
    for path, entries in read.items():
        lists.problems += label_problems(entries, lists.num_classes, lists.source)
    files = _Files()
    _check_one_label(lists, read, files)
    _check_classes(lists, lists.files["train800val200"], lookup(task, layout.benchmark) is not None)
    _check_splits(lists, folder, layout, files)
    return lists


def check_task_lists(root, task: str, num_classes: int | None = None, layout: Layout | None = None) -> TaskLists:
    """`read_task`, with its first problem raised as a UserError (naming how many more there are)."""
    lists = read_task(root, task, num_classes, layout)
    if lists.problems:
        more = len(lists.problems) - 1
        raise UserError(lists.problems[0] + (f" ({more} more problem{'s' * (more > 1)}: "
                                             f"python -m data --root {root} --task {task} lists them all)"
                                             if more else ""))
    return lists


def _check_classes(lists: TaskLists, union_path, registered: bool) -> None:
    k, source = lists.num_classes, lists.source
    if k < 2:
        lists.problems.append(f"task {lists.task} has {k} class ({source}): classification needs at least "
                              "two; check the labels or set data.num_classes")
        return
    seen = {e.label for e in lists.entries["train800val200"]}
    empty = lists.missing_classes = [c for c in range(k) if c not in seen]
    if not empty:
        return
    if registered:  # VTAB-1k's own 1,000 samples may miss a class of a large task
        lists.notes.append(f"{union_path.name.removesuffix('.txt')}: {len(empty)} of {k} classes have no example ({_few(empty)})")
    else:
        lists.problems.append(f"{union_path}: classes {_few(empty)} have no training example ({k} classes, "
                              f"{source}): fix the label that adds a class, or set data.num_classes")


class _Files:
    """Each image file's identity (device and inode, so every name and link of one file agree) and
    content digest, each looked up once."""

    def __init__(self):
        self.ids: dict = {}
        self.digests: dict = {}

    def identity(self, path) -> tuple | str:
        path = os.fspath(path)
        key = self.ids.get(path)
        if key is None:
            try:
                st = os.stat(path)
                key = (st.st_dev, st.st_ino)
            except OSError:  # a missing image is reported where it is decoded
                key = os.path.realpath(path)
            self.ids[path] = key
        return key

    def digest(self, path) -> str:
        key = self.digests.get(path)
        if key is None:
            try:
                key = file_sha256(path)
            except OSError:
                key = f"unreadable {os.path.realpath(path)}"
            self.digests[path] = key
        return key


def _check_one_label(lists: TaskLists, read: dict, files: _Files) -> None:
    """Every image has one label in every list that holds it; an image listed twice in one list is a note."""
    first: dict = {}
    conflicts: set = set()
    repeated: list[str] = []
    for entries in read.values():
        in_list: set = set()
        for e in entries:
            key = files.identity(e.path)
            seen = first.setdefault(key, e)
            if seen.label != e.label and key not in conflicts:
                conflicts.add(key)
                names = repr(seen.rel) + ("" if seen.rel == e.rel else f" and {e.rel!r}")
                lists.problems.append(f"{seen.where} and {e.where} give one image ({names}) two labels, {seen.label} "
                                      f"and {e.label}: an image has one label; fix the wrong line")
            elif key in in_list and seen.label == e.label:
                repeated.append(e.where)
            in_list.add(key)
    if repeated:
        lists.notes.append(f"{len(repeated)} line(s) repeat an image of their list with the same label "
                           f"({_few(repeated)}): it counts once more in training or in the accuracy")


def _check_splits(lists: TaskLists, folder, layout: Layout, files: _Files) -> None:
    train, val, union, test = (lists.entries[s] for s in SPLITS)
    training = {files.identity(e.path): e.rel for e in train}
    both = sorted({e.rel for e in val if files.identity(e.path) in training})
    seen = dict(training)  # what train800val200 adds, the union rule sees; a val list that is the test list, a note
    if lists.files["val200"] != lists.files["test"]:
        seen.update((files.identity(e.path), e.rel) for e in val)
    leaked = sorted({e.rel for e in test if files.identity(e.path) in seen})
    if layout.benchmark != VTAB:  # the K-shot list is both training splits; its val list is the release's
        if both:
            lists.notes.append(f"{lists.files['val200'].name}: {len(both)} image(s) also in the training list "
                               f"({_few(both)}): the search then selects partly on training images")
        if leaked:
            lists.notes.append(f"{lists.files['test'].name}: {len(leaked)} image(s) also in the training or "
                               f"selection list ({_few(leaked)}): the test accuracy counts images trained on")
        if lists.files["val200"] == lists.files["test"]:
            lists.notes.append(f"{lists.files['test'].name} is both the selection and the test list: its accuracy "
                               "is test-selected; add a held-out selection list (see README, domain generalization)")
        return
    if both:
        lists.problems.append(f"{folder / 'val200.txt'}: {len(both)} image(s) also in train800.txt "
                              f"({_few(both)}): validation must be apart from training; fix the lists")
    if leaked:
        lists.problems.append(f"{folder / 'test.txt'}: {len(leaked)} image(s) also in train800 or val200 "
                              f"({_few(leaked)}): the test split must be apart from them; fix the lists")
    lacking, extra = _union_difference(train + val, union, lambda e: os.path.normpath(e.rel))
    if lacking or extra:  # NOAH's script writes train800val200's images again, under images/train800val200/
        lacking, extra = _union_difference(train + val, union, lambda e: files.digest(e.path))
    if lacking or extra:
        lists.problems.append(
            f"{folder / 'train800val200.txt'} is not train800 + val200: it "
            + " and ".join([f"lacks {len(lacking)} of their lines ({_few(lacking)})"] * bool(lacking)
                           + [f"has {len(extra)} others ({_few(extra)})"] * bool(extra))
            + "; write it as the two lists joined")


def _union_difference(parts: list[Entry], union: list[Entry], image) -> tuple[list, list]:
    """(lines of `parts` that `union` lacks, lines of `union` beyond `parts`) as sorted (path, label),
    two lines being the same when `image` says they show the same image with the same label."""
    def count(entries):
        return Counter((image(e), e.label) for e in entries)

    def named(keys: Counter, entries) -> list:
        names = {(image(e), e.label): (os.path.normpath(e.rel), e.label) for e in entries}
        return sorted(names[k] for k in keys.elements())

    whole, split = count(union), count(parts)
    return named(split - whole, parts), named(whole - split, union)


PUBLISHED_LINES = {"train800": 800, "val200": 200, "train800val200": 1000}


def published_problems(lists: TaskLists) -> list[str]:
    """What a VTAB-1k copy breaks of the published release, beyond `read_task`'s rules: train800,
    val200 and train800val200 hold 800, 200 and 1,000 lines, test the published count of its task
    (data/registry.py), and train800val200 holds every class, but for a task whose published
    lists cannot be expected to (SUN397)."""
    task = get_task(lists.task)
    if task is None:
        return []
    problems = []
    want = {**PUBLISHED_LINES, "test": task.test_size}
    for split, n in want.items():
        got = len(lists.entries.get(split, ()))
        if split in lists.entries and n is not None and got != n:
            problems.append(f"{lists.files[split]}: {got} lines where the published {lists.task} {split} list has "
                            f"{n}: the copy is truncated or altered; prepare the task again")
    if lists.missing_classes and task.covers_classes:
        problems.append(f"{lists.files['train800val200']}: classes {_few(lists.missing_classes)} have no example, "
                        f"but the published {lists.task} lists hold all {task.num_classes}: prepare the task again")
    return problems


def image_problems(entries: list[Entry], img_size: int = 224, interpolation: str = "bicubic",
                   workers: int | None = None, desc: str = "check", modes: Counter | None = None) -> list[str]:
    """Decode every entry's image, keeping none: one message per image that cannot be read, in list
    order. `modes` counts the stored modes of the images read."""

    def check(e: Entry) -> tuple[str | None, str | None]:
        try:
            return None, decode_image_mode(e.path, img_size, interpolation)[1]
        except UserError as exc:
            return f"{e.where}: {exc}", None

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:  # PIL releases the GIL
        found = list(tqdm(pool.map(check, entries), total=len(entries), desc=desc, unit="img", leave=False,
                          disable=None))
    if modes is not None:
        modes.update(m for _, m in found if m is not None)
    return [p for p, _ in found if p is not None]


def mode_notes(modes: Counter) -> list[str]:
    """A note per image mode that is read by a rule rather than as it is (16-bit, float)."""
    return [f"{n} image(s) in mode {m}: {describe(m)}" for m, n in sorted(modes.items()) if describe(m)]


def _few(items: list) -> str:
    shown = ", ".join(str(i if not isinstance(i, tuple) else f"{i[0]} {i[1]}") for i in items[:_SHOWN])
    return shown + (f", ... {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
