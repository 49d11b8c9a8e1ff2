"""RepAdapter (Luo et al., Towards Efficient Visual Adaption via Structural Re-parameterization,
arXiv 2302.08106): linear adapters before every block's attention and MLP, merged into the frozen
qkv and fc1 layers after training, so the exported model is a plain timm ViT."""
from __future__ import annotations

import random
from typing import Optional

from torch import nn

from ..errors import UserError
from ..family import Family, Setting, positive_int, probability, register
from .modules import RepAdapterLinear, vit_blocks

TARGETS = ("attn.qkv", "mlp.fc1")  # the first layer after norm1 and after norm2: the adapters' only readers


def _scale(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


@register
class RepAdapter(Family):
    """The "repblock" variant: after norm1 and after norm2, x + scale·(B(dropout(A x + a)) + b) with
    A (width × dim) and B grouped (dim × width/groups), the adapter folded into attn.qkv and
    mlp.fc1 (the only layers reading it). Parameters: depth · 2 · (width·dim + width + dim·width/groups + dim)."""

    name = "repadapter"
    mergeable = True
    paper = "RepAdapter (Luo et al., arXiv 2302.08106)"
    settings = {
        "width": Setting(8, positive_int, "a positive integer (the adapter's hidden width)"),
        "groups": Setting(2, positive_int, "a positive integer dividing width and the model's width"),
        "scale": Setting(1.0, _scale, "a positive number (the adapter's scale s)"),
        "dropout": Setting(0.1, probability, "a dropout probability in [0, 1)"),
    }

    def inject(self, model: nn.Module, rng: Optional[random.Random] = None) -> None:
        o = self.options
        for name, block in vit_blocks(model, self.name).items():
            for target in TARGETS:
                parent, _, child = target.rpartition(".")
                linear = block.get_submodule(target)
                if linear.bias is None:
                    raise ValueError(f"repadapter merges into {name}.{target}, which has no bias to hold the adapter's "
                                     "shift (a timm ViT built with qkv_bias=False); use another family")
                setattr(block.get_submodule(parent), child, RepAdapterLinear(
                    linear, width=o["width"], groups=o["groups"], scale=o["scale"], dropout=o["dropout"]))

    def adapter_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {n: m for n, m in model.named_modules() if isinstance(m, RepAdapterLinear)}

    def count(self, model: nn.Module) -> int:
        d, h, g = model.embed_dim, self.options["width"], self.options["groups"]
        return len(vit_blocks(model, self.name)) * len(TARGETS) * (h * d + h + d * h // g + d)

    def merge(self, model: nn.Module) -> nn.Module:
        for name, layer in self.adapter_modules(model).items():
            try:
                linear = layer.merged()
            except ValueError as e:  # non-finite W' or b': the adapters diverged
                raise UserError(f"{name}: {e}; retrain with a lower lr") from None
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
        return model
