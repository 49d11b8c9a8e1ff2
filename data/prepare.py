"""VTAB-1k onto disk and verified: `prepare_vtab` unpacks the 19 tasks of the NOAH layout from an
archive (zip, tar, tar.gz, ...) or a folder into a data root, safely (no member may land outside
it, links and devices are skipped); `verify_vtab` checks every task of a root and gives one row each.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from glora.errors import UserError

from .checks import image_problems, published_problems, read_task
from .lists import SPLITS
from .registry import TASKS


@dataclass
class TaskStatus:
    """One task's row: ok, wrong (with every problem) or missing."""

    task: str
    group: str
    status: str  # ok, wrong, missing
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: int = 0

    @property
    def detail(self) -> str:
        if self.status == "missing":
            return self.problems[0]
        if self.problems:
            more = len(self.problems) - 1
            return self.problems[0] + (f" (+{more} more)" if more else "")
        return f"{self.images} images open" + (f"; note: {self.notes[0]}" if self.notes else "")


def verify_task(root, task: str, *, img_size: int = 224, workers: int | None = None) -> TaskStatus:
    """Every rule of the stages, the published sizes, and every image opened, for one VTAB-1k task."""
    group = TASKS[task].group
    folder = Path(root) / task
    if not folder.is_dir():
        return TaskStatus(task, group, "missing", [f"{folder}: no such task folder"])
    lists = read_task(root, task)
    problems = lists.problems + published_problems(lists)
    seen, images = set(), []
    for entries in lists.entries.values():
        images += [e for e in entries if e.path not in seen]
        seen.update(e.path for e in entries)
    problems += image_problems(images, img_size, workers=workers, desc=f"check {task}")
    return TaskStatus(task, group, "wrong" if problems else "ok", problems, lists.notes, len(images))


