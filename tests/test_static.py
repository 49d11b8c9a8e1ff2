"""The static form of the supernet (the subnet written into tensors, one graph for every subnet) and
MaskedAdamW against today's eager carving supernet with torch's AdamW, in float64."""
import itertools
import random

import pytest
import torch

from conftest import tiny_vit
from engine.loops import train_step
from engine.trainer import adamw
from glora import SearchSpace, inject_glora, mark_trainable, sample_subnet, set_subnet
from glora.inject import glora_layers, make_static, used_flags, write_subnet
from glora.layer import STORAGE, used_storage
from glora.optim import MaskedAdamW
from glora.space import TENSORS

CPU = torch.device("cpu")


def supernet(seed=0, ranks=(2, 4)):
    """A float64 tiny ViT whose qkv layers have no bias (C, D, E are none there), GLoRA storage random
    (not the zero init, so every storage tensor's gradient is non-zero where it is used)."""
    model = tiny_vit(qkv_bias=False)
    inject_glora(model, SearchSpace(ranks), rng=random.Random(seed))
    torch.manual_seed(seed)
    for layer in glora_layers(model).values():
        for p in layer.adapter_parameters().values():
            torch.nn.init.normal_(p, std=0.05)
    mark_trainable(model)
    return model.train()


def visiting_sequence(model, steps, seed=0):
    """Subnets that give every tensor of every layer each of its choices within a few steps, in
    changing combinations, interleaved with random draws."""
    rng = random.Random(seed)
    layers = list(glora_layers(model).items())
    subnets = []
    for t in range(steps):
        if t % 3 == 2:
            subnets.append(sample_subnet(model, rng))
            continue
        subnet = {}
        for i, (name, layer) in enumerate(layers):
            choices = layer.space.layer_choices(layer.has_bias)
            subnet[name] = {k: choices[k][(t * (j + 1) + i) % len(choices[k])] for j, k in enumerate(TENSORS)}
        subnets.append(subnet)
    return subnets


def optimizer_state(optimizer, model):
    """(step, exp_avg, exp_avg_sq) of every trainable parameter by name; a parameter AdamW never
    stepped has none, which reads as step 0 and zero moments."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            s = optimizer.state.get(p, {})
            zero = torch.zeros_like(p)
            out[name] = (float(s["step"]) if s else 0.0, s.get("exp_avg", zero), s.get("exp_avg_sq", zero))
    return out


def optimizer(model, static=False, eps=1e-6):
    """The trainer's AdamW (timm's groups), MaskedAdamW over the static layers' flags if `static`."""
    opt = adamw(model, 1e-2, 0.05, CPU, flags=used_flags(model) if static else None)
    for group in opt.param_groups:
        group["eps"] = eps  # see test_static_supernet_equals_carving_weights_and_optimizer_state
    return opt


