"""Decode-once cache: a split decoded and resized once into uint8 images, kept as a safetensors file.

A cache file is keyed by a hash of the list's entries, each image file's size, modification time,
inode number and status-change time, the image size, the resize method and FORMAT_VERSION; on load
it is checked against the list, and anything stale or unreadable is rebuilt. A copy that keeps size
and modification time (`cp -p`, `rsync -a`, `tar x` of a corrected image) still writes the file, and
that sets its status-change time (and, but for `cp -p` onto the old file, gives it a new inode),
which nothing can set back. It is written chunk by chunk and read batch by batch (`CachedImages`), so
neither building nor reading it holds more than a chunk or a batch of images, however large the split.

A cache file is built under a temp name, locked while written, and renamed into place: a build that
is killed leaves a temp file no reader looks at, and the next build of that file removes it.
"""

import errno
import fcntl
import glob
import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from tqdm import tqdm

from glora.errors import UserError
from glora.io import atomic_write

from .lists import Entry
from .transforms import decode_image, resample_mode

FORMAT_VERSION = 2  # 2: 16-bit and float images read by data/modes.py (1 clipped them)
CHUNK = 256  # images decoded between two writes of a cache file: what building one holds
_log = logging.getLogger(__name__)


def default_workers() -> int:
    # PIL releases the GIL while decoding and resizing, so threads scale with the cores.
    return min(8, os.cpu_count() or 1)


def decode_chunks(
        entries: list[Entry],
        img_size: int = 224,
        interpolation: str = "bicubic",
        workers: int | None = None,
        desc: str = "decode",
        chunk: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Decode and resize the entries' images in list order, `chunk` at a time: yields (start, uint8
    (n, 3, img_size, img_size)), `chunk` defaulting to CHUNK. The yielded tensor is refilled by the
    next chunk: use it first. A UserError names the first bad image in the list."""
    resample_mode(interpolation)  # a bad name fails here, once, rather than in every thread
    chunk = chunk or CHUNK
    buffer = torch.empty((min(chunk, len(entries)), 3, img_size, img_size), dtype=torch.uint8)

    def decode(slot: int, e: Entry) -> None:
        try:
            buffer[slot] = decode_image(e.path, img_size, interpolation)
        except UserError as exc:
            raise UserError(f"{e.where}: {exc}") from None

    pool = ThreadPoolExecutor(max_workers=workers or default_workers())
    # disable=None shows the bar in a terminal and keeps it out of logs and pipes.
    bar = tqdm(total=len(entries), desc=desc, unit="img", leave=False, disable=None)
    try:
        for start in range(0, len(entries), chunk):
            part = entries[start:start + chunk]
            # map yields in list order, so the first bad image of the chunk is the one reported.
            for _ in pool.map(decode, range(len(part)), part):
                bar.update()
            yield start, buffer[:len(part)]
    finally:
        bar.close()
        pool.shutdown(cancel_futures=True)


def decode_split(
        entries: list[Entry],
        img_size: int = 224,
        interpolation: str = "bicubic",
        workers: int | None = None,
        desc: str = "decode",
) -> torch.Tensor:
    """Decode and resize every entry's image, in list order: a uint8 (N, 3, img_size, img_size)."""
    images = torch.empty((len(entries), 3, img_size, img_size), dtype=torch.uint8)
    for start, chunk in decode_chunks(entries, img_size, interpolation, workers, desc):
        images[start:start + len(chunk)] = chunk
    return images




def cache_key(entries: list[Entry], img_size: int, interpolation: str) -> str:
    """Hash of everything the decoded tensor depends on: the list, the size and method, and each
    image file's size, modification time, inode and status-change time (an image edited in place,
    or replaced by a copy that keeps size and modification time, changes the key)."""
    h = hashlib.sha256(f"v{FORMAT_VERSION} {img_size} {interpolation}\n".encode())
    for e in entries:
        try:
            st = os.stat(e.path)
            stamp = f"{st.st_size} {st.st_mtime_ns} {st.st_ino} {st.st_ctime_ns}"
        except OSError:  # decoding it will say what is wrong
            stamp = "unreadable"
        h.update(f"{e.rel}\t{e.label}\t{stamp}\n".encode())
    return h.hexdigest()


def cache_file(cache_dir, split: str, img_size: int, interpolation: str) -> Path:
    """Where a split's cache lives: one file per (split, size, method); the key is inside."""
    return Path(cache_dir) / f"{split}_{img_size}_{interpolation}.safetensors"


