"""Search throughput: candidates scored per minute on the val200 images, held on the device.

Ours is search.score.MergedScorer (W', b' written into a plain model, one plain forward per
candidate); the baseline scores through the supernet's forward with the dense reference
(SupernetScorer(dense=True): W' and b' built in every forward, as the authors' release does).
Both score the same in-budget candidates on the same images with the same batch size.
"""
from __future__ import annotations

import random

import torch

from data import BatchLoader
from glora import glora_layers
from search.evolution import CandidateSpace
from search.score import MergedScorer, SupernetScorer

from . import variants as V
from .report import TWICE, row
from .settings import Settings
from .timing import interleaved, median


def candidates(s: Settings, model, count: int) -> list[dict]:
    """In-budget random candidates, drawn as the search's first generation draws them."""
    space = CandidateSpace.from_model(model, s.defaults["search"]["budget"])
    rng = random.Random(s.seed)
    return [space.subnet(space.sample(rng)) for _ in range(count)]


def bench_search(s: Settings) -> list[dict]:
    model = V.glora_model(s).eval()
    with torch.no_grad():  # trained-looking adapters: nothing in the scored weights is zero
        for layer in glora_layers(model).values():
            for p in layer.adapter_parameters().values():
                p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(s.seed)
    images = torch.randint(0, 256, (s.val_images, 3, s.img_size, s.img_size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, s.num_classes, (s.val_images,), generator=g)
    bs = s.eval_batch_size
    val = BatchLoader(images, labels, batch_size=bs).to(s.device)  # uint8 on the device, normalized per batch
    scorers = {
        "merged": MergedScorer(model, val, s.amp),
        "dense": SupernetScorer(model, val, s.amp, dense=True),
    }
    if not s.quick:
        scorers["structured"] = SupernetScorer(model, val, s.amp, dense=False)
    pool = candidates(s, model, s.search_reps + 1)
    turn = {name: iter(pool) for name in scorers}  # each scorer scores the same candidates, in order

    def score(name):
        return lambda: scorers[name](next(turn[name]))

    times = interleaved({n: score(n) for n in scorers}, s.search_reps, 1, s.device)
    secs = {n: median(t) for n, t in times.items()}
    per_min = {n: 60 / t for n, t in secs.items()}
    # Building W', b' for every layer is all that merging saves per forward batch: the rest of a
    # candidate's time is the same forward over the same images in both scorers.
    build = median(interleaved({"load": lambda: scorers["merged"].load(pool[0])}, 3, 1, s.device)["load"])
    batches = -(-s.val_images // bs)
    what = (f"{s.val_images} images, batch {bs}; building W', b' takes {build:.3f} s per candidate "
            f"(dense: x{batches} batches), so merging can save at most that")
    rows = [row("search", "score a candidate, merged", secs["merged"],
                "supernet forward, dense reference", secs["dense"], TWICE, unit="s/candidate",
                ours_per_s=per_min["merged"], baseline_per_s=per_min["dense"], per_s_unit="cand/min",
                speedup=secs["dense"] / secs["merged"], weight_build_s=build, note=what)]
    if "structured" in secs:
        rows.append(row("search", "score a candidate, merged", secs["merged"],
                        "supernet forward, structured (ours)", secs["structured"], unit="s/candidate",
                        ours_per_s=per_min["merged"], baseline_per_s=per_min["structured"],
                        per_s_unit="cand/min", speedup=secs["structured"] / secs["merged"], note=what))
    return rows
