"""Methods as configs: presets, their stages, glora.space restrictions, subnet sources and trainable selections."""
import random
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from conftest import TINY, tiny_vit
from engine import method
from engine.config import load_config, validate_config
from engine.experiment import build_model
from glora import SearchSpace, UserError, inject_glora, save_adapters
from glora.inject import head_names, uniform_subnet
from glora.merge import load_adapters
from glora.model import count_params
from search.evolution import CandidateSpace, EvolutionSearch
from search.score import Score

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted(p.stem for p in (ROOT / "configs" / "methods").glob("*.yaml"))
TINY_MODEL = {"model.name": "vit_tiny_patch16_224", "model.pretrained": "false", "data.img_size": "32",
              **{f"model.kwargs.{k}": str(v) for k, v in TINY.items()}}


def preset(name, *overrides):
    sets = [f"{k}={v}" for k, v in TINY_MODEL.items()] + list(overrides)
    return load_config([str(ROOT / "configs" / "methods" / f"{name}.yaml")], sets)


def linears(model):
    """(in, out) of every nn.Linear but the head, from a plain timm model."""
    heads = head_names(model)
    return [(m.in_features, m.out_features) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n not in heads]


def retrain_model(cfg, num_classes=5):
    """The model as retrain.py builds it: the method's subnet, compacted, with its trainable selection."""
    built = method.retrain_model(cfg, num_classes)
    return built.model, built.subnet, built.backbone_params


def test_every_method_has_a_preset_and_runs_only_the_stages_it_needs():
    assert PRESETS == ["adaptformer", "bitfit", "full", "glora", "glora-random", "glora-uniform", "linear", "lora",
                       "noah", "repadapter", "ssf-like", "vpt-deep"]
    expected = {"glora": ["supernet", "search", "retrain"], "glora-random": ["supernet", "retrain"],
                "noah": ["supernet", "search", "retrain"]}
    for name in PRESETS:
        cfg = preset(name)
        assert cfg["method"] == name
        assert method.stages(cfg) == expected.get(name, ["retrain"]), name
    # a supernet trained elsewhere is read, not trained again
    assert method.stages(preset("glora", "supernet=/elsewhere/supernet.safetensors")) == ["search", "retrain"]


def test_config_files_apply_in_order_and_the_space_merges_tensor_by_tensor():
    demo, lora = ROOT / "configs" / "demo.yaml", ROOT / "configs" / "methods" / "lora.yaml"
    cfg = load_config([str(demo), str(lora)], ["glora.space.B=[lora_8, none]"])
    assert cfg["model"]["kwargs"]["embed_dim"] == 96 and cfg["output"] == "outputs/demo"  # from demo.yaml
    assert cfg["glora"]["ranks"] == [8] and cfg["method"] == "lora"  # from the preset, applied after it
    assert cfg["glora"]["space"] == {"A": ["none"], "B": ["lora_8", "none"], "C": ["none"], "D": ["none"], "E": ["none"]}
    assert load_config([str(demo), str(lora)], ["glora.space=null"])["glora"]["space"] is None  # the paper's space


@pytest.mark.parametrize("override, needle", [
    ("retrain.init=pretrained", "retrain.init='pretrained': expected one of supernet, scratch"),
    ("retrain.backbone=norms", "retrain.backbone='norms': expected one of frozen, bias, all"),
    ("retrain.subnet=serched", "retrain.subnet='serched': expected searched, uniform, random, or the path of a subnet "
                               "YAML"),
    ("retrain.subnet=uniform", "retrain.subnet=uniform needs retrain.uniform"),
    ("retrain.uniform.A=vector", "retrain.uniform is set but retrain.subnet='searched' does not use it"),
    ("glora.space.B=[lora_8]", "B='lora_8' is not a valid choice; valid: ['lora_4', 'vector', 'scalar', 'none']"),
])
def test_method_keys_are_checked_before_any_work(override, needle):
    cfg = load_config(None, ["data.task=dtd", override])
    with pytest.raises(UserError) as e:
        validate_config(cfg)  # every key's rule, then the rules that span keys, as every stage checks
        method.check(cfg)
    assert needle in str(e.value)


