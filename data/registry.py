"""Task registries: the 19 VTAB-1k tasks (class counts, groups, published test sizes), the few-shot
FGVC datasets and the domain-generalization sets of NOAH's release, and published figures to compare
with (GLoRA's few-shot accuracies; other methods' VTAB-1k rows, with the mean each source reports)."""

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
    """An accuracy (%) that a paper's authors published: a figure to compare with, not a result of ours.

    `method`: the method's name as this code's presets name it (configs/methods/), where it has one.
    """

    benchmark: str
    task: str
    shots: int | None
    test_acc: float
    source: str
    method: str = "glora"


@dataclass(frozen=True)
class PublishedMean:
    """The VTAB-1k mean a source reports for a method, and which mean it is (sources differ)."""

    method: str
    label: str  # the source, briefly (`VTAB_SOURCES` cites it in full)
    test_acc: float
    kind: str  # e.g. "mean over the 19 tasks", "mean of the three group means"
    params_m: float | None = None  # trainable parameters (millions) the source reports, if it does

    @property
    def source(self) -> str:
        return VTAB_SOURCES[self.label]


_GLORA_FEWSHOT = ("GLoRA authors, comment in the issue tracker of their repository "
                  "(github.com/Arnav0400/ViT-Slim, issue 14)")
# VTAB-1k with ViT-B/16 pretrained on ImageNet-21k, 19 accuracies per row in the order of _TASKS
# (the sources' column order). V-PETL Bench reports the mean over the 19 tasks (each row below
# averages to its reported mean); RepAdapter's README reports group means and their mean, which do
# not follow from its per-task row (natural 82.87 reported, 82.67 from the row; specialized 86.04 vs
# 85.90; structured 63.29 vs 62.88), and its numbers differ from V-PETL Bench's run of the method:
# both are kept, each with its source.
_V_PETL, _REPADAPTER = "V-PETL Bench", "RepAdapter README"
VTAB_SOURCES: MappingProxyType = MappingProxyType({
    _V_PETL: "V-PETL Bench (Xin et al., NeurIPS 2024 Datasets and Benchmarks Track), its README's table \"Benchmark "
             "results of image classification on VTAB\" "
             "(github.com/synbol/Parameter-Efficient-Transfer-Learning-Benchmark)",
    _REPADAPTER: "RepAdapter's README, \"Performance of each dataset\", seed 42 (github.com/luogen1996/RepAdapter; "
                 "Luo et al., arXiv 2302.08106)",
})
_VTAB_ROWS = {  # (method, source): (19 accuracies, the mean the source reports, which mean, params M)
    ("full", _V_PETL): ((68.9, 87.7, 64.3, 97.2, 86.9, 87.4, 38.8, 79.7, 95.7, 84.2, 73.9, 56.3, 58.6, 41.7, 65.5,
                         57.5, 46.7, 25.7, 29.1), 65.57, "mean over the 19 tasks", 85.8),
    ("linear", _V_PETL): ((63.4, 85.0, 63.2, 97.0, 86.3, 36.6, 51.0, 78.5, 87.5, 68.6, 74.0, 34.3, 30.6, 33.2, 55.4,
                           12.5, 20.0, 9.6, 19.2), 52.94, "mean over the 19 tasks", 0.0),
    ("vpt-deep", _V_PETL): ((78.8, 90.8, 65.8, 98.0, 88.3, 78.1, 49.6, 81.8, 96.1, 83.4, 68.4, 68.5, 60.0, 46.5, 72.8,
                             73.6, 47.9, 32.9, 37.8), 69.43, "mean over the 19 tasks", 0.56),
    ("bitfit", _V_PETL): ((72.8, 87.0, 59.2, 97.5, 85.3, 59.9, 51.4, 78.7, 91.6, 72.9, 69.8, 61.5, 55.6, 32.4, 55.9,
                           66.6, 40.0, 15.7, 25.1), 62.05, "mean over the 19 tasks", 0.10),
    ("lora", _V_PETL): ((67.1, 91.4, 69.4, 98.8, 90.4, 85.3, 54.0, 84.9, 95.3, 84.4, 73.6, 82.9, 69.2, 49.8, 78.5,
                         75.7, 47.1, 31.0, 44.0), 72.25, "mean over the 19 tasks", 0.29),
    ("adaptformer", _V_PETL): ((70.8, 91.2, 70.5, 99.1, 90.9, 86.6, 54.8, 83.0, 95.8, 84.4, 76.3, 81.9, 64.3, 49.3,
                                80.3, 76.3, 45.7, 31.7, 41.1), 72.32, "mean over the 19 tasks", 0.16),
    ("ssf", _V_PETL): ((69.0, 92.6, 75.1, 99.4, 91.8, 90.2, 52.9, 87.4, 95.9, 87.4, 75.5, 75.9, 62.3, 53.3, 80.6,
                        77.3, 54.9, 29.5, 37.9), 73.10, "mean over the 19 tasks", 0.21),
    ("noah", _V_PETL): ((69.6, 92.7, 70.2, 99.1, 90.4, 86.1, 53.7, 84.4, 95.4, 83.9, 75.8, 82.8, 68.9, 49.9, 81.7,
                         81.8, 48.3, 32.8, 44.2), 73.25, "mean over the 19 tasks", 0.43),
    ("fact", _V_PETL): ((70.6, 90.6, 70.8, 99.1, 90.7, 88.6, 54.1, 84.8, 96.2, 84.5, 75.7, 82.6, 68.2, 49.8, 80.7,
                         80.8, 47.4, 33.2, 43.0), 73.23, "mean over the 19 tasks", 0.07),
    ("repadapter", _V_PETL): ((72.4, 91.6, 71.0, 99.2, 91.4, 90.7, 55.1, 85.3, 95.9, 84.6, 75.9, 82.3, 68.0, 50.4,
                               79.9, 80.4, 49.2, 38.6, 41.0), 73.84, "mean over the 19 tasks", 0.22),
    ("repadapter", _REPADAPTER): ((75.4, 91.2, 73.9, 99.3, 91.5, 89.8, 57.6, 87.0, 95.9, 85.3, 75.4, 83.0, 64.8,
                                   53.1, 81.6, 85.6, 53.5, 35.4, 46.0), 77.40,
                                  "mean of the three group means it reports (82.87, 86.04, 63.29; "
                                  "its per-task row gives 77.15)", None),
}

