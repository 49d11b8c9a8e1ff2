"""The models that the step benchmarks train, each with its AdamW, all from the same backbone init.

ours: the GLoRA supernet (every nn.Linear but the head, a random subnet per forward) and the
retrain model (one fixed subnet, compacted). Baselines: bias-only (BitFit: the floor, it also
back-propagates through every block), full fine-tuning, the dense reference (the same supernet
materializing W + W⊙A + B in every forward, as the authors' release does), and HF PEFT's LoRA
and GLoRA tuners on the same block linears.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from engine.trainer import adamw
from glora import SearchSpace, compact_subnet, glora_layers, inject_glora, mark_trainable, set_subnet, subnet_params
from glora.model import create_model

from .settings import Settings

# The linear layers of the blocks by path: a bare name such as `proj` also matches the Conv2d
# patch_embed.proj, which PEFT's LoRA would then adapt as well.
BLOCK_LINEARS = r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
# The configuration that PEFT's GLoRA tuner applies to every layer by default.
PEFT_GLORA_CONFIG = {"A": "lora_{r}", "B": "lora_{r}", "C": "lora_{r}", "D": "scalar", "E": "scalar"}
PAPER_VIT_B_BUDGET = 0.86e6  # adapter parameters of the paper's ViT-B subnets


@dataclass
class Variant:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    note: str = ""


def backbone(s: Settings) -> nn.Module:
    torch.manual_seed(s.seed)  # every variant starts from the same weights
    return create_model(s.model, s.num_classes, pretrained=False, **s.model_kwargs).to(s.device)


def finish(s: Settings, model: nn.Module, note: str = "") -> Variant:
    """AdamW over the trainable parameters, made the way engine.trainer makes it."""
    model.train()
    d = s.defaults["train"]
    return Variant(model, adamw(model, d["lr"], d["weight_decay"], s.device), note)


def bias_only(s: Settings) -> Variant:
    model = backbone(s)
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(".bias") or name.startswith("head."))
    return finish(s, model, "biases and head train")


def lora_a_floor(s: Settings) -> Variant:
    """Bias-only plus the full weight gradient dyᵀx in each block linear with the probability that
    the supernet draws A = lora_k there: a lower bound for any exact GLoRA supernet step, since
    dA = (dyᵀx)⊙W has no cheaper form. The weight gradients are computed and dropped."""
    from glora.inject import select_linears

    v = bias_only(s)
    space = SearchSpace(s.ranks)
    p_lora = len(space.ranks) / len(space.choices["A"])
    linears = [v.model.get_submodule(n) for n in select_linears(v.model)]
    rng = random.Random(s.seed)

    def draw(module, args):
        for linear in linears:
            linear.weight.grad = None
            linear.weight.requires_grad_(rng.random() < p_lora)

    v.model.register_forward_pre_hook(draw)
    v.note = f"biases and head train; dyᵀx in each linear w.p. {p_lora:g}"
    return v


def full(s: Settings) -> Variant:
    return finish(s, backbone(s), "every parameter trains")


def use_dense_forward(model: nn.Module) -> None:
    """Every GLoRA layer computes through GLoRALinear.forward_dense: W' and b' built each call."""
    for layer in glora_layers(model).values():
        layer.forward = layer.forward_dense


def glora_model(s: Settings) -> nn.Module:
    model = backbone(s)
    inject_glora(model, SearchSpace(s.ranks), rng=random.Random(s.seed))
    mark_trainable(model)
    return model


def supernet(s: Settings, dense: bool = False) -> Variant:
    model = glora_model(s)
    if dense:
        use_dense_forward(model)
    return finish(s, model, "dense W' every forward" if dense else "random subnet per forward")


def retrain_budget(s: Settings, model: nn.Module) -> int:
    """The paper's ViT-B budget (0.86M) scaled to this model: adapter counts grow with width × depth."""
    width, depth = model.embed_dim, len(model.blocks)
    return round(PAPER_VIT_B_BUDGET * width / 768 * depth / 12)


def budget_subnet(s: Settings, model: nn.Module, budget: int, spread: float = 0.05) -> dict:
    """A random subnet within ±spread of `budget`, drawn as the search draws its candidates."""
    from search.evolution import CandidateSpace, layer_slots

    space = CandidateSpace(layer_slots(model), (round(budget * (1 - spread)), round(budget * (1 + spread))))
    return space.subnet(space.sample(random.Random(s.seed)))


def fixed(s: Settings, choose: Optional[Callable[[nn.Module], dict]] = None, dense: bool = False,
          label: str = "subnet") -> Variant:
    """The retrain model: one fixed subnet (default: near the scaled paper budget), compacted so
    that only its own parameters exist; `choose(model)` picks another subnet."""
    model = glora_model(s)
    subnet = choose(model) if choose is not None else budget_subnet(s, model, retrain_budget(s, model))
    set_subnet(model, subnet)
    compact_subnet(model)
    mark_trainable(model)
    if dense:
        use_dense_forward(model)
    n = subnet_params(model, subnet)
    a_lora = sum(cfg["A"].startswith("lora") for cfg in subnet.values())
    return finish(s, model, f"{label} {n / 1e6:.3f}M adapter params, A=lora in {a_lora}/{len(subnet)} layers"
                  + (", dense W' every forward" if dense else ""))


def peft_config_subnet(s: Settings, model: nn.Module) -> dict:
    """PEFT GLoRA's default configuration on every adapted layer, as one of our subnets."""
    r = max(s.ranks)
    cfg = {t: c.format(r=r) for t, c in PEFT_GLORA_CONFIG.items()}
    return {name: dict(cfg) for name in glora_layers(model)}


def peft_lora(s: Settings, r: int = 4) -> Variant:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=r, target_modules=BLOCK_LINEARS, modules_to_save=["head"])
    return finish(s, get_peft_model(backbone(s), config), f"peft LoRA r{r}, block linears")


def peft_glora(s: Settings) -> Variant:
    from peft import GloraConfig, get_peft_model

    r = max(s.ranks)
    config = GloraConfig(r=r, target_modules=BLOCK_LINEARS, modules_to_save=["head"],
                         config_A_B="lora", config_C="lora", config_D_E="constant")
    return finish(s, get_peft_model(backbone(s), config), f"peft GLoRA r{r}: A,B,C lora, D,E scalar")
