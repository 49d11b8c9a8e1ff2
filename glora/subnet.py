"""Subnet files: the YAML that the search writes and the retrain reads."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from .errors import UserError
from .inject import Subnet, check_names, glora_layers
from .io import load_yaml, save_yaml


def save_subnet(path, subnet: Subnet, **extra: Any) -> Path:
    """Write `{layers: {name: {A..E}}, **extra}` (extra: params, val_acc1, ranks, ...)."""
    return save_yaml(path, {"layers": {n: dict(c) for n, c in subnet.items()}, **extra})


def load_subnet(path, model: Optional[nn.Module] = None) -> tuple[Subnet, dict]:
    """Read a subnet file; with `model`, check that it names exactly the model's adapted layers."""
    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
        raise UserError(f"{path}: not a subnet file (expected a mapping with 'layers'); use search.py's best_subnet.yaml")
    subnet = data.pop("layers")
    if model is not None:
        layers = glora_layers(model)
        try:
            check_names(layers, subnet)
        except ValueError as e:
            raise UserError(f"{path}: {e}; it was searched for another model or glora.targets") from None
        for name, layer in layers.items():
            try:
                layer.space.validate(subnet[name], layer.has_bias, where=name)
            except ValueError as e:
                raise UserError(f"{path}: {e}; check glora.ranks matches the search's") from None
    return subnet, data
