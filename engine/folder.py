"""A stage's output folder: a lock against a second run in it, retiring a previous run, stale temp files.

A fresh run moves everything of the previous run of the stage (checkpoint, outputs, log, TensorBoard
curves, run record) into `previous/<its run id>/`, so that nothing old can be resumed or read as new;
`previous/` is the user's to delete.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
from pathlib import Path
from typing import Optional

from glora.errors import UserError

LOCK = ".lock"
PREVIOUS = "previous"
# What a stage keeps besides its outputs: the run record and resolved config, its log, curves and checkpoint.
BOOKKEEPING = ("run.yaml", "config.yaml", "log.txt", "tb", "checkpoint")


def os_error_message(e: OSError) -> str:
    """One line for an OS error on an output path: what happened to which file, and the fix."""
    where = f"{e.filename}: " if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "the disk (or your quota) is full: free space, or set output to another disk"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "not writable: fix its permissions, or set output to a writable folder"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "a file is in the way of a folder: move it, or set output to another folder"
    else:
        fix = "check the output folder"
    return f"{where}{e.strerror or e}; {fix}"


class StageFolder:
    """`<output>/<stage>/`, held by one run at a time (an exclusive flock on its `.lock` file)."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None

    def check(self) -> None:
        """Before any work: the folder exists or can be made (no file in the way, the place is writable)."""
        for p in (self.path, *self.path.parents):
            if p.exists():
                if not p.is_dir():
                    raise UserError(f"cannot make the output folder {self.path}: {p} is a file; move it, or "
                                    "set output to another folder")
                if not os.access(p, os.W_OK | os.X_OK):
                    raise UserError(f"cannot write in {p} (read-only, or not yours): set output to a writable folder")
                return

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def lock(self) -> None:
        """Create the folder and take its lock, or say which run holds it. The lock ends with the process."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(self.path / LOCK, "a+")
        except OSError as e:
            raise UserError(f"cannot use the output folder {self.path}: {os_error_message(e)}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(f"{self.path} is in use by another run ({holder}): wait for it to end, or set "
                            "output to another folder") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._lock = f

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def contents(self) -> list[Path]:
        """Everything of the current run: all but the lock and previous runs."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name not in (LOCK, PREVIOUS))

    def outputs(self) -> list[Path]:
        """The files the current run wrote for others to read (all but its bookkeeping and temp files)."""
        return sorted(p for top in self.contents() if top.name.removesuffix(".new").removesuffix(".old") not in BOOKKEEPING
                      and not top.name.startswith(".")
                      for p in ([top] if top.is_file() else top.rglob("*"))
                      if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp")))

    def retire(self, name: str) -> Optional[Path]:
        """Move the current contents into `previous/<name>/`; returns that folder (None if empty)."""
        contents = self.contents()
        if not contents:
            return None
        target = self.path / PREVIOUS / name
        n = 1
        while target.exists():
            n += 1
            target = self.path / PREVIOUS / f"{name}.{n}"
        target.mkdir(parents=True)
        for p in contents:
            p.rename(target / p.name)
        return target

    def clean(self) -> list[Path]:
        """Remove what killed writes left: atomic-write temp files and half-written checkpoint folders.

        Only the lock holder writes here, so every temp file is stale. A checkpoint caught between
        its two renames (`name.old` complete, `name` gone) is renamed back.
        """
        removed = []
        for p in sorted(self.path.rglob("*")):
            if PREVIOUS in p.relative_to(self.path).parts[:1] or not p.exists():
                continue
            if p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink()
                removed.append(p)
            elif p.is_dir() and p.name.endswith(".new"):
                shutil.rmtree(p)
                removed.append(p)
            elif p.is_dir() and p.name.endswith(".old"):
                done = p.with_name(p.name[:-len(".old")])
                if done.exists():
                    shutil.rmtree(p)
                    removed.append(p)
                else:
                    p.rename(done)
        return removed
