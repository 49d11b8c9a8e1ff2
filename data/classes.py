"""A task's class count (from its benchmark's registry, given, or derived from its labels) and
every label checked against it."""

from glora.errors import UserError

from .layout import Layout
from .lists import Entry, list_file, read_list, task_dir
from .registry import lookup

# The list whose labels define a task of the user's own when num_classes is not given.
_DERIVE_FROM = ("train800val200", "train800")
_REGISTRY_NAMES = {"vtab": "VTAB-1k", "fewshot": "few-shot FGVC", "dg": "domain-generalization"}


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
        return known.num_classes, f"from the {_REGISTRY_NAMES[layout.benchmark]} registry"
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


def task_num_classes(root, task: str, num_classes: int | None = None, layout: Layout | None = None) -> int:
    """The class count of `task`: the registry's for registered tasks (a different `num_classes` is
    an error); for a task of the user's own, `num_classes` or else max label + 1 of its
    train800val200 list (or train800)."""
    return resolve_num_classes(root, task, num_classes, layout)[0]


def label_problems(entries: list[Entry], num_classes: int, note: str) -> list[str]:
    """One message per entry whose label is outside [0, num_classes)."""
    fix = "fix the label" if note.endswith(" registry") else "fix the label or set data.num_classes"
    return [f"{e.where}: label {e.label} is outside [0, {num_classes}) ({num_classes} classes, {note}): {fix}"
            for e in entries if not 0 <= e.label < num_classes]


def check_labels(entries: list[Entry], num_classes: int, note: str) -> None:
    """The first label outside [0, num_classes), as a UserError."""
    bad = label_problems(entries, num_classes, note)
    if bad:
        raise UserError(bad[0])
