"""GLoRA (Generalized LoRA) for timm Vision Transformers: the layer, the space, injection and merging."""
from .errors import UserError
from .inject import (
    compact_subnet,
    current_subnet,
    glora_layers,
    head_params,
    inject_glora,
    mark_trainable,
    param_bounds,
    sample_subnet,
    set_sampler,
    set_subnet,
    subnet_params,
)
from .layer import STORAGE, GLoRALinear
from .merge import export_merged, load_adapters, merge_glora, save_adapters
from .model import create_model
from .space import TENSORS, SearchSpace
from .subnet import load_subnet, save_subnet

__all__ = [
    "SearchSpace", "GLoRALinear", "inject_glora", "set_subnet", "subnet_params", "merge_glora",
    "STORAGE", "TENSORS", "UserError", "compact_subnet", "current_subnet", "glora_layers",
    "head_params", "mark_trainable", "param_bounds", "sample_subnet", "set_sampler",
    "export_merged", "load_adapters", "save_adapters", "create_model", "load_subnet", "save_subnet",
]
