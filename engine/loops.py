"""The training and evaluation loops shared by the supernet and the retrain stages."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
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
                  amp: bool = True, stop: Optional[Callable[[int, int], bool]] = None) -> tuple[int, int]:
    """(correct, seen) top-1 over (images, labels) batches, the model in eval mode; `stop(correct,
    seen)`, asked after each batch, may end the count early."""
    model.eval()
    correct = seen = 0
    for x, y in batches:
        with autocast(device, amp):
            logits = model(x.to(device, non_blocking=True))
        correct += (logits.argmax(-1) == y.to(device)).sum().item()
        seen += y.numel()
        del x, logits  # before the next batch is read: memory holds one batch, not two
        if stop is not None and stop(correct, seen):
            break
    return correct, seen


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device,
             amp: bool = True) -> float:
    """Top-1 accuracy in percent over (images, labels) batches; the model is put in eval mode."""
    return percent(*count_correct(model, batches, device, amp))


def train_step(model: nn.Module, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
               device: torch.device, amp: bool = True) -> Tensor:
    """One optimizer step on a batch; returns the (detached) loss."""
    with autocast(device, amp):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

