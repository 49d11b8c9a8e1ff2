"""GLoRALinear against an independent implementation of the paper's equation (float64)."""
import itertools
import random

import pytest
import torch
from torch import nn

from glora import GLoRALinear, SearchSpace, kinds
from glora.space import TENSORS


def paper_equation(W, b, P, cfg):
    """y-parameters straight from the equations in glora/layer.py's docstring, written without the layer's helpers."""
    out_f, in_f = W.shape

    def carve(d, u, choice, n_rows):
        if choice == "none":
            return torch.zeros(n_rows, u.shape[1] if u is not None else 1, dtype=W.dtype)
        if choice == "vector":
            return d[:, 0:1]
        if choice == "scalar":
            return d[0, 0] * torch.ones(1, 1, dtype=W.dtype)
        k = int(choice.split("_")[1])
        return d[:, :k] @ u[:k, :]

    A = carve(P["Ad"], P["Au"], cfg["A"], out_f)
    B = carve(P["Bd"], P["Bu"], cfg["B"], out_f)
    C = carve(P["Cd"], P["Cu"], cfg["C"], in_f)
    vec = lambda v, c: torch.zeros_like(v) if c == "none" else (v if c == "vector" else v[0].expand_as(v))  # noqa: E731
    D, E = vec(P["D"], cfg["D"]), vec(P["E"], cfg["E"])
    W2 = W + W * A + B
    b0 = b if b is not None else torch.zeros(out_f, dtype=W.dtype)
    b2 = b0 + b0 * D + E + (W @ C).reshape(-1)
    return W2, b2


def make_layer(ranks=(4, 8), bias=True, in_f=9, out_f=6, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias).double()
    layer = GLoRALinear(lin, SearchSpace(ranks))
    for p in layer.adapter_parameters().values():
        nn.init.normal_(p)
    return layer


def all_configs(space, has_bias):
    ch = space.layer_choices(has_bias)
    for combo in itertools.product(*(ch[t] for t in TENSORS)):
        yield dict(zip(TENSORS, combo))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ranks", [(4,), (2, 4, 8)])
def test_every_config_matches_the_equation(bias, ranks):
    layer = make_layer(ranks, bias)
    x = torch.randn(3, 5, layer.in_features, dtype=torch.float64)
    P = {k: v.detach() for k, v in layer.adapter_parameters().items()}
    n = 0
    for cfg in all_configs(layer.space, bias):
        layer.set_config(cfg)
        W2, b2 = paper_equation(layer.weight.detach(), None if layer.bias is None else layer.bias.detach(), P, cfg)
        expect = x @ W2.T + b2
        merged = layer.merged_weight(cfg)
        mb = layer.merged_bias(cfg)
        torch.testing.assert_close(merged, W2, rtol=0, atol=1e-12)
        torch.testing.assert_close(mb if mb is not None else torch.zeros_like(b2), b2, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer(x), expect, rtol=0, atol=1e-10)
        torch.testing.assert_close(layer.forward_dense(x), expect, rtol=0, atol=1e-10)
        lin = layer.to_linear()
        torch.testing.assert_close(lin(x), expect, rtol=0, atol=1e-10)
        n += 1
    assert n == len(list(all_configs(layer.space, bias)))


def test_fast_path_gradients_match_dense_reference():
    layer = make_layer((4, 8))
    x = torch.randn(4, layer.in_features, dtype=torch.float64)
    for cfg in itertools.islice(all_configs(layer.space, True), 0, None, 7):
        layer.set_config(cfg)
        grads = []
        for fwd in (layer.forward, layer.forward_dense):
            layer.zero_grad()
            fwd(x).pow(2).sum().backward()
            grads.append({k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                          for k, p in layer.adapter_parameters().items()})
        for k in grads[0]:
            torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-10, atol=1e-10)


def test_fast_path_never_builds_dense_matrices_without_lora_A(monkeypatch):
    layer = make_layer((4,))
    calls = []
    real = layer.merged_weight
    monkeypatch.setattr(layer, "merged_weight", lambda cfg: calls.append(cfg) or real(cfg))
    x = torch.randn(2, layer.in_features, dtype=torch.float64)
    for cfg in all_configs(layer.space, True):
        layer.set_config(cfg)
        layer(x)
    assert calls and all(c["A"].startswith("lora") for c in calls)


def test_untrained_layer_is_the_pretrained_layer():
    lin = nn.Linear(9, 6).double()
    layer = GLoRALinear(lin, SearchSpace((4, 8)))
    x = torch.randn(3, 9, dtype=torch.float64)
    for cfg in all_configs(layer.space, True):
        layer.set_config(cfg)
        torch.testing.assert_close(layer(x), lin(x), rtol=0, atol=0)