def train_side_by_side(other: str, eps: float, steps: int = 60):
    """Today's eager carving supernet (torch's AdamW) and `other` (static: the static form with
    MaskedAdamW; dense: carving computed densely, forward_dense) over the same subnets and batches;
    returns both models and optimizers."""
    from bench.variants import use_dense_forward

    eager, model = supernet(), supernet()
    make_static(model) if other == "static" else use_dense_forward(model)
    opt_eager, opt = optimizer(eager, eps=eps), optimizer(model, static=other == "static", eps=eps)
    assert type(opt_eager) is torch.optim.AdamW and isinstance(opt, MaskedAdamW) == (other == "static")
    subnets = visiting_sequence(eager, steps)
    g = torch.Generator().manual_seed(0)
    for step, subnet in enumerate(subnets):
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=g)
        y = torch.randint(0, 5, (4,), generator=g)
        for o in (opt_eager, opt):  # a scheduler's learning rate, changing every 10 steps
            for group in o.param_groups:
                group["lr"] = 1e-2 * 0.7 ** (step // 10)
        set_subnet(eager, subnet)
        (write_subnet if other == "static" else set_subnet)(model, subnet)
        train_step(eager, x, y, opt_eager, CPU)
        train_step(model, x, y, opt, CPU)
    return (eager, opt_eager), (model, opt), subnets


def weight_drift(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


def test_static_supernet_equals_carving_weights_and_optimizer_state():
    """60 steps whose subnets give every tensor of every layer each of its choices, float64: the
    weights and AdamW's state (step counts, moments) agree within 1e-10.

    With eps = 1e-6 rather than AdamW's default 1e-8: a constant shift of the residual stream (E or B
    scalar in attn.proj and mlp.fc2) is undone by the next LayerNorm, so its exact gradient is 0 and
    the computed one is rounding noise (~1e-16), which AdamW divides by eps; at 1e-8 any two exact
    implementations drift apart by ~1e-8 over these steps (the next test: carving against itself
    computed densely drifts as far)."""
    (eager, opt_eager), (static, opt_static), subnets = train_side_by_side("static", eps=1e-6)
    seen = {(n, t, c) for s in subnets for n, cfg in s.items() for t, c in cfg.items()}
    every = {(n, t, c) for n, l in glora_layers(eager).items() for t, cs in l.space.layer_choices(l.has_bias).items()
             for c in cs}
    assert seen == every
    assert weight_drift(eager, static) <= 1e-10
    state_eager, state_static = optimizer_state(opt_eager, eager), optimizer_state(opt_static, static)
    steps = set()
    for name, (step, m, v) in state_eager.items():
        assert state_static[name][0] == step, name
        torch.testing.assert_close(state_static[name][1], m, rtol=0, atol=1e-10, msg=name)
        torch.testing.assert_close(state_static[name][2], v, rtol=0, atol=1e-10, msg=name)
        steps.add(step)
    assert min(steps) == 0 and max(steps) == len(subnets) and len(steps) > 10  # untouched, partly and always used


def test_at_the_default_eps_static_drifts_no_further_than_carving_from_itself():
    (eager, _), (static, _), _ = train_side_by_side("static", eps=1e-8, steps=30)
    (eager2, _), (dense, _), _ = train_side_by_side("dense", eps=1e-8, steps=30)
    assert weight_drift(eager, static) <= 3 * weight_drift(eager2, dense) + 1e-10


@pytest.mark.parametrize("cfg", [
    {"A": "lora_2", "B": "vector", "C": "lora_2", "D": "scalar", "E": "none"},
    {"A": "vector", "B": "scalar", "C": "vector", "D": "none", "E": "scalar"},
    {"A": "none", "B": "lora_4", "C": "none", "D": "vector", "E": "vector"},
])
def test_masked_storage_gets_exactly_zero_gradient(cfg):
    model = supernet()
    make_static(model)
    name, layer = next((n, l) for n, l in glora_layers(model).items() if l.has_bias)
    set_subnet(model, {n: (cfg if n == name else {t: "none" for t in TENSORS}) for n in glora_layers(model)})
    model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).square().sum().backward()
    used = used_storage(cfg)
    for storage in STORAGE:
        grad = getattr(layer, storage).grad
        kind, rank = cfg[storage[0]].partition("_")[::2]
        if storage not in used:
            assert torch.count_nonzero(grad) == 0, storage
        elif kind == "lora":  # the columns (rows of the up half) past the rank
            cut = grad[:, int(rank):] if storage.endswith("d") else grad[int(rank):]
            assert torch.count_nonzero(cut) == 0 and torch.count_nonzero(grad) > 0, storage
        elif kind in ("vector", "scalar") and storage.endswith("d"):
            kept = grad[:, :1] if kind == "vector" else grad[:1, :1]
            assert torch.count_nonzero(grad) == torch.count_nonzero(kept) > 0, storage


def test_every_layer_config_computes_as_carving():
    carving, static = supernet(), supernet()
    make_static(static)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    layer = next(l for l in glora_layers(carving).values() if l.has_bias)
    for combo in itertools.islice(itertools.product(*layer.space.layer_choices().values()), 0, None, 37):
        cfg = dict(zip(TENSORS, combo))
        subnet = {n: (cfg if l.has_bias else {**cfg, "C": "none", "D": "none", "E": "none"})
                  for n, l in glora_layers(carving).items()}
        set_subnet(carving, subnet)
        write_subnet(static, subnet)
        torch.testing.assert_close(static(x), carving(x), rtol=0, atol=1e-12)


def test_write_subnet_is_one_table_and_checks_its_input():
    model = supernet()
    with pytest.raises(RuntimeError, match="make_static"):
        write_subnet(model, sample_subnet(model, random.Random(0)))
    table = make_static(model)
    assert table.shape == (len(glora_layers(model)), 3 * 4 + 9 + 8)
    subnet = sample_subnet(model, random.Random(1))
    write_subnet(model, subnet)
    for row, (name, layer) in zip(table, glora_layers(model).items()):
        assert row.tolist() == layer.switch_row(subnet[name])
        flags = {k: float(f) for k, f in layer.used_flags().items()}
        assert {k for k, f in flags.items() if f} == used_storage(subnet[name])
    bad = {**subnet, next(iter(subnet)): {**next(iter(subnet.values())), "A": "lora_8"}}
    with pytest.raises(ValueError, match="lora_8"):
        write_subnet(model, bad)
    assert "switch" not in str(list(model.state_dict()))  # the table is no part of a checkpoint


def test_a_run_changes_between_static_and_carving_on_resume():
    """train.compile may change on --resume: MaskedAdamW's state dict is torch AdamW's, both ways."""
    subnets = visiting_sequence(supernet(), 6)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=g), torch.randint(0, 5, (2,), generator=g))
               for _ in subnets]

    def build(static):
        model = supernet()
        if static:
            make_static(model)
        return model, optimizer(model, static)

    def run(model, opt, steps):
        for subnet, (x, y) in list(zip(subnets, batches))[steps]:
            (write_subnet if model.blocks[0].attn.qkv.static else set_subnet)(model, subnet)
            train_step(model, x, y, opt, CPU)

    reference, ref_opt = build(static=False)
    run(reference, ref_opt, slice(0, 6))
    for first in (True, False):
        model, opt = build(first)
        run(model, opt, slice(0, 3))
        resumed, resumed_opt = build(not first)
        resumed.load_state_dict(model.state_dict())
        resumed_opt.load_state_dict(opt.state_dict())
        run(resumed, resumed_opt, slice(3, 6))
        for (name, a), b in zip(resumed.named_parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)
