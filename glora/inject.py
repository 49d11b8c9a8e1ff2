"""Putting GLoRA into a model: injection, subnet selection, sampling, freezing and counting."""
from __future__ import annotations

import fnmatch
import random
from typing import Iterable, Mapping, Optional

import torch
from torch import Tensor, nn

from .layer import GLoRALinear
from .space import BIAS_TENSORS, TENSORS, LayerConfig, SearchSpace

Subnet = dict  # {qualified layer name: layer config}


def head_names(model: nn.Module) -> set[str]:
    """Qualified names of the classifier head module(s), never adapted and always trained."""
    get = getattr(model, "get_classifier", None)
    heads = get() if callable(get) else getattr(model, "head", None)
    if heads is None:
        return set()
    heads = heads if isinstance(heads, (tuple, list)) else [heads]
    ids = {id(h) for h in heads if isinstance(h, nn.Module)}
    return {name for name, m in model.named_modules() if id(m) in ids}


def select_linears(model: nn.Module, targets: Optional[Iterable[str]] = None,
                   exclude: Optional[Iterable[str]] = None) -> list[str]:
    """Names of the nn.Linear layers to adapt.

    `targets`/`exclude` are glob patterns over qualified names (e.g. "blocks.*.attn.qkv");
    default targets: every nn.Linear but the classifier head. A pattern that selects no
    linear layer is an error, so that a typo never silently adapts nothing.
    """
    heads = head_names(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    linears = [n for n in linears if not any(n == h or n.startswith(h + ".") for h in heads)]

    def matching(patterns, names):
        hit = []
        for p in patterns:
            found = fnmatch.filter(names, p)
            if not found:
                raise ValueError(f"pattern {p!r} matches no linear layer; some names: {names[:6]}")
            hit += found
        return set(hit)

    chosen = linears if targets is None else [n for n in linears if n in matching(list(targets), linears)]
    if exclude:
        drop = matching(list(exclude), chosen)
        chosen = [n for n in chosen if n not in drop]
    return chosen


def inject_glora(model: nn.Module, space: SearchSpace, targets: Optional[Iterable[str]] = None,
                 exclude: Optional[Iterable[str]] = None,
                 rng: Optional[random.Random] = None) -> dict[str, GLoRALinear]:
    """Replace the target linear layers by GLoRALinear in place; return them by qualified name.

    All layers share `rng` (default `random.Random(0)`), so one seeded generator owned by the
    run decides every sampled subnet.
    """
    rng = random.Random(0) if rng is None else rng
    names = select_linears(model, targets, exclude)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer to adapt{f' left by exclude {list(exclude)}' if exclude else ''} "
            f"besides its classifier head {sorted(head_names(model))}; GLoRA adapts linear layers "
            "(ViT, DeiT, Swin, MLP-Mixer, ConvNeXt with conv_mlp=False), not convolutions"
        )
    layers = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = GLoRALinear(getattr(parent, child), space, rng)
        setattr(parent, child, layer)
        layers[name] = layer
    return layers


def glora_layers(model: nn.Module) -> dict[str, GLoRALinear]:
    """The adapted layers of a model, by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, GLoRALinear)}


def set_sampler(model: nn.Module, rng: random.Random) -> None:
    """Make every layer draw its random configs from `rng`."""
    for layer in glora_layers(model).values():
        layer.rng = rng


def check_names(layers: Mapping, subnet: Mapping) -> None:
    """A subnet names every adapted layer and nothing else."""
    unknown = sorted(set(subnet) - set(layers))
    missing = sorted(set(layers) - set(subnet))
    if unknown or missing:
        more = lambda names: f"{names[:4]}{'...' if len(names) > 4 else ''}"  # noqa: E731
        raise ValueError(f"subnet does not fit the model: unknown layers {more(unknown)}, missing layers {more(missing)}")


def set_subnet(model: nn.Module, subnet: Optional[Mapping[str, LayerConfig]]) -> None:
    """Fix every adapted layer's config (all must be named), or with None return them to sampling."""
    layers = glora_layers(model)
    if subnet is None:
        for layer in layers.values():
            layer.set_config(None)
        return
    check_names(layers, subnet)
    for name, layer in layers.items():
        layer.set_config(subnet[name], where=name)