def test_storage_names_shapes_and_init():
    lin = nn.Linear(9, 6)
    layer = GLoRALinear(lin, SearchSpace((4, 8)))
    shapes = {k: tuple(v.shape) for k, v in layer.adapter_parameters().items()}
    assert shapes == {"Ad": (6, 8), "Au": (8, 9), "Bd": (6, 8), "Bu": (8, 9), "Cd": (9, 8), "Cu": (8, 1),
                      "D": (6,), "E": (6,)}
    for k in ("Ad", "Bd", "Cd", "D", "E"):
        assert not layer.adapter_parameters()[k].any()
    assert layer.Au.abs().max() <= (6 / (8 + 9)) ** 0.5  # Xavier-uniform bound
    assert layer.weight is lin.weight and not layer.weight.requires_grad
    assert set(dict(layer.named_parameters())) >= {"weight", "bias"}


def test_sampling_in_training_and_error_in_eval():
    layer = make_layer()
    layer.rng = random.Random(0)
    x = torch.randn(2, layer.in_features, dtype=torch.float64)
    layer.train()
    seen = set()
    for _ in range(40):
        layer(x)
        seen.add(tuple(layer.sampled.values()))
    assert len(seen) > 30
    layer.eval()
    with pytest.raises(RuntimeError, match="eval mode has no fixed config"):
        layer(x)


def test_compact_keeps_exactly_the_formula_and_the_function():
    for seed, cfg in enumerate(all_configs(SearchSpace((2, 4)), True)):
        if seed % 5:
            continue
        layer = make_layer((2, 4), seed=seed)
        layer.set_config(cfg)
        x = torch.randn(3, layer.in_features, dtype=torch.float64)
        y = layer(x)
        layer.compact()
        assert sum(p.numel() for p in layer.adapter_parameters().values()) == layer.adapter_params()
        torch.testing.assert_close(layer(x), y, rtol=0, atol=1e-12)
        with pytest.raises(ValueError, match="compacted"):
            layer.set_config({**cfg, "A": "none" if cfg["A"] != "none" else "scalar"})


def test_compact_twice_keeps_the_parameters_an_optimizer_holds():
    layer = make_layer((4,))
    layer.set_config({"A": "lora_4", "B": "vector", "C": "none", "D": "scalar", "E": "vector"})
    layer.compact()
    before = [id(p) for p in layer.parameters()]
    layer.compact()
    assert [id(p) for p in layer.parameters()] == before


# The hand-written backward of the fast path against autograd through the dense reference:
# every config, every adapter gradient and the input gradient, in float64.

def _layer(ranks, bias, seed=0):
    return make_layer(ranks, bias, seed=seed)


def _configs(layer):
    return list(all_configs(layer.space, layer.has_bias))


