"""Building the backbone: timm.create_model by name, with pretrained weights from a hub tag or a local file."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Union

import timm
import torch
from torch import nn

from .errors import UserError
from .inject import head_names
from .io import check_digest, load_tensors, tensors_metadata

WEIGHT_FILES = (".npz", ".safetensors", ".pth", ".pt", ".bin")


def create_model(name: str, num_classes: int, pretrained: Union[bool, str, None] = False, **kwargs) -> nn.Module:
    """A timm model with a fresh `num_classes` head.

    `pretrained`: False (random init); True or a timm tag such as "augreg_in21k" (from the hub);
    or the path of a local Google `.npz` (e.g. ViT-B_16.npz, as the paper used) or a
    safetensors/.pth state dict. Weights that cannot be had are an error, never a silent
    fall-back to random init.
    """
    if pretrained in (False, None, "", "false", "none"):
        return _timm_create(name, num_classes, **kwargs)
    text = str(pretrained)
    if pretrained is not True and (Path(text).suffix in WEIGHT_FILES or Path(text).exists()):
        model = _timm_create(name, num_classes, **kwargs)
        load_weights(model, text)
        return model
    full = name if pretrained is True or text.lower() == "true" else f"{name}.{text}"
    try:
        return timm.create_model(full, pretrained=True, num_classes=num_classes, **kwargs)
    except Exception as e:  # hub errors come in many types (network, missing tag, missing file)
        raise UserError(
            f"model.pretrained={text!r}: could not load timm weights {full!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''}); without network, fetch the weights elsewhere "
            "and set model.pretrained to the local .npz/.safetensors/.pth file"
        ) from None


def _timm_create(name: str, num_classes: int, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"model.name={name!r} with model.kwargs={kwargs}: timm cannot build it ({e})") from None


def load_weights(model: nn.Module, path: str) -> None:
    """Load backbone weights from a local file into `model`; a classifier of another size is left fresh."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.pretrained: weights file {path} not found; give the path of a .npz/.safetensors/.pth file")
    if path.suffix == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise UserError(f"{path}: .npz weights load only into timm ViT-style models, not {type(model).__name__}")
        try:
            # timm's loader maps big_vision names, resamples pos_embed and skips a head of another size.
            model.load_pretrained(str(path))
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"{path}: does not fit model {type(model).__name__} ({type(e).__name__}: {e})") from None
        return
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as e:  # safetensors and pickle raise many types for a foreign file
        raise UserError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)  # e.g. resamples pos_embed to this img_size
    heads = tuple(f"{h}." for h in head_names(model))
    ours = model.state_dict()
    # The classifier is reset to the task's class count: drop a pretrained head of another shape.
    state = {k: v for k, v in state.items() if not (k.startswith(heads) and k in ours and v.shape != ours[k].shape)}
    mismatched = [k for k, v in state.items() if k in ours and v.shape != ours[k].shape]
    missing = [k for k in ours if k not in state and not k.startswith(heads)]
    unexpected = [k for k in state if k not in ours and not k.startswith(heads)]
    if mismatched or missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit {type(model).__name__} (shape mismatch {mismatched[:3]}, "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}); check model.name and model.kwargs"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in ours}, strict=False)


def load_merged(path) -> nn.Module:
    """The plain timm model that a merged file (`export_merged`) describes, its weights loaded strictly.

    The file's metadata names the model (`model`, `model_kwargs`, `num_classes`); the merge never adds
    a tensor the plain architecture lacks (a layer without bias takes no C, D or E), so every key fits.
    The digest the export recorded is checked first: a file damaged anywhere is refused, never loaded.
    """
    meta = tensors_metadata(path)
    missing = [k for k in ("model", "num_classes", "model_kwargs") if k not in meta]
    if missing:
        raise UserError(f"{path}: its metadata lacks {missing}; it was not written by retrain.py's export")
    state = load_tensors(path)
    check_digest(path, state, meta)
    model = _timm_create(meta["model"], int(meta["num_classes"]), **json.loads(meta["model_kwargs"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: does not load into {meta['model']} ({str(e).splitlines()[1].strip()})") from None
    return model.eval()


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
