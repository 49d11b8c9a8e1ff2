"""`python -m data prepare-vtab` on damaged archives and full disks: every fault is refused before a
byte is written (unsafe members, a truncated or corrupt tar/gz/xz, a bad zip CRC, too little free
space), or, when it strikes midway (a full disk, a read error), undone: one `error:` line, exit 2,
and the data root exactly as it was."""
import errno
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import data.unpack
from data.__main__ import main
from data.prepare import prepare_vtab
from data.unpack import LOCK, STAGING
from glora.errors import UserError

MEMBERS = {f"vtab-1k/dtd/images/{i}.png": bytes([i]) * (3000 + 100 * i) for i in range(6)}
MEMBERS.update({f"vtab-1k/dtd/{s}.txt": b"images/0.png 0\n" for s in ("train800", "val200", "train800val200", "test")})


def write_tar(path: Path, members=MEMBERS, mode="w", extra=()) -> Path:
    with tarfile.open(path, mode) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra:
            tar.addfile(info)
    return path


def write_zip(path: Path, members=MEMBERS) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return path


def tree(root: Path) -> dict:
    """Every path under root with its kind, size, modification time and bytes: what "as it was" means."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_mtime_ns, None if p.is_dir() else p.read_bytes())
            for p in [root, *sorted(root.rglob("*"))]}


@pytest.fixture
def root(tmp_path):
    """A data root that already holds something: a file of its own, and dtd's first image, different."""
    root = tmp_path / "root"
    (root / "dtd" / "images").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    (root / "dtd" / "images" / "0.png").write_bytes(b"an older, shorter copy")
    return root


