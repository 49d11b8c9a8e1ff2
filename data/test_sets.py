"""Evaluation-only sets, such as the shifted test sets of domain generalization (ImageNet-V2,
-Sketch, -A, -R): a list beside the trained task's, labelled in its classes, decoded like a split."""

from pathlib import Path

from glora.errors import UserError

from .classes import check_labels
from .layout import TEST_SET_LISTS, test_set_list
from .lists import Entry, read_list, task_dir
from .splits import SplitData, decode_entries, labels_of


def read_test_set(root, task: str, num_classes: int) -> tuple[list[Entry], Path]:
    """The entries of an evaluation-only set `<root>/<task>` (a domain-generalization target),
    labels checked against the class count of the model that is tested on it, and its list file."""
    folder = task_dir(root, task)
    found = test_set_list(folder)
    if found is None:
        raise UserError(f"test set {task}: none of {', '.join(TEST_SET_LISTS)} in {folder}: write its list there "
                        "(NOAH's layout: annotations/val_meta.list), or drop it from data.test_sets")
    entries = read_list(found, root)
    check_labels(entries, num_classes, "those of the trained task")
    return entries, found.path


def load_test_set(root, task: str, num_classes: int, *, img_size: int = 224, interpolation: str = "bicubic",
                  cache: bool = True, cache_dir=None, workers: int | None = None) -> SplitData:
    """An evaluation-only set decoded like `load_split` (its own cache, `<root>/<task>/.cache/`)."""
    entries, path = read_test_set(root, task, num_classes)
    folder = Path(cache_dir) / task if cache_dir is not None else task_dir(root, task) / ".cache"
    images = decode_entries(entries, folder if cache else None, path.name.replace(".", "_"), img_size,
                            interpolation, workers, desc=f"decode {task}/test")
    return SplitData(images, labels_of(entries), num_classes, task, "test")
