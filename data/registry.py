"""Task registries: the 19 VTAB-1k tasks (class counts, groups, published test sizes), the few-shot
FGVC datasets and the domain-generalization sets of NOAH's release, and published figures to compare with."""

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Task:
    """A task: its folder name under the data root, its class count and its group.

    `test_size` is the published line count of its test list (VTAB-1k); `covers_classes` says
    whether its published training lists hold every class; `restrict` asks for the logits to be
    restricted to the classes its test list holds (ImageNet-A and -R: 200 of 1,000).
    """

    name: str
    num_classes: int
    group: str
    test_size: int | None = None
    covers_classes: bool = True
    restrict: bool = False


# Test sizes: the VTAB paper (Zhai et al. 2019, arXiv 1910.04867) takes each task's test split
# from TFDS, and the expected sizes in google-research/task_adaptation's data/*_test.py
# (caltech 6,084; dmlab 22,735; dsprites 73,728; smallnorb 12,150; clevr 15,000; ...) match the
# lists of the NOAH release (NOAH's data/vtab-source/get_vtab1k.py writes each split whole). The
# sources disagree on KITTI: task_adaptation's kitti.py and kitti_test.py declare 634 test images
# (10% of its train count), but the TFDS kitti:3.1.0 test split that it reads, and so the NOAH
# list, holds 711 (the count the VPT paper, Jia et al. 2022, tabulates); we keep 711.
# SUN397's train800val200 samples 1,000 images of 397 classes, many of which hold under 1% of the
# TFDS train split: a class of 0.1% is left out with probability 0.999^1000 = 37%, so its
# published lists cannot be expected to cover every class, and a missing one is no fault there.
_TASKS = (
    Task("cifar", 100, "natural", 10_000),
    Task("caltech101", 102, "natural", 6_084),
    Task("dtd", 47, "natural", 1_880),
    Task("oxford_flowers102", 102, "natural", 6_149),
    Task("oxford_iiit_pet", 37, "natural", 3_669),
    Task("svhn", 10, "natural", 26_032),
    Task("sun397", 397, "natural", 21_750, covers_classes=False),
    Task("patch_camelyon", 2, "specialized", 32_768),
    Task("eurosat", 10, "specialized", 5_400),
    Task("resisc45", 45, "specialized", 6_300),
    Task("diabetic_retinopathy", 5, "specialized", 42_670),
    Task("clevr_count", 8, "structured", 15_000),
    Task("clevr_dist", 6, "structured", 15_000),
    Task("dmlab", 6, "structured", 22_735),
    Task("kitti", 4, "structured", 711),
    Task("dsprites_loc", 16, "structured", 73_728),
    Task("dsprites_ori", 16, "structured", 73_728),
    Task("smallnorb_azi", 18, "structured", 12_150),
    Task("smallnorb_ele", 9, "structured", 12_150),
)

TASKS: MappingProxyType = MappingProxyType({t.name: t for t in _TASKS})
GROUPS: MappingProxyType = MappingProxyType({
    group: tuple(t.name for t in _TASKS if t.group == group)
    for group in ("natural", "specialized", "structured")
})

# NOAH's few-shot FGVC datasets (data/few-shot/ of its repository, folder names as there, with
# "standford-cars" misspelt), their class counts as in NOAH's and GLoRA's loaders.
FEWSHOT_TASKS: MappingProxyType = MappingProxyType({t.name: t for t in (
    Task("food101", 101, "fewshot"),
    Task("standford-cars", 196, "fewshot"),
    Task("oxford-flowers102", 102, "fewshot"),
    Task("fgvc-aircraft", 100, "fewshot"),
    Task("oxford-pets", 37, "fewshot"),
)})

# Domain generalization (NOAH's data/domain-generalization/): trained on ImageNet, tested on it and
# on four shifted sets whose lists carry ImageNet-1k label indices. ImageNet-A and -R hold 200 of
# the 1,000 classes (Hendrycks et al. 2021): their accuracy is that of the logits restricted to the
# classes present, as their authors evaluate them.
DG_SOURCE = "imagenet"
DG_TASKS: MappingProxyType = MappingProxyType({t.name: t for t in (
    Task(DG_SOURCE, 1000, "dg"),
    Task("imagenetv2", 1000, "dg"),
    Task("imagenet-sketch", 1000, "dg"),
    Task("imagenet-adversarial", 1000, "dg", restrict=True),
    Task("imagenet-rendition", 1000, "dg", restrict=True),
    # the same sets under the names their own releases give their folders
    Task("imagenet-a", 1000, "dg", restrict=True),
    Task("imagenet-r", 1000, "dg", restrict=True),
    Task("imagenet-v2", 1000, "dg"),
    Task("sketch", 1000, "dg"),
)})


@dataclass(frozen=True)
class Published:
    """An accuracy (%) that a paper's authors published: a figure to compare with, not a result of ours."""

    benchmark: str
    task: str
    shots: int | None
    test_acc: float
    source: str


_GLORA_FEWSHOT = ("GLoRA authors, comment in the issue tracker of their repository "
                  "(github.com/Arnav0400/ViT-Slim, issue 14)")
PUBLISHED = (
    Published("fewshot", "food101", 16, 75.9, _GLORA_FEWSHOT),
    Published("fewshot", "standford-cars", 16, 74.3, _GLORA_FEWSHOT),
    Published("fewshot", "oxford-flowers102", 16, 99.6, _GLORA_FEWSHOT),
    Published("fewshot", "fgvc-aircraft", 16, 54.1, _GLORA_FEWSHOT),
    Published("fewshot", "oxford-pets", 16, 91.4, _GLORA_FEWSHOT),
)


def get_task(name: str) -> Task | None:
    """The registry entry of a VTAB-1k task, or None for a task of the user's own."""
    return TASKS.get(name)


REGISTRIES: MappingProxyType = MappingProxyType({"vtab": TASKS, "fewshot": FEWSHOT_TASKS, "dg": DG_TASKS})


def lookup(name: str, benchmark: str = "vtab") -> Task | None:
    """The registry entry of a task of `benchmark` (vtab, fewshot, dg), or None for one of the user's own."""
    return REGISTRIES[benchmark].get(name)


def published(benchmark: str, task: str, shots: int | None) -> Published | None:
    """The published GLoRA figure for (benchmark, task, shots), if there is one."""
    return next((p for p in PUBLISHED if (p.benchmark, p.task, p.shots) == (benchmark, task, shots)), None)
