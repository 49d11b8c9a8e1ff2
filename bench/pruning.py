"""The search's early stopping against exhaustive scoring, in the same run.

search.py runs twice on the demo task as scripts/demo.sh prepares it (scikit-learn's digits, the
demo's tiny ViT at 32 px, its backbone pretrained without labels and its supernet trained here),
with search.early_stop false and then true, val200 in batches of 25 (the early stop decides
between batches). Reported: the search's own seconds (summary.json), the images it forwarded per
generation (candidates.jsonl), and whether best_subnet.yaml came out identical but for the run that
made it, as it must. What early stopping saves grows with the spread of the candidates' accuracies
and with smaller batches.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from data import build_demo
from glora.io import load_yaml, save_yaml

from .report import row
from .settings import Settings
from .timing import median

ROOT = Path(__file__).resolve().parents[1]
EVAL_BATCH = 25


def script(name: str, threads: int, *args) -> None:
    """Run one of the project's scripts in a fresh process with `threads` CPU threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{name} failed: {r.stderr[-2000:]}")


def demo_config(tmp: Path, s: Settings, generations: int, population: int | None) -> Path:
    """configs/demo.yaml with its data, backbone and output in `tmp`."""
    cfg = load_yaml(ROOT / "configs" / "demo.yaml")
    cfg["output"], cfg["device"] = str(tmp / "run"), s.device.type
    cfg["model"]["pretrained"] = str(tmp / "backbone.safetensors")
    cfg["data"].update(root=str(tmp / "data"), eval_batch_size=EVAL_BATCH)
    cfg["search"]["generations"] = generations
    if population:
        cfg["search"].update(population=population, mutations=population // 2, crossovers=population // 2,
                             parents=max(2, population // 4))
    return save_yaml(tmp / "demo.yaml", cfg)


def search(cfg: Path, early_stop: bool, threads: int) -> dict:
    """One search.py run: its seconds, images per generation, candidates stopped, best subnet file."""
    script("search.py", threads, cfg, "--set", f"search.early_stop={str(early_stop).lower()}")
    folder = cfg.parent / "run" / "search"
    summary = json.loads((folder / "summary.json").read_text())
    per_gen: dict[int, int] = {}
    for line in (folder / "candidates.jsonl").read_text().splitlines():
        c = json.loads(line)
        per_gen[c["generation"]] = per_gen.get(c["generation"], 0) + c["images"]
    best = load_yaml(folder / "best_subnet.yaml")
    best.pop("lineage")  # which run made it: another one each time
    return {"seconds": summary["search_seconds"], "images": [per_gen[g] for g in sorted(per_gen)],
            "pruned": summary["candidates_pruned"], "scored": summary["candidates_scored"], "best": best}


def bench_pruning(s: Settings, epochs: int | None = None, generations: int | None = None,
                  population: int | None = None, backbone_epochs: int = 8) -> list[dict]:
    """Rows of bench.report: search seconds and images forwarded, early stopping vs exhaustive."""
    epochs = epochs or (25 if s.quick else 40)
    generations = generations or (6 if s.quick else 10)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_demo(tmp / "data")
        cfg = demo_config(tmp, s, generations, population)
        script("scripts/demo_backbone.py", s.threads, cfg, tmp / "backbone.safetensors", "--epochs", backbone_epochs)
        script("train.py", s.threads, cfg, "--set", f"train.epochs={epochs}", "--set", "train.eval_every=0")
        runs = {"exhaustive": [], "pruned": []}
        for rep in range(1 if s.quick else 2):  # interleaved; the median of two in the full mode
            for name in ("exhaustive", "pruned")[::1 if rep % 2 == 0 else -1]:
                runs[name].append(search(cfg, name == "pruned", s.threads))
    ex, pr = runs["exhaustive"][0], runs["pruned"][0]
    secs = {n: median(r["seconds"] for r in rs) for n, rs in runs.items()}
    same = all(r["best"] == ex["best"] for rs in runs.values() for r in rs)
    what = (f"demo task, supernet {epochs} epochs, {generations} generations, val200 in batches of {EVAL_BATCH}, "
            f"{s.device.type}, {s.threads} threads; "
            f"{pr['pruned']} of {pr['scored']} candidates stopped early; same best_subnet.yaml: {same}")
    return [
        row("pruning", "search, early stopping", secs["pruned"], "search, exhaustive scoring", secs["exhaustive"],
            unit="s/search", same_best=same, note=what),
        row("pruning", "images forwarded, early stopping", float(sum(pr["images"])), "exhaustive scoring",
            float(sum(ex["images"])), unit="images", images_per_generation=pr["images"],
            baseline_images_per_generation=ex["images"], same_best=same,
            note=f"per generation: {pr['images']} vs {ex['images']}"),
    ]
