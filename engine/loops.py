"""The training and evaluation loops shared by the supernet and the retrain stages."""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere (bf16 matmuls on CPUs are slow or inexact)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device,
             amp: bool = True) -> float:
    """Top-1 accuracy in percent over (images, labels) batches; the model is put in eval mode."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        with autocast(device, amp):
            logits = model(x.to(device, non_blocking=True))
        correct += (logits.argmax(-1) == y.to(device)).sum().item()
        total += y.numel()
    return 100.0 * correct / max(total, 1)


def train_step(model: nn.Module, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
               device: torch.device, amp: bool = True) -> Tensor:
    """One optimizer step on a batch; returns the (detached) loss."""
    with autocast(device, amp):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def split_batches(x: Tensor, y: Tensor, batch_size: int):
    """Batches of an in-memory split, in order."""
    for i in range(0, len(y), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]
