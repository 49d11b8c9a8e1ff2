"""Adapter families (glora/family.py, glora/families/): the registry, each family's closed-form count
against the architecture, what an untrained family computes, RepAdapter's merge, NOAH's supernet, and
the adapters file of a family that does not merge, loaded back onto the plain timm model."""
import copy
import random
from pathlib import Path

import pytest
import timm
import torch

from conftest import TINY, tiny_vit
from engine import method
from engine.config import load_config
from engine.figures import subnet_figure
from glora.errors import UserError
from glora.family import FAMILIES, attach, get_family, read_metadata
from glora.model import load_merged
from search.evolution import CandidateSpace, LayerSlot

ROOT = Path(__file__).resolve().parent.parent
NOAH_SMALL = {"prompt": [0, 2, 3], "lora": [0, 2, 4], "adapter": [0, 3]}
SHAPES = [dict(), dict(depth=3, embed_dim=64, num_heads=4, mlp_ratio=2.0)]  # two architectures, no coincidences


def images(n=3, size=32):
    return torch.randn(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def adapted(name, options=None, seed=0, **shape):
    """A tiny double-precision ViT (weights as if pretrained) with family `name` injected; the family too."""
    model = tiny_vit(seed=seed, **shape)
    family = get_family(name)(**(options or {}))
    family.inject(model, rng=random.Random(0))
    family.mark_trainable(model)
    return model.eval(), family


def randomize(family, model, seed=0):
    """Move every adapter tensor off its initialization, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in family.adapter_state(model).values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)


def trainable_adapters(model):
    """Trainable elements outside the head: what the family's count must equal."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head."))


def arch(shape):
    """The architecture's own numbers, read from a plain model: width, depth, qkv outputs."""
    plain = tiny_vit(**shape)
    return plain.embed_dim, len(plain.blocks), plain.blocks[0].attn.qkv.out_features, plain.patch_embed.patch_size[0]


# --------------------------------------------------------------------------------- registry and configs

def test_the_registry_holds_the_families_and_refuses_an_unknown_one():
    get_family("glora")
    assert {"glora", "vpt-deep", "adaptformer", "repadapter", "noah"} <= set(FAMILIES)
    with pytest.raises(ValueError, match=r"no adapter family 'nope'; registered: adaptformer, glora, noah"):
        get_family("nope")


@pytest.mark.parametrize("sets, line", [
    (["family=nope"], "error: family='nope': no adapter family 'nope'; registered: adaptformer, glora, noah, "
                      "repadapter, vpt-deep; fix it in the config or with --set family=NAME"),
    (["family=vpt-deep", "retrain.subnet=uniform", "retrain.init=scratch", "adapter.prompt=3"],
     "error: adapter config of family vpt-deep: no setting prompt; its settings: prompts, dropout"),
    (["family=vpt-deep", "retrain.subnet=uniform", "retrain.init=scratch", "adapter.prompts=0"],
     "error: adapter config of family vpt-deep: prompts=0: expected a positive integer (prompt tokens per block)"),
    (["family=adaptformer"], "error: family adaptformer has no supernet: it trains the adapters its settings "
                             "(adapter.*) give every block, from scratch; set retrain.subnet=uniform, "
                             "retrain.uniform=null and retrain.init=scratch (as its preset in configs/methods/ does)"),
    (["adapter.width=8"], "error: adapter={'width': 8} is set but family glora takes its settings from glora.*: "
                          "move them there, or set family to the family they are for"),
])
def test_a_bad_family_config_is_one_error_line_and_exit_2(sets, line, capsys):
    assert method.main([a for s in sets for a in ("--set", s)]) == 2  # `python -m engine.method`'s exit status
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_another_family_starts_from_its_own_settings():
    noah = ROOT / "configs" / "methods" / "noah.yaml"
    cfg = load_config([str(noah), str(ROOT / "configs" / "methods" / "vpt-deep.yaml")], ["adapter.prompts=4"])
    assert cfg["family"] == "vpt-deep" and cfg["adapter"] == {"prompts": 4, "dropout": 0.1}  # none of NOAH's left
    assert load_config([str(noah)], ["family=glora"])["adapter"] == {}
    assert load_config([str(noah)], ["adapter.dropout=0.2"])["adapter"]["prompt"] == [0, 5, 10, 50, 100]


def test_presets_name_their_family_and_run_the_stages_it_needs():
    for name, stages in (("vpt-deep", ["retrain"]), ("adaptformer", ["retrain"]), ("repadapter", ["retrain"]),
                         ("noah", ["supernet", "search", "retrain"])):
        cfg = load_config([str(ROOT / "configs" / "methods" / f"{name}.yaml")])
        assert cfg["family"] == name and method.family(cfg).name == name
        assert method.stages(cfg) == stages, name


# --------------------------------------------------------------------------------- counts and forward

@pytest.mark.parametrize("shape", SHAPES)
def test_every_count_equals_its_closed_form_from_the_architecture(shape):
    d, depth, qkv_out, patch = arch(shape)
    hidden = tiny_vit(**shape).blocks[0].mlp.fc1.out_features
    assert hidden == int(d * shape.get("mlp_ratio", 4.0))
    expected = {
        "vpt-deep": ({"prompts": 5}, depth * 5 * d),
        "adaptformer": ({"width": 6}, depth * (d * 6 + 6 + 6 * d + d)),  # down + bias, up + bias
        # after norm1 and after norm2: A (8 × d) + bias, B grouped (d × 8/2) + bias
        "repadapter": ({"width": 8, "groups": 2}, depth * 2 * (8 * d + 8 + d * 4 + d)),
    }
    for name, (options, formula) in expected.items():
        model, family = adapted(name, options, **shape)
        assert family.count(model) == formula == trainable_adapters(model), name

    model, family = adapted("noah", NOAH_SMALL, **shape)
    subnet = {f"blocks.{i}": {"prompt": [3, 0, 2][i % 3], "lora": [2, 4, 0][i % 3], "adapter": [3, 0, 3][i % 3]}
              for i in range(depth)}
    formula = sum(c["prompt"] * d + c["lora"] * (d + qkv_out) + (c["adapter"] * (2 * d + 1) + d if c["adapter"] else 0)
                  for c in subnet.values())
    family.set_subnet(model, subnet)
    family.compact(model)
    family.mark_trainable(model)
    assert family.count(model) == family.subnet_params(model, subnet) == formula == trainable_adapters(model)


def test_untrained_adapters_compute_the_pretrained_function_where_their_init_says_so():
    x = images()
    plain = tiny_vit()(x)
    for name, options in (("adaptformer", {}), ("repadapter", {})):
        model, _ = adapted(name, options)
        torch.testing.assert_close(model(x), plain, rtol=0, atol=1e-12)
    model, family = adapted("noah", NOAH_SMALL)  # LoRA's B starts at zero; prompts and adapters off
    family.set_subnet(model, dict.fromkeys(family.slots(model), {"prompt": 0, "lora": 4, "adapter": 0}))
    torch.testing.assert_close(model(x), plain, rtol=0, atol=1e-12)
    model, _ = adapted("vpt-deep", {"prompts": 3})  # prompts take part in attention: the function changes
    assert not torch.allclose(model(x), plain)


def test_prompts_leave_the_sequence_after_the_last_block():
    x = images()
    for pool in ("token", "avg"):
        plain = tiny_vit(global_pool=pool)
        model, family = adapted("vpt-deep", {"prompts": 4}, global_pool=pool)
        assert model.forward_features(x).shape == plain.forward_features(x).shape == (3, 17, 48)
        assert model(x).shape == plain(x).shape
    seen = []
    model, family = adapted("noah", NOAH_SMALL)
    family.set_subnet(model, {"blocks.0": {"prompt": 3, "lora": 0, "adapter": 0},
                              "blocks.1": {"prompt": 0, "lora": 0, "adapter": 0}})
    model.blocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    model(x)
    assert seen == [17 + 3]  # a block without prompts keeps the earlier block's (NOAH)


def test_dropout_off_in_eval_and_on_in_training():
    model, family = adapted("adaptformer", {"width": 4})
    randomize(family, model)
    x = images()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))


