"""A task's folder and its list files (`relative/path label` per line); data/layout.py says which
file each split is in (the VTAB-1k layout `<root>/<task>/<split>.txt`, NOAH's few-shot and
domain-generalization layouts)."""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from glora.errors import UserError
from glora.io import write_bytes

from .layout import Layout, ListFile

LAYOUT_HINT = Layout().hint
_PROBE = 20  # entries whose images decide which candidate folder a list's paths are relative to
_LABEL = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Entry:
    """One list line: the image (relative to the task folder and absolute), its label, its place."""

    rel: str
    path: Path
    label: int
    where: str  # "list_file:line", for error messages


def task_dir(root, task: str, layout: Layout | None = None) -> Path:
    """`<root>/<task>`, checked to exist."""
    hint = (layout or Layout()).hint
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist: set data.root to the folder holding the "
                        f"task folders; {hint}")
    folder = root / task
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        shown = ", ".join(found[:20]) + (", ..." if len(found) > 20 else "") or "none"
        raise UserError(f"task folder {folder} does not exist (tasks under {root}: {shown}): {hint}")
    return folder


def list_file(root, task: str, split: str, layout: Layout | None = None) -> ListFile:
    """The list file of a split of `<root>/<task>` in `layout` (default VTAB-1k), checked to exist."""
    layout = layout or Layout()
    folder = task_dir(root, task, layout)
    found = layout.list_file(folder, split)
    if found is None:
        raise UserError(f"list file {layout.expected(folder, split)} does not exist: {layout.hint}")
    return found


def list_path(root, task: str, split: str, layout: Layout | None = None) -> Path:
    """The path of a split's list file, checked to exist (`<root>/<task>/<split>.txt` for VTAB-1k)."""
    return list_file(root, task, split, layout).path


def read_list(path, root=None, problems: list[str] | None = None, bases=None) -> list[Entry]:
    """Parse a list file: one `relative/path label` per line, split on the last whitespace.

    Paths are relative to the list's folder, or to the first of `bases` that holds the first images
    of the list (NOAH's lists sit in `annotations/`, their images in `images/` or beside it).
    A UTF-8 byte-order mark is dropped. Every path must stay inside the data `root` (default: the
    folder above the task folder, `<root>/<task>/<split>.txt`), as written and once symbolic links
    are followed: a link may point anywhere inside the root, never out of it. A bad line raises a
    UserError; with a `problems` list, each bad line is appended there instead and skipped.
    """
    if isinstance(path, ListFile):
        path, bases = path.path, path.bases
    path = Path(path)
    root = Path(os.path.normpath(path.parent.parent if root is None else Path(root).expanduser()))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"list file {path} does not exist: {LAYOUT_HINT}") from None
    except UnicodeDecodeError:
        raise UserError(f"list file {path} is not UTF-8 text: {LAYOUT_HINT}") from None
    entries, bad = [], []
    base = _base(path, text, bases)
    links = _Links(root)
    for lineno, line in enumerate(text.splitlines(), start=1):
        try:
            entry = _parse_line(path, lineno, line, root, base)
            if entry is not None:
                links.check(entry)
        except UserError as e:
            if problems is None:
                raise
            bad.append(str(e))
            continue
        if entry is not None:
            entries.append(entry)
    if not entries and not bad:
        bad.append(f"list file {path} has no entries: add one '<relative/image/path> <integer label>' line per image")
        if problems is None:
            raise UserError(bad[0])
    if problems is not None:
        problems.extend(bad)
    return entries


def _base(path: Path, text: str, bases) -> Path:
    """The folder the list's paths are relative to: of `bases`, the one that holds most of its first
    images (ties: the earlier); the list's own folder without `bases`."""
    if not bases:
        return path.parent
    bases = [Path(b) for b in bases]
    if len(bases) == 1:
        return bases[0]
    rels = [f[0] for f in (line.strip().rsplit(None, 1) for line in text.splitlines()[:_PROBE * 2]) if len(f) == 2]
    rels = [r for r in rels if not Path(r).is_absolute()][:_PROBE]
    found = [sum((b / r).is_file() for r in rels) for b in bases]
    return bases[found.index(max(found))]


def _parse_line(path: Path, lineno: int, line: str, root: Path, base: Path | None = None) -> Entry | None:
    fields = line.strip().rsplit(None, 1)
    if not fields:
        return None
    if len(fields) != 2 or not _LABEL.fullmatch(fields[1]):
        raise UserError(f"{path}:{lineno}: malformed line {line!r}: expected "
                        f"'<relative/image/path> <integer label>'")
    rel, label = fields
    image = (path.parent if base is None else base) / rel
    if os.path.isabs(rel) or not inside(os.path.normpath(image), str(root)):
        raise UserError(f"{path}:{lineno}: image path {rel!r} leaves the data root {root}: "
                        f"give paths relative to the task folder, inside the data root")
    return Entry(rel, image, int(label), f"{path}:{lineno}")


def inside(path: str, folder: str) -> bool:
    """Whether the normalized `path` is `folder` or lies under it (strings: pathlib is slow on long lists)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class _Links:
    """Where an entry's image really is, links followed: inside the resolved data root, or an error.
    Folders are resolved once each, so a list of 73,728 lines costs one lstat per line."""

    def __init__(self, root: Path):
        self.root, self.real_root = root, os.path.realpath(root)
        self.folders: dict[str, str] = {}

    def check(self, e: Entry) -> None:
        folder, name = os.path.split(os.path.normpath(e.path))
        real = self.folders.get(folder)
        if real is None:
            real = self.folders[folder] = os.path.realpath(folder)
        real = os.path.join(real, name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if not inside(real, self.real_root):
            raise UserError(f"{e.where}: image path {e.rel!r} leads through a symbolic link to {real}, outside the "
                            f"data root {self.root}: links may point only inside the data root; copy the images "
                            "into it, or set data.root to a folder that holds both")


def list_text(items: Iterable[tuple[str, int]]) -> str:
    """The text of a list file: one `relative/path label` line per item."""
    return "".join(f"{rel} {int(label)}\n" for rel, label in items)


def write_list(path, items: Iterable[tuple[str, int]]) -> None:
    """Write a list file atomically (temp file + rename)."""
    write_bytes(path, list_text(items).encode("utf-8"))
