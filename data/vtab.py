"""VTAB-1k splits for the stages: `load_split` (decoded, cached, labels checked), `task_num_classes`,
and `VTABDataset`, the uncached PIL-every-time dataset."""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from glora.errors import UserError

from .cache import CachedImages, cached_images, decode_split
from .layout import TEST_SET_LISTS, Layout, test_set_list
from .lists import Entry, list_file, read_list, task_dir
from .loader import BatchLoader
from .registry import lookup
from .transforms import IMAGENET_MEAN, IMAGENET_STD, check_img_size, decode_image, normalize, resample_mode

# The list whose labels define a task of the user's own when num_classes is not given.
_DERIVE_FROM = ("train800val200", "train800")
_REGISTRY_NAMES = {"vtab": "VTAB-1k", "fewshot": "few-shot FGVC", "dg": "domain-generalization"}


def _from_registry(layout: Layout) -> str:
    return f"from the {_REGISTRY_NAMES[layout.benchmark]} registry"


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


def resolve_num_classes(root, task: str, num_classes: int | None = None,
                        layout: Layout | None = None, read: dict[str, list] | None = None) -> tuple[int, str]:
    """The class count of a task and a note saying where it comes from (registry, given, derived).
    `read`: the task's lists as already read (split -> entries), to derive the count from."""
    layout = layout or Layout()
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}: "
                        f"fix data.num_classes")
    known = lookup(task, layout.benchmark)
    if known is not None:
        if num_classes is not None and num_classes != known.num_classes:
            raise UserError(f"num_classes={num_classes} disagrees with the {_REGISTRY_NAMES[layout.benchmark]} "
                            f"registry, where task {task} has {known.num_classes} classes: drop data.num_classes or "
                            f"set it to {known.num_classes}")
        return known.num_classes, _from_registry(layout)
    if num_classes is not None:
        return num_classes, "given"
    folder = task_dir(root, task, layout)
    split = next((s for s in _DERIVE_FROM if layout.list_file(folder, s) is not None), None)
    if split is None:
        list_file(root, task, _DERIVE_FROM[0], layout)  # raises the missing-list error
    found = layout.list_file(folder, split)
    entries = read[split] if read and read.get(split) else read_list(found, root)
    derived = max(e.label for e in entries) + 1
    return derived, f"derived as max label + 1 in {found.path.name}"  # a negative label fails where it is read


def label_problems(entries: list[Entry], num_classes: int, note: str) -> list[str]:
    """One message per entry whose label is outside [0, num_classes)."""
    fix = "fix the label" if note.endswith(" registry") else "fix the label or set data.num_classes"
    return [f"{e.where}: label {e.label} is outside [0, {num_classes}) ({num_classes} classes, {note}): {fix}"
            for e in entries if not 0 <= e.label < num_classes]


def _check_labels(entries: list[Entry], num_classes: int, note: str) -> None:
    bad = label_problems(entries, num_classes, note)
    if bad:
        raise UserError(bad[0])


def task_num_classes(root, task: str, num_classes: int | None = None, layout: Layout | None = None) -> int:
    """The class count of `task`: the registry's for registered tasks (a different `num_classes` is
    an error); for a task of the user's own, `num_classes` or else max label + 1 of its
    train800val200 list (or train800)."""
    return resolve_num_classes(root, task, num_classes, layout)[0]


def read_split(root, task: str, split: str, num_classes: int | None = None,
               layout: Layout | None = None) -> tuple[list[Entry], int]:
    """The entries of a split, every label checked against the task's class count, and that count."""
    found = list_file(root, task, split, layout)
    k, note = resolve_num_classes(root, task, num_classes, layout)
    entries = read_list(found, root)
    _check_labels(entries, k, note)
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
    writing it. Under torchrun, let one rank build the cache first (then barrier), or every rank
    decodes the split.
    """
    check_img_size(img_size)
    resample_mode(interpolation)
    entries, k = read_split(root, task, split, num_classes, layout)
    labels = torch.tensor([e.label for e in entries], dtype=torch.int64)
    desc = f"decode {task}/{split}"
    if cache:
        cache_dir = Path(cache_dir) if cache_dir is not None else task_dir(root, task) / ".cache"
        name = list_file(root, task, split, layout).cache_name
        images = cached_images(entries, labels, cache_dir, split=name, img_size=img_size,
                               interpolation=interpolation, workers=workers, desc=desc)
    else:
        images = decode_split(entries, img_size, interpolation, workers, desc)
    return SplitData(images, labels, k, task, split)


def read_test_set(root, task: str, num_classes: int) -> tuple[list[Entry], Path]:
    """The entries of an evaluation-only set `<root>/<task>` (a domain-generalization target),
    labels checked against the class count of the model that is tested on it, and its list file."""
    folder = task_dir(root, task)
    found = test_set_list(folder)
    if found is None:
        raise UserError(f"test set {task}: none of {', '.join(TEST_SET_LISTS)} in {folder}: write its list there "
                        "(NOAH's layout: annotations/val_meta.list), or drop it from data.test_sets")
    entries = read_list(found, root)
    _check_labels(entries, num_classes, "those of the trained task")
    return entries, found.path


def load_test_set(root, task: str, num_classes: int, *, img_size: int = 224, interpolation: str = "bicubic",
                  cache: bool = True, cache_dir=None, workers: int | None = None) -> SplitData:
    """An evaluation-only set decoded like `load_split` (its own cache, `<root>/<task>/.cache/`)."""
    entries, path = read_test_set(root, task, num_classes)
    labels = torch.tensor([e.label for e in entries], dtype=torch.int64)
    desc = f"decode {task}/test"
    if cache:
        cache_dir = Path(cache_dir) / task if cache_dir is not None else task_dir(root, task) / ".cache"
        images = cached_images(entries, labels, cache_dir, split=path.name.replace(".", "_"), img_size=img_size,
                               interpolation=interpolation, workers=workers, desc=desc)
    else:
        images = decode_split(entries, img_size, interpolation, workers, desc)
    return SplitData(images, labels, num_classes, task, "test")


class VTABDataset(Dataset):
    """A split decoded with PIL at every access: the uncached baseline, and the reference that
    proves the cache exact. Items are (uint8 image, label), or (float32 image, label) when
    `normalize` is set."""

    def __init__(
            self,
            root,
            task: str,
            split: str,
            *,
            num_classes: int | None = None,
            img_size: int = 224,
            interpolation: str = "bicubic",
            normalize: bool = False,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
    ):
        self.img_size = check_img_size(img_size)
        resample_mode(interpolation)
        self.interpolation = interpolation
        self.entries, self.num_classes = read_split(root, task, split, num_classes)
        self.normalize = normalize
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        e = self.entries[i]
        try:
            image = decode_image(e.path, self.img_size, self.interpolation)
        except UserError as exc:
            raise UserError(f"{e.where}: {exc}") from None
        return (normalize(image, self.mean, self.std) if self.normalize else image), e.label
