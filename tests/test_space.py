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


def test_a_restriction_keeps_its_choices_in_the_space_order_and_counts_follow_it():
    s = SearchSpace((4, 8), restrict={"A": ["none"], "B": ["lora_8", "vector"], "C": "none", "D": ["none"]})
    assert s.choices == {"A": ["none"], "B": ["lora_8", "vector"], "C": ["none"], "D": ["none"],
                         "E": ["vector", "scalar", "none"]}  # E, left out, keeps all
    assert s != SearchSpace((4, 8)) and s == SearchSpace((4, 8), {"B": ["vector", "lora_8"], "A": ["none"],
                                                                   "C": ["none"], "D": ["none"]})
    assert "restrict=" in repr(s) and "restrict" not in repr(SearchSpace((4, 8)))
    i, o = 7, 11
    assert s.bounds(i, o) == (o, 8 * (i + o) + o)  # B at least a vector; E at most a vector
    rng = random.Random(0)
    for _ in range(200):
        cfg = s.sample(rng)
        assert all(cfg[t] in s.choices[t] for t in TENSORS)
    with pytest.raises(ValueError, match=r"B='lora_4' is not a valid choice"):
        s.validate({"A": "none", "B": "lora_4", "C": "none", "D": "none", "E": "none"})


def test_an_invalid_restriction_names_the_valid_choices():
    with pytest.raises(ValueError, match=r"B='lora_8' is not a valid choice; valid: \['lora_4', 'vector', "
                                         r"'scalar', 'none'\] \(lora_<r> takes r from the ranks \[4\]\)"):
        SearchSpace((4,), restrict={"B": ["lora_8"]})
    with pytest.raises(ValueError, match=r"D='lora_4' is not a valid choice; valid: \['vector', 'scalar', 'none'\]"):
        SearchSpace((4,), restrict={"D": ["lora_4"]})
    with pytest.raises(ValueError, match=r"unknown tensors \['F'\]"):
        SearchSpace((4,), restrict={"F": ["none"]})
    with pytest.raises(ValueError, match="A takes a non-empty list"):
        SearchSpace((4,), restrict={"A": []})
    with pytest.raises(ValueError, match="a mapping of tensors"):
        SearchSpace((4,), restrict=["none"])


def test_a_layer_without_bias_takes_none_of_c_d_e_whatever_the_restriction():
    s = SearchSpace((4,), restrict={"C": ["vector"], "D": ["vector"], "E": ["scalar"]})
    assert s.layer_choices(has_bias=False) == {"A": s.choices["A"], "B": s.choices["B"],
                                               "C": ["none"], "D": ["none"], "E": ["none"]}
    cfg = {"A": "vector", "B": "none", "C": "none", "D": "none", "E": "none"}
    assert s.validate(cfg, has_bias=False) == cfg
    with pytest.raises(ValueError, match="C='none' is not a valid choice"):
        s.validate(cfg, has_bias=True)
    assert s.bounds(7, 11, has_bias=False) == (0, 2 * 4 * 18)  # A and B low-rank; no C, D, E
