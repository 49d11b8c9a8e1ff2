"""Peak memory of evaluation: a split and one 10× larger (`python -m bench.memory [--full]`).

Each measurement runs in a fresh process that builds the split's decode cache and evaluates a
small ViT on it (batches of 64 by default), then reports its peak resident memory (VmHWM, which
counts every page the process touched, file pages included). The cache is
written chunk by chunk and read batch by batch, so the peak must not grow with the split. The
baseline evaluates as the stages did before: the whole split read and normalized at once.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: bench/ would shadow the data package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from PIL import Image

from bench.report import at_most, print_table, row
from data import load_split, normalize, write_list

ROOT = Path(__file__).resolve().parents[1]
TASK, SPLIT, NUM_CLASSES = "memory", "test", 10


def build_task(root: Path, n: int, source_px: int = 16, seed: int = 0) -> Path:
    """A task whose test.txt lists `n` random source_px × source_px PNGs (resized when decoded)."""
    folder = root / TASK
    (folder / "images").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        pixels = torch.randint(0, 256, (source_px, source_px, 3), dtype=torch.uint8, generator=g)
        rel = f"images/{i:06d}.png"
        Image.fromarray(pixels.numpy()).save(folder / rel)
        items.append((rel, i % NUM_CLASSES))
    write_list(folder / f"{SPLIT}.txt", items)
    return folder


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM (Linux), else ru_maxrss. (ru_maxrss of a
    process started by another may hold the starter's peak, which VmHWM never does.)"""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate_once(root, img_size: int, batch_size: int, whole: bool, device: str = "cpu") -> dict:
    """In this process: load (building the cache if needed) and evaluate the split once; returns
    the top-1, peak RSS in MB and, on CUDA, the peak of allocated device memory in MB."""
    import timm

    from engine.loops import evaluate

    dev = torch.device(device)
    split = load_split(root, TASK, SPLIT, num_classes=NUM_CLASSES, img_size=img_size)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=NUM_CLASSES, img_size=img_size,
                              patch_size=img_size // 4, depth=1, embed_dim=48, num_heads=3).to(dev)
    if whole:  # the former path: the whole split normalized on the device, then sliced
        x, y = normalize(split.images[:].to(dev)), split.labels.to(dev)
        batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    else:
        batches = split.loader(batch_size, device=dev, resident_mb=0)
    acc1 = evaluate(model, batches, dev, amp=False)
    out = {"acc1": acc1, "peak_mb": peak_rss_mb()}
    if dev.type == "cuda":
        out["device_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def measure(root, img_size: int, batch_size: int, whole: bool, device: str = "cpu") -> dict:
    """`evaluate_once` in a fresh Python process, so that its peak is this evaluation's alone."""
    cmd = [sys.executable, "-m", "bench.memory", "--child", str(root), "--img-size", str(img_size),
           "--batch-size", str(batch_size), "--device", device] + (["--whole"] if whole else [])
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"memory child failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def peaks(tmp: Path, images: int, factor: int, img_size: int, batch_size: int, device: str = "cpu") -> dict:
    """{(size, way): measure(...)} for a split of `images` and one `factor` times larger, each
    evaluated streamed and whole (the cache built by the first, streamed, run)."""
    out = {}
    for size in ("small", "large"):
        root = tmp / size
        build_task(root, images * (factor if size == "large" else 1))
        for way in ("streamed", "whole"):
            out[size, way] = measure(root, img_size, batch_size, way == "whole", device)
    return out


def bench_memory(s, images: int | None = None, factor: int = 10, img_size: int | None = None,
                 batch_size: int = 64) -> list[dict]:
    """Rows of bench.report: peak MB of evaluating the 10× split against the 1× split (ratio ~1:
    memory does not grow), streamed and, for contrast, whole. The small split holds a few batches
    already, so that both peaks are the steady state of the same batch size."""
    images = images or batch_size * (4 if s.quick else 8)
    img_size = img_size or s.img_size
    with tempfile.TemporaryDirectory() as tmp:
        p = peaks(Path(tmp), images, factor, img_size, batch_size, s.device.type)
    big, small = images * factor, images
    what = (f"{small} vs {big} images at {img_size} px, batch {batch_size}, tiny ViT; fresh process each "
            f"(cache built in the streamed runs); top-1 streamed == whole: "
            f"{all(p[n, 'streamed']['acc1'] == p[n, 'whole']['acc1'] for n in ('small', 'large'))}")
    rows = [row("memory", f"evaluation peak RSS, {big} img", p["large", "streamed"]["peak_mb"],
                f"the same, {small} images", p["small", "streamed"]["peak_mb"], at_most(1.1), unit="MB",
                note=f"streamed from the cache file (and built there); {what}"),
            row("memory", f"whole-split eval peak RSS, {big} img", p["large", "whole"]["peak_mb"],
                f"the same, {small} images", p["small", "whole"]["peak_mb"], unit="MB",
                note="before: the whole split normalized at once (grows with the split)")]
    if s.device.type == "cuda":
        rows.append(row("memory", f"evaluation peak GPU memory, {big} img",
                        p["large", "streamed"]["device_peak_mb"], f"the same, {small} images",
                        p["small", "streamed"]["device_peak_mb"], at_most(1.1), unit="MB"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--full", action="store_true", help="512 vs 5120 images (default 256 vs 2560)")
    p.add_argument("--child", metavar="ROOT", help=argparse.SUPPRESS)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(evaluate_once(args.child, args.img_size, args.batch_size, args.whole, args.device)))
        return
    from bench.settings import make_settings

    s = make_settings("cpu", quick=not args.full)
    print_table(bench_memory(s, img_size=args.img_size))


if __name__ == "__main__":
    main()
