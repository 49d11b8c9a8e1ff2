"""Scoring candidates: top-1 on the validation split through merged weights, stopped early once a
candidate can no longer reach the parents."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from glora.accuracy import count_correct, percent
from glora.inject import Subnet, glora_layers, set_subnet


@dataclass(frozen=True)
class Score:
    """What scoring a candidate saw: `correct` of the first `seen` of `total` images."""

    correct: int
    seen: int
    total: int

    @property
    def pruned(self) -> bool:
        """Stopped before the end: `acc1` is then an upper bound."""
        return self.seen < self.total

    @property
    def acc1(self) -> float:
        """Top-1 in percent if every image not seen were right: the accuracy itself when none is left."""
        return percent(self.correct + self.total - self.seen, self.total)


def score_batches(model: nn.Module, batches, amp: bool = True, floor: float = 0.0) -> Score:
    """Count `model`'s top-1 over a BatchLoader, stopping after the first batch past which even
    every remaining image right would leave the accuracy below `floor` (0: never)."""
    total = len(batches.labels)

    def hopeless(correct: int, seen: int) -> bool:
        return percent(correct + total - seen, total) < floor

    correct, seen = count_correct(model, batches, batches.device, amp, hopeless)
    return Score(correct, seen, total)


class MergedScorer:
    """Scores a subnet by the accuracy of a plain model that holds its merged weights.

    The plain model is built once; per candidate only W' and b' are written into it, so scoring
    costs one plain forward over the split, without any of the GLoRA terms. `batches` is the
    split's BatchLoader (engine.experiment.eval_loader: val200 held on the device).
    """

    def __init__(self, supernet: nn.Module, batches, amp: bool = True):
        self.supernet, self.batches, self.amp = supernet, batches, amp
        self.layers = glora_layers(supernet)
        self.plain = copy.deepcopy(supernet)
        self.plain_layers = {}
        for name, layer in self.layers.items():
            lin = nn.Linear(layer.in_features, layer.out_features, bias=True,
                            device=layer.weight.device, dtype=layer.weight.dtype).requires_grad_(False)
            parent, _, child = name.rpartition(".")
            setattr(self.plain.get_submodule(parent), child, lin)
            self.plain_layers[name] = lin
        self.plain.eval()

    @torch.inference_mode()
    def load(self, subnet: Subnet) -> nn.Module:
        """Write the subnet's merged weights into the plain model and return it."""
        for name, layer in self.layers.items():
            cfg = layer.space.validate(subnet[name], layer.has_bias, where=name)
            lin = self.plain_layers[name]
            lin.weight.copy_(layer.merged_weight(cfg))
            bias = layer.merged_bias(cfg)
            lin.bias.copy_(bias) if bias is not None else lin.bias.zero_()
        return self.plain

    def __call__(self, subnet: Subnet, floor: float = 0.0) -> Score:
        """The subnet's score; it stops early once its accuracy can no longer reach `floor`."""
        return score_batches(self.load(subnet), self.batches, self.amp, floor)


class SupernetScorer:
    """The slow baseline: score through the supernet's own forward with the subnet fixed."""

    def __init__(self, supernet: nn.Module, batches, amp: bool = True, dense: bool = False):
        self.supernet, self.batches, self.amp, self.dense = supernet, batches, amp, dense

    def __call__(self, subnet: Subnet, floor: float = 0.0) -> Score:
        set_subnet(self.supernet, subnet)
        layers = glora_layers(self.supernet).values()
        if self.dense:  # the authors' way: materialize W' for every layer in every forward
            for layer in layers:
                layer.forward = layer.forward_dense
        try:
            return score_batches(self.supernet, self.batches, self.amp, floor)
        finally:
            for layer in layers:
                layer.__dict__.pop("forward", None)
            set_subnet(self.supernet, None)
