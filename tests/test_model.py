"""Injection, subnets, merge/export and weight loading on real timm ViTs."""
import copy
import random

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, tiny_vit
from glora import (SearchSpace, UserError, compact_subnet, create_model, export_merged, glora_layers,
                   head_params, inject_glora, load_adapters, mark_trainable, merge_glora, param_bounds,
                   sample_subnet, save_adapters, set_subnet, subnet_params)
from glora.inject import select_linears


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for layer in glora_layers(model).values():
        for p in layer.adapter_parameters().values():
            p.data.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)


def images(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_default_targets_skip_the_head_and_patterns_select(vit):
    names = select_linears(vit)
    assert "head" not in names and len(names) == 4 * TINY["depth"]
    assert select_linears(vit, ["blocks.*.attn.qkv"]) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert select_linears(vit, None, ["*.mlp.*"]) == [n for n in names if ".mlp." not in n]
    with pytest.raises(ValueError, match="'blocks.*.atn.qkv' matches no linear layer"):
        select_linears(vit, ["blocks.*.atn.qkv"])
    # patch_embed.proj is a Conv2d: a pattern over it adapts nothing and is refused
    with pytest.raises(ValueError, match="matches no linear"):
        select_linears(vit, ["patch_embed.proj"])


def test_untrained_glora_model_is_the_pretrained_model(vit):
    x = images()
    ref = vit(x)
    inject_glora(vit, SearchSpace((4, 8)))
    for seed in range(3):
        set_subnet(vit, sample_subnet(vit, random.Random(seed)))
        torch.testing.assert_close(vit(x), ref, rtol=0, atol=0)
    # keys of the backbone are unchanged
    assert set(tiny_vit().state_dict()) <= set(vit.state_dict())


def test_merged_equals_unmerged_and_export_loads_into_plain_timm(vit, tmp_path):
    inject_glora(vit, SearchSpace((4, 8)))
    randomize(vit)
    x = images()
    for seed in range(3):
        subnet = sample_subnet(vit, random.Random(seed))
        set_subnet(vit, subnet)
        y = vit(x)
        merged = merge_glora(copy.deepcopy(vit))
        assert not glora_layers(merged)
        torch.testing.assert_close(merged(x), y, rtol=0, atol=1e-10)
    merge_glora(vit)
    path = export_merged(vit, tmp_path / "merged.safetensors")
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=5, checkpoint_path=str(path), **TINY).eval()
    torch.testing.assert_close(plain(x.float()), y.float(), rtol=1e-4, atol=1e-5)  # timm loads into float32
    plain.double().load_state_dict(load_file(path))  # the same keys, at full precision
    torch.testing.assert_close(plain(x), y, rtol=0, atol=1e-10)


def test_subnet_params_is_what_the_subnet_uses(vit):
    inject_glora(vit, SearchSpace((4, 8)))
    for seed in range(5):
        subnet = sample_subnet(vit, random.Random(seed))
        set_subnet(vit, subnet)
        n = subnet_params(vit, subnet)
        # count the elements of every carved tensor the subnet uses
        used = 0
        for layer in glora_layers(vit).values():
            for t in "ABCDE":
                c = layer.carve(t, layer.config[t])
                if c is None:
                    continue
                kind = layer.config[t]
                if kind.startswith("lora"):
                    k = int(kind[5:])
                    used += layer.__getattr__(t + "d")[:, :k].numel() + layer.__getattr__(t + "u")[:k].numel()
                else:
                    used += c.numel() if kind != "scalar" else 1
        assert n == used
        compact_subnet(vit)
        assert sum(p.numel() for l in glora_layers(vit).values() for p in l.adapter_parameters().values()) == n
        vit = tiny_vit()
        inject_glora(vit, SearchSpace((4, 8)))
    lo, hi = param_bounds(vit)
    assert lo == 0 and hi > 0


def test_set_subnet_requires_every_layer(vit):
    inject_glora(vit, SearchSpace())
    subnet = sample_subnet(vit, random.Random(0))
    with pytest.raises(ValueError, match="missing layers"):
        set_subnet(vit, {k: v for k, v in list(subnet.items())[1:]})
    with pytest.raises(ValueError, match="unknown layers"):
        set_subnet(vit, {**subnet, "blocks.9.attn.qkv": subnet["blocks.0.attn.qkv"]})
    with pytest.raises(RuntimeError, match="no fixed config"):
        merge_glora(vit)