def test_the_method_cli_prints_the_stage_scripts_or_one_error_line():
    r = subprocess.run([sys.executable, "-m", "engine.method", str(ROOT / "configs" / "methods" / "glora-random.yaml")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.split() == ["train.py", "retrain.py"]
    r = subprocess.run([sys.executable, "-m", "engine.method", "--set", "glora.space.F=[none]"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: glora config: space: unknown tensors ['F']; the tensors are ['A', 'B', 'C', 'D', 'E']"]


def test_lora_preset_trains_r_times_in_plus_out_per_layer_and_the_head():
    cfg = preset("lora")
    model, subnet, added = retrain_model(cfg)
    r = 8
    assert set(map(tuple, (c.values() for c in subnet.values()))) == {("none", "lora_8", "none", "none", "none")}
    formula = sum(r * (i + o) for i, o in linears(tiny_vit()))
    head = sum(p.numel() for p in model.get_submodule("head").parameters())
    assert added == 0 and count_params(model, trainable_only=True) == formula + head


def test_ssf_like_and_uniform_presets_give_every_layer_their_config():
    for name, want in (("ssf-like", ("vector", "none", "none", "vector", "vector")),
                       ("glora-uniform", ("lora_4", "lora_4", "lora_4", "scalar", "scalar"))):
        _, subnet, _ = retrain_model(preset(name))
        assert {tuple(c.values()) for c in subnet.values()} == {want}, name


def test_bitfit_full_and_linear_select_biases_everything_and_the_head():
    plain = tiny_vit()
    head = sum(p.numel() for p in plain.head.parameters())
    biases = sum(p.numel() for n, p in plain.named_parameters() if n.endswith(".bias") and not n.startswith("head."))
    for name, backbone in (("bitfit", biases), ("full", count_params(plain) - head), ("linear", 0)):
        model, subnet, added = retrain_model(preset(name))
        assert {tuple(c.values()) for c in subnet.values()} == {("none",) * 5}
        assert added == backbone and count_params(model, trainable_only=True) == backbone + head, name


def test_uniform_subnet_leaves_c_d_e_out_of_layers_without_bias():
    model = tiny_vit(qkv_bias=False)
    inject_glora(model, SearchSpace((4,)))
    subnet = uniform_subnet(model, {"A": "vector", "C": "vector", "E": "scalar"})
    assert subnet["blocks.0.attn.qkv"] == {"A": "vector", "B": "none", "C": "none", "D": "none", "E": "none"}
    assert subnet["blocks.0.mlp.fc1"] == {"A": "vector", "B": "none", "C": "vector", "D": "none", "E": "scalar"}
    with pytest.raises(ValueError, match=r"unknown tensors \['F'\]"):
        uniform_subnet(model, {"F": "none"})


def test_random_subnet_is_the_searchs_first_draw_within_the_budget():
    cfg = preset("glora-random", "glora.ranks=[2,4]", "search.budget=[0.002,0.004]", "seed=3")
    model = build_model(cfg, 5)
    subnet, meta = method.retrain_subnet(cfg, method.family(cfg), model)
    space = CandidateSpace.from_model(model, (0.002, 0.004))
    assert subnet == space.subnet(space.sample(random.Random(3))) and meta == {"budget": [0.002, 0.004]}
    assert space.fits(space.key(subnet))
    assert method.retrain_subnet({**cfg, "seed": 4}, method.family(cfg), model)[0] != subnet


def test_the_search_stays_inside_a_restricted_space():
    restrict = {"A": ["none", "vector"], "B": ["lora_4", "none"], "C": ["none"], "D": ["scalar"], "E": ["vector"]}
    model = tiny_vit()
    inject_glora(model, SearchSpace((2, 4), restrict))
    space = CandidateSpace.from_model(model, (0.0, 0.02))
    evo = EvolutionSearch(space, lambda subnet, floor: Score(random.Random(str(subnet)).randrange(100), 100, 100),
                          generations=3, population=8, parents=3, mutations=3, mutation_prob=0.5, crossovers=3, seed=0)
    for _ in range(3):
        evo.step()
    assert len(evo.records) == 24
    for key in evo.records:
        for cfg in space.subnet(key).values():
            assert all(cfg[t] in restrict[t] for t in cfg), cfg


def test_a_supernet_serves_only_spaces_within_the_one_it_trained(tmp_path):
    lora = {"A": ["none"], "B": ["lora_4"], "C": ["none"], "D": ["none"], "E": ["none"]}
    trained = tiny_vit()
    inject_glora(trained, SearchSpace((4,), {**lora, "A": ["none", "vector"]}))
    path = save_adapters(trained, tmp_path / "supernet.safetensors")
    narrower = tiny_vit()
    inject_glora(narrower, SearchSpace((4,), lora))
    load_adapters(narrower, path)  # a search within the trained space
    wider = tiny_vit()
    inject_glora(wider, SearchSpace((4,)))
    with pytest.raises(UserError, match=r"trained on glora.space .* without \{'A': \['lora_4', 'scalar'\], 'B': "):
        load_adapters(wider, path)


def test_the_retrain_names_the_upstream_files_it_reads_and_what_makes_them(tmp_path):
    """What Stage checks (exists, lineage) before any work, per method: the search's subnet, a
    subnet file (a transfer), the supernet of init: supernet; none for uniform from scratch."""
    def files(*sets):
        return [(u.rel, u.missing.split(";")[0], u.transfer)
                for u in method.upstream_files(load_config(None, [f"output={tmp_path}", *sets]), "retrain")]

    assert files() == [("search/best_subnet.yaml", "no searched subnet", False),
                       ("supernet/supernet.safetensors", "no trained supernet to start from", False)]
    assert files("retrain.subnet=elsewhere/best.yaml", "retrain.init=scratch") == [
        (str(Path("elsewhere/best.yaml").resolve()), "retrain.subnet=elsewhere/best.yaml names no such subnet file",
         True)]
    assert files("retrain.subnet=uniform", "retrain.uniform={}", "retrain.init=scratch") == []
    assert [u.rel for u in method.upstream_files(load_config(None, ["supernet=/x/s.safetensors"]), "search")] == [
        "/x/s.safetensors"]
    assert method.upstream_files(load_config(None), "supernet") == []
