"""Stage checkpoints that survive crashes: a folder of adapters (safetensors) + loop state (torch).

The folder is replaced as a whole (write `name.new/`, swap), so a kill at any moment leaves
either the previous checkpoint or the new one, never a mix.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from torch import nn

from glora.io import load_torch, save_torch
from glora.merge import load_adapters, save_adapters


def save_checkpoint(folder, model: nn.Module, state: dict) -> Path:
    folder = Path(folder)
    new, old = folder.with_name(folder.name + ".new"), folder.with_name(folder.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    save_adapters(model, new / "adapters.safetensors")
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
    """Load the adapters into `model` and return the loop state."""
    load_adapters(model, folder / "adapters.safetensors")
    return load_torch(folder / "state.pt")
