"""What the benchmark runs on: the device, the model and batch for it, repetitions, and the
project defaults (configs/defaults.yaml) that the VTAB-1k estimate scales by."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from engine.config import load_config


@dataclass
class Settings:
    device: torch.device
    model: str  # a timm name; random init (no weights are downloaded)
    batch_size: int  # supernet and retrain steps, inference
    amp: bool  # bf16 autocast (CUDA only, as in engine.loops)
    threads: int
    quick: bool
    reps: int  # timed repetitions per measurement (medians are reported)
    warmup: int
    search_reps: int  # candidates scored per scorer
    num_classes: int = 100
    img_size: int = 224
    val_images: int = 200  # val200
    seed: int = 0
    defaults: dict = field(default_factory=load_config)
    kwargs: dict = field(default_factory=dict)  # extra timm.create_model kwargs (tests: a tiny ViT)

    @property
    def model_kwargs(self) -> dict:
        return {**(self.defaults["model"]["kwargs"] or {}), **self.kwargs}

    @property
    def ranks(self) -> tuple:
        return tuple(self.defaults["glora"]["ranks"])

    @property
    def eval_batch_size(self) -> int:
        return int(self.defaults["data"]["eval_batch_size"])

    def describe(self) -> str:
        amp = "bf16 autocast" if self.amp else "float32"
        return (f"{self.device.type}: {self.model} (random init), batch {self.batch_size}, {self.img_size} px, "
                f"{amp}, {self.threads} torch threads, medians of {self.reps} interleaved repetitions "
                f"after {self.warmup} warm-up")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_settings(device: str = "auto", quick: bool = False, threads: int | None = None,
                  reps: int | None = None) -> Settings:
    """ViT-B/16, batch 64, bf16 on a GPU; ViT-S/16, batch 8, float32 on the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    threads = threads or usable_cores()
    torch.set_num_threads(threads)
    if dev.type == "cuda":
        s = Settings(dev, "vit_base_patch16_224", 64, True, threads, quick,
                     reps=10 if quick else 30, warmup=3, search_reps=3 if quick else 10)
    else:
        s = Settings(dev, "vit_small_patch16_224", 8, False, threads, quick,
                     reps=7 if quick else 15, warmup=1 if quick else 2, search_reps=2 if quick else 5)
    if reps:
        s.reps = reps
        s.search_reps = max(1, min(s.search_reps, reps))
    return s
