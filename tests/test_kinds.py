"""A choice kind registered in this file alone goes through everything GLoRA does: the space, the
layer's forward (eager, dense, static), counts, compaction, merge, the three stages, export and
figures, with nothing else edited. The kind: a per-input-channel scale for A, W⊙(1 aᵀ), `in`
parameters of its own storage (zeros, so that an untrained layer is the pretrained one)."""
import inspect
import json
import subprocess
import sys

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from glora import GLoRALinear, SearchSpace, kinds, load_merged
from glora.inject import glora_layers, make_static, set_subnet, write_subnet
from glora.kinds import Kind, register
from glora.space import TENSORS
from test_stages import ROOT, demo_root, run, write_config  # noqa: F401


class InScale(Kind):
    """A = 1 aᵀ: W⊙A scales W's input columns (a per-input-channel scale)."""

    name, tensors, label = "in_scale", ("A",), "in"

    def storage(self, tensor, in_features, out_features, max_rank, like):
        return {"Ai": torch.zeros(1, in_features, **like)}

    def reads(self, tensor, rank):
        return {"Ai"}

    def params(self, tensor, rank, in_features, out_features):
        return in_features

    def carve(self, layer, tensor, rank):
        return layer.Ai


@pytest.fixture
def in_scale():
    register(InScale)
    yield kinds.KINDS["in_scale"]
    kinds.unregister("in_scale")


SPACE = {"A": ["in_scale", "vector", "none"], "B": ["lora_2", "none"]}


def layer_with(space, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = GLoRALinear(nn.Linear(7, 5, bias=bias).double(), space)
    for p in layer.adapter_parameters().values():
        nn.init.normal_(p)
    return layer


def test_a_registered_kind_enters_a_space_only_where_named(in_scale):
    assert "in_scale" not in SearchSpace((2,)).choices["A"]  # the paper's space is unchanged
    space = SearchSpace((2,), SPACE)
    assert space.choices["A"] == ["vector", "none", "in_scale"] and space.choices["B"] == ["lora_2", "none"]
    assert [k.name for k in space.tensor_kinds("A")] == ["vector", "none", "in_scale"]
    with pytest.raises(ValueError, match="'in_scale' is not a valid choice"):
        SearchSpace((2,), {"B": ["in_scale"]})  # a kind of A only
    assert space.count({"A": "in_scale", "B": "lora_2", "C": "none", "D": "none", "E": "none"}, 7, 5) == 7 + 2 * 12


def test_an_unregistered_kind_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match=r"A='in_scale' is not a valid choice.*registered kinds: lora_<r>, vector"):
        SearchSpace((2,), {"A": ["in_scale"]})
    with pytest.raises(ValueError, match="no registered choice kind"):
        kinds.parse("in_scale")


