"""Hub-ready export: a merged model as a folder in timm's Hugging Face Hub format.

    <folder>/config.json        architecture, num_classes, model kwargs, input size, mean/std (timm's own writer)
    <folder>/model.safetensors  the merged state dict: an ordinary timm checkpoint
    <folder>/README.md          a model card (timm's own writer): task, method, results, parameter counts

`timm.create_model("local-dir:<folder>", pretrained=True)` rebuilds the model from the folder alone;
`huggingface_hub.upload_folder(repo_id=..., folder_path=<folder>)` publishes it as it is, after which
`timm.create_model("hf-hub:<repo_id>", pretrained=True)` loads it anywhere.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from torch import nn

from .inject import glora_layers
from .io import atomic_write, save_tensors

WEIGHTS_NAME = "model.safetensors"
METHOD = "GLoRA (Generalized LoRA, Chavan et al., arXiv 2306.07967), merged into the plain model"
CITATION = """@article{chavan2023glora,
  title={One-for-All: Generalized LoRA for Parameter-Efficient Fine-tuning},
  author={Chavan, Arnav and Liu, Zhuang and Gupta, Deepak and Xing, Eric and Shen, Zhiqiang},
  journal={arXiv preprint arXiv:2306.07967},
  year={2023}
}"""


def save_hub_folder(model: nn.Module, folder, *, img_size: int, mean: Sequence[float], std: Sequence[float],
                    interpolation: str = "bicubic", model_args: Optional[dict] = None,
                    name: Optional[str] = None, details: Optional[dict] = None, weights=None,
                    method: str = METHOD) -> Path:
    """Write a merged timm model as `folder/{config.json, model.safetensors, README.md}`.

    `img_size`, `mean`, `std`, `interpolation`: the preprocessing the model was trained with
    (images resized to img_size × img_size, no crop); `model_args`: the kwargs it was built with
    (recent timm records them itself); `name`: the model card's title (default: the folder's name);
    `details`: lines of the model card (task, protocol, accuracy, ...). `weights`: this model's
    state dict already written as safetensors (e.g. merged.safetensors), linked into the folder
    instead of written a second time. `method`: how it was fine-tuned (default: GLoRA, merged).
    """
    from timm.models._hub import generate_readme, save_config_for_hf  # timm's own Hub writers

    if glora_layers(model):
        raise RuntimeError("save_hub_folder needs a merged model: call merge_glora(model) first")
    source = getattr(model, "pretrained_cfg", None)
    if not source or not source.get("architecture"):
        raise ValueError(f"{type(model).__name__} was not built by timm.create_model: the Hub format names its architecture")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights is None:
        save_tensors(folder / WEIGHTS_NAME, model.state_dict(), {"format": "pt"})
    else:
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: _link_or_copy(weights, tmp))

    # timm writes config.json from model.pretrained_cfg: describe these weights there while it does.
    # tag=None: the source checkpoint's tag (and its hub id, url, file) do not name these weights.
    channels = source.get("input_size", (3,))[0]
    model.pretrained_cfg = {**source, "tag": None, "mean": tuple(mean), "std": tuple(std),
                            "interpolation": interpolation, "crop_pct": 1.0, "crop_mode": "squash",
                            "num_classes": model.num_classes, "input_size": (channels, img_size, img_size)}
    try:
        atomic_write(folder / "config.json", lambda tmp: save_config_for_hf(model, tmp, model_args=model_args))
    finally:
        model.pretrained_cfg = source
    config = json.loads((folder / "config.json").read_text())

    name = name or folder.name
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "tags": ["image-classification", "timm", "glora", "peft"],
        "license": config["pretrained_cfg"].get("license", "apache-2.0"),
        "description": f"A `{config['architecture']}` fine-tuned with {method}; an ordinary timm model "
                       "with no extra inference cost.",
        "details": {"Model Type": "Image classification", "Method": method, **(details or {}),
                    "Parameters (M)": round(n_params / 1e6, 3),
                    "Image size": "x".join(map(str, config["pretrained_cfg"]["input_size"][1:])),
                    "Preprocessing": f"resize to the input size ({interpolation}, no crop), "
                                     f"normalize with mean {list(mean)}, std {list(std)}"},
        "usage": "```python\nimport timm\n\n"
                 f"model = timm.create_model(\"hf-hub:<user>/{name}\", pretrained=True).eval()  "
                 f"# or \"local-dir:<path to {name}>\"\n"
                 "config = timm.data.resolve_data_config({}, model=model)\n"
                 "transform = timm.data.create_transform(**config)\n```",
        "citation": CITATION,
    }
    text = generate_readme(card, name)
    atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def _link_or_copy(src, tmp: str) -> None:
    """Put `src` at `tmp` as a hard link (the same bytes, no second copy on disk), else as a copy."""
    os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
