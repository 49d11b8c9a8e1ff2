"""GLoRA as an adapter family: a thin face over glora's space, injection, merge and adapters files
(the method itself lives in glora/layer.py and glora/space.py)."""
from __future__ import annotations

import random
from typing import Mapping, Optional

from torch import nn

from ..family import Family, Setting, positive_int, register
from ..inject import (compact_subnet, current_subnet, glora_layers, inject_glora, make_static, mark_trainable,
                      sample_subnet, set_subnet, subnet_params, uniform_subnet, used_flags, write_subnet)
from ..merge import MergedCopy, adapter_state, load_adapters, merge_glora, save_adapters
from ..space import TENSORS, SearchSpace, choice_params


def _patterns(v) -> bool:
    return v is None or (isinstance(v, list) and all(isinstance(p, str) and p for p in v))


@register
class GLoRA(Family):
    """Generalized LoRA: every adapted linear layer chooses A..E (glora/layer.py); settings are the
    experiment's `glora` section (ranks, targets, exclude, space)."""

    name = "glora"
    section = "glora"
    mergeable = supernet = static = True
    paper = "GLoRA (Generalized LoRA, Chavan et al., arXiv 2306.07967)"
    settings = {
        "ranks": Setting([4], lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(map(positive_int, v)),
                         "a non-empty list of positive integers (LoRA ranks)"),
        "targets": Setting(None, _patterns, "null or a list of glob patterns over layer names"),
        "exclude": Setting([], _patterns, "a list of glob patterns over layer names"),
        "space": Setting(None, lambda v: v is None or isinstance(v, Mapping),
                         "null or a mapping of tensors to choices"),
    }

    def __init__(self, **options):
        super().__init__(**options)
        self.space = SearchSpace(self.options["ranks"], self.options["space"])

    def inject(self, model: nn.Module, rng: Optional[random.Random] = None) -> None:
        inject_glora(model, self.space, self.options["targets"], self.options["exclude"] or None, rng=rng)

    def adapter_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return glora_layers(model)

    def adapter_state(self, model: nn.Module) -> dict:
        return adapter_state(model)

    def mark_trainable(self, model: nn.Module) -> list[str]:
        return mark_trainable(model)

    def count(self, model: nn.Module) -> int:
        return subnet_params(model, current_subnet(model))

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_glora(model)

    def slots(self, model: nn.Module) -> dict:
        return {n: {t: {c: choice_params(t, c, layer.in_features, layer.out_features) for c in cs}
                    for t, cs in layer.space.layer_choices(layer.has_bias).items()}
                for n, layer in glora_layers(model).items()}

    def set_subnet(self, model: nn.Module, subnet: Optional[Mapping]) -> None:
        set_subnet(model, subnet)

    def current_subnet(self, model: nn.Module) -> Optional[dict]:
        layers = glora_layers(model).values()
        return current_subnet(model) if all(layer.config is not None for layer in layers) else None

    def sample_subnet(self, model: nn.Module, rng: random.Random) -> dict:
        return sample_subnet(model, rng)

    def check_subnet(self, model: nn.Module, subnet: Mapping) -> dict:
        layers = glora_layers(model)
        from ..inject import check_names

        check_names(layers, subnet)
        return {n: layer.space.validate(subnet[n], layer.has_bias, where=n) for n, layer in layers.items()}

    def uniform_config(self, layer: Optional[Mapping]) -> dict:
        if layer is not None:
            return dict(layer)
        choices = self.space.choices  # a space with one choice per tensor implies it
        if any(len(c) != 1 for c in choices.values()):
            raise ValueError("retrain.subnet=uniform needs retrain.uniform, the layer config of every layer, e.g. "
                             "{A: vector, B: lora_4, D: vector} (tensors left out are none; {} trains the head "
                             "alone), or a glora.space with one choice for each of A..E")
        return {t: choices[t][0] for t in TENSORS}

    def uniform_subnet(self, model: nn.Module, layer: Optional[Mapping]) -> dict:
        return uniform_subnet(model, self.uniform_config(layer))

    def subnet_params(self, model: nn.Module, subnet: Mapping) -> int:
        return subnet_params(model, subnet)

    def compact(self, model: nn.Module) -> None:
        compact_subnet(model)

    def scoring_model(self, model: nn.Module):
        return MergedCopy(model).load

    def make_static(self, model: nn.Module) -> None:
        make_static(model)

    def write_subnet(self, model: nn.Module, subnet: Mapping) -> None:
        write_subnet(model, subnet)

    def used_flags(self, model: nn.Module) -> dict:
        return used_flags(model)

    def subnet_metadata(self) -> dict:
        return {"ranks": list(self.options["ranks"])}

    def save(self, model: nn.Module, path, extra: Optional[dict] = None):
        return save_adapters(model, path, extra)

    def load(self, model: nn.Module, path) -> dict:
        return load_adapters(model, path)
