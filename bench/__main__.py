"""`python -m bench [--quick] [--json FILE]`: time this GLoRA implementation against baselines
measured in the same run, print a table, and write the figures as JSON.

Sections: steps (supernet, fixed-config and retrain training steps, peak memory), compiled (kernels
per training step of every method, eager and compiled; on a GPU also their time), search
(candidates scored per minute), pruning (the search with early stopping vs exhaustive scoring),
inference (merged vs plain vs unmerged), data (decode-once cache vs PIL decoding, from
bench/data.py), memory (peak memory of evaluation, a split vs one 10× larger), and an estimate of
one whole VTAB-1k task.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import traceback

import torch

from .report import FASTER, environment, print_table, row, skipped, write_json
from .settings import make_settings

SECTIONS = ("steps", "compiled", "search", "pruning", "inference", "data", "memory")


def _section(name: str, quick: bool, settings, deadline: float | None = None, methods=None) -> list[dict]:
    if name == "steps":
        from .steps import bench_steps
        return bench_steps(settings)
    if name == "compiled":
        from .compiled import METHODS, bench_compiled
        return bench_compiled(settings, methods or METHODS, deadline=deadline)
    if name == "search":
        from .search import bench_search
        return bench_search(settings)
    if name == "pruning":
        from .pruning import bench_pruning
        return bench_pruning(settings)
    if name == "inference":
        from .inference import bench_inference
        return bench_inference(settings)
    if name == "memory":
        from .memory import bench_memory
        return bench_memory(settings)
    from .data import bench_data
    return bench_data(quick=quick)


def vtab_estimate(rows: list[dict], settings) -> dict | None:
    """Wall time of one VTAB-1k task from the measured per-image step and per-candidate times:
    supernet (train.epochs on 800 images) + search (generations × population candidates on 200
    images) + retrain (retrain.epochs on 1000 images); ours against the dense reference."""
    def find(name, baseline):
        return next((r for r in rows if r["name"] == name and r["baseline"] == baseline and r["ours_s"]), None)

    sup = find("supernet step", "dense reference supernet")
    ret = find("retrain step", "dense reference retrain")
    cand = find("score a candidate, merged", "supernet forward, dense reference")
    if not (sup and ret and cand):
        return None
    d, b = settings.defaults, settings.batch_size
    n_cand = d["search"]["generations"] * d["search"]["population"]

    def total(k):
        stages = (d["train"]["epochs"] * 800 * sup[k] / b, n_cand * cand[k], d["retrain"]["epochs"] * 1000 * ret[k] / b)
        return sum(stages), stages

    ours, ours_parts = total("ours_s")
    base, base_parts = total("baseline_s")
    hours = lambda parts: " + ".join(f"{p / 3600:.2f}" for p in parts)  # noqa: E731
    return row("VTAB-1k task estimate", "one task, three stages", ours, "dense reference in every stage", base,
               FASTER, unit="s/task", ours_h=ours / 3600, baseline_h=base / 3600,
               note=f"hours, supernet + search + retrain: ours {hours(ours_parts)}, baseline {hours(base_parts)} "
                    f"({d['train']['epochs']} epochs x 800, {n_cand} candidates x {settings.val_images}, "
                    f"{d['retrain']['epochs']} epochs x 1000; per-image times at batch {b})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (CPU: under 5 minutes on 2 cores)")
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list to FILE")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the usable cores)")
    p.add_argument("--reps", type=int, help="timed repetitions per measurement (default by mode and device)")
    p.add_argument("--seconds", type=float, help="after this many seconds, time no further compiled step "
                   "(each compiles first; the GPU run-book's budget)")
    p.add_argument("--methods", help="the compiled section's methods, comma-separated, of supernet,full,retrain,lora,bias "
                   "(default: all)")
    p.add_argument("--tiny", action="store_true", help="a tiny ViT at 32 px, batch 4: checks the bench itself, "
                   "its figures mean nothing")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is available; use --device cpu (or auto)")
    start = time.perf_counter()
    deadline = time.monotonic() + args.seconds if args.seconds else None
    settings = make_settings(args.device, args.quick, args.threads, args.reps)
    if args.tiny:
        settings.model, settings.img_size, settings.batch_size, settings.val_images = "vit_tiny_patch16_224", 32, 4, 8
        settings.kwargs = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3)
    methods = None
    if args.methods:
        from .compiled import SHORT

        bad = sorted(set(args.methods.split(",")) - set(SHORT))
        if bad:
            p.error(f"--methods: unknown {bad}; choose from {','.join(SHORT)}")
        methods = [SHORT[m] for m in args.methods.split(",")]
    print(f"bench: {settings.describe()}", flush=True)
    rows, failed = [], []
    for name in (s for s in SECTIONS if s in only):
        t0 = time.perf_counter()
        print(f"bench: {name} ...", flush=True)
        try:
            rows += _section(name, args.quick, settings, deadline, methods)
        except Exception as e:  # one broken section must not lose the others' figures
            traceback.print_exc()
            failed.append(name)
            rows.append(skipped(name, name, "-", f"failed: {type(e).__name__}: {e}"))
        print(f"bench: {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    estimate = vtab_estimate(rows, settings)
    if estimate:
        rows.append(estimate)

    print(f"\nratio = ours_s / baseline_s, both measured in this run (below 1: ours is faster); {settings.describe()}")
    print_table(rows)
    judged = [r for r in rows if r.get("met") is not None]
    print(f"\ntargets met: {sum(r['met'] for r in judged)}/{len(judged)}; "
          f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        print(f"figures written to {write_json(args.json, rows, environment(settings))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
