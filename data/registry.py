"""The 19 VTAB-1k tasks, named as in the NOAH/GLoRA releases, with their class counts and groups."""

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Task:
    """A VTAB-1k task: its folder name under the data root, its class count and its group."""

    name: str
    num_classes: int
    group: str


_TASKS = (
    Task("cifar", 100, "natural"),
    Task("caltech101", 102, "natural"),
    Task("dtd", 47, "natural"),
    Task("oxford_flowers102", 102, "natural"),
    Task("oxford_iiit_pet", 37, "natural"),
    Task("svhn", 10, "natural"),
    Task("sun397", 397, "natural"),
    Task("patch_camelyon", 2, "specialized"),
    Task("eurosat", 10, "specialized"),
    Task("resisc45", 45, "specialized"),
    Task("diabetic_retinopathy", 5, "specialized"),
    Task("clevr_count", 8, "structured"),
    Task("clevr_dist", 6, "structured"),
    Task("dmlab", 6, "structured"),
    Task("kitti", 4, "structured"),
    Task("dsprites_loc", 16, "structured"),
    Task("dsprites_ori", 16, "structured"),
    Task("smallnorb_azi", 18, "structured"),
    Task("smallnorb_ele", 9, "structured"),
)

TASKS: MappingProxyType = MappingProxyType({t.name: t for t in _TASKS})
GROUPS: MappingProxyType = MappingProxyType({
    group: tuple(t.name for t in _TASKS if t.group == group)
    for group in ("natural", "specialized", "structured")
})


def get_task(name: str) -> Task | None:
    """The registry entry of a VTAB-1k task, or None for a task of the user's own."""
    return TASKS.get(name)