# --------------------------------------------------------------------------------- RepAdapter merges

def test_repadapter_merged_equals_unmerged_and_loads_strictly_into_plain_timm(tmp_path):
    from glora.merge import export_merged

    model, family = adapted("repadapter", {"width": 8, "groups": 4, "scale": 0.7})
    randomize(family, model)
    x = images()
    merged = family.merge(copy.deepcopy(model))
    torch.testing.assert_close(merged(x), model(x), rtol=1e-9, atol=1e-10)
    assert not family.adapter_modules(merged)
    plain = tiny_vit()
    plain.load_state_dict(merged.state_dict(), strict=True)  # an ordinary timm model, every key its own
    path = export_merged(merged, tmp_path / "merged.safetensors",
                         {"model": "vit_tiny_patch16_224", "num_classes": 5, "model_kwargs": TINY})
    reloaded = load_merged(path)  # float32, as timm builds it
    torch.testing.assert_close(reloaded(x.float()), model(x).float(), rtol=1e-5, atol=1e-5)


def test_repadapter_refuses_a_layer_without_bias_and_non_finite_weights():
    with pytest.raises(ValueError, match="has no bias to hold the adapter's shift"):
        adapted("repadapter", qkv_bias=False)
    model, family = adapted("repadapter")
    with torch.no_grad():
        model.blocks[0].attn.qkv.up[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"blocks.0.attn.qkv: merged weight has non-finite values"):
        family.merge(model)


