"""Search bookkeeping: budget, validity of bred candidates, no duplicate scoring, resume."""
import random

import pytest

from glora import SearchSpace, UserError, glora_layers, inject_glora, subnet_params
from search.evolution import CandidateSpace, EvolutionSearch
from search.score import Score
from conftest import tiny_vit


def make_space(budget_m=(0.0, 0.02), ranks=(4, 8)):
    model = tiny_vit()
    inject_glora(model, SearchSpace(ranks))
    return model, CandidateSpace.from_model(model, budget_m)


TARGET = {"A": "lora_4", "B": "vector", "C": "none", "D": "scalar", "E": "vector"}


def fake_score(subnet, floor=0.0):
    """A smooth stand-in for accuracy: the share of choices that agree with a hidden target."""
    hits = [c[t] == TARGET[t] for c in subnet.values() for t in TARGET]
    return Score(sum(hits), len(hits), len(hits))


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

    def score(subnet, floor):
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


def teacher_task(n=96, batch_size=8, sigma=0.05):
    """A tiny supernet with varied adapters and val labels that one candidate (the teacher) gets all
    right: the others spread over 20-45%, as candidates of a trained supernet spread, so that early
    stopping has something to stop."""
    import torch
    from data import BatchLoader, normalize
    from search.score import MergedScorer

    model = tiny_vit(dtype=torch.float32)
    inject_glora(model, SearchSpace((4,)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in glora_layers(model).values():
            for p in layer.adapter_parameters().values():
                p.copy_(torch.randn(p.shape, generator=g) * sigma)
    space = CandidateSpace.from_model(model, (0.0, 0.02))
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    scorer = MergedScorer(model, BatchLoader(images, torch.zeros(n, dtype=torch.long), batch_size=batch_size))
    with torch.no_grad():  # centre the teacher's logits so that its labels use every class
        logits = scorer.load(space.subnet(space.sample(random.Random(0))))(normalize(images))
        model.head.bias -= logits.mean(0)
        scorer.plain.head.bias -= logits.mean(0)
    scorer.batches.labels = (logits - logits.mean(0)).argmax(-1)
    return space, scorer


KW = dict(generations=5, population=10, parents=3, mutations=4, mutation_prob=0.2, crossovers=4, seed=0)


def test_early_stopping_is_exact_and_forwards_fewer_images():
    space, scorer = teacher_task()
    full = EvolutionSearch(space, scorer, **KW)
    pruned = EvolutionSearch(space, scorer, early_stop=True, **KW)
    for _ in range(KW["generations"]):
        floor = pruned.floor()
        full.step(), pruned.step()
        # the same parents (and their order) every generation, hence the same next population
        assert [r.key for r in pruned.ranked()[:KW["parents"]]] == [r.key for r in full.ranked()[:KW["parents"]]]
        for r in pruned.records.values():
            if r.pruned and r.generation == pruned.generation - 1:
                assert full.records[r.key].acc1 <= r.acc1 < floor  # a bound, below the floor
    assert list(pruned.records) == list(full.records)
    assert pruned.best() == full.best()
    stopped = [r for r in pruned.records.values() if r.pruned]
    assert len(stopped) >= 10 and all(r.images < 96 for r in stopped)
    assert all(not r.pruned and r.images == 96 for r in full.records.values())
    images = lambda evo: sum(r.images for r in evo.records.values())  # noqa: E731
    assert images(pruned) < images(full)
    unpruned = [k for k, r in pruned.records.items() if not r.pruned]
    assert all(pruned.records[k] == full.records[k] for k in unpruned)


def test_pruned_records_resume_and_log_as_bounds():
    import yaml

    space, scorer = teacher_task()
    a = EvolutionSearch(space, scorer, early_stop=True, **KW)
    for _ in range(3):
        a.step()
    b = EvolutionSearch(space, scorer, early_stop=True, **KW)
    b.load_state(yaml.safe_load(yaml.safe_dump(a.state())))
    assert b.records == a.records and any(r.pruned for r in b.records.values())
    line = next(r for r in b.records.values() if r.pruned).log_line()
    assert line["pruned"] is True and line["images"] < 96 and len(line["layers"]) == len(space.names)
    a.step(), b.step()
    assert b.records == a.records


def test_floor_is_the_kth_best_and_zero_without_early_stopping():
    space, scorer = teacher_task()
    evo = EvolutionSearch(space, scorer, early_stop=True, **{**KW, "population": 2})
    assert evo.floor() == 0.0  # fewer than k = 3 records
    evo.step(), evo.step()
    assert evo.floor() == sorted(r.acc1 for r in evo.records.values())[-3]
    assert EvolutionSearch(space, scorer, **KW).floor() == 0.0


def test_sharded_generations_equal_one_process():
    """Two ranks (threads here, torchrun processes in test_stages) each score every other candidate
    and gather: both breed the same generations, and record what one process records."""
    import threading

    space, scorer = teacher_task()
    one = EvolutionSearch(space, scorer, early_stop=True, **KW)
    for _ in range(KW["generations"]):
        one.step()

    world, barrier, board = 2, threading.Barrier(2), {}
    scored = {0: [], 1: []}

    def gather_for(rank):
        def gather(scores):
            board[rank] = scores
            barrier.wait()
            shares = [board[r] for r in range(world)]
            barrier.wait()  # every rank has read the board before the next generation writes it
            return shares
        return gather

    lock = threading.Lock()  # the two ranks share one model here; torchrun ranks do not

    def rank_scorer(rank):
        def score(subnet, floor):
            scored[rank].append(space.key(subnet))
            with lock:
                return scorer(subnet, floor)
        return score

    ranks = [EvolutionSearch(space, rank_scorer(r), early_stop=True, rank=r, world_size=world,
                             gather=gather_for(r), **KW) for r in range(world)]
    threads = [threading.Thread(target=lambda e=e: [e.step() for _ in range(KW["generations"])]) for e in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for evo in ranks:
        assert list(evo.records) == list(one.records) and evo.records == one.records
    assert not set(scored[0]) & set(scored[1]) and len(scored[0]) + len(scored[1]) == len(one.records)
