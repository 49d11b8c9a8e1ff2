"""Data for every stage: task registries and list layouts (VTAB-1k, NOAH's few-shot FGVC and domain
generalization: data/layout.py), list files and their rules (data/checks.py), class counts, one
decode for every image mode (data/modes.py) and transform, decode-once cache, splits and loaders,
evaluation-only test sets, VTAB-1k preparation and verification (data/prepare.py).

    load_split(root, task, split, *, num_classes=None, img_size=224, interpolation="bicubic",
               cache=True, cache_dir=None, workers=None, layout=None) -> SplitData   # .images uint8, .labels
    Layout(benchmark="vtab" | "fewshot" | "dg", shots=None, shot_seed=0)   # which list file each split is
    task_num_classes(root, task, num_classes=None) -> int
    SplitData.loader(batch_size, *, device="cpu", resident_mb=inf, shuffle=False, drop_last=False,
                     seed=0, mean=..., std=..., dtype=...)   # whole on device if small, else streamed
    BatchLoader(images, labels, *, batch_size, ..., device=None)   .to(device), state_dict(), load_state_dict()
    CachedImages   # a cache file's images, read on demand: images[rows], images[:]
    VTABDataset(root, task, split, *, ..., normalize=False)   # uncached: PIL at every access
    decode_image(path, img_size=224, interpolation="bicubic") -> uint8 (3, H, W)
    normalize(images, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=torch.float32)
    build_demo(root) -> Path    # the `digits` demo task
    build_synthetic(root, task="synthetic", *, num_classes=10, test=1000, img_size=224) -> Path
Bad input raises glora.errors.UserError with a one-line message.
"""

from .cache import CachedImages
from .demo import DEMO_TASK, build_demo
from .layout import SPLITS, Layout
from .lists import read_list, write_list
from .loader import BatchLoader
from .registry import GROUPS, TASKS, Task, get_task
from .synthetic import build_synthetic
from .transforms import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, decode_image, normalize
from .classes import task_num_classes
from .dataset import VTABDataset
from .splits import SplitData, load_split, read_split

__all__ = [
    "BatchLoader", "CachedImages", "DEMO_TASK", "GROUPS", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "Layout",
    "SPLITS", "SplitData", "TASKS", "Task", "VTABDataset", "build_demo", "build_synthetic", "decode_image",
    "get_task", "load_split", "normalize", "read_list", "read_split", "task_num_classes", "write_list",
]
