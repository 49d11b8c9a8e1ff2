"""Stage checkpoints that survive crashes: a folder of loop state (torch), the adapters (safetensors)
and the backbone parameters that train (BitFit, full fine-tuning) where there is a model, and a
manifest with the run's id and the SHA-256 of each file.

The folder is replaced as a whole (write `name.new/`, swap), so a kill at any moment leaves
either the previous checkpoint or the new one, never a mix. On resume the manifest is checked:
a missing, partial, altered or foreign checkpoint is an error, never a silent restart.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from torch import nn

from glora.errors import UserError
from glora.family import Family
from glora.io import file_sha256, load_tensors, load_torch, save_json, save_tensors, save_torch

MANIFEST = "manifest.json"
ADAPTERS, BACKBONE, STATE = "adapters.safetensors", "backbone.safetensors", "state.pt"


def trained_backbone(model: nn.Module, family: Family) -> dict:
    """The parameters that train but are not in the adapters file (adapters and head)."""
    saved = family.adapter_state(model)
    return {n: p for n, p in model.named_parameters() if p.requires_grad and n not in saved}


def save_checkpoint(folder, run: str, state: dict, model: Optional[nn.Module] = None,
                    family: Optional[Family] = None) -> Path:
    """Write `state` (and `model`'s adapters, saved by its `family`) as the checkpoint of run `run`, atomically."""
    folder = Path(folder)
    new, old = folder.with_name(folder.name + ".new"), folder.with_name(folder.name + ".old")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    if model is not None:
        family.save(model, new / ADAPTERS)
        backbone = trained_backbone(model, family)
        if backbone:
            save_tensors(new / BACKBONE, backbone)
    save_torch(new / STATE, state)
    digests = {p.name: file_sha256(p) for p in sorted(new.iterdir())}
    save_json(new / MANIFEST, {"run": run, "sha256": digests})
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(folder) -> Optional[Path]:
    """The checkpoint folder, also when a kill fell between the two renames; None if there is none."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if candidate.is_dir():
            return candidate
    return None


def latest_state(folder, run: str, model: Optional[nn.Module] = None,
                 family: Optional[Family] = None) -> Optional[dict]:
    """The state of run `run`'s checkpoint in `folder` (its adapters loaded into `model` by its
    `family`), or None if the run has written none yet."""
    found = find_checkpoint(folder)
    return None if found is None else load_checkpoint(found, run, model, family)


def load_checkpoint(folder: Path, run: str, model: Optional[nn.Module] = None, family: Optional[Family] = None) -> dict:
    """Check the manifest, load the adapters into `model` (if given) and return the loop state."""
    verify_checkpoint(folder, run)
    if model is not None:
        family.load(model, folder / ADAPTERS)
        backbone = trained_backbone(model, family)
        if backbone:
            if not (folder / BACKBONE).is_file():
                raise UserError(f"{folder}: it holds no backbone parameters but some train now "
                                "(retrain.backbone changed?); start afresh without --resume")
            tensors = load_tensors(folder / BACKBONE)
            if tensors.keys() != backbone.keys():
                raise UserError(f"{folder}: its backbone parameters are not the ones that train now "
                                "(retrain.backbone changed?); start afresh without --resume")
            model.load_state_dict(tensors, strict=False)
    return load_torch(folder / STATE)


def verify_checkpoint(folder: Path, run: str) -> None:
    """Every file the manifest names is there with its SHA-256, and the checkpoint is run `run`'s."""
    fix = "it cannot be trusted: start afresh without --resume (the run moves to previous/)"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        digests = dict(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{folder}: damaged checkpoint (no readable {MANIFEST}); {fix}") from None
    if manifest.get("run") != run:
        raise UserError(f"{folder}: a checkpoint of run {manifest.get('run')}, not of this run ({run}); {fix}")
    if STATE not in digests:
        raise UserError(f"{folder}: damaged checkpoint (its manifest names no {STATE}); {fix}")
    for name, digest in digests.items():
        if not (folder / name).is_file():
            raise UserError(f"{folder}: damaged checkpoint ({name} is missing); {fix}")
        if file_sha256(folder / name) != digest:
            raise UserError(f"{folder}: damaged checkpoint ({name} is not the file that was written); {fix}")
