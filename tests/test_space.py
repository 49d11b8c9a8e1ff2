import random

import pytest

from glora.space import TENSORS, SearchSpace, choice_params


def test_choices_of_the_paper():
    s = SearchSpace((4, 8))
    assert s.choices["A"] == ["lora_4", "lora_8", "vector", "scalar", "none"]
    assert s.choices["B"] == s.choices["A"]
    assert s.choices["C"] == ["lora_4", "lora_8", "vector", "none"]
    assert s.choices["D"] == s.choices["E"] == ["vector", "scalar", "none"]
    assert s.max_rank == 8
    no_bias = s.layer_choices(has_bias=False)
    assert no_bias["C"] == no_bias["D"] == no_bias["E"] == ["none"] and no_bias["A"] == s.choices["A"]


def test_sampling_is_seeded_and_reaches_every_choice():
    s = SearchSpace((4, 8))
    a = [s.sample(random.Random(3)) for _ in range(3)]
    b = [s.sample(random.Random(3)) for _ in range(3)]
    assert a == b
    rng = random.Random(0)
    seen = {t: set() for t in TENSORS}
    for _ in range(500):
        for t, c in s.sample(rng).items():
            seen[t].add(c)
    assert all(seen[t] == set(s.choices[t]) for t in TENSORS)
    assert {s.sample(rng, has_bias=False)[t] for _ in range(50) for t in "CDE"} == {"none"}


def test_validation_names_the_valid_choices():
    s = SearchSpace((4,))
    good = {"A": "lora_4", "B": "vector", "C": "none", "D": "scalar", "E": "vector"}
    assert s.validate(good) == good
    with pytest.raises(ValueError, match=r"lora_8.*valid: \['lora_4', 'vector', 'scalar', 'none'\]"):
        s.validate({**good, "A": "lora_8"})
    with pytest.raises(ValueError, match="unknown \\['F'\\]"):
        s.validate({**good, "F": "none"})
    with pytest.raises(ValueError, match="missing \\['E'\\]"):
        s.validate({k: v for k, v in good.items() if k != "E"})
    # a layer without bias has nothing for D to scale: any D there is "none"; C or E it cannot hold
    assert s.validate({**good, "E": "none"}, has_bias=False) == {**good, "D": "none", "E": "none"}
    with pytest.raises(ValueError, match="qkv has no bias, so E=vector could not be merged"):
        s.validate(good, has_bias=False, where="qkv")
    with pytest.raises(ValueError, match="positive"):
        SearchSpace(())


def test_closed_form_counts():
    i, o = 7, 11
    assert choice_params("A", "lora_4", i, o) == 4 * (i + o)
    assert choice_params("B", "vector", i, o) == o
    assert choice_params("B", "scalar", i, o) == 1
    assert choice_params("C", "lora_8", i, o) == 8 * (i + 1)
    assert choice_params("C", "vector", i, o) == i
    assert choice_params("D", "vector", i, o) == o
    assert choice_params("E", "scalar", i, o) == 1
    assert choice_params("A", "none", i, o) == 0
    s = SearchSpace((4, 8))
    lo, hi = s.bounds(i, o)
    assert lo == 0 and hi == 2 * 8 * (i + o) + 8 * (i + 1) + 2 * o
    assert s.bounds(i, o, has_bias=False)[1] == hi - 8 * (i + 1) - 2 * o  # no C, D, E
