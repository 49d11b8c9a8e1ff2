"""Shared fixtures: tiny timm ViTs that build in milliseconds on the CPU; the stage scripts as modules."""
import importlib.util
import sys
from pathlib import Path

import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3)


def tiny_vit(num_classes=5, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **{**TINY, **kwargs})
    return model.to(dtype).eval()


@pytest.fixture
def vit():
    return tiny_vit()


STAGE_OF = {"train": "supernet", "search": "search", "retrain": "retrain"}  # script -> the stage it runs


def stage(name):
    """A stage script (train, search, retrain) as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, args):
    """A stage script in this process, as its command line runs it (errors raised, not printed)."""
    from engine.run import run_stage

    run_stage(STAGE_OF[name], stage(name).main, args)
