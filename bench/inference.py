"""Inference: the merged (reparameterized) model against the plain timm model and the unmerged one.

The merged model is what retrain.py exports: every GLoRALinear replaced by an nn.Linear holding
W', b', so it must cost exactly what the plain model costs.
"""
from __future__ import annotations

import copy

import torch

from glora import glora_layers, merge_glora, set_subnet
from glora.accuracy import autocast

from . import variants as V
from .report import FASTER, SAME, row
from .settings import Settings
from .timing import interleaved, median


def bench_inference(s: Settings) -> list[dict]:
    plain = V.backbone(s).eval()
    unmerged = V.glora_model(s).eval()
    with torch.no_grad():
        for layer in glora_layers(unmerged).values():
            for p in layer.adapter_parameters().values():
                p.normal_(0, 0.02)
    set_subnet(unmerged, V.budget_subnet(s, unmerged, V.retrain_budget(s, unmerged)))
    merged = merge_glora(copy.deepcopy(unmerged)).eval()
    x = torch.randn(s.batch_size, 3, s.img_size, s.img_size, device=s.device)

    def forward(model):
        def run():
            with torch.inference_mode(), autocast(s.device, s.amp):
                return model(x)
        return run

    models = {"merged": merged, "plain": plain, "unmerged": unmerged}
    reps = s.reps * 3  # forwards are short; more repetitions steady the medians
    times = interleaved({n: forward(m) for n, m in models.items()}, reps, s.warmup + 1, s.device)
    secs = {n: median(t) for n, t in times.items()}
    ips = {n: s.batch_size / t for n, t in secs.items()}
    what = f"batch {s.batch_size}, medians of {reps}"
    return [
        row("inference", "merged model forward", secs["merged"], "plain timm model", secs["plain"], SAME,
            unit="s/batch", ours_per_s=ips["merged"], baseline_per_s=ips["plain"], per_s_unit="img/s", note=what),
        row("inference", "merged model forward", secs["merged"], "unmerged GLoRA model (fixed subnet)",
            secs["unmerged"], FASTER, unit="s/batch", ours_per_s=ips["merged"], baseline_per_s=ips["unmerged"],
            per_s_unit="img/s", note=what),
    ]
