"""Unpacking an archive (zip, tar, tar.gz/bz2/xz) or copying a folder into a data root, all or nothing.

Before anything is written: the whole member list is read (a tar's headers end to end, its
compressed stream to its end, so a truncated or corrupt tar/gz/bz2/xz fails here); a member that
is not a plain file or folder (a link, a device), or whose name would land outside the root
(absolute, `..`), refuses the archive; a zip's members to unpack are read once to test their CRCs;
and the free space must hold their sizes (rounded to the disk's blocks) plus a margin. Then the
files are written into a staging folder inside the root and, once every one is complete, renamed
into place (a file they replace is moved back if the renames fail). On any failure, a full disk or
a read error mid-member included, everything this run wrote is removed and the root is as it was.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import lzma
import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable

from glora.errors import UserError

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
STAGING = ".prepare-vtab.tmp"  # inside the root while a run writes; gone when it ends
LOCK = ".prepare-vtab.lock"
MARGIN = 1 << 20  # bytes left free beyond what the files take (plus 1% of it)
CHUNK = 1 << 20
# What reading a damaged archive raises (zlib, lzma and struct errors escape tarfile and zipfile here and there).
_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError,
           zlib.error, lzma.LZMAError, struct.error)


@dataclass(frozen=True)
class Member:
    """One entry of the source: its name (POSIX, relative), size in bytes and kind."""

    name: str
    size: int
    kind: str  # "file", "folder", or what else it is ("symbolic link", "device", ...)


class Source:
    """An archive or folder to unpack: its members, a check of their bytes, and a reader for each."""

    def __init__(self, path: Path):
        self.path = path

    def members(self) -> list[Member]:
        raise NotImplementedError

    def verify(self, members: list[Member]) -> None:
        """Raise a UserError if the bytes of `members` cannot be read intact (before any write)."""

    def open(self, member: Member) -> BinaryIO:
        raise NotImplementedError

    def link(self, member: Member, dest: str) -> bool:
        """Put the member at `dest` without copying it, where the source allows (a folder on the same disk)."""
        return False

    def costs_space(self, member: Member, root: Path) -> bool:
        return True

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def damaged(self, what: str) -> UserError:
        return UserError(f"{self.path}: {what}: the archive is damaged or cut short; download it again "
                         "(nothing was written)")


def open_source(path: Path) -> Source:
    """The folder, zip or tar at `path`, its member list read whole; a damaged archive is a UserError."""
    if path.is_dir():
        return FolderSource(path)
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: cannot read it (permission denied): fix its permissions or copy it elsewhere")
    if zipfile.is_zipfile(path):
        return ZipSource(path)
    try:
        return TarSource(path)
    except tarfile.ReadError as e:
        if path.name.lower().endswith(ARCHIVES):
            kind = _suffix(path)
            why = "its end, the member list, is missing" if kind == "zip" else str(e).splitlines()[0].rstrip(":")
            raise UserError(f"{path}: not a readable {kind} archive ({why}): it is damaged or cut short; "
                            "download it again (nothing was written)") from None
        raise UserError(f"{path}: neither a folder nor a zip or tar archive ({', '.join(ARCHIVES)})") from None
    except _BROKEN as e:
        raise UserError(f"{path}: cannot read the archive ({_reason(e)}): it is damaged or cut short; "
                        "download it again (nothing was written)") from None


class ZipSource(Source):
    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self.zip = zipfile.ZipFile(path)
            self.infos = {i.filename: i for i in self.zip.infolist()}
        except _BROKEN as e:
            raise self.damaged(f"cannot read its member list ({_reason(e)})") from None

    def members(self) -> list[Member]:
        return [Member(i.filename.rstrip("/"), i.file_size, _zip_kind(i)) for i in self.infos.values()]

    def verify(self, members: list[Member]) -> None:
        for m in members:  # every byte read once, so zipfile checks each CRC-32
            try:
                with self.open(m) as f:
                    while f.read(CHUNK):
                        pass
            except _BROKEN as e:
                raise self.damaged(f"member {m.name!r} does not read back intact ({_reason(e)})") from None

    def open(self, member: Member) -> BinaryIO:
        info = self.infos.get(member.name) or self.infos[member.name + "/"]
        return self.zip.open(info)

    def close(self) -> None:
        self.zip.close()


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.is_dir():
        return "folder"
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode and not stat.S_ISREG(mode):  # made on Unix: the mode says what it is
        return _kind(mode)
    return "file"


class TarSource(Source):
    def __init__(self, path: Path):
        super().__init__(path)
        self.tar = tarfile.open(path)  # a ReadError here: not a tar, or one too short to hold a header
        try:
            self.infos = {}
            for m in self.tar.getmembers():  # every header, end to end
                self.infos[m.name.rstrip("/")] = m
            self._check_end()
        except _BROKEN as e:
            self.tar.close()
            raise self.damaged(f"its member list does not read to the end ({_reason(e)})") from None
        except UserError:
            self.tar.close()
            raise

    def _check_end(self) -> None:
        """The archive ends where a tar ends: a whole zero block after the last member, and nothing
        but zeros after it (tarfile stops quietly at a cut or unreadable header). Reading on to the
        end of a compressed stream is also where gzip, bz2 and xz check it."""
        f = self.tar.fileobj
        if f.tell() < self.tar.offset + 512:
            raise self.damaged(f"it ends after {len(self.infos)} members without the end-of-archive block")
        while chunk := f.read(CHUNK):
            if chunk.count(0) != len(chunk):
                raise self.damaged(f"member {len(self.infos) + 1} has an unreadable header")

    def members(self) -> list[Member]:
        return [Member(name, m.size if m.isfile() else 0, _tar_kind(m)) for name, m in self.infos.items()]

    def open(self, member: Member) -> BinaryIO:
        return self.tar.extractfile(self.infos[member.name])

    def close(self) -> None:
        self.tar.close()


def _tar_kind(m: tarfile.TarInfo) -> str:
    if m.isfile():
        return "file"
    if m.isdir():
        return "folder"
    return {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
            tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}.get(m.type, f"tar member of type {m.type!r}")


class FolderSource(Source):
    """A folder: its plain files (symbolic links in it are left out), hard-linked where the root is on
    the same disk, else copied."""

    def members(self) -> list[Member]:
        found = []
        for folder, dirs, files in os.walk(self.path):
            for name in files:
                p = Path(folder) / name
                st = p.lstat()
                if stat.S_ISREG(st.st_mode):
                    found.append(Member(p.relative_to(self.path).as_posix(), st.st_size, "file"))
        return found

    def open(self, member: Member) -> BinaryIO:
        return open(self.path / member.name, "rb")

    def link(self, member: Member, dest: str) -> bool:
        try:
            os.link(self.path / member.name, dest)
            return True
        except OSError:
            return False

    def costs_space(self, member: Member, root: Path) -> bool:
        return os.stat(self.path / member.name).st_dev != self._device(root)

    @functools.cache
    def _device(self, root: Path) -> int:
        return os.stat(root).st_dev


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "file"


def refuse_unsafe(source: Source, members: Iterable[Member]) -> None:
    """Refuse an archive with a member that is neither a file nor a folder, or whose name leaves the root."""
    for m in members:
        parts = PurePosixPath(m.name).parts
        if m.name.startswith("/") or "\\" in m.name or "\0" in m.name or ".." in parts or (parts and ":" in parts[0]):
            raise UserError(f"{source.path}: member {m.name!r} would be written outside the data root: refusing "
                            "the archive (nothing was written)")
        if m.kind not in ("file", "folder"):
            raise UserError(f"{source.path}: member {m.name!r} is a {m.kind}; a VTAB-1k archive holds files and "
                            "folders only: refusing it (nothing was written); unpack and check it yourself, then "
                            "give the folder")


def unpack(source: Source, plan: dict[Member, Path], root: Path, log=print) -> int:
    """Write each planned member to its destination under `root`, all or nothing; returns the number
    written. A destination that already holds a file of the member's size is left as it is."""
    todo = _to_write(plan, root)
    if not todo:
        return 0
    _check_space(source, list(todo.values()), root)
    source.verify(list(todo.values()))
    staging = root / STAGING
    moved: list[tuple[Path, Path | None]] = []  # (dest, its previous file's place in staging)
    made: list[Path] = []  # folders this run created
    times = {f: _times(f) for f in {d.parent for d in todo} | {root} if f.is_dir()}  # what undoing sets back
    try:
        staged, new = {}, staging / "new"
        new.mkdir(parents=True)
        for i, (dest, m) in enumerate(todo.items()):
            staged[dest] = tmp = os.path.join(new, str(i))
            _stage(source, m, tmp)
        existing: set[Path] = set()
        for i, (dest, tmp) in enumerate(staged.items()):
            if dest.parent not in existing:
                made += _mkdirs(dest.parent)
                existing.add(dest.parent)
            old = None
            if os.path.lexists(dest):
                old = staging / "old" / str(i)
                old.parent.mkdir(exist_ok=True)
                os.replace(dest, old)
            moved.append((dest, old))
            os.replace(tmp, dest)
    except BaseException as e:
        _undo(moved, made)
        shutil.rmtree(staging, ignore_errors=True)
        for folder, (atime, mtime) in times.items():
            os.utime(folder, ns=(atime, mtime))
        if isinstance(e, UserError):
            raise
        if isinstance(e, _BROKEN):
            raise _failure(source, e) from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return len(todo)