@pytest.mark.parametrize("bias", [True, False])
def test_every_path_computes_the_equation_with_the_new_kind(in_scale, bias):
    """Eager (the dense path: the kind declares no structured form), dense, static and merged
    forms against the equation written here, with A = 1 aᵀ, in float64; and the same gradients."""
    space = SearchSpace((2,), SPACE)
    layer = layer_with(space, bias)
    x = torch.randn(3, 4, 7, dtype=torch.float64)
    W, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    for cfg_b in ("lora_2", "none"):
        cfg = {"A": "in_scale", "B": cfg_b, "C": "none", "D": "none", "E": "none"}
        B = (layer.Bd[:, :2] @ layer.Bu[:2]).detach() if cfg_b == "lora_2" else 0
        want = x @ (W + W * layer.Ai.detach() + B).T + (0 if b is None else b)
        layer.set_config(cfg)
        eager = layer(x)
        torch.testing.assert_close(eager, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.forward_dense(x), want, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.to_linear()(x), want, rtol=0, atol=1e-12)
        grads_eager = torch.autograd.grad(eager.square().sum(), [layer.Ai, layer.Bd, layer.Au], allow_unused=True)

        static = layer_with(space, bias)
        make_static(_Holder(static))
        static.set_config(cfg)
        out = static(x)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
        grads_static = torch.autograd.grad(out.square().sum(), [static.Ai, static.Bd, static.Au], allow_unused=True)
        torch.testing.assert_close(grads_static[0], grads_eager[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(grads_static[1], grads_eager[1] if cfg_b == "lora_2" else torch.zeros_like(static.Bd))
        # A's low-rank storage is not read (nor is it in the static graph: no lora choice for A here)
        assert grads_eager[2] is None and grads_static[2] is None
        flags = {k: float(f) for k, f in static.used_flags().items()}
        assert {k for k, f in flags.items() if f} == {"Ai"} | ({"Bd", "Bu"} if cfg_b == "lora_2" else set())


class _Holder(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer


def test_an_untrained_layer_is_the_pretrained_one_and_compaction_keeps_the_formula(in_scale):
    space = SearchSpace((2,), SPACE)
    torch.manual_seed(0)
    lin = nn.Linear(7, 5).double()
    layer = GLoRALinear(lin, space)
    x = torch.randn(2, 7, dtype=torch.float64)
    cfg = {"A": "in_scale", "B": "none", "C": "none", "D": "none", "E": "none"}
    layer.set_config(cfg)
    torch.testing.assert_close(layer(x), lin(x), rtol=0, atol=0)
    layer.compact()
    assert sum(p.numel() for p in layer.adapter_parameters().values()) == layer.adapter_params() == 7
    assert layer.Ai.shape == (1, 7) and layer.Ad.numel() == 0


@pytest.mark.slow
def test_the_new_kind_through_supernet_search_retrain_merge_export_and_figures(in_scale, tmp_path, demo_root):
    config = write_config(tmp_path / "exp.yaml", demo_root, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["glora"] = {"ranks": [2], "space": {"A": ["in_scale"], "B": ["lora_2", "none"], "C": ["none"],
                                            "D": ["vector", "none"], "E": ["none"]}}
    cfg["search"]["budget"] = [0.0, 0.1]
    config.write_text(yaml.safe_dump(cfg))
    for stage in ("train", "search", "retrain"):
        run(stage, config)
    out = tmp_path / "run"
    best = yaml.safe_load((out / "search" / "best_subnet.yaml").read_text())
    results = json.loads((out / "retrain" / "results.json").read_text())
    assert results["test_acc"] == results["test_acc_merged"]  # merged == unmerged, on every test image

    # The count by closed form, from the architecture alone: A = in_scale has `in` parameters.
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2,
                              embed_dim=48, num_heads=3)
    shapes = {n: (m.in_features, m.out_features) for n, m in plain.named_modules()
              if isinstance(m, nn.Linear) and n != "head"}
    per = {"in_scale": lambda i, o: i, "lora_2": lambda i, o: 2 * (i + o), "vector": lambda i, o: o,
           "none": lambda i, o: 0}
    counted = sum(per[c](*shapes[n]) for n, layer in best["layers"].items() for c in layer.values())
    assert best["params"] == results["adapter_params"] == counted
    assert all(layer["A"] == "in_scale" for layer in best["layers"].values())

    # the export is an ordinary timm model, loaded strictly, predicting as the unmerged model
    merged = load_merged(out / "retrain" / "merged.safetensors")
    assert type(merged) is type(plain)
    # the subnet figure labels the new kind by its own label
    assert (out / "search" / "subnet.png").read_bytes()[:4] == b"\x89PNG"


def test_the_static_table_computes_a_subnet_of_the_new_kind_as_eager_does(in_scale):
    model = nn.Sequential()
    space = SearchSpace((2,), SPACE)
    torch.manual_seed(0)
    for i in range(3):
        model.add_module(str(i), GLoRALinear(nn.Linear(6, 6).double(), space))
    for p in model.parameters():
        if p.requires_grad:
            nn.init.normal_(p)
    layers = glora_layers(model)
    eager = {n: dict(zip(TENSORS, ("in_scale", "lora_2", "none", "none", "none"))) for n in layers}
    x = torch.randn(2, 6, dtype=torch.float64)
    set_subnet(model, eager)
    want = model(x)
    set_subnet(model, None)
    make_static(model)
    write_subnet(model, eager)
    torch.testing.assert_close(model(x), want, rtol=0, atol=1e-12)


def test_a_config_naming_an_unregistered_kind_is_one_error_line(tmp_path, demo_root):
    config = write_config(tmp_path / "exp.yaml", demo_root, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["glora"]["space"] = {"A": ["in_scale", "none"]}  # registered by no module the stage imports
    config.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), str(config)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "'in_scale' is not a valid choice" in lines[0] and "registered kinds" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_plugins_register_a_kind_for_the_stage_scripts(tmp_path, demo_root):
    """`plugins` names the module that registers the kind (here this file's class, written to the
    working folder): the stage script imports it before any check, and trains the kind."""
    (tmp_path / "my_kinds.py").write_text("import torch\n\nfrom glora.kinds import Kind, register\n\n\n"
                                          f"{inspect.getsource(InScale)}\n\nregister(InScale)\n")
    config = write_config(tmp_path / "exp.yaml", demo_root, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["glora"]["space"] = {"A": ["in_scale", "none"]}
    cfg["train"].update(epochs=1, eval_every=0, eval_subnets=0)
    config.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), str(config), "--set", "plugins=[my_kinds]"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Ai" in str(load_file(tmp_path / "run" / "supernet" / "supernet.safetensors").keys())
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), str(config), "--set", "plugins=[no_such_module]"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "plugins: cannot import 'no_such_module'" in r.stderr
