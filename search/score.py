"""Scoring candidates: top-1 on the validation split through merged weights, stopped early once a
candidate can no longer reach the parents."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from glora.accuracy import count_correct, percent
from glora.inject import Subnet, glora_layers, set_subnet
from glora.merge import MergedCopy


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


class SubnetScorer:
    """Scores a subnet by the accuracy of the model `load(subnet)` returns over a split's batches
    (an adapter family's scoring model: glora.family.Family.scoring_model)."""

    def __init__(self, load: Callable[[Subnet], nn.Module], batches, amp: bool = True):
        self.load, self.batches, self.amp = load, batches, amp

    def __call__(self, subnet: Subnet, floor: float = 0.0) -> Score:
        """The subnet's score; it stops early once its accuracy can no longer reach `floor`."""
        return score_batches(self.load(subnet), self.batches, self.amp, floor)


class MergedScorer(SubnetScorer):
    """Scores a GLoRA subnet by the accuracy of a plain model that holds its merged weights.

    The plain model is built once (glora.merge.MergedCopy); per candidate only W' and b' are
    written into it, so scoring costs one plain forward over the split, without any of the GLoRA
    terms. `batches` is the split's BatchLoader (engine.experiment.eval_loader: val200 held on the device).
    """

    def __init__(self, supernet: nn.Module, batches, amp: bool = True):
        self.copy = MergedCopy(supernet)
        self.plain = self.copy.plain
        super().__init__(self.copy.load, batches, amp)


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
