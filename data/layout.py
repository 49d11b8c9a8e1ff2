"""Where a benchmark keeps a task's lists: the list file behind each split the stages read
(train800, val200, train800val200, test) and the folder its image paths are relative to.

- vtab: `<root>/<task>/<split>.txt`, paths relative to the task folder (the NOAH/GLoRA VTAB-1k layout).
- fewshot: NOAH's few-shot FGVC layout, `<root>/<dataset>/annotations/`: both training splits are
  `train_meta.list.num_shot_<K>.seed_<S>`, val200 is `val_meta.list`, test is `test_meta.list`;
  paths relative to `<dataset>/images/` (or to `<dataset>/` itself, as NOAH's Stanford Cars).
- dg: NOAH's domain-generalization layout: the source (ImageNet) as in fewshot, its selection
  list NOAH's held-out `unofficial_val_list_4_shot16seed0` where present, else `val_meta.list`; its
  test list `test_meta.list`, else `val_meta.list` (ImageNet's own val); the shifted sets
  (`<root>/imagenetv2/annotations/val_meta.list`, ...) are test lists only.

A benchmark is this mapping and a task registry (data/registry.py); every stage, the cache and the
checker read lists through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glora.errors import UserError

SPLITS = ("train800", "val200", "train800val200", "test")
VTAB, FEWSHOT, DG = "vtab", "fewshot", "dg"
BENCHMARKS = (VTAB, FEWSHOT, DG)
SHOTS = (1, 2, 4, 8, 16)  # NOAH's few-shot lists; others work where their files exist
_ANN = "annotations/"
_HELD_OUT = _ANN + "unofficial_val_list_4_shot16seed0"  # NOAH's ImageNet selection list, from train


@dataclass(frozen=True)
class ListFile:
    """One split's list: the file, the folders its paths may be relative to (the first that holds
    the list's images is used), and the name of its decode cache."""

    split: str
    path: Path
    bases: tuple[Path, ...]
    cache_name: str


@dataclass(frozen=True)
class Layout:
    """A benchmark's lists for one task: `shots` and `shot_seed` pick the K-shot training list."""

    benchmark: str = VTAB
    shots: int | None = None
    shot_seed: int = 0

    def __post_init__(self):
        if self.benchmark not in BENCHMARKS:
            raise UserError(f"data.benchmark={self.benchmark!r}: use one of {', '.join(BENCHMARKS)}")
        if self.benchmark != VTAB and self.shots is None:
            raise UserError(f"data.benchmark={self.benchmark} reads the K-shot training list "
                            f"train_meta.list.num_shot_<K>.seed_<S>: set data.shots (one of {', '.join(map(str, SHOTS))})")

    @property
    def hint(self) -> str:
        if self.benchmark == VTAB:
            return ("prepare each task as <root>/<task>/{train800,val200,train800val200,test}.txt plus "
                    "images, the VTAB-1k layout of the NOAH/GLoRA releases (`python -m data build-demo "
                    "--root <root>` writes an example)")
        return (f"NOAH's {'few-shot' if self.benchmark == FEWSHOT else 'domain-generalization'} layout is "
                f"<root>/<dataset>/annotations/{{{self.train_name()}, val_meta.list, test_meta.list}}, "
                "each line '<relative/image/path> <label>', images under <root>/<dataset>/images/ (or <dataset>/)")

    def train_name(self) -> str:
        return f"train_meta.list.num_shot_{self.shots}.seed_{self.shot_seed}"

    def candidates(self, split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(list files to try in order, image folders to try) for a split, relative to the task folder."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        if self.benchmark == VTAB:
            return (f"{split}.txt",), (".",)
        train = _ANN + self.train_name()
        if self.benchmark == FEWSHOT:
            files = {"train800": (train,), "train800val200": (train,), "val200": (_ANN + "val_meta.list",),
                     "test": (_ANN + "test_meta.list",)}
            return files[split], ("images", ".")
        files = {"train800": (train,), "train800val200": (train,), "val200": (_HELD_OUT, _ANN + "val_meta.list"),
                 "test": (_ANN + "test_meta.list", _ANN + "val_meta.list")}
        bases = {"train800": ("train", "images", "."), "train800val200": ("train", "images", "."),
                 "val200": ("train", "val", "images", "."), "test": ("val", "images", ".")}
        return files[split], bases[split]

    def list_file(self, folder: Path, split: str) -> ListFile | None:
        """The split's list under the task folder, or None where none of its candidates exists."""
        names, bases = self.candidates(split)
        path = next((folder / n for n in names if (folder / n).is_file()), None)
        if path is None:
            return None
        cache = split if self.benchmark == VTAB else path.name.replace(".", "_")
        return ListFile(split, path, tuple(folder / b for b in bases), cache)

    def expected(self, folder: Path, split: str) -> Path:
        """The list a missing split should be written to (its first candidate)."""
        return folder / self.candidates(split)[0][0]


TEST_SET_LISTS = (_ANN + "test_meta.list", _ANN + "val_meta.list", "test.txt")


def test_set_list(folder: Path) -> ListFile | None:
    """The list of an evaluation-only set (a domain-generalization target such as imagenetv2):
    the first of annotations/test_meta.list, annotations/val_meta.list, test.txt that exists."""
    for name in TEST_SET_LISTS:
        if (folder / name).is_file():
            return ListFile("test", folder / name, (folder, folder / "images", folder / "val"),
                            Path(name).name.replace(".", "_"))
    return None


def layout_of(data_cfg: dict) -> Layout:
    """The Layout a config's `data` section names (`shot_seed: null` follows the run's seed: see engine)."""
    seed = data_cfg.get("shot_seed")
    return Layout(data_cfg.get("benchmark") or VTAB, data_cfg.get("shots"), 0 if seed is None else seed)
