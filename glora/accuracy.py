"""Top-1 accuracy: the count over (images, labels) batches and the one percent formula that every
accuracy the project reports uses (training stages, the search's scoring, the benchmarks), with
the precision every forward runs in (bf16 autocast on CUDA)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere (bf16 matmuls on CPUs are slow or inexact)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def percent(correct: int, total: int) -> float:
    """Top-1 accuracy in percent: the one formula, so that accuracies compare exactly."""
    return 100.0 * correct / max(total, 1)


@torch.inference_mode()
def count_correct(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device,
                  amp: bool = True, stop: Optional[Callable[[int, int], bool]] = None,
                  classes: Optional[Tensor] = None) -> tuple[int, int]:
    """(correct, seen) top-1 over (images, labels) batches, the model in eval mode; `stop(correct,
    seen)`, asked after each batch, may end the count early. With `classes` (label indices) the
    prediction is the best of those logits alone (ImageNet-A and -R: the 200 classes they hold)."""
    model.eval()
    correct = seen = 0
    if classes is not None:
        classes = classes.to(device)
    for x, y in batches:
        with autocast(device, amp):
            logits = model(x.to(device, non_blocking=True))
        pred = logits.argmax(-1) if classes is None else classes[logits[:, classes].argmax(-1)]
        correct += (pred == y.to(device)).sum().item()
        seen += y.numel()
        del x, logits  # before the next batch is read: memory holds one batch, not two
        if stop is not None and stop(correct, seen):
            break
    return correct, seen