def refused(capsys, archive, root, match: str) -> None:
    """The command line refuses: one error line naming the fault, exit 2, stdout empty."""
    assert main(["prepare-vtab", str(archive), "--root", str(root)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert match in err, err


def test_a_complete_run_leaves_no_staging_or_lock(tmp_path, root):
    prepare_vtab(write_tar(tmp_path / "vtab.tar.gz", mode="w:gz"), root, log=lambda *_: None)
    assert {p.name for p in root.iterdir()} == {"dtd", "notes.txt"}
    assert (root / "dtd" / "images" / "5.png").read_bytes() == MEMBERS["vtab-1k/dtd/images/5.png"]
    assert (root / "dtd" / "images" / "0.png").read_bytes() == MEMBERS["vtab-1k/dtd/images/0.png"]  # replaced
    assert not (root / STAGING).exists() and not (root / LOCK).exists()


def test_a_full_disk_midway_leaves_the_root_as_it_was(tmp_path, root, capsys, monkeypatch):
    before = tree(root)
    real, calls = data.unpack.copy, []

    def full_disk_on_the_third_file(src, out):
        calls.append(1)
        if len(calls) == 3:
            out.write(src.read(1000))  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, out)

    monkeypatch.setattr(data.unpack, "copy", full_disk_on_the_third_file)
    for archive in (write_tar(tmp_path / "vtab.tar"), write_zip(tmp_path / "vtab.zip")):
        calls.clear()
        refused(capsys, archive, root, "the disk filled up while unpacking")
        assert tree(root) == before
    calls.clear()
    refused(capsys, tmp_path / "vtab.tar", tmp_path / "new" / "root", "No space left on device")
    assert not (tmp_path / "new").exists()  # a root it made is gone again


def test_a_failure_while_moving_files_into_place_restores_what_they_replaced(tmp_path, root, monkeypatch):
    before = tree(root)
    real, moves = os.replace, []

    def replace(src, dst):
        moves.append(dst)
        if len(moves) == 5:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real(src, dst)

    monkeypatch.setattr(data.unpack.os, "replace", replace)
    with pytest.raises(UserError, match="every file of this run was removed"):
        prepare_vtab(write_tar(tmp_path / "vtab.tar"), root, log=lambda *_: None)
    monkeypatch.undo()
    assert tree(root) == before


def test_a_read_error_mid_member_leaves_no_partial_file(tmp_path, root, capsys, monkeypatch):
    before = tree(root)
    real_open = data.unpack.TarSource.open

    class Failing(io.RawIOBase):
        def __init__(self, inner):
            self.inner, self.n = inner, 0

        def readable(self):
            return True

        def readinto(self, b):
            if self.n > 2000:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            data_ = self.inner.read(min(len(b), 1000))
            b[:len(data_)] = data_
            self.n += len(data_)
            return len(data_)

    monkeypatch.setattr(data.unpack.TarSource, "open", lambda self, m: io.BufferedReader(Failing(real_open(self, m))))
    refused(capsys, write_tar(tmp_path / "vtab.tar"), root, "reading it failed midway (Input/output error)")
    assert tree(root) == before


def test_too_little_free_space_is_refused_before_writing(tmp_path, root, capsys, monkeypatch):
    before = tree(root)
    need = sum(len(v) for v in MEMBERS.values())
    monkeypatch.setattr(data.unpack.shutil, "disk_usage", lambda p: SimpleNamespace(free=need))  # no room for blocks
    refused(capsys, write_tar(tmp_path / "vtab.tar"), root, "free, but the 10 files to unpack need")
    assert tree(root) == before
    refused(capsys, tmp_path / "vtab.tar", tmp_path / "fresh", "free space or choose another --root")
    assert not (tmp_path / "fresh").exists()


def _flip(path: Path, at: int) -> Path:
    content = bytearray(path.read_bytes())
    content[at] ^= 0xFF
    path.write_bytes(content)
    return path


def test_damaged_archives_are_refused_before_anything_is_written(tmp_path, root, capsys):
    before = tree(root)
    plain = write_tar(tmp_path / "vtab.tar").read_bytes()
    gz = write_tar(tmp_path / "vtab.tar.gz", mode="w:gz").read_bytes()
    xz = write_tar(tmp_path / "vtab.tar.xz", mode="w:xz").read_bytes()
    second_header = 512 + 3072  # member 0 of 3,000 bytes: its header, its data padded to 512
    cases = {
        "cut.tar": (plain[:second_header + 1500], "damaged or cut short"),  # inside member 1's data
        "cut-at-header.tar": (plain[:second_header], "without the end-of-archive block"),
        "cut-in-header.tar": (plain[:second_header + 200], "without the end-of-archive block"),
        "cut.tar.gz": (gz[:len(gz) // 2], "damaged or cut short"),
        "trailer.tar.gz": (gz[:-4], "damaged or cut short"),
        "cut.tar.xz": (xz[:-30], "damaged or cut short"),
        "cut.zip": (write_zip(tmp_path / "z.zip").read_bytes()[:-30], "not a readable zip archive"),
        "empty.tar.gz": (b"", "not a readable tar.gz archive"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        refused(capsys, tmp_path / name, root, match)
    (tmp_path / "crc.tar.gz").write_bytes(gz)
    refused(capsys, _flip(tmp_path / "crc.tar.gz", len(gz) // 2), root, "damaged or cut short")
    data_at = write_zip(tmp_path / "crc.zip").read_bytes().index(MEMBERS["vtab-1k/dtd/images/3.png"][:100])
    refused(capsys, _flip(tmp_path / "crc.zip", data_at + 50), root, "does not read back intact (Bad CRC-32")
    garbage = bytearray(plain)
    garbage[second_header:second_header + 512] = b"x" * 512  # an unreadable header, members after it
    (tmp_path / "garbage.tar").write_bytes(garbage)
    refused(capsys, tmp_path / "garbage.tar", root, "has an unreadable header")
    assert tree(root) == before


def _special(name: str, kind: bytes, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in fields.items():
        setattr(info, k, v)
    return info


@pytest.mark.parametrize("extra,match", [
    (_special("vtab-1k/dtd/images/l.png", tarfile.SYMTYPE, linkname="/etc/passwd"), "is a symbolic link"),
    (_special("vtab-1k/dtd/images/h.png", tarfile.LNKTYPE, linkname="vtab-1k/dtd/images/0.png"), "is a hard link"),
    (_special("vtab-1k/dtd/images/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), "is a character device"),
    (_special("vtab-1k/dtd/fifo", tarfile.FIFOTYPE), "is a fifo"),
    (_special("elsewhere/link", tarfile.SYMTYPE, linkname="../../x"), "is a symbolic link"),  # outside a task too
    (_special("/abs/dtd/x.png", tarfile.REGTYPE), "would be written outside the data root"),
    (_special("vtab-1k/dtd/../../x.png", tarfile.REGTYPE), "would be written outside the data root"),
])
def test_unsafe_members_refuse_the_archive_before_anything_is_written(tmp_path, root, capsys, extra, match):
    before = tree(root)
    refused(capsys, write_tar(tmp_path / "vtab.tar", extra=[extra]), root, match)
    assert tree(root) == before


def test_a_zip_symlink_and_a_file_in_the_way_are_refused(tmp_path, root, capsys):
    before = tree(root)
    path = write_zip(tmp_path / "vtab.zip")
    with zipfile.ZipFile(path, "a") as z:
        info = zipfile.ZipInfo("vtab-1k/dtd/images/link.png")
        info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    refused(capsys, path, root, "is a symbolic link")
    clash = {**MEMBERS, "vtab-1k/dtd/images/0.png/inner.png": b"x"}  # a file and a folder of one name
    refused(capsys, write_tar(tmp_path / "clash.tar", clash), root, "two members of the source write this path")
    (root / "dtd" / "images" / "3.png").mkdir()  # a folder where a file goes
    before = tree(root)
    refused(capsys, write_tar(tmp_path / "vtab.tar"), root, "a folder of that name is in the way")
    assert tree(root) == before
