"""VPT-deep (Jia et al., Visual Prompt Tuning, ECCV 2022, arXiv 2203.12119): learnable prompt tokens
enter every block of a frozen ViT. Not mergeable: the prompts lengthen every block's input."""
from __future__ import annotations

import math
import random
from typing import Optional

from torch import nn

from ..family import Family, Setting, positive_int, probability, register
from .modules import PromptTokens, token_count, vit_blocks


@register
class VPTDeep(Family):
    """`prompts` tokens per block, right after the class token, each block's replacing the last's;
    initialized uniform in ±√(6 / (3·patch² + dim)) as VPT's release does (Xavier for the patch
    embedding's fan-in), with dropout on the prompts. Parameters: depth · prompts · dim."""

    name = "vpt-deep"
    paper = "VPT-deep (Jia et al., Visual Prompt Tuning, ECCV 2022, arXiv 2203.12119)"
    why_not_merged = ("its prompt tokens lengthen every block's input sequence, which no plain timm ViT computes: "
                      "the export holds the adapters (adapters.safetensors, loaded with glora.family.attach)")
    settings = {
        "prompts": Setting(50, positive_int, "a positive integer (prompt tokens per block)"),
        "dropout": Setting(0.1, probability, "a dropout probability in [0, 1)"),
    }

    def inject(self, model: nn.Module, rng: Optional[random.Random] = None) -> None:
        blocks = vit_blocks(model, self.name)
        base, dim = token_count(model, self.name), model.embed_dim
        patch = model.patch_embed.patch_size
        bound = math.sqrt(6.0 / (3 * patch[0] * patch[1] + dim))
        for i, block in enumerate(blocks.values()):
            block.prompt = PromptTokens(block, (self.options["prompts"],), dim, prefix=model.num_prefix_tokens,
                                        base=base, bound=bound, dropout=self.options["dropout"],
                                        last=i == len(blocks) - 1)

    def adapter_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {f"{n}.prompt": b.prompt for n, b in vit_blocks(model, self.name).items()}

    def count(self, model: nn.Module) -> int:
        return len(vit_blocks(model, self.name)) * self.options["prompts"] * model.embed_dim
