"""Search bookkeeping: budget, validity of bred candidates, no duplicate scoring, resume."""
import random

import pytest

from glora import SearchSpace, UserError, glora_layers, inject_glora, subnet_params
from search.evolution import CandidateSpace, EvolutionSearch
from conftest import tiny_vit


def make_space(budget_m=(0.0, 0.02), ranks=(4, 8)):
    model = tiny_vit()
    inject_glora(model, SearchSpace(ranks))
    return model, CandidateSpace.from_model(model, budget_m)


TARGET = {"A": "lora_4", "B": "vector", "C": "none", "D": "scalar", "E": "vector"}


def fake_score(subnet):
    """A smooth stand-in for accuracy: the share of choices that agree with a hidden target."""
    hits = [c[t] == TARGET[t] for c in subnet.values() for t in TARGET]
    return 100.0 * sum(hits) / len(hits)


def test_params_match_the_model_count_and_moves_stay_valid():
    model, space = make_space()
    rng = random.Random(0)
    layers = glora_layers(model)
    for _ in range(50):
        a, b = space.sample(rng), space.sample(rng)
        for key in (a, space.mutate(a, 0.3, rng), space.crossover(a, b, rng)):
            subnet = space.subnet(key)
            for name, layer in layers.items():
                layer.space.validate(subnet[name], layer.has_bias, where=name)
            assert space.params(key) == subnet_params(model, subnet)
        assert space.fits(a)


def test_infeasible_budget_fails_at_once_with_the_achievable_range():
    with pytest.raises(UserError, match=r"infeasible: subnets of this model have between 0M \(0\) and .*M \(\d+\)"):
        make_space((5.0, 6.0))
    with pytest.raises(UserError, match="infeasible"):
        make_space((0.02, 0.01))


def test_narrow_budget_is_met_by_construction():
    _, space = make_space((0.010, 0.0101))
    rng = random.Random(1)
    for _ in range(20):
        key = space.sample(rng)
        assert 10000 <= space.params(key) <= 10100


def test_evolution_never_scores_twice_and_respects_budget():
    _, space = make_space((0.002, 0.01))
    calls = []

    def score(subnet):
        calls.append(space.key(subnet))
        return fake_score(subnet)

    evo = EvolutionSearch(space, score, generations=4, population=12, parents=4, mutations=5,
                          mutation_prob=0.2, crossovers=5, seed=0)
    gens = [evo.step() for _ in range(4)]
    assert len(calls) == len(set(calls)) == len(evo.records) == 48
    assert all(len(g) == 12 for g in gens)
    assert all(2000 <= r.params <= 10000 for r in evo.records.values())
    best = evo.best()
    assert best.acc1 == max(r.acc1 for r in evo.records.values())
    # bred generations draw on the top candidates: later generations are not worse on average
    mean = lambda g: sum(r.acc1 for r in g) / len(g)  # noqa: E731
    assert mean(gens[-1]) >= mean(gens[0])


def test_evolution_resume_equals_uninterrupted():
    _, space = make_space((0.0, 0.01))
    kw = dict(generations=4, population=10, parents=3, mutations=4, mutation_prob=0.2, crossovers=4, seed=5)
    full = EvolutionSearch(space, fake_score, **kw)
    for _ in range(4):
        full.step()
    part = EvolutionSearch(space, fake_score, **kw)
    part.step(), part.step()
    import yaml
    state = yaml.safe_load(yaml.safe_dump(part.state()))  # as written to and read from disk
    resumed = EvolutionSearch(space, fake_score, **kw)
    resumed.load_state(state)
    resumed.step(), resumed.step()
    assert list(resumed.records) == list(full.records)
    assert resumed.best() == full.best()


def test_exhausted_space_is_reported():
    _, space = make_space((0.0, 0.0))  # only the all-none subnet fits
    evo = EvolutionSearch(space, fake_score, generations=2, population=5, parents=2, mutations=2,
                          mutation_prob=0.5, crossovers=2, seed=0)
    space.max_tries = 20
    assert len(evo.step()) == 1
    with pytest.raises(UserError, match="exhausted"):
        evo.step()