def _to_write(plan: dict[Member, Path], root: Path) -> dict[Path, Member]:
    """The destinations that need writing (not already a file of the member's size), each checked:
    no two members on one path or a file where another needs a folder, no link leading out of the
    root, nothing in the way. Paths as strings and folders checked once: VTAB-1k holds 400,000 files."""
    top, real_root = os.fspath(root), os.path.realpath(root)
    files = {os.fspath(d): m for m, d in plan.items()}
    twice = [f for f, n in Counter(os.fspath(d) for d in plan.values()).items() if n > 1]
    folders: set[str] = set()
    for f in files:
        folder = os.path.dirname(f)
        while folder not in folders and folder != top and len(folder) > len(top):
            folders.add(folder)
            folder = os.path.dirname(folder)
    clash = sorted(twice) or sorted(folders.intersection(files))
    if clash:
        raise UserError(f"{clash[0]}: two members of the source write this path (or a folder of it): refusing the "
                        "source (nothing was written)")
    checked: set[str] = set()
    todo = {}
    for dest, m in files.items():
        folder = os.path.dirname(dest)
        if folder not in checked:
            _check_folder(folder, top, real_root)
            checked.add(folder)
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode) and not _inside(os.path.realpath(dest), real_root):
            raise UserError(f"{dest}: a link in the data root leads outside it; remove it and prepare again "
                            "(nothing was written)")
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise UserError(f"{dest}: a folder of that name is in the way; move it and prepare again (nothing was "
                            "written)")
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == m.size:
            continue  # there already (a second run, or a second archive over the same root)
        todo[Path(dest)] = m
    return todo


