"""The training and evaluation loops shared by the supernet and the retrain stages.

The top-1 count itself lives in search/score.py, which scores candidates with it (and which may
not import the harness): one formula for every accuracy the project reports.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.score import autocast, count_correct, percent

__all__ = ["autocast", "count_correct", "evaluate", "percent", "train_step"]


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device,
             amp: bool = True, classes: Tensor | None = None) -> float:
    """Top-1 accuracy in percent over (images, labels) batches; the model is put in eval mode.
    `classes`: restrict the prediction to these classes' logits."""
    return percent(*count_correct(model, batches, device, amp, classes=classes))


def train_step(model: nn.Module, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
               device: torch.device, amp: bool = True) -> Tensor:
    """One optimizer step on a batch; returns the (detached) loss."""
    with autocast(device, amp):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

