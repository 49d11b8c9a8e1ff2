"""Training steps: the supernet step and the retrain step against their baselines, with peak memory.

Every variant trains the same backbone on the same batch with engine.loops.train_step (AdamW,
bf16 autocast on CUDA); all are timed in one interleaved loop, so each ratio compares steps
taken under the same machine conditions.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.loops import train_step

from . import variants as V
from .report import FASTER, at_most, row, skipped
from .settings import Settings
from .timing import interleaved, median, peak_bytes

FLOOR_TARGET = at_most(1.25)


def builders(s: Settings) -> dict[str, Callable[[], V.Variant]]:
    """Every variant by its label; one whose builder raises ImportError (no PEFT) gives skipped rows."""
    retrain_subnet = {}

    def retrain(dense: bool):
        def choose(model):  # the same subnet for ours and the dense reference
            if "subnet" not in retrain_subnet:
                retrain_subnet["subnet"] = V.budget_subnet(s, model, V.retrain_budget(s, model))
            return retrain_subnet["subnet"]
        return lambda: V.fixed(s, choose, dense=dense, label="subnet near the scaled paper budget,")

    return {
        "supernet": lambda: V.supernet(s),
        "bias-only": lambda: V.bias_only(s),
        "bias-only + A=lora weight gradients": lambda: V.lora_a_floor(s),
        "full fine-tuning": lambda: V.full(s),
        "dense reference supernet": lambda: V.supernet(s, dense=True),
        "peft LoRA r4": lambda: V.peft_lora(s, 4),
        "peft GLoRA": lambda: V.peft_glora(s),
        "ours, peft GLoRA's config": lambda: V.fixed(s, lambda m: V.peft_config_subnet(s, m),
                                                    label="A,B,C lora, D,E scalar on every layer:"),
        "retrain": retrain(dense=False),
        "dense reference retrain": retrain(dense=True),
    }


def bench_steps(s: Settings) -> list[dict]:
    x = torch.randn(s.batch_size, 3, s.img_size, s.img_size, device=s.device)
    y = torch.randint(0, s.num_classes, (s.batch_size,), device=s.device)
    built, missing = {}, {}
    for name, make in builders(s).items():
        try:
            built[name] = make()
        except ImportError as e:  # PEFT is optional
            missing[name] = f"{e.name or e} is not installed"

    def step(v: V.Variant):
        return lambda: train_step(v.model, x, y, v.optimizer, s.device, s.amp)

    times = interleaved({n: step(v) for n, v in built.items()}, s.reps, s.warmup, s.device)
    secs = {n: median(t) for n, t in times.items()}
    mem = {}
    for n, v in built.items():
        v.model.zero_grad(set_to_none=True)  # gradients freed before profiling would go uncounted
        mem[n] = peak_bytes(step(v), s.device, v.model, v.optimizer) / 2**20

    def compare(section, ours, base, target=None):
        if not {ours, base} <= set(built) | set(missing):
            return None  # not asked for
        if base in missing or ours in missing:
            return skipped(section, f"{ours} step", base, missing.get(base) or missing.get(ours))
        return row(section, f"{ours} step", secs[ours], base, secs[base], target, unit="s/step",
                   ours_mb=mem[ours], baseline_mb=mem[base],
                   ours_per_s=s.batch_size / secs[ours], baseline_per_s=s.batch_size / secs[base],
                   per_s_unit="img/s", note=f"ours: {built[ours].note}; baseline: {built[base].note}")

    rows = [
        compare("supernet step", "supernet", "bias-only", FLOOR_TARGET),
        compare("supernet step", "supernet", "bias-only + A=lora weight gradients"),
        compare("supernet step", "supernet", "full fine-tuning", FASTER),
        compare("supernet step", "supernet", "dense reference supernet", FASTER),
        compare("supernet step", "supernet", "peft LoRA r4"),
        compare("supernet step", "supernet", "peft GLoRA"),
        compare("fixed-config step", "ours, peft GLoRA's config", "peft GLoRA", FASTER),
        compare("fixed-config step", "ours, peft GLoRA's config", "bias-only"),
        compare("retrain step", "retrain", "bias-only"),  # cost grows with the subnet's A=lora layers
        compare("retrain step", "retrain", "full fine-tuning", FASTER),
        compare("retrain step", "retrain", "dense reference retrain", FASTER),
    ]
    return [r for r in rows if r is not None]
