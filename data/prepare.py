"""VTAB-1k onto disk and verified: `prepare_vtab` unpacks the 19 tasks of the NOAH layout from an
archive (zip, tar, tar.gz, ...) or a folder into a data root, all or nothing and checked before a
byte is written (data/unpack.py); `verify_vtab` checks every task of a root and gives one row each.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from glora.errors import UserError

from .checks import image_problems, mode_notes, published_problems, read_task
from .layout import SPLITS
from .registry import TASKS
from .unpack import FolderSource, Member, RootLock, open_source, refuse_unsafe, unpack


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
    modes = Counter()
    problems += image_problems(images, img_size, workers=workers, desc=f"check {task}", modes=modes)
    return TaskStatus(task, group, "wrong" if problems else "ok", problems, lists.notes + mode_notes(modes), len(images))


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


def _plan(members: list[Member], prefixes: dict[str, str], root: Path) -> dict[Member, Path]:
    """Each file of a task folder in the source -> its place under `root` (a `.cache/` is left out)."""
    heads = {(f"{prefix}/{task}/" if prefix else f"{task}/"): task for task, prefix in prefixes.items()}
    plan = {}
    for m in members:
        head = next((h for h in heads if m.name.startswith(h)), None)
        rel = m.name[len(head):] if head else ""
        if m.kind == "file" and rel and not rel.startswith(".cache/"):
            plan[m] = root / heads[head] / rel
    return plan


def prepare_vtab(src, root, log=print) -> list[str]:
    """Unpack (or link/copy) the VTAB-1k tasks of `src` into `root`, all or nothing (data/unpack.py);
    returns the tasks found."""
    src, root = Path(src).expanduser(), Path(root).expanduser()
    if not src.exists():
        raise UserError(f"{src}: no such archive or folder; give the VTAB-1k archive (zip/tar) or folder of the NOAH layout")
    with open_source(src) as source:
        members = source.members()
        if not isinstance(source, FolderSource):
            refuse_unsafe(source, members)
        prefixes = _task_members([m.name for m in members if m.kind == "file"])
        if source.path.resolve() == root.resolve():
            found = list(prefixes)  # the tasks are where they should be already
        else:
            with RootLock(root):
                plan = _plan(members, prefixes, root.resolve())
                written = unpack(source, plan, root.resolve(), log)
                how = "linked or copied" if isinstance(source, FolderSource) else "unpacked"
                log(f"{how} {written} files from {src} into {root} ({len(plan) - written} there already)")
            found = list(prefixes)
    missing = [t for t in TASKS if t not in found]
    log(f"{len(found)} of {len(TASKS)} tasks found in {src}" + (f"; missing: {', '.join(missing)}" if missing else ""))
    return found
