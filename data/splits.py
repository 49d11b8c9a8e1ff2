"""A task's split as the stages read it: its list (in the task's layout), labels checked, images
decoded once through the cache (`load_split`), and the decoded split with its batch loader (`SplitData`)."""

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import CachedImages, cached_images, decode_split
from .classes import check_labels, resolve_num_classes
from .layout import Layout
from .lists import Entry, list_file, read_list, task_dir
from .loader import BatchLoader
from .transforms import check_img_size, resample_mode


@dataclass
class SplitData:
    """A decoded split: uint8 images (N, 3, H, W), int64 labels (N,) and what they are.

    Images from the cache stay in its file (`CachedImages`: `images[rows]` reads those rows,
    `images[:]` all), so even the largest test splits load at once and in no memory.
    """

    images: CachedImages | torch.Tensor
    labels: torch.Tensor
    num_classes: int
    task: str
    split: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        """Bytes of the uint8 images."""
        return self.images.nbytes

    def loader(self, batch_size: int, *, device="cpu", resident_mb: float = math.inf, **kwargs) -> BatchLoader:
        """A BatchLoader whose batches come out normalized on `device` (kwargs: shuffle, drop_last,
        seed, mean, std, dtype).

        The split is held there whole when its uint8 images take at most `resident_mb` MB (1e6
        bytes); a larger one stays where it is, and each batch is read and moved alone, so memory
        holds a batch, not the split.
        """
        loader = BatchLoader(self.images, self.labels, batch_size=batch_size, device=device, **kwargs)
        return loader.to(device) if self.nbytes <= resident_mb * 1e6 else loader


def read_split(root, task: str, split: str, num_classes: int | None = None,
               layout: Layout | None = None) -> tuple[list[Entry], int]:
    """The entries of a split, every label checked against the task's class count, and that count."""
    found = list_file(root, task, split, layout)
    k, note = resolve_num_classes(root, task, num_classes, layout)
    entries = read_list(found, root)
    check_labels(entries, k, note)
    return entries, k


def load_split(
        root,
        task: str,
        split: str,
        *,
        num_classes: int | None = None,
        img_size: int = 224,
        interpolation: str = "bicubic",
        cache: bool = True,
        cache_dir=None,
        workers: int | None = None,
        layout: Layout | None = None,
) -> SplitData:
    """Load a split of `<root>/<task>` decoded and resized to uint8, through the decode-once cache
    (`layout`: which list file holds the split; default VTAB-1k's `<split>.txt`).

    `cache_dir` defaults to `<root>/<task>/.cache/`; `cache=False` decodes without reading or
    writing it. Processes that load the same split at once (torchrun ranks) each get the right
    images: each builds the cache file under a temp name and renames it into place. The stages let
    rank 0 build it while the others wait (engine.distributed.rank0_first, with no collective and
    so no timeout), so that the split is decoded once.
    """
    check_img_size(img_size)
    resample_mode(interpolation)
    entries, k = read_split(root, task, split, num_classes, layout)
    folder = Path(cache_dir) if cache_dir is not None else task_dir(root, task) / ".cache"
    name = list_file(root, task, split, layout).cache_name
    images = decode_entries(entries, folder if cache else None, name, img_size, interpolation, workers,
                            desc=f"decode {task}/{split}")
    return SplitData(images, labels_of(entries), k, task, split)


def labels_of(entries: list[Entry]) -> torch.Tensor:
    return torch.tensor([e.label for e in entries], dtype=torch.int64)


def decode_entries(entries: list[Entry], cache_dir: Path | None, name: str, img_size: int, interpolation: str,
                   workers: int | None, desc: str) -> CachedImages | torch.Tensor:
    """The entries' images through the cache file `name` in `cache_dir`, or decoded in memory
    without a `cache_dir`."""
    if cache_dir is None:
        return decode_split(entries, img_size, interpolation, workers, desc)
    return cached_images(entries, labels_of(entries), cache_dir, split=name, img_size=img_size,
                         interpolation=interpolation, workers=workers, desc=desc)