# --------------------------------------------------------------------------------- NOAH's supernet

def test_noah_samples_every_module_per_forward_and_its_subnets_are_keyed_choices():
    model, family = adapted("noah", NOAH_SMALL)
    slots = family.slots(model)
    assert list(slots) == ["blocks.0", "blocks.1"] and list(slots["blocks.0"]) == ["prompt", "lora", "adapter"]
    model.train()
    drawn = set()
    for _ in range(12):
        model(images(2))
        drawn.add(tuple(m.size is None for m in family.adapter_modules(model).values()))
    assert drawn == {(True,) * 6}  # still sampling: nothing fixed by a forward
    with pytest.raises(RuntimeError, match="in eval mode has no fixed size"):
        model.eval()(images(2))
    with pytest.raises(ValueError, match=r"blocks.0: lora=3 is not a choice; choices: \[0, 2, 4\]"):
        family.set_subnet(model, dict.fromkeys(slots, {"prompt": 0, "lora": 3, "adapter": 0}))
    space = CandidateSpace({n: LayerSlot(c) for n, c in slots.items()}, (0, 500))
    for seed in range(5):
        key = space.sample(random.Random(seed))
        subnet = space.subnet(key)
        assert space.params(key) == family.subnet_params(model, subnet) <= 500
    # the scoring model is the supernet with the subnet fixed
    family.set_subnet(model, subnet)
    expected = model(images())
    assert torch.equal(family.scoring_model(model)(subnet)(images()), expected)
    assert subnet_figure(subnet).axes  # the subnet's figure takes its keys and sizes


def test_noah_adapters_file_carries_the_subnet_and_refuses_other_settings(tmp_path):
    model, family = adapted("noah", NOAH_SMALL)
    subnet = dict.fromkeys(family.slots(model), {"prompt": 2, "lora": 4, "adapter": 3})
    family.set_subnet(model, subnet)
    family.compact(model)
    randomize(family, model)
    path = family.save(model, tmp_path / "adapters.safetensors")
    meta = read_metadata(path)
    assert (meta["family"], meta["subnet"], meta["compact"]) == ("noah", subnet, True)
    fresh, same = adapted("noah", NOAH_SMALL)
    same.load(fresh, path)  # fixes and compacts, then loads
    torch.testing.assert_close(fresh(images()), model(images()), rtol=0, atol=0)
    other, wider = adapted("noah", {**NOAH_SMALL, "lora": [0, 8]})
    with pytest.raises(UserError, match=r"adapters of family noah with settings .* not of noah with"):
        wider.load(other, path)


# --------------------------------------------------------------------------------- unmerged export

@pytest.mark.parametrize("name, options", [("vpt-deep", {"prompts": 3}), ("adaptformer", {"width": 4})])
def test_an_unmerged_adapters_file_loads_back_onto_the_plain_timm_model(tmp_path, name, options):
    model, family = adapted(name, options)
    randomize(family, model)
    path = family.save(model, tmp_path / "adapters.safetensors", extra={"model": "vit_tiny_patch16_224"})
    backbone = tiny_vit()  # the same pretrained weights, a plain timm model
    backbone.head.reset_parameters()  # the head comes from the file
    attached = attach(backbone, path)
    torch.testing.assert_close(attached(images()), model(images()), rtol=0, atol=0)
    wrong = tiny_vit(num_classes=7)
    with pytest.raises(UserError, match=r"tensor head.bias is \(5,\) in the file but \(7,\) in the model"):
        attach(wrong, path)
    with pytest.raises(UserError, match="not an adapters file"):
        attach(tiny_vit(), _plain_file(tmp_path))


def _plain_file(tmp_path):
    from glora.io import save_tensors

    return save_tensors(tmp_path / "plain.safetensors", tiny_vit().state_dict(), {"format": "pt"})


def test_families_adapt_only_vit_blocks():
    model = timm.create_model("convnext_tiny", num_classes=5, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    for name in ("vpt-deep", "adaptformer", "repadapter", "noah"):
        with pytest.raises(ValueError, match=rf"family {name} adapts the blocks of a ViT .* ConvNeXt has none"):
            get_family(name)().inject(model)
