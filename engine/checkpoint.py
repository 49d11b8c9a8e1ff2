"""Stage checkpoints that survive crashes: a folder of adapters (safetensors) + loop state (torch),
and the backbone parameters that train (BitFit, full fine-tuning), if any.

The folder is replaced as a whole (write `name.new/`, swap), so a kill at any moment leaves
either the previous checkpoint or the new one, never a mix.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from torch import nn

from glora.errors import UserError
from glora.io import load_tensors, load_torch, save_tensors, save_torch
from glora.merge import adapter_state, load_adapters, save_adapters


def trained_backbone(model: nn.Module) -> dict:
    """The parameters that train but are not in the adapters file (adapters and head)."""
    saved = adapter_state(model)
    return {n: p for n, p in model.named_parameters() if p.requires_grad and n not in saved}


def save_checkpoint(folder, model: nn.Module, state: dict) -> Path:
    folder = Path(folder)
    new, old = folder.with_name(folder.name + ".new"), folder.with_name(folder.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    save_adapters(model, new / "adapters.safetensors")
    backbone = trained_backbone(model)
    if backbone:
        save_tensors(new / "backbone.safetensors", backbone)
    save_torch(new / "state.pt", state)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(folder) -> Optional[Path]:
    """The complete checkpoint folder, also when a kill fell between the two renames."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "state.pt").is_file() and (candidate / "adapters.safetensors").is_file():
            return candidate
    return None


def load_checkpoint(folder: Path, model: nn.Module) -> dict:
    """Load the adapters (and trained backbone parameters) into `model`; return the loop state."""
    load_adapters(model, folder / "adapters.safetensors")
    backbone = trained_backbone(model)
    if backbone:
        tensors = load_tensors(folder / "backbone.safetensors")
        if tensors.keys() != backbone.keys():
            raise UserError(f"{folder}: its backbone parameters are not the ones that train now "
                            "(retrain.backbone changed?); start afresh without --resume")
        model.load_state_dict(tensors, strict=False)
    return load_torch(folder / "state.pt")