def _grads(layer, fwd, x, g):
    layer.zero_grad()
    x.grad = None
    y = fwd(x)
    y.backward(g)
    params = {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
              for k, p in layer.adapter_parameters().items()}
    return y.detach(), x.grad.clone(), params


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ranks", [(4,), (2, 4)])
def test_fast_forward_and_every_gradient_match_the_dense_reference(bias, ranks):
    layer = _layer(ranks, bias)
    x = torch.randn(3, 5, 9, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, 6, dtype=torch.float64)
    for cfg in _configs(layer):
        layer.set_config(cfg)
        fast, dense = _grads(layer, layer.forward, x, g), _grads(layer, layer.forward_dense, x, g)
        torch.testing.assert_close(fast[0], dense[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(fast[1], dense[1], rtol=1e-10, atol=1e-10, msg=lambda m: f"dx {cfg}: {m}")
        for k in fast[2]:
            torch.testing.assert_close(fast[2][k], dense[2][k], rtol=1e-10, atol=1e-10,
                                       msg=lambda m: f"d{k} {cfg}: {m}")


def test_fast_path_without_grad_with_retained_graph_and_1d_input():
    layer = _layer((4,), True)
    x = torch.randn(7, 9, dtype=torch.float64)
    for cfg in _configs(layer)[::11]:
        layer.set_config(cfg)
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), layer.forward_dense(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(layer(x[0]), layer.forward_dense(x[0]), rtol=0, atol=1e-10)
        layer.zero_grad()
        y = layer(x).sum()
        y.backward(retain_graph=True)
        once = {k: p.grad.clone() for k, p in layer.adapter_parameters().items() if p.grad is not None}
        y.backward()
        for k, v in once.items():
            torch.testing.assert_close(layer.adapter_parameters()[k].grad, 2 * v)


def test_fast_path_under_autocast_matches_dense_dtypes():
    layer = _layer((4,), True).float()
    for cfg in _configs(layer)[::13]:
        layer.set_config(cfg)
        x = torch.randn(7, 9, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast, dense = layer(x), layer.forward_dense(x)
        assert fast.dtype == dense.dtype
        torch.testing.assert_close(fast.float(), dense.float(), rtol=0.05, atol=0.1)
        layer.zero_grad()
        fast.float().sum().backward()
        assert x.grad.dtype == torch.float32
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in layer.parameters())


def test_an_unfrozen_weight_still_gets_its_gradient():
    layer = make_layer((4,))
    layer.weight.requires_grad_(True)
    x = torch.randn(4, layer.in_features, dtype=torch.float64)
    layer.set_config({"A": "vector", "B": "lora_4", "C": "none", "D": "none", "E": "none"})
    layer(x).sum().backward()
    g = layer.weight.grad.clone()
    layer.weight.grad = None
    layer.forward_dense(x).sum().backward()
    torch.testing.assert_close(g, layer.weight.grad)


def test_a_layer_without_bias_takes_no_bias_tensors():
    layer = make_layer((4,), bias=False)
    x = torch.randn(3, layer.in_features, dtype=torch.float64)
    P = {k: v.detach() for k, v in layer.adapter_parameters().items()}
    for d in ("vector", "scalar", "none"):  # b⊙D = 0: any D there computes nothing
        cfg = {"A": "vector", "B": "lora_4", "C": "none", "D": d, "E": "none"}
        layer.set_config(cfg)
        assert layer.config["D"] == "none"
        W2, b2 = paper_equation(layer.weight.detach(), None, P, cfg)
        torch.testing.assert_close(layer(x), x @ W2.T + b2, rtol=0, atol=1e-10)
        assert layer.adapter_params() == layer.space.count({**cfg, "D": "none"}, 9, 6)
        assert layer.to_linear().bias is None  # the same bias-free nn.Linear as the plain model's
    # C and E would need a bias to merge into: refused, naming the layer
    for cfg in ({**cfg, "C": "vector"}, {**cfg, "E": "scalar"}):
        with pytest.raises(ValueError, match="blocks.3.fc has no bias"):
            layer.set_config(cfg, where="blocks.3.fc")


def test_compacted_storage_is_row_major():
    """DDP lays gradient buckets out row-major; compacted storage must match (no stride warning)."""
    layer = make_layer((2, 4))
    for cfg in list(all_configs(layer.space, True))[::7]:
        fresh = make_layer((2, 4))
        fresh.set_config(cfg)
        fresh.compact()
        for name, p in fresh.adapter_parameters().items():
            assert p.stride() == torch.empty(p.shape).stride(), (cfg, name, p.shape, p.stride())


@pytest.mark.parametrize("train_a", [True, False])
@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_a_small_scale_survives_bf16_autocast(kind, train_a):
    """With |a| < 2⁻⁹, 1 + a rounds to 1 in bf16; the layer never forms it there, so a reaches y
    (as far as bf16 can hold it) and y is as close to the exact output as with a = 0 or closer."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    with torch.no_grad():  # outputs that nearly cancel their bias: where a small a shows in bf16
        lin.bias.copy_(-(torch.randn(256, 64) @ lin.weight.t()).mean(0))
    layer = GLoRALinear(lin, SearchSpace((4,)))
    layer.set_config({"A": kind, "B": "none", "C": "none", "D": "none", "E": "none"})
    layer.Ad.requires_grad_(train_a)
    x = torch.randn(256, 64)
    with torch.no_grad():
        layer.Ad.fill_(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            without = layer(x).float()
        layer.Ad.fill_(2.0 ** -10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x).float()
    exact = (x.double() @ lin.weight.double().t() * (1 + 2.0 ** -10) + lin.bias.double()).float()
    assert not torch.equal(y, without)
    assert (y - exact).abs().mean() < (without - exact).abs().mean()


def test_the_equation_check_walks_every_kind_of_the_paper_in_the_registry():
    """The configs checked above come from the space, which reads the registry (glora/kinds.py); the
    reference here is written for each of the paper's kinds, so a kind added to the paper's space
    without one fails this test rather than passing untested."""
    assert {k.name for k in kinds.KINDS.values() if k.default} == {"lora", "vector", "scalar", "none"}
    space = SearchSpace((2, 4))
    assert {kinds.parse(c)[0].name for cs in space.choices.values() for c in cs} == {"lora", "vector", "scalar", "none"}
