"""Epoch time over 800 realistic photos at 224 px: the decode-once cache (in memory, normalized per
batch) against a torch DataLoader that decodes with PIL every epoch. `python -m bench.data [--full]`."""

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: bench/ would shadow the data package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from PIL import Image
from torch.utils.data import DataLoader

from bench.report import print_table, row
from data import VTABDataset, load_split, write_list

N_IMAGES, IMG_SIZE, BATCH_SIZE = 800, 224, 64
PHOTO_SIZE = (500, 375)  # (width, height), a typical VTAB-natural photo


def build_photo_task(root: Path, task: str = "photos", n: int = N_IMAGES) -> Path:
    """A VTAB-layout task (train800.txt) of `n` distinct 500×375 JPEGs cropped from sklearn's photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427×640 photos
    bases = [p for photo in photos for p in (photo, photo[:, ::-1])]  # and their mirror images
    w, h = PHOTO_SIZE
    folder = root / task
    (folder / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        base = bases[i % len(bases)]
        k = i // len(bases)  # a distinct offset per image of the same base
        x, y = (k * 7) % (base.shape[1] - w), (k // 20 * 5) % (base.shape[0] - h)
        rel = f"images/{i:04d}.jpg"
        Image.fromarray(base[y:y + h, x:x + w]).save(folder / rel, quality=90)
        items.append((rel, i % 10))
    write_list(folder / "train800.txt", items)
    return folder


def _epoch_seconds(make_iter, epochs: int) -> float:
    """Mean seconds per epoch over `epochs` full passes."""
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in make_iter():
            pass
    return (time.perf_counter() - start) / epochs


def _gpu_epoch_seconds(loader, epochs: int) -> float:
    """Mean seconds per epoch with the whole split on the GPU (moved once, not timed)."""
    loader.to("cuda")
    _epoch_seconds(lambda: loader, 1)  # warm-up: CUDA context and kernels
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            pass
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / epochs


def bench_data(quick: bool = True) -> list[dict]:
    """Rows of bench.report: seconds (per epoch, or once for the cache build and load) and
    ratio = ours_s / baseline_s, so below 1 means ours is faster."""
    epochs_ours, epochs_base = (3, 1) if quick else (10, 3)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_photo_task(root)
        cache_dir = root / "cache"

        start = time.perf_counter()
        load_split(root, "photos", "train800", num_classes=10, img_size=IMG_SIZE, cache_dir=cache_dir)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        split = load_split(root, "photos", "train800", num_classes=10, img_size=IMG_SIZE,
                           cache_dir=cache_dir)
        split.images = split.images[:]  # read the whole file now, so the load time is honest
        load_s = time.perf_counter() - start

        loader = split.loader(BATCH_SIZE, shuffle=True, seed=0)
        ours_s = _epoch_seconds(lambda: loader, epochs_ours)
        gpu_s = _gpu_epoch_seconds(loader, epochs_ours) if torch.cuda.is_available() else None

        dataset = VTABDataset(root, "photos", "train800", num_classes=10, img_size=IMG_SIZE, normalize=True)
        baselines = {}
        for workers in (0, 2):
            def pil_epoch(workers=workers):
                return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)
            baselines[workers] = _epoch_seconds(pil_epoch, epochs_base)

    pil = "DataLoader + PIL decode/resize/normalize, num_workers={}"
    rows = [row("data", "epoch (cache in memory)", ours_s, pil.format(0), baselines[0]),
            row("data", "epoch (cache in memory)", ours_s, pil.format(2), baselines[2])]
    if gpu_s is not None:
        rows.append(row("data", "epoch (cache on the GPU)", gpu_s, pil.format(2), baselines[2]))
    rows += [row("data", "cache build, one-time", build_s, "one PIL epoch, num_workers=0", baselines[0]),
             row("data", "cache load from disk", load_s, "one PIL epoch, num_workers=0", baselines[0])]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true",
                        help="more epochs per measurement (slower, steadier)")
    rows = bench_data(quick=not parser.parse_args().full)
    print(f"{N_IMAGES} images {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG -> {IMG_SIZE}px, batch {BATCH_SIZE}, "
          f"{torch.get_num_threads()} torch threads")
    print_table(rows)


if __name__ == "__main__":
    main()
