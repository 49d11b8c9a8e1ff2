"""Decode-once cache: a split decoded and resized once into uint8 tensors, kept as safetensors.

A cache file is keyed by a hash of the list's entries, the image size, the resize method and
FORMAT_VERSION; on load it is checked against the list, and anything stale or unreadable is rebuilt.
NOTE: an image file edited in place, with its list unchanged, is not noticed: delete the cache folder.
"""

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from glora.errors import UserError
from glora.io import save_tensors

from .lists import Entry
from .transforms import decode_image, resample_mode

FORMAT_VERSION = 1
_log = logging.getLogger(__name__)


def default_workers() -> int:
    # PIL releases the GIL while decoding and resizing, so threads scale with the cores.
    return min(8, os.cpu_count() or 1)


def decode_split(
        entries: list[Entry],
        img_size: int = 224,
        interpolation: str = "bicubic",
        workers: int | None = None,
        desc: str = "decode",
) -> torch.Tensor:
    """Decode and resize every entry's image, in list order: a uint8 (N, 3, img_size, img_size)."""
    images = torch.empty((len(entries), 3, img_size, img_size), dtype=torch.uint8)
    _decode_each(entries, img_size, interpolation, workers, desc, images.__setitem__)
    return images


def check_images(
        entries: list[Entry],
        img_size: int = 224,
        interpolation: str = "bicubic",
        workers: int | None = None,
        desc: str = "check",
) -> None:
    """Decode and resize every entry's image, keeping none: a UserError names the first bad one."""
    _decode_each(entries, img_size, interpolation, workers, desc, lambda i, image: None)


def _decode_each(entries, img_size, interpolation, workers, desc, store) -> None:
    resample_mode(interpolation)  # a bad name fails here, once, rather than in every thread

    def decode(i: int) -> None:
        try:
            store(i, decode_image(entries[i].path, img_size, interpolation))
        except UserError as exc:
            raise UserError(f"{entries[i].where}: {exc}") from None

    pool = ThreadPoolExecutor(max_workers=workers or default_workers())
    try:
        # map yields in list order, so the first bad image in the list is the one reported;
        # disable=None shows the bar in a terminal and keeps it out of logs and pipes.
        for _ in tqdm(pool.map(decode, range(len(entries))), total=len(entries), desc=desc,
                      unit="img", leave=False, disable=None):
            pass
    finally:
        pool.shutdown(cancel_futures=True)


def cache_key(entries: list[Entry], img_size: int, interpolation: str) -> str:
    """Hash of everything the decoded tensor depends on, except the image files' bytes."""
    h = hashlib.sha256(f"v{FORMAT_VERSION} {img_size} {interpolation}\n".encode())
    for e in entries:
        h.update(f"{e.rel}\t{e.label}\n".encode())
    return h.hexdigest()


def cache_file(cache_dir, split: str, img_size: int, interpolation: str) -> Path:
    """Where a split's cache lives: one file per (split, size, method); the key is inside."""
    return Path(cache_dir) / f"{split}_{img_size}_{interpolation}.safetensors"


def load_cache(path, key: str, labels: torch.Tensor, img_size: int) -> torch.Tensor | None:
    """The cached images if `path` holds exactly this split at this size, else None (rebuild).

    The images stay memory-mapped from the file: pages are read on first use.
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
            images, cached_labels = f.get_tensor("images"), f.get_tensor("labels")
        n = len(labels)
        if images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, img_size, img_size):
            raise ValueError(f"images are {images.dtype} {tuple(images.shape)}")
        if cached_labels.dtype != torch.int64 or not torch.equal(cached_labels, labels):
            raise ValueError("labels differ from the list")
    except Exception as exc:  # any failure to read or match means the file cannot be trusted
        _log.warning("rebuilding cache %s: %s", path, " ".join(str(exc).split()))
        return None
    return images


def save_cache(path, images: torch.Tensor, labels: torch.Tensor, key: str) -> None:
    """Write a split's cache atomically."""
    meta = {"key": key, "format_version": str(FORMAT_VERSION)}
    save_tensors(path, {"images": images, "labels": labels}, meta)


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
) -> torch.Tensor:
    """A split's uint8 images from its cache file, decoding and saving them first if needed."""
    key = cache_key(entries, img_size, interpolation)
    path = cache_file(cache_dir, split, img_size, interpolation)
    images = load_cache(path, key, labels, img_size)
    if images is not None:
        return images
    _log.info("decoding %d images once, to cache them at %s", len(entries), path)
    images = decode_split(entries, img_size, interpolation, workers, desc)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_cache(path, images, labels, key)
        _log.info("cached %d images at %s", len(images), path)
    except OSError as exc:
        # A read-only data folder should not stop a run: it only loses the cache.
        _log.warning("cannot write cache %s (%s); set data.cache_dir to a writable folder",
                     path, " ".join(str(exc).split()))
    return images
