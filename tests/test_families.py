"""Other timm families: DeiT (distilled, two heads), Swin, MLP-Mixer and ConvNeXt (its MLP linears).

For each: injection adapts every nn.Linear but the head(s); untrained == pretrained; merged ==
unmerged; parameter counts == the closed form; the merged state dict loads strictly into the
plain model and predicts what the GLoRA model predicts.
"""
import copy
import random

import pytest
import timm
import torch
from timm.models.mlp_mixer import MlpMixer
from torch import nn

from glora import (SearchSpace, compact_subnet, glora_layers, inject_glora, mark_trainable, merge_glora,
                   sample_subnet, set_subnet, subnet_params)
from glora.inject import head_names

# Tiny configs (milliseconds on a CPU); the Mixer's registered names fix its sizes, so it is built directly.
FAMILIES = {
    "deit_distilled": lambda: timm.create_model("deit_tiny_distilled_patch16_224", num_classes=5, img_size=32,
                                                patch_size=8, depth=2, embed_dim=48, num_heads=3),
    "swin": lambda: timm.create_model("swin_tiny_patch4_window7_224", num_classes=5, img_size=32, patch_size=2,
                                      window_size=4, embed_dim=24, depths=(1, 1), num_heads=(1, 2)),
    "mixer": lambda: MlpMixer(num_classes=5, img_size=32, patch_size=8, num_blocks=2, embed_dim=48),
    "convnext": lambda: timm.create_model("convnext_tiny", num_classes=5, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
}
HEADS = {"deit_distilled": {"head", "head_dist"}, "swin": {"head.fc"}, "mixer": {"head"}, "convnext": {"head.fc"}}
ADAPTED = {  # what a reader expects to be adapted in each family (2 blocks / 4 stages of 1 block)
    "deit_distilled": [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")],
    "swin": [f"layers.0.blocks.0.{n}" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
            + ["layers.1.downsample.reduction"]
            + [f"layers.1.blocks.0.{n}" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")],
    "mixer": [f"blocks.{i}.{m}.{n}" for i in range(2) for m in ("mlp_tokens", "mlp_channels") for n in ("fc1", "fc2")],
    "convnext": [f"stages.{i}.blocks.0.mlp.{n}" for i in range(4) for n in ("fc1", "fc2")],
}


def build(family, seed=0):
    """A tiny model with every weight moved off its init (zero heads, 1e-6 layer scales), as if pretrained."""
    torch.manual_seed(seed)
    model = FAMILIES[family]().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    return model


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for layer in glora_layers(model).values():
        for p in layer.adapter_parameters().values():
            p.data.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)


def images(n=3):
    return torch.randn(n, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", FAMILIES)
def test_injection_adapts_every_linear_but_the_heads(family):
    model = build(family)
    layers = inject_glora(model, SearchSpace((4, 8)))
    assert list(layers) == ADAPTED[family]
    assert head_names(model) == HEADS[family]
    trainable = mark_trainable(model)
    for head in HEADS[family]:  # the head(s) stay plain nn.Linear and train
        assert type(model.get_submodule(head)) is nn.Linear
        assert {f"{head}.weight", f"{head}.bias"} <= set(trainable)
    assert all(n.split(".")[-1] in ("Ad", "Au", "Bd", "Bu", "Cd", "Cu", "D", "E") or n.rsplit(".", 1)[0] in HEADS[family]
               for n in trainable)


@pytest.mark.parametrize("family", FAMILIES)
def test_untrained_equals_pretrained_and_merged_equals_unmerged(family):
    model, x = build(family), images()
    ref = model(x)
    inject_glora(model, SearchSpace((4, 8)))
    for seed in range(3):
        set_subnet(model, sample_subnet(model, random.Random(seed)))
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-12)
    randomize(model)
    for seed in range(3):
        set_subnet(model, sample_subnet(model, random.Random(seed)))
        y = model(x)
        assert not torch.allclose(y, ref)  # the adapters do change the function
        merged = merge_glora(copy.deepcopy(model))
        assert not glora_layers(merged)
        torch.testing.assert_close(merged(x), y, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_counts_equal_the_formula(family):
    model = build(family)
    inject_glora(model, SearchSpace((4, 8)))
    subnet = sample_subnet(model, random.Random(1))
    set_subnet(model, subnet)
    compact_subnet(model)
    stored = sum(p.numel() for l in glora_layers(model).values() for p in l.adapter_parameters().values())
    assert subnet_params(model, subnet) == stored > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_state_dict_loads_strictly_into_the_plain_model(family):
    model, x = build(family), images()
    inject_glora(model, SearchSpace((4,)))
    randomize(model)
    # every layer takes every bias tensor it can: C, D and E wherever the layer has a bias
    configs = {n: {"A": "vector", "B": "lora_4", "C": "vector" if l.has_bias else "none", "D": "scalar",
                   "E": "vector" if l.has_bias else "none"} for n, l in glora_layers(model).items()}
    set_subnet(model, configs)
    y = model(x)
    plain = build(family, seed=1)
    plain.load_state_dict(merge_glora(model).state_dict(), strict=True)
    torch.testing.assert_close(plain(x), y, rtol=0, atol=1e-10)


def test_swin_downsample_without_bias_never_takes_a_bias_tensor():
    model = build("swin")
    inject_glora(model, SearchSpace((4,)))
    reduction = glora_layers(model)["layers.1.downsample.reduction"]
    assert not reduction.has_bias
    rng = random.Random(0)
    assert {sample_subnet(model, rng)["layers.1.downsample.reduction"][t] for _ in range(30) for t in "CDE"} == {"none"}
    subnet = sample_subnet(model, rng)
    with pytest.raises(ValueError, match="layers.1.downsample.reduction has no bias, so E=vector"):
        set_subnet(model, {**subnet, "layers.1.downsample.reduction": {**subnet["layers.1.downsample.reduction"],
                                                                       "E": "vector"}})


@pytest.mark.parametrize("name, kwargs", [
    ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))),  # its MLPs are 1×1 convolutions
    ("resnet18", dict(layers=[1, 1, 1, 1])),
])
def test_a_model_without_linear_layers_to_adapt_is_a_clear_error(name, kwargs):
    model = timm.create_model(name, num_classes=5, **kwargs)
    with pytest.raises(ValueError, match=r"has no nn.Linear layer to adapt besides its classifier head \['(head.fc|fc)'\]"):
        inject_glora(model, SearchSpace())
    vit_like = build("mixer")
    with pytest.raises(ValueError, match="left by exclude"):
        inject_glora(vit_like, SearchSpace(), exclude=["blocks.*"])