class CachedImages:
    """A split's uint8 images (N, 3, H, W) in its cache file, read on demand.

    `images[rows]` (a slice, or a 1-D index tensor) reads just those rows into a new tensor, and
    nothing is mapped or kept: memory holds what was asked for, never the file. It stands in for
    the tensor wherever a split's images are only sliced, indexed or moved (`.to(device)` reads all).
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __init__(self, path, offset: int, shape: tuple[int, ...]):
        self.path, self.offset, self.shape = Path(path), offset, torch.Size(shape)
        self.row_bytes = math.prod(shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape.numel()

    def __getitem__(self, rows) -> torch.Tensor:
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step != 1:
                raise ValueError("CachedImages reads contiguous slices or index tensors")
            runs = [(start, max(stop - start, 0))]  # one read for the whole slice
        else:
            runs = [(i, 1) for i in torch.as_tensor(rows).tolist()]
        out = torch.empty((sum(n for _, n in runs), *self.shape[1:]), dtype=torch.uint8)
        if out.numel() == 0:
            return out
        buffer, at = memoryview(out.numpy()).cast("B"), 0
        with open(self.path, "rb") as f:
            for start, n in runs:
                size = n * self.row_bytes
                f.seek(self.offset + start * self.row_bytes)
                if f.readinto(buffer[at:at + size]) != size:
                    raise UserError(f"{self.path}: the cache file was cut short while in use; delete it "
                                    "and run again to rebuild it")
                at += size
        return out

    def to(self, device) -> torch.Tensor:
        """The whole split, read now, as a tensor on `device`."""
        return self[:].to(device)


def _header(labels: torch.Tensor, shape: tuple[int, ...], metadata: dict[str, str]) -> bytes:
    """The safetensors header of a cache file, laid out as safetensors.torch.save_file lays it out:
    labels (int64) first, then the images (uint8), the JSON padded with spaces to 8 bytes."""
    n_labels, n_images = labels.numel() * 8, math.prod(shape)
    header = {"__metadata__": metadata,
              "labels": {"dtype": "I64", "shape": [labels.numel()], "data_offsets": [0, n_labels]},
              "images": {"dtype": "U8", "shape": list(shape), "data_offsets": [n_labels, n_labels + n_images]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _images_offset(path) -> int:
    """Where the images begin in a cache file: past the header and the labels."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return 8 + size + json.loads(f.read(size))["images"]["data_offsets"][0]


def load_cache(path, key: str, labels: torch.Tensor, img_size: int) -> CachedImages | None:
    """The cached images if `path` holds exactly this split at this size, else None (rebuild).

    Only the header and labels are read here; the images are read when used.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                _log.info("rebuilding cache %s: made from another list, size or method", path)
                return None
            if set(f.keys()) != {"images", "labels"}:
                raise ValueError(f"holds {sorted(f.keys())}")
            images, cached_labels = f.get_slice("images"), f.get_tensor("labels")
            dtype, shape = images.get_dtype(), tuple(images.get_shape())
        n = len(labels)
        if dtype != "U8" or shape != (n, 3, img_size, img_size):
            raise ValueError(f"images are {dtype} {shape}")
        if cached_labels.dtype != torch.int64 or not torch.equal(cached_labels, labels):
            raise ValueError("labels differ from the list")
        return CachedImages(path, _images_offset(path), shape)
    except Exception as exc:  # any failure to read or match means the file cannot be trusted
        _log.warning("rebuilding cache %s: %s", path, " ".join(str(exc).split()))
        return None


def write_cache(path, entries: list[Entry], labels: torch.Tensor, key: str, img_size: int = 224,
                interpolation: str = "bicubic", workers: int | None = None, desc: str = "decode") -> CachedImages:
    """Decode a split into its cache file chunk by chunk (atomically: a temp file, then a rename).

    The file is the safetensors file of {"images", "labels"} that save_file would write, made
    without ever holding the whole split.
    """
    shape = (len(entries), 3, img_size, img_size)
    header = _header(labels, shape, {"key": key, "format_version": str(FORMAT_VERSION)})

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            _lock(f)  # held until closed, or until this process dies: see remove_dead_temps
            f.write(header)
            f.write(labels.to(torch.int64).contiguous().numpy().tobytes())
            for _, chunk in decode_chunks(entries, img_size, interpolation, workers, desc):
                f.write(memoryview(chunk.numpy()).cast("B"))

    remove_dead_temps(path)
    atomic_write(path, write)
    return CachedImages(path, len(header) + labels.numel() * 8, shape)


def _lock(f) -> None:
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:  # a file system without locks: the temp file of a killed build then stays
        pass


def remove_dead_temps(path) -> list[Path]:
    """Remove the temp files of `path` whose writer is gone (a build killed mid-write): no lock on
    them, and not the empty file of a build that has just begun. Returns what it removed."""
    path, removed = Path(path), []
    for tmp in map(Path, glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp"))):
        try:
            with open(tmp, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                st = os.fstat(f.fileno())
                if st.st_size == 0 and time.time() - st.st_mtime < 60:
                    continue  # made by a build that is about to lock it
                tmp.unlink()
        except (BlockingIOError, FileNotFoundError):
            continue  # being written, or already gone
        except OSError as exc:  # no locks here (some network file systems): who writes it is unknown
            if exc.errno == errno.ENOLCK:
                continue
            _log.warning("cannot remove %s, left by a killed build (%s)", tmp, " ".join(str(exc).split()))
            continue
        _log.info("removed %s, left by a killed build", tmp)
        removed.append(tmp)
    return removed


def cached_images(
        entries: list[Entry],
        labels: torch.Tensor,
        cache_dir,
        *,
        split: str,
        img_size: int = 224,
        interpolation: str = "bicubic",
        workers: int | None = None,
        desc: str = "decode",
) -> CachedImages | torch.Tensor:
    """A split's uint8 images from its cache file, decoding and writing them first if needed (in
    memory only if the cache cannot be written)."""
    key = cache_key(entries, img_size, interpolation)
    path = cache_file(cache_dir, split, img_size, interpolation)
    images = load_cache(path, key, labels, img_size)
    if images is not None:
        return images
    _log.info("decoding %d images once, to cache them at %s", len(entries), path)
    try:
        images = write_cache(path, entries, labels, key, img_size, interpolation, workers, desc)
        _log.info("cached %d images at %s", len(images), path)
        return images
    except OSError as exc:
        # A read-only data folder should not stop a run: it only loses the cache.
        _log.warning("cannot write cache %s (%s); set data.cache_dir to a writable folder",
                     path, " ".join(str(exc).split()))
    return decode_split(entries, img_size, interpolation, workers, desc)