def verify_vtab(root, tasks=None, **kwargs) -> Iterator[TaskStatus]:
    """`verify_task` for each of the 19 tasks (or `tasks`), in the registry's order."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist: give the folder holding the VTAB-1k task folders "
                        "(python -m data prepare-vtab SRC --root ROOT writes one)")
    for task in tasks or TASKS:
        yield verify_task(root, task, **kwargs)


def table(rows: list[TaskStatus]) -> str:
    """The Markdown table of a verification: one row per task."""
    lines = ["| task | group | status | detail |", "|---|---|---|---|"]
    lines += [f"| {r.task} | {r.group} | {r.status} | {r.detail.replace('|', '/')} |" for r in rows]
    ok = sum(r.status == "ok" for r in rows)
    return "\n".join(lines) + f"\n\n{ok} of {len(rows)} tasks ok\n"


# ------------------------------------------------------------------ unpacking

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _task_members(names: list[str]) -> dict[str, str]:
    """task -> the prefix its folder has in the source (`vtab-1k/` in `vtab-1k/dtd/train800.txt`).

    A task is found by its list files: the folder named after a task that holds one of them."""
    lists = {f"{s}.txt" for s in SPLITS}
    prefixes: dict[str, str] = {}
    for name in sorted(names, key=lambda n: (n.count("/"), n)):  # the shallowest copy of a task wins
        parts = PurePosixPath(name).parts
        if len(parts) >= 2 and parts[-1] in lists and parts[-2] in TASKS and parts[-2] not in prefixes:
            prefixes[parts[-2]] = "/".join(parts[:-2])
    return prefixes


def _destination(root: Path, name: str, prefixes: dict[str, str]) -> Path | None:
    """Where a source member goes under `root` (None: not part of a task), refusing escapes."""
    if name.startswith("/") or "\\" in name or any(p == ".." for p in PurePosixPath(name).parts):
        raise UserError(f"archive member {name!r} would be written outside {root}: refusing the archive")
    for task, prefix in prefixes.items():
        head = f"{prefix}/{task}/" if prefix else f"{task}/"
        if name.startswith(head) and len(name) > len(head):
            rel = name[len(head):]
            if PurePosixPath(rel).parts[0] == ".cache":
                return None
            dest = root / task / rel
            if not os.path.normpath(dest).startswith(os.path.normpath(root) + os.sep):
                raise UserError(f"archive member {name!r} would be written outside {root}: refusing the archive")
            return dest
    return None


def _copy_stream(src, dest: Path, size: int | None) -> bool:
    """Write a member (skipped where a file of that size is there already); returns whether it wrote."""
    if size is not None and dest.is_file() and dest.stat().st_size == size:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or not dest.parent.resolve().is_relative_to(root_of(dest)):
        raise UserError(f"{dest}: a link in the data root leads outside it; remove it and prepare again")
    tmp = dest.with_name(f".{dest.name}.part")
    with open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, dest)
    return True


def root_of(dest: Path) -> Path:
    """The data root a destination `root/<task>/...` belongs to (its task folder's parent)."""
    for parent in dest.parents:
        if parent.name in TASKS:
            return parent.parent.resolve()
    return dest.parent.resolve()


def prepare_vtab(src, root, log=print) -> list[str]:
    """Unpack (or link/copy) the VTAB-1k tasks of `src` into `root`; returns the tasks found."""
    src, root = Path(src).expanduser(), Path(root).expanduser()
    if not src.exists():
        raise UserError(f"{src}: no such archive or folder; give the VTAB-1k archive (zip/tar) or folder of the NOAH layout")
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if src.is_dir():
        found = _from_folder(src.resolve(), root, log)
    elif zipfile.is_zipfile(src):
        found = _from_zip(src, root, log)
    elif tarfile.is_tarfile(src):
        found = _from_tar(src, root, log)
    else:
        raise UserError(f"{src}: neither a folder nor a zip or tar archive ({', '.join(ARCHIVES)})")
    missing = [t for t in TASKS if t not in found]
    log(f"{len(found)} of {len(TASKS)} tasks found in {src}" + (f"; missing: {', '.join(missing)}" if missing else ""))
    return found


def _from_zip(src: Path, root: Path, log) -> list[str]:
    with zipfile.ZipFile(src) as z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        prefixes = _task_members([i.filename for i in infos])
        written = 0
        for info in infos:
            dest = _destination(root, info.filename, prefixes)
            mode = (info.external_attr >> 16) & 0o170000
            if dest is None or mode in (0o120000, 0o020000, 0o060000, 0o010000):  # links, devices, fifos
                continue
            with z.open(info) as f:
                written += _copy_stream(f, dest, info.file_size)
    log(f"unpacked {written} files from {src} into {root}")
    return list(prefixes)


def _from_tar(src: Path, root: Path, log) -> list[str]:
    with tarfile.open(src) as tar:
        members = tar.getmembers()
        prefixes = _task_members([m.name for m in members if m.isfile()])
        written = skipped = 0
        for m in members:
            dest = _destination(root, m.name, prefixes)
            if dest is None:
                continue
            if not m.isfile():  # directories are made as needed; links and devices are never followed
                skipped += not m.isdir()
                continue
            f = tar.extractfile(m)
            written += _copy_stream(f, dest, m.size)
    log(f"unpacked {written} files from {src} into {root}" + (f" ({skipped} links or special files skipped)" if skipped else ""))
    return list(prefixes)


def _from_folder(src: Path, root: Path, log) -> list[str]:
    names = [str(p.relative_to(src).as_posix()) for p in src.rglob("*.txt") if p.is_file()]
    prefixes = _task_members(names)
    if src == root:
        return list(prefixes)
    written = 0
    for task, prefix in prefixes.items():
        folder = src / prefix / task
        for path in folder.rglob("*"):
            if not path.is_file() or path.is_symlink() or ".cache" in path.relative_to(folder).parts:
                continue
            dest = root / task / path.relative_to(folder)
            if dest.is_file() and dest.stat().st_size == path.stat().st_size:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, dest)  # the same file system: no copy
            except OSError:
                shutil.copy2(path, dest)
            written += 1
    log(f"linked or copied {written} files from {src} into {root}")
    return list(prefixes)
