"""Reparameterization and export: merge GLoRA into plain nn.Linear; save/load adapters-only files."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import UserError
from .inject import compact_subnet, current_subnet, glora_layers, head_names, set_subnet
from .io import load_tensors, save_tensors, tensors_metadata
from .space import SearchSpace

ADAPTER_FORMAT = "glora-adapters/1"


def merge_glora(model: nn.Module) -> nn.Module:
    """Replace every GLoRALinear by a plain nn.Linear holding W', b' of its fixed config (in place)."""
    for name, layer in glora_layers(model).items():
        if layer.config is None:
            raise RuntimeError(f"{name} has no fixed config: call set_subnet(model, subnet) before merging")
        try:
            linear = layer.to_linear()
        except ValueError as e:  # non-finite W' or b': the adapters diverged
            raise UserError(f"{name}: {e}; retrain with a lower lr") from None
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, linear)
    return model


class MergedCopy:
    """A plain copy of a GLoRA model into whose linear layers any subnet's W', b' can be written:
    each subnet then costs one plain forward, without any GLoRA term (the search scores with it)."""

    def __init__(self, supernet: nn.Module):
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
    def load(self, subnet) -> nn.Module:
        """Write the subnet's merged weights into the plain model and return it."""
        for name, layer in self.layers.items():
            cfg = layer.space.validate(subnet[name], layer.has_bias, where=name)
            lin = self.plain_layers[name]
            lin.weight.copy_(layer.merged_weight(cfg))
            bias = layer.merged_bias(cfg)
            lin.bias.copy_(bias) if bias is not None else lin.bias.zero_()
        return self.plain


def export_merged(model: nn.Module, path, metadata: Optional[dict] = None) -> Path:
    """Save a merged model's state dict as safetensors: an ordinary timm checkpoint.

    `metadata` goes into the file's header, strings as they are and anything else as JSON; with
    `model`, `num_classes` and `model_kwargs` there, `glora.model.load_merged` rebuilds the model.
    The header also records the digest of the tensors and metadata, which `load_merged` checks.
    """
    if glora_layers(model):
        raise RuntimeError("export_merged needs a merged model: call merge_glora(model) first")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return save_tensors(path, model.state_dict(), {"format": "pt", **meta}, digest=True)


def first_nonfinite(tensors: dict) -> Optional[str]:
    """The name of the first tensor holding a NaN or an infinity, or None if all are finite."""
    return next((k for k, v in tensors.items() if not torch.isfinite(v).all()), None)


def _layer_signature(model: nn.Module) -> dict:
    return {n: [l.out_features, l.in_features, l.has_bias] for n, l in glora_layers(model).items()}


def adapter_state(model: nn.Module) -> dict:
    """GLoRA storage of every adapted layer and the classifier head, by state-dict key."""
    keys = {f"{n}.{k}" for n, l in glora_layers(model).items() for k in l.adapter_parameters()}
    heads = tuple(f"{h}." for h in head_names(model))
    return {k: v for k, v in model.state_dict().items() if k in keys or k.startswith(heads)}


def save_adapters(model: nn.Module, path, extra: Optional[dict] = None) -> Path:
    """Adapters-only file: storage + head, with the space, the layer shapes and the subnet (if fixed).

    A supernet (no fixed subnet) is saved whole; a compacted subnet holds only what it uses.
    """
    layers = glora_layers(model)
    if not layers:
        raise RuntimeError("save_adapters: the model has no GLoRA layers")
    tensors = adapter_state(model)
    bad = first_nonfinite(tensors)
    if bad is not None:
        raise UserError(f"{path}: not written, {bad} holds non-finite values (training diverged); lower the lr")
    space = next(iter(layers.values())).space
    fixed = all(l.config is not None for l in layers.values())
    meta = {
        "format": ADAPTER_FORMAT,
        "ranks": json.dumps(list(space.ranks)),
        "space": json.dumps(space.choices),
        "layers": json.dumps(_layer_signature(model)),
        "subnet": json.dumps(current_subnet(model) if fixed else None),
        "compact": json.dumps(all(l.compacted for l in layers.values())),
        **{k: json.dumps(v) for k, v in (extra or {}).items()},
    }
    return save_tensors(path, tensors, meta)


def read_adapter_metadata(path) -> dict:
    meta = tensors_metadata(path)
    if meta.get("format") != ADAPTER_FORMAT:
        raise UserError(f"{path}: not a GLoRA adapters file (format {meta.get('format')!r}, expected {ADAPTER_FORMAT!r})")
    return {k: json.loads(v) for k, v in meta.items() if k != "format"}


def load_adapters(model: nn.Module, path, strict_head: bool = True) -> dict:
    """Load an adapters-only file onto a model with GLoRA injected; return the file's metadata.

    Refuses a file made for another model (layer names/shapes), another space (ranks) or
    another head, and a supernet trained on a space without some of the model's choices (their
    storage never trained). A file holding a compacted subnet fixes and compacts the model's layers first.
    """
    meta = read_adapter_metadata(path)
    layers = glora_layers(model)
    space = next(iter(layers.values())).space
    if meta["ranks"] != list(space.ranks):
        raise UserError(f"{path}: adapters were made with glora.ranks={meta['ranks']}, this model has {list(space.ranks)}")
    trained = SearchSpace(meta["ranks"], meta.get("space")).choices  # files without "space" hold the full one
    untrained = {t: [c for c in cs if c not in trained[t]] for t, cs in space.choices.items()}
    untrained = {t: cs for t, cs in untrained.items() if cs}
    if meta["subnet"] is None and untrained:
        raise UserError(f"{path}: this supernet was trained on glora.space {trained}, without {untrained} "
                        "(their storage never trained); set glora.space within it")
    ours = json.loads(json.dumps(_layer_signature(model)))
    if meta["layers"] != ours:
        diff = sorted(set(meta["layers"]).symmetric_difference(ours)) or sorted(
            n for n in ours if meta["layers"][n] != ours[n])
        raise UserError(f"{path}: adapters were made for another model or glora.targets (differs at {diff[:3]})")
    if meta["subnet"] is not None:
        set_subnet(model, meta["subnet"])
        if meta["compact"]:
            compact_subnet(model)
    tensors = load_tensors(path)
    expected = adapter_state(model)
    if not strict_head:
        heads = tuple(f"{h}." for h in head_names(model))
        tensors = {k: v for k, v in tensors.items() if not k.startswith(heads)}
        expected = {k: v for k, v in expected.items() if not k.startswith(heads)}
    nonfinite = first_nonfinite(tensors)
    if nonfinite is not None:
        raise UserError(f"{path}: {nonfinite} holds non-finite values (the run that wrote it diverged); "
                        "train it again with a lower lr")
    bad = sorted(k for k in expected if k not in tensors or tensors[k].shape != expected[k].shape)
    if bad or set(tensors) - set(expected):
        k = (bad or sorted(set(tensors) - set(expected)))[0]
        got = tuple(tensors[k].shape) if k in tensors else "missing"
        want = tuple(expected[k].shape) if k in expected else "absent"
        raise UserError(f"{path}: tensor {k} is {got} in the file but {want} in the model (another model or num_classes?)")
    model.load_state_dict(tensors, strict=False)
    return meta
