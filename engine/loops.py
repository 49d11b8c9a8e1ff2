"""The training and evaluation loops shared by the supernet and the retrain stages (the top-1
count itself is glora/accuracy.py's, which the search's scoring uses too)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glora.accuracy import autocast, count_correct, percent


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

