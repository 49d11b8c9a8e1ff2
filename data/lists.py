"""The VTAB-1k folder layout (`<root>/<task>/<split>.txt` plus images) and its list files."""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from glora.errors import UserError
from glora.io import write_bytes


SPLITS = ("train800", "val200", "train800val200", "test")
LAYOUT_HINT = ("prepare each task as <root>/<task>/{train800,val200,train800val200,test}.txt plus "
               "images, the VTAB-1k layout of the NOAH/GLoRA releases (`python -m data build-demo "
               "--root <root>` writes an example)")
_LABEL = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Entry:
    """One list line: the image (relative to the task folder and absolute), its label, its place."""

    rel: str
    path: Path
    label: int
    where: str  # "list_file:line", for error messages


def task_dir(root, task: str) -> Path:
    """`<root>/<task>`, checked to exist."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist: set data.root to the folder holding the "
                        f"task folders; {LAYOUT_HINT}")
    folder = root / task
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        shown = ", ".join(found[:20]) + (", ..." if len(found) > 20 else "") or "none"
        raise UserError(f"task folder {folder} does not exist (tasks under {root}: {shown}): {LAYOUT_HINT}")
    return folder


def list_path(root, task: str, split: str) -> Path:
    """`<root>/<task>/<split>.txt`, checked to exist."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    path = task_dir(root, task) / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"list file {path} does not exist: {LAYOUT_HINT}")
    return path


def read_list(path, root=None, problems: list[str] | None = None) -> list[Entry]:
    """Parse a list file: one `relative/path label` per line, split on the last whitespace.

    A UTF-8 byte-order mark is dropped. Every path must stay inside the data `root` (default: the
    folder above the task folder, `<root>/<task>/<split>.txt`). A bad line raises a UserError; with
    a `problems` list, each bad line is appended there instead and skipped.
    """
    path = Path(path)
    root = Path(os.path.normpath(path.parent.parent if root is None else Path(root).expanduser()))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"list file {path} does not exist: {LAYOUT_HINT}") from None
    except UnicodeDecodeError:
        raise UserError(f"list file {path} is not UTF-8 text: {LAYOUT_HINT}") from None
    entries, bad = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        try:
            entry = _parse_line(path, lineno, line, root)
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


def _parse_line(path: Path, lineno: int, line: str, root: Path) -> Entry | None:
    fields = line.strip().rsplit(None, 1)
    if not fields:
        return None
    if len(fields) != 2 or not _LABEL.fullmatch(fields[1]):
        raise UserError(f"{path}:{lineno}: malformed line {line!r}: expected "
                        f"'<relative/image/path> <integer label>'")
    rel, label = fields
    image = path.parent / rel
    if Path(rel).is_absolute() or not Path(os.path.normpath(image)).is_relative_to(root):
        raise UserError(f"{path}:{lineno}: image path {rel!r} leaves the data root {root}: "
                        f"give paths relative to the task folder, inside the data root")
    return Entry(rel, image, int(label), f"{path}:{lineno}")


def list_text(items: Iterable[tuple[str, int]]) -> str:
    """The text of a list file: one `relative/path label` line per item."""
    return "".join(f"{rel} {int(label)}\n" for rel, label in items)


def write_list(path, items: Iterable[tuple[str, int]]) -> None:
    """Write a list file atomically (temp file + rename)."""
    write_bytes(path, list_text(items).encode("utf-8"))
