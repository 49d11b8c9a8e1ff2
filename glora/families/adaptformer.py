"""AdaptFormer (Chen et al., NeurIPS 2022, arXiv 2205.13535): a bottleneck MLP beside every block's
MLP, scaled. Not mergeable: the ReLU between its two layers is not linear."""
from __future__ import annotations

import random
from typing import Optional

from torch import nn

from ..family import Family, Setting, positive_int, probability, register
from .modules import ParallelAdapter, vit_blocks


def _scale(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


@register
class AdaptFormer(Family):
    """In every block, x + drop_path(mlp(norm2(x))) + scale · up(dropout(relu(down(x)))), down
    Kaiming-uniform and up zero (an untrained model is the pretrained one), as AdaptFormer's
    image configuration (parallel, no adapter layer norm, "lora" init, scale 0.1).
    Parameters: depth · (2 · dim · width + width + dim)."""

    name = "adaptformer"
    paper = "AdaptFormer (Chen et al., NeurIPS 2022, arXiv 2205.13535)"
    why_not_merged = ("its AdaptMLP has a ReLU between its two layers, so it does not fold into the frozen weights: "
                      "the export holds the adapters (adapters.safetensors, loaded with glora.family.attach)")
    settings = {
        "width": Setting(64, positive_int, "a positive integer (the bottleneck width)"),
        "scale": Setting(0.1, _scale, "a positive number (the adapter output's scale)"),
        "dropout": Setting(0.1, probability, "a dropout probability in [0, 1)"),
    }

    def inject(self, model: nn.Module, rng: Optional[random.Random] = None) -> None:
        o = self.options
        for block in vit_blocks(model, self.name).values():
            block.adapter = ParallelAdapter(block, model.embed_dim, o["width"], scale=o["scale"], dropout=o["dropout"])

    def adapter_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {f"{n}.adapter": b.adapter for n, b in vit_blocks(model, self.name).items()}

    def count(self, model: nn.Module) -> int:
        d, k = model.embed_dim, self.options["width"]
        return len(vit_blocks(model, self.name)) * (2 * d * k + k + d)
