"""Tiny datasets in NOAH's few-shot and domain-generalization layouts, written by the tests
themselves (class-coloured PNGs), for the stages to run on."""
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 200, 40), (200, 40, 200), (40, 200, 200)]


def _image(path: Path, label: int, rng: np.random.Generator, size: int = 16) -> None:
    base = np.array(COLOURS[label % len(COLOURS)], dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _write(path: Path, items) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel} {label}\n" for rel, label in items))


def _split(folder: Path, prefix: str, labels, per_class: int, rng, start: int = 0, name: str = "img {i}.png"):
    """Images `<folder>/<prefix>/<class>/<name>` (a space in the name, as ImageNet-A's); returns (rel, label)."""
    items = []
    for label in labels:
        for i in range(start, start + per_class):
            rel = "/".join(p for p in (prefix, f"c{label:03d}", name.format(i=i)) if p != ".")
            _image(folder / rel, label, rng)
            items.append((rel, label))
    return items


def build_fewshot(root, dataset: str = "oxford-pets", classes: int = 4, shots=(1, 2), seeds=(0, 1),
                  val: int = 3, test: int = 5) -> Path:
    """`<root>/<dataset>/images/...` and `annotations/{train_meta.list.num_shot_K.seed_S, val_meta.list,
    test_meta.list}`: the K-shot lists drawn per seed from a pool of training images."""
    folder = Path(root) / dataset
    rng = np.random.default_rng(0)
    pool = _split(folder / "images", "train", range(classes), max(shots) + 2, rng)
    for k in shots:
        for s in seeds:
            pick = np.random.default_rng(s)
            chosen = [item for label in range(classes)
                      for item in [pool[label * (max(shots) + 2) + j] for j in
                                   pick.choice(max(shots) + 2, k, replace=False)]]
            _write(folder / "annotations" / f"train_meta.list.num_shot_{k}.seed_{s}", chosen)
    _write(folder / "annotations" / "val_meta.list", _split(folder / "images", "val", range(classes), val, rng))
    _write(folder / "annotations" / "test_meta.list", _split(folder / "images", "test", range(classes), test, rng))
    return folder


def build_dg(root, classes=(0, 1, 2, 3), subset=(1, 3), shots: int = 2, held_out: bool = True) -> Path:
    """NOAH's domain-generalization layout with ImageNet-1k label indices: `imagenet/` (train/ and val/
    images, the K-shot list, NOAH's held-out selection list, val_meta.list as the test), and four
    target sets with `annotations/val_meta.list`; A and R hold the `subset` of the classes only."""
    root = Path(root)
    rng = np.random.default_rng(1)
    src = root / "imagenet"
    train = _split(src / "train", ".", classes, shots + 3, rng)
    per = shots + 3
    _write(src / "annotations" / f"train_meta.list.num_shot_{shots}.seed_0",
           [train[i * per + j] for i in range(len(classes)) for j in range(shots)])
    if held_out:
        _write(src / "annotations" / "unofficial_val_list_4_shot16seed0",
               [train[i * per + j] for i in range(len(classes)) for j in range(shots, per)])
    _write(src / "annotations" / "val_meta.list", _split(src / "val", ".", classes, 3, rng))
    for name, prefix, labels in (("imagenetv2", "imagenetv2-matched-frequency", classes),
                                 ("imagenet-sketch", "sketch", classes),
                                 ("imagenet-adversarial", "imagenet-a", subset),
                                 ("imagenet-rendition", "imagenet-r", subset)):
        _write(root / name / "annotations" / "val_meta.list", _split(root / name, prefix, labels, 3, rng,
                                                                     name="0.00{i}_a photo _ x.jpg" if name == "imagenet-adversarial" else "img {i}.png"))
    return root