def test_only_adapters_and_head_train(vit):
    inject_glora(vit, SearchSpace())
    names = mark_trainable(vit)
    assert all(n.startswith("head.") or n.split(".")[-1] in ("Ad", "Au", "Bd", "Bu", "Cd", "Cu", "D", "E") for n in names)
    assert {"head.weight", "head.bias"} <= set(names)
    assert head_params(vit) == 5 * 48 + 5


def test_adapters_roundtrip_and_refuse_another_model(vit, tmp_path):
    inject_glora(vit, SearchSpace((4,)))
    randomize(vit)
    subnet = sample_subnet(vit, random.Random(1))
    set_subnet(vit, subnet)
    compact_subnet(vit)
    x = images()
    y = vit(x)
    path = save_adapters(vit, tmp_path / "adapters.safetensors")
    fresh = tiny_vit()
    inject_glora(fresh, SearchSpace((4,)))
    meta = load_adapters(fresh, path)
    assert meta["subnet"] == subnet
    torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)

    other_space = tiny_vit()
    inject_glora(other_space, SearchSpace((4, 8)))
    with pytest.raises(UserError, match="glora.ranks"):
        load_adapters(other_space, path)
    other_model = tiny_vit(depth=3)
    inject_glora(other_model, SearchSpace((4,)))
    with pytest.raises(UserError, match="another model"):
        load_adapters(other_model, path)
    other_head = tiny_vit(num_classes=7)
    inject_glora(other_head, SearchSpace((4,)))
    with pytest.raises(UserError, match="head"):
        load_adapters(other_head, path)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="junk.safetensors"):
        load_adapters(fresh, tmp_path / "junk.safetensors")


def _to_big_vision_npz(model, path):
    """Write a timm ViT in Google's big_vision .npz naming (the ViT-B_16.npz format)."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    d = model.embed_dim
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    heads = model.blocks[0].attn.num_heads
    for i in range(len(model.blocks)):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, n in enumerate(("query", "key", "value")):
            wj = qkv_w[j * d:(j + 1) * d]  # (out=d, in=d)
            w[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = wj.T.reshape(d, heads, d // heads)
            w[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j * d:(j + 1) * d].reshape(heads, d // heads)
        w[p + "MultiHeadDotProductAttention_1/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, d // heads, d)
        w[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for j, n in ((0, "fc1"), (1, "fc2")):
            w[p + f"MlpBlock_3/Dense_{j}/kernel"] = sd[b + f"mlp.{n}.weight"].T
            w[p + f"MlpBlock_3/Dense_{j}/bias"] = sd[b + f"mlp.{n}.bias"]
    np.savez(path, **w)


def test_pretrained_from_npz_safetensors_and_pth(tmp_path):
    src = tiny_vit(num_classes=21, dtype=torch.float32, seed=3)
    x = images().float()
    feats = src.forward_features(x)
    _to_big_vision_npz(src, tmp_path / "ViT-T.npz")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    for name in ("ViT-T.npz", "w.safetensors", "w.pth"):
        m = create_model("vit_tiny_patch16_224", num_classes=4, pretrained=str(tmp_path / name), **TINY).eval()
        assert m.head.out_features == 4
        torch.testing.assert_close(m.forward_features(x), feats, rtol=1e-5, atol=1e-5)
    same_head = create_model("vit_tiny_patch16_224", num_classes=21, pretrained=str(tmp_path / "w.safetensors"), **TINY)
    torch.testing.assert_close(same_head.head.weight, src.head.weight)


def test_unreachable_weights_are_an_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        create_model("vit_tiny_patch16_224", num_classes=4, pretrained=str(tmp_path / "nope.npz"), **TINY)
    with pytest.raises(UserError, match="could not load timm weights"):
        create_model("vit_tiny_patch16_224", num_classes=4, pretrained="no_such_tag_xyz", **TINY)
    src = tiny_vit(depth=3, dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "deep.safetensors")
    with pytest.raises(UserError, match="do not fit"):
        create_model("vit_tiny_patch16_224", num_classes=4, pretrained=str(tmp_path / "deep.safetensors"), **TINY)
