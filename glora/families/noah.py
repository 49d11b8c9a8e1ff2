"""NOAH (Zhang et al., Neural Prompt Search, arXiv 2206.04673): a supernet over three modules in
every ViT block — VPT-deep prompt tokens, LoRA on attn.qkv and an adapter after the MLP — whose sizes
are searched per block under a parameter budget, then retrained. Not mergeable (prompts, adapter)."""
from __future__ import annotations

import math
import random
from typing import Mapping, Optional

from torch import nn

from ..family import Family, Setting, probability, register
from .modules import LoRALinear, PromptTokens, SequentialAdapter, token_count, vit_blocks

SIZES = "a list of distinct non-negative integers (0: the module is off in that block)"


def _sizes(v) -> bool:
    return (isinstance(v, list) and len(v) > 0 and len(set(v)) == len(v)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v))


@register
class NOAH(Family):
    """Per block, one size per key: `prompt` tokens (k·dim parameters), `lora` rank on attn.qkv
    (r·(dim + qkv outputs)), `adapter` width after the MLP (a·(2·dim + 1) + dim); 0 turns a module off.

    NOAH's release (experiments/NOAH/supernet/supernet-B_prompt.yaml) searches the sizes 5, 10, 50,
    100 for each module, and a depth of 3, 6, 9 or 12 blocks per module (off beyond it). Here each
    block chooses among 0 (off), 5, 10, 50, 100 on its own: the release's space plus subnets that
    switch a module off in any block, so that the search keys on per-block choices like GLoRA's.
    Supernet training draws every block's sizes uniformly each forward. Prompts follow VPT-deep
    (each block with prompts replaces the earlier ones; a block without keeps them), initialized
    Xavier-uniform as NOAH's; the adapter uses QuickGELU and Xavier-uniform weights as NOAH's, and
    every module has dropout 0.1 (NOAH's drop_rate_prompt, drop_rate_LoRA, drop_rate_adapter).
    """

    name = "noah"
    supernet = True
    paper = "NOAH (Zhang et al., Neural Prompt Search, arXiv 2206.04673)"
    why_not_merged = ("its prompt tokens lengthen every block's input and its adapter is not linear, so no plain "
                      "timm ViT computes the same: the export holds the adapters (adapters.safetensors, loaded "
                      "with glora.family.attach)")
    uniform_example = "{prompt: 10, lora: 10, adapter: 10}"
    settings = {
        "prompt": Setting([0, 5, 10, 50, 100], _sizes, SIZES),
        "lora": Setting([0, 5, 10, 50, 100], _sizes, SIZES),
        "adapter": Setting([0, 5, 10, 50, 100], _sizes, SIZES),
        "dropout": Setting(0.1, probability, "a dropout probability in [0, 1)"),
    }

    def inject(self, model: nn.Module, rng: Optional[random.Random] = None) -> None:
        rng = random.Random(0) if rng is None else rng
        o, blocks = self.options, vit_blocks(model, self.name)
        base, dim = token_count(model, self.name), model.embed_dim
        bound = math.sqrt(6.0 / (dim * (max(o["prompt"]) + 1)))  # Xavier-uniform of NOAH's (1, k, dim) tokens
        for i, block in enumerate(blocks.values()):
            block.prompt = PromptTokens(block, o["prompt"], dim, prefix=model.num_prefix_tokens, base=base,
                                        bound=bound, dropout=o["dropout"], last=i == len(blocks) - 1, rng=rng)
            block.attn.qkv = LoRALinear(block.attn.qkv, o["lora"], dropout=o["dropout"], rng=rng)
            block.adapter = SequentialAdapter(block, o["adapter"], dim, dropout=o["dropout"], rng=rng)

    def modules_of(self, model: nn.Module) -> dict[str, dict[str, nn.Module]]:
        """Per block: its prompt, LoRA and adapter modules."""
        return {n: {"prompt": b.prompt, "lora": b.attn.qkv, "adapter": b.adapter}
                for n, b in vit_blocks(model, self.name).items()}

    def adapter_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        where = {"prompt": "prompt", "lora": "attn.qkv", "adapter": "adapter"}
        return {f"{n}.{where[k]}": m for n, mods in self.modules_of(model).items() for k, m in mods.items()}

    def slots(self, model: nn.Module) -> dict[str, dict[str, dict[int, int]]]:
        dim = model.embed_dim
        out = {}
        for name, mods in self.modules_of(model).items():
            lora = mods["lora"]
            out[name] = {
                "prompt": {k: k * dim for k in mods["prompt"].choices},
                "lora": {r: r * (lora.in_features + lora.out_features) for r in lora.choices},
                "adapter": {a: a * (2 * dim + 1) + dim if a else 0 for a in mods["adapter"].choices},
            }
        return out

    def set_subnet(self, model: nn.Module, subnet: Optional[Mapping]) -> None:
        subnet = None if subnet is None else self.check_subnet(model, subnet)
        for name, mods in self.modules_of(model).items():
            for key, module in mods.items():
                module.set_size(None if subnet is None else subnet[name][key], where=f"{name}.{key}")

    def current_subnet(self, model: nn.Module) -> Optional[dict]:
        sizes = {n: {k: m.size for k, m in mods.items()} for n, mods in self.modules_of(model).items()}
        return None if any(s is None for cfg in sizes.values() for s in cfg.values()) else sizes

    def count(self, model: nn.Module) -> int:
        subnet = self.current_subnet(model)
        if subnet is None:
            raise RuntimeError("count() of a NOAH supernet needs a fixed subnet: set_subnet first")
        return self.subnet_params(model, subnet)

    def compact(self, model: nn.Module) -> None:
        for mods in self.modules_of(model).values():
            for module in mods.values():
                module.compact()

    def compacted(self, model: nn.Module) -> bool:
        return all(m.compacted for mods in self.modules_of(model).values() for m in mods.values())