def _check_folder(folder: str, top: str, real_root: str) -> None:
    """A destination folder leads nowhere outside the root (a link) and no file stands where it must be."""
    if not _inside(os.path.realpath(folder), real_root):
        raise UserError(f"{folder}: a link in the data root leads outside it; remove it and prepare again "
                        "(nothing was written)")
    while len(folder) > len(top):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UserError(f"the file {folder} is in the way of a folder to unpack into; move it and prepare again "
                            "(nothing was written)")
        folder = os.path.dirname(folder)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_space(source: Source, members: list[Member], root: Path) -> None:
    """Refuse before writing when the free space would not hold the files (each rounded up to the
    disk's blocks, plus a block for its metadata) and a margin."""
    block = os.statvfs(root).f_frsize or 4096
    need = sum(-(-m.size // block) * block + block for m in members if source.costs_space(m, root))
    margin = MARGIN + need // 100
    free = shutil.disk_usage(root).free
    if need + margin > free:
        raise UserError(f"{root}: {_size(free)} free, but the {len(members)} files to unpack need {_size(need)} "
                        f"(and {_size(margin)} to spare): free space or choose another --root (nothing was written)")


def _stage(source: Source, m: Member, tmp: str) -> None:
    if source.link(m, tmp):
        return
    with source.open(m) as src, open(tmp, "wb") as out:
        written = copy(src, out)
    if written != m.size:
        raise source.damaged(f"member {m.name!r} holds {written} of its {m.size} bytes")


def copy(src: BinaryIO, out: BinaryIO) -> int:
    """Copy a stream chunk by chunk; returns the bytes written."""
    n = 0
    while chunk := src.read(CHUNK):
        out.write(chunk)
        n += len(chunk)
    return n


def _times(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_atime_ns, st.st_mtime_ns


def _mkdirs(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those it created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    for p in missing:
        p.mkdir()
    return missing


def _undo(moved: list[tuple[Path, Path | None]], made: list[Path]) -> None:
    for dest, old in reversed(moved):
        try:
            if old is not None and old.exists():
                os.replace(old, dest)
            elif old is None:
                dest.unlink(missing_ok=True)
        except OSError:
            pass
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            pass


def _failure(source: Source, e: BaseException) -> UserError:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return UserError(f"the disk filled up while unpacking {source.path} ({_reason(e)}): every file of this run "
                         "was removed; free space and run again")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write into the data root ({_reason(e)}): every file of this run was removed; "
                         "choose a writable --root")
    return source.damaged(f"reading it failed midway ({_reason(e)}); every file of this run was removed")


class RootLock:
    """The data root, created if needed and held by this run alone (an exclusive flock on its lock
    file); on exit the lock file, and a root this run created and left empty, are removed."""

    def __init__(self, root: Path):
        self.root = root
        self.made: list[Path] = []
        self.file = None
        self.times = None

    def __enter__(self) -> Path:
        self.times = _times(self.root) if self.root.is_dir() else None
        try:
            self.made = _mkdirs(self.root)
            self.file = open(self.root / LOCK, "a")
        except OSError as e:
            self._release()
            raise UserError(f"cannot use {self.root} as the data root ({_reason(e)}): choose a writable --root") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            self.file = None
            raise UserError(f"{self.root}: another prepare-vtab is writing into it; wait for it to end") from None
        except OSError:  # a file system without locks: one run at a time is then the user's to keep
            pass
        shutil.rmtree(self.root / STAGING, ignore_errors=True)  # a killed run's: no run holds the lock
        return self.root

    def __exit__(self, kind, *exc) -> None:
        self._release()
        if kind is not None and self.times is not None:  # a failed run: the root's times as they were
            os.utime(self.root, ns=self.times)

    def _release(self) -> None:
        if self.file is not None:
            (self.root / LOCK).unlink(missing_ok=True)
            self.file.close()
            self.file = None
        for folder in reversed(self.made):
            try:
                folder.rmdir()  # only if this run left it empty
            except OSError:
                break


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s.lstrip(".") for s in sorted(ARCHIVES, key=len, reverse=True) if name.endswith(s)), "archive")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    return " ".join(str(e).split()) or type(e).__name__


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
