"""The Hub-ready export: a folder that plain timm loads (by name or as a folder) and predicts with as GLoRA did."""
import json
import os
import random

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from timm.models.mlp_mixer import MlpMixer

from glora import (SearchSpace, export_merged, glora_layers, inject_glora, merge_glora, sample_subnet,
                   save_hub_folder, set_subnet)

MODELS = {  # a ViT, and a Swin (its downsample linear has no bias)
    "vit_tiny_patch16_224": dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3),
    "swin_tiny_patch4_window7_224": dict(img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=(1, 1),
                                         num_heads=(1, 2)),
}
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def trained_glora(name, num_classes=7):
    """A GLoRA model with a fixed subnet and adapters and head moved off their init, as after training."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=num_classes, **MODELS[name]).eval()
    inject_glora(model, SearchSpace((4,)))
    set_subnet(model, sample_subnet(model, random.Random(0)))
    with torch.no_grad():
        for p in [*model.head.parameters(), *(p for l in glora_layers(model).values() for p in l.adapter_parameters().values())]:
            p.add_(torch.randn_like(p), alpha=0.05)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_hub_folder_loads_in_plain_timm_and_predicts_the_same(name, tmp_path):
    model = trained_glora(name)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
    merged = merge_glora(model)
    folder = save_hub_folder(merged, tmp_path / "hub", img_size=32, mean=MEAN, std=STD, model_args=MODELS[name],
                             name=f"{name}.glora_demo", details={"Task": "demo (7 classes)", "Test accuracy (%)": 91.25})
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]

    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == name and config["num_classes"] == 7
    assert {k: config["model_args"][k] for k in ("patch_size", "embed_dim")} == {k: MODELS[name][k] for k in ("patch_size", "embed_dim")}
    pre = config["pretrained_cfg"]
    assert pre["input_size"] == [3, 32, 32] and pre["mean"] == list(MEAN) and pre["std"] == list(STD)
    assert "tag" not in pre and "hf_hub_id" not in pre  # the source checkpoint's names do not name these weights

    loaded = {
        "folder": timm.create_model(f"local-dir:{folder}", pretrained=True),
        "name + file": timm.create_model(name, pretrained=True, **MODELS[name], pretrained_cfg_overlay=dict(
            file=str(folder / "model.safetensors"), num_classes=7)),
    }
    for how, plain in loaded.items():
        assert not glora_layers(plain) and plain.num_classes == 7, how
        with torch.no_grad():
            z = plain.eval()(x)
        torch.testing.assert_close(z, y, rtol=1e-4, atol=1e-5, msg=lambda m: f"{how}: {m}")
        assert torch.equal(z.argmax(-1), y.argmax(-1))
    data = timm.data.resolve_data_config({}, model=loaded["folder"])
    assert data["input_size"] == (3, 32, 32) and tuple(data["mean"]) == MEAN and data["crop_mode"] == "squash"

    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    for text in (f"# Model card for {name}.glora_demo", "**Task:** demo (7 classes)", "**Test accuracy (%):** 91.25",
                 "arXiv 2306.07967", "Image size:** 32x32"):
        assert text in card.text


def test_hub_folder_links_the_exported_file_and_refuses_what_it_cannot_describe(tmp_path):
    name = "vit_tiny_patch16_224"
    merged = merge_glora(trained_glora(name))
    source_cfg = dict(merged.pretrained_cfg)
    path = export_merged(merged, tmp_path / "merged.safetensors")
    folder = save_hub_folder(merged, tmp_path / "hub", img_size=32, mean=MEAN, std=STD, weights=path)
    assert os.path.samefile(folder / "model.safetensors", path)  # one copy on disk
    assert dict(merged.pretrained_cfg) == source_cfg  # the model itself is left as it was

    with pytest.raises(RuntimeError, match="merge_glora"):
        save_hub_folder(trained_glora(name), tmp_path / "x", img_size=32, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="was not built by timm.create_model"):
        save_hub_folder(MlpMixer(num_classes=5, img_size=32, patch_size=8, num_blocks=1, embed_dim=16), tmp_path / "y",
                        img_size=32, mean=MEAN, std=STD)