PUBLISHED = (
    Published("fewshot", "food101", 16, 75.9, _GLORA_FEWSHOT),
    Published("fewshot", "standford-cars", 16, 74.3, _GLORA_FEWSHOT),
    Published("fewshot", "oxford-flowers102", 16, 99.6, _GLORA_FEWSHOT),
    Published("fewshot", "fgvc-aircraft", 16, 54.1, _GLORA_FEWSHOT),
    Published("fewshot", "oxford-pets", 16, 91.4, _GLORA_FEWSHOT),
    *(Published("vtab", task.name, None, acc, VTAB_SOURCES[label], method)
      for (method, label), (accs, *_) in _VTAB_ROWS.items() for task, acc in zip(_TASKS, accs)),
)
PUBLISHED_MEANS = tuple(PublishedMean(method, label, mean, kind, params)
                        for (method, label), (_, mean, kind, params) in _VTAB_ROWS.items())


def get_task(name: str) -> Task | None:
    """The registry entry of a VTAB-1k task, or None for a task of the user's own."""
    return TASKS.get(name)


REGISTRIES: MappingProxyType = MappingProxyType({"vtab": TASKS, "fewshot": FEWSHOT_TASKS, "dg": DG_TASKS})


def lookup(name: str, benchmark: str = "vtab") -> Task | None:
    """The registry entry of a task of `benchmark` (vtab, fewshot, dg), or None for one of the user's own."""
    return REGISTRIES[benchmark].get(name)


def published(benchmark: str, task: str, shots: int | None, method: str = "glora",
              source: str | None = None) -> Published | None:
    """The published figure of `method` (default GLoRA) for (benchmark, task, shots), if there is one
    (the first source's, or that of `source`)."""
    return next((p for p in PUBLISHED if (p.benchmark, p.task, p.shots, p.method) == (benchmark, task, shots, method)
                 and source in (None, p.source)), None)
