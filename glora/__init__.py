"""GLoRA (Generalized LoRA) for timm models: the space, the layer, injection, merging and export;
and the adapter families it sits beside (glora.family: VPT-deep, AdaptFormer, RepAdapter, NOAH).

Names are imported on first use: the layer, injection, the static form's optimizer (MaskedAdamW),
merging and adapters files need torch and safetensors only; `create_model` and `save_hub_folder`
also timm, subnet files PyYAML.
"""
import importlib

_EXPORTS = {
    "UserError": "errors",
    "SearchSpace": "space", "TENSORS": "space",
    "GLoRALinear": "layer", "STORAGE": "layer",
    "inject_glora": "inject", "set_subnet": "inject", "subnet_params": "inject", "compact_subnet": "inject",
    "current_subnet": "inject", "glora_layers": "inject", "head_params": "inject", "mark_trainable": "inject",
    "param_bounds": "inject", "sample_subnet": "inject", "set_sampler": "inject", "uniform_subnet": "inject",
    "make_static": "inject", "write_subnet": "inject", "used_flags": "inject", "MaskedAdamW": "optim",
    "merge_glora": "merge", "export_merged": "merge", "load_adapters": "merge", "save_adapters": "merge",
    "save_hub_folder": "hub",
    "create_model": "model", "load_merged": "model",
    "load_subnet": "subnet", "save_subnet": "subnet",
    "Family": "family", "get_family": "family", "attach": "family",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'glora' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
