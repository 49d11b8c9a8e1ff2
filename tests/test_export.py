"""merged.safetensors loads strictly into the plain timm model its metadata describes, and predicts
what the unmerged GLoRA model predicts: also where adapted layers have no bias (a ViT built with
qkv_bias=False, Swin's patch merging), whose space holds no C, D or E; a byte changed anywhere in
the file is refused, never loaded."""
import copy
import json
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import load_config
from engine.experiment import build_model, export_metadata
from glora import export_merged, glora_layers, load_merged, merge_glora, sample_subnet, set_subnet
from glora.errors import UserError
from glora.io import save_tensors, tensors_metadata

BIASLESS = {  # model name, kwargs: tiny, and with adapted layers that have no bias
    "vit_qkv_bias_false": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=48,
                                                        num_heads=3, qkv_bias=False)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4, embed_dim=24,
                                                  depths=[1, 1], num_heads=[1, 2])),
}


def experiment(name, kwargs):
    return load_config(None, ["data.task=t", f"model.name={name}", "model.pretrained=false", "data.img_size=32",
                              f"model.kwargs={json.dumps(kwargs)}", "data.mean=[0.5,0.5,0.5]"])


@pytest.mark.parametrize("case", BIASLESS)
def test_merged_file_loads_strictly_into_the_model_its_metadata_names(case, tmp_path):
    cfg = experiment(*BIASLESS[case])
    torch.manual_seed(0)
    model = build_model(cfg, 5).eval()
    layers = glora_layers(model)
    assert any(not l.has_bias for l in layers.values())
    g = torch.Generator().manual_seed(0)
    for layer in layers.values():
        for p in layer.adapter_parameters().values():
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randn(4, 3, 32, 32, generator=g)
    for seed in range(3):
        subnet = sample_subnet(model, random.Random(seed))
        assert {subnet[n][t] for n, l in layers.items() if not l.has_bias for t in "CDE"} == {"none"}
        set_subnet(model, subnet)
        with torch.no_grad():
            y = model(x)
        path = export_merged(merge_glora(copy.deepcopy(model)), tmp_path / f"{seed}.safetensors",
                             export_metadata(cfg, 5))
        plain = load_merged(path)  # strict: every key of the file, and only those, is in the plain model
        assert not glora_layers(plain) and plain.default_cfg["architecture"] == BIASLESS[case][0]
        with torch.no_grad():
            torch.testing.assert_close(plain(x), y, rtol=1e-5, atol=1e-5)
    meta = tensors_metadata(path)
    assert json.loads(meta["model_kwargs"]) == {**BIASLESS[case][1], "drop_path_rate": 0.1}
    assert (meta["model"], meta["num_classes"], meta["img_size"], meta["interpolation"]) == (
        BIASLESS[case][0], "5", "32", "bicubic")
    assert json.loads(meta["mean"]) == [0.5] * 3 and json.loads(meta["std"]) == [0.229, 0.224, 0.225]


def test_a_file_that_does_not_fit_its_model_is_refused(tmp_path):
    cfg = experiment(*BIASLESS["vit_qkv_bias_false"])
    model = build_model(cfg, 5)
    set_subnet(model, sample_subnet(model, random.Random(0)))
    path = export_merged(merge_glora(model), tmp_path / "merged.safetensors", export_metadata(cfg, 5))
    tensors = load_file(path)
    tensors["blocks.0.attn.qkv.bias"] = torch.zeros(144)  # what a C or E on a bias-less layer would add
    meta = {k: v for k, v in tensors_metadata(path).items() if k != "digest"}
    save_file(tensors, tmp_path / "extra.safetensors", tensors_metadata(path))  # the old digest: refused as damaged
    with pytest.raises(UserError, match=r"extra.safetensors: its tensors or metadata differ from the digest it records"):
        load_merged(tmp_path / "extra.safetensors")
    save_tensors(tmp_path / "extra.safetensors", tensors, meta, digest=True)  # sound, for another model
    with pytest.raises(UserError, match=r"extra.safetensors: does not load into vit_tiny_patch16_224 \(Unexpected "
                                        r"key\(s\) in state_dict: \"blocks.0.attn.qkv.bias\""):
        load_merged(tmp_path / "extra.safetensors")
    save_file(tensors, tmp_path / "bare.safetensors", {"format": "pt"})
    with pytest.raises(UserError, match=r"its metadata lacks \['model', 'num_classes', 'model_kwargs'\]"):
        load_merged(tmp_path / "bare.safetensors")


def test_a_byte_changed_anywhere_in_the_merged_file_is_refused(tmp_path):
    """Header length, JSON header (names, dtypes, shapes, offsets, metadata, the digest itself) and
    tensor bytes: each flipped byte is refused with one line naming the file, by safetensors' own
    parsing or by the digest; a file without a digest is refused too."""
    cfg = experiment(*BIASLESS["vit_qkv_bias_false"])
    model = build_model(cfg, 5)
    set_subnet(model, sample_subnet(model, random.Random(0)))
    path = export_merged(merge_glora(model), tmp_path / "merged.safetensors", export_metadata(cfg, 5))
    sound = path.read_bytes()
    load_merged(path)
    header = 8 + int.from_bytes(sound[:8], "little")
    positions = sorted({*range(0, header, 7), *range(header, len(sound), max(1, (len(sound) - header) // 150)),
                        header - 1, len(sound) - 1, sound.index(b"sha256:") + 20})
    for at in positions:
        damaged = bytearray(sound)
        damaged[at] ^= 0x01
        path.write_bytes(damaged)
        with pytest.raises(UserError) as info:
            load_merged(path)
        assert str(info.value).startswith(f"{path}:") and "\n" not in str(info.value), at
    path.write_bytes(sound[:-3])  # cut short
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_merged(path)
    path.write_bytes(sound)
    meta = {k: v for k, v in tensors_metadata(path).items() if k != "digest"}
    save_file(load_file(path), path, meta)  # an export from before digests, or one whose digest was taken out
    with pytest.raises(UserError, match="records no digest of its tensors"):
        load_merged(path)
