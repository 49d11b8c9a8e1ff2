"""Scoring candidates: top-1 on the validation split, held in memory, through merged weights."""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from engine.loops import evaluate, split_batches
from glora.inject import Subnet, glora_layers, set_subnet


class MergedScorer:
    """Scores a subnet by the accuracy of a plain model that holds its merged weights.

    The plain model is built once; per candidate only W' and b' are written into it, so scoring
    costs one plain forward over the split, without any of the GLoRA terms.
    """

    def __init__(self, supernet: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256,
                 amp: bool = True):
        self.supernet = supernet
        self.device = images.device
        self.images, self.labels = images, labels.to(images.device)
        self.batch_size, self.amp = batch_size, amp
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

    def __call__(self, subnet: Subnet) -> float:
        model = self.load(subnet)
        return evaluate(model, split_batches(self.images, self.labels, self.batch_size), self.device, self.amp)


class SupernetScorer:
    """The slow baseline: score through the supernet's own forward with the subnet fixed."""

    def __init__(self, supernet: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256,
                 amp: bool = True, dense: bool = False):
        self.supernet, self.images, self.labels = supernet, images, labels.to(images.device)
        self.batch_size, self.amp, self.dense = batch_size, amp, dense

    def __call__(self, subnet: Subnet) -> float:
        set_subnet(self.supernet, subnet)
        layers = glora_layers(self.supernet).values()
        if self.dense:  # the authors' way: materialize W' for every layer in every forward
            for layer in layers:
                layer.forward = layer.forward_dense
        try:
            return evaluate(self.supernet, split_batches(self.images, self.labels, self.batch_size),
                            self.images.device, self.amp)
        finally:
            for layer in layers:
                layer.__dict__.pop("forward", None)
            set_subnet(self.supernet, None)