def make_static(model: nn.Module) -> Tensor:
    """Give every adapted layer its static form (glora/layer.py): one (layers × switch width) table on
    the model's device holds the subnet, each layer reading its row, so that writing a subnet
    (write_subnet) is one copy and never changes the graph. Call it once the model is on its
    device; returns the table."""
    layers = list(glora_layers(model).values())
    widths = {layer.switch_width() for layer in layers}
    if len(widths) != 1:
        raise ValueError("make_static needs one search space (its kinds and largest rank) in every adapted layer")
    like = layers[0].weight
    table = torch.zeros(len(layers), widths.pop(), dtype=like.dtype, device=like.device)
    for row, layer in zip(table, layers):
        layer.make_static(row)
    return table


def write_subnet(model: nn.Module, subnet: Mapping[str, LayerConfig]) -> None:
    """Write `subnet` (every layer named) into the static layers' table in one copy: the static form's
    set_subnet, for a training step whose subnet changes and whose graph must not."""
    layers = glora_layers(model)
    check_names(layers, subnet)
    first = next(iter(layers.values()))
    table = first.switch._base if first.static else None
    if table is None or any(not l.static or l.switch._base is not table for l in layers.values()):
        raise RuntimeError("write_subnet needs every layer's static form in one table: call make_static(model) "
                           "(again after moving the model to another device)")
    rows = [l.switch_row(l.space.validate(subnet[n], l.has_bias, where=n)) for n, l in layers.items()]
    table.copy_(torch.tensor(rows, dtype=table.dtype))


def used_flags(model: nn.Module) -> dict[nn.Parameter, Tensor]:
    """Every static layer's storage tensors with their flags in the table (1: the subnet written there
    uses the tensor), for glora.optim.MaskedAdamW, which leaves the others untouched."""
    return {getattr(l, name): flag for l in glora_layers(model).values() for name, flag in l.used_flags().items()}


def sample_subnet(model: nn.Module, rng: random.Random) -> Subnet:
    """A random subnet: each layer's config drawn uniformly from its space."""
    return {n: l.space.sample(rng, l.has_bias) for n, l in glora_layers(model).items()}


def uniform_subnet(model: nn.Module, cfg: Mapping[str, str]) -> Subnet:
    """One layer config for every adapted layer; a tensor `cfg` leaves out is "none".

    A layer without bias takes none of C, D, E (it has no bias to hold them), as its space says.
    """
    unknown = sorted(set(cfg) - set(TENSORS))
    if unknown:
        raise ValueError(f"unknown tensors {unknown} in a layer config; the tensors are {list(TENSORS)}")
    full = {t: str(cfg.get(t, "none")) for t in TENSORS}
    no_bias = {**full, **dict.fromkeys(BIAS_TENSORS, "none")}
    return {n: l.space.validate(full if l.has_bias else no_bias, l.has_bias, where=n)
            for n, l in glora_layers(model).items()}


def current_subnet(model: nn.Module) -> Subnet:
    """The fixed configs of every adapted layer (all must be fixed)."""
    subnet = {}
    for name, layer in glora_layers(model).items():
        if layer.config is None:
            raise RuntimeError(f"{name} has no fixed config")
        subnet[name] = dict(layer.config)
    return subnet


def subnet_params(model: nn.Module, subnet: Mapping[str, LayerConfig]) -> int:
    """Adapter parameters of a subnet by the closed-form count (glora/layer.py's docstring)."""
    layers = glora_layers(model)
    check_names(layers, subnet)
    return sum(l.space.count(l.space.validate(subnet[n], l.has_bias, where=n), l.in_features, l.out_features)
               for n, l in layers.items())


def param_bounds(model: nn.Module) -> tuple[int, int]:
    """The smallest and largest adapter parameter counts any subnet of this model can have."""
    lo = hi = 0
    for layer in glora_layers(model).values():
        a, b = layer.space.bounds(layer.in_features, layer.out_features, layer.has_bias)
        lo, hi = lo + a, hi + b
    return lo, hi


def compact_subnet(model: nn.Module) -> None:
    """Drop the storage that the fixed subnet does not use (the retrain model)."""
    for layer in glora_layers(model).values():
        layer.compact()


def mark_trainable(model: nn.Module) -> list[str]:
    """Freeze the backbone; only GLoRA storage and the classifier head train. Returns trainable names."""
    model.requires_grad_(False)
    for layer in glora_layers(model).values():
        for p in layer.adapter_parameters().values():
            p.requires_grad_(True)
    for name in head_names(model):
        model.get_submodule(name).requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def head_params(model: nn.Module) -> int:
    """Elements of the classifier head."""
    return sum(p.numel() for n in head_names(model) for p in model.get_submodule(n).parameters())
