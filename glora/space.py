"""The GLoRA search space: choices per support tensor, sampling, validation and parameter counts."""
from __future__ import annotations

import random
from typing import Iterable, Mapping, Optional

from . import kinds
from .kinds import TENSORS

LayerConfig = dict  # {"A": "lora_4", "B": "vector", "C": "none", "D": "scalar", "E": "vector"}

# Tensors that end up in the bias b' = b + b⊙D + E + W·C: a layer without bias has none of them, so
# that its merged form is the same bias-free nn.Linear the plain model holds (e.g. Swin's downsample).
BIAS_TENSORS = ("C", "D", "E")


def parse_choice(choice: str) -> tuple[str, int]:
    """`"lora_8"` -> `("lora", 8)`; `"vector"` -> `("vector", 0)`; ValueError for an unregistered kind."""
    kind, rank = kinds.parse(choice)
    return kind.name, rank


def choice_params(tensor: str, choice: str, in_features: int, out_features: int) -> int:
    """Trainable elements of one support tensor choice, as its kind counts them (glora/kinds.py)."""
    kind, rank = kinds.parse(choice)
    return kind.params(tensor, rank, in_features, out_features)


class SearchSpace:
    """The paper's per-layer space: A, B (weight scale/shift), C (prompt), D, E (bias scale/shift).

    Each tensor's choices are those of the registered kinds (glora/kinds.py) that may be chosen
    for it. Unrestricted, the space holds the paper's kinds; `restrict` keeps a subset of each
    tensor's choices (a tensor it leaves out keeps the paper's), and may name any registered kind:
    `{"A": ["none"], "B": ["lora_8"], "C": ["none"], "D": ["none"], "E": ["none"]}` is LoRA of
    rank 8. Sampling, validation, counts and bounds all follow it.
    """

    def __init__(self, ranks=(4,), restrict: Optional[Mapping[str, Iterable[str]]] = None):
        ranks = tuple(sorted({int(r) for r in ranks}))
        if not ranks or ranks[0] < 1:
            raise ValueError(f"LoRA ranks must be positive integers, got {list(ranks)}")
        self.ranks = ranks
        full = {t: [c for k in kinds.kinds_for(t) for c in k.choices(ranks)] for t in TENSORS}
        paper = {t: [c for k in kinds.kinds_for(t, default_only=True) for c in k.choices(ranks)] for t in TENSORS}
        self.choices = paper if restrict is None else _restricted(full, paper, restrict, ranks)

    @property
    def max_rank(self) -> int:
        return self.ranks[-1]

    def tensor_kinds(self, tensor: str) -> list[kinds.Kind]:
        """The kinds among a tensor's choices, in order (a ranked kind once)."""
        found = (kinds.parse(c)[0] for c in self.choices[tensor])
        return list({k.name: k for k in found}.values())

    def __eq__(self, other) -> bool:
        return isinstance(other, SearchSpace) and self.ranks == other.ranks and self.choices == other.choices

    def __repr__(self) -> str:
        paper = SearchSpace(self.ranks).choices
        restrict = {t: c for t, c in self.choices.items() if c != paper[t]}
        return f"SearchSpace(ranks={self.ranks}{f', restrict={restrict}' if restrict else ''})"

    def layer_choices(self, has_bias: bool = True) -> dict[str, list[str]]:
        """Choices for one layer; a layer without bias takes none of the bias tensors C, D, E."""
        return {t: (c if has_bias or t not in BIAS_TENSORS else ["none"]) for t, c in self.choices.items()}

    def sample(self, rng: random.Random, has_bias: bool = True) -> LayerConfig:
        """Draw each tensor uniformly and independently from its choices."""
        return {t: rng.choice(c) for t, c in self.layer_choices(has_bias).items()}

    def validate(self, cfg: Mapping[str, str], has_bias: bool = True, where: str = "layer") -> LayerConfig:
        """Return `cfg` as a plain dict in tensor order, or raise ValueError naming the valid choices.

        D scales the bias: on a layer without bias it computes nothing, so it comes back "none".
        C and E would give such a layer a bias that its plain (merged) form cannot hold: refused.
        """
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{where}: a layer config maps A..E to choices, got {cfg!r}")
        unknown = set(cfg) - set(TENSORS)
        missing = set(TENSORS) - set(cfg)
        if unknown or missing:
            raise ValueError(
                f"{where}: a layer config needs exactly the tensors {list(TENSORS)}; "
                f"unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        for t in TENSORS:
            # "none" is a bias tensor's one choice on a layer without bias, whatever the restriction.
            if cfg[t] not in self.choices[t] and not (cfg[t] == "none" and not has_bias and t in BIAS_TENSORS):
                raise ValueError(f"{where}: {t}={cfg[t]!r} is not a valid choice; valid: {self.choices[t]}")
        out = {t: str(cfg[t]) for t in TENSORS}
        if not has_bias:
            out["D"] = "none"
            extra = [f"{t}={out[t]}" for t in ("C", "E") if out[t] != "none"]
            if extra:
                raise ValueError(f"{where} has no bias, so {' and '.join(extra)} could not be merged into it "
                                 "(its plain form has no bias to hold them); use none there")
        return out

    def count(self, cfg: Mapping[str, str], in_features: int, out_features: int) -> int:
        """Trainable parameters of a layer config (the budget's unit), as each choice's kind counts them."""
        return sum(choice_params(t, cfg[t], in_features, out_features) for t in TENSORS)

    def bounds(self, in_features: int, out_features: int, has_bias: bool = True) -> tuple[int, int]:
        """The smallest and largest parameter counts a layer of this shape can take."""
        per_tensor = [
            [choice_params(t, c, in_features, out_features) for c in cs]
            for t, cs in self.layer_choices(has_bias).items()
        ]
        return sum(map(min, per_tensor)), sum(map(max, per_tensor))


def _restricted(full: dict[str, list[str]], paper: dict[str, list[str]], restrict: Mapping,
                ranks: tuple) -> dict[str, list[str]]:
    """`paper` with each tensor named in `restrict` cut to the choices listed there, any of `full`
    (every registered kind's), in `full`'s order."""
    if not isinstance(restrict, Mapping):
        raise ValueError(f"space: a mapping of tensors {list(TENSORS)} to lists of choices, got {restrict!r}")
    unknown = sorted(set(restrict) - set(TENSORS))
    if unknown:
        raise ValueError(f"space: unknown tensors {unknown}; the tensors are {list(TENSORS)}")
    out = dict(paper)
    for t, allowed in restrict.items():
        allowed = [allowed] if isinstance(allowed, str) else allowed
        if not isinstance(allowed, (list, tuple)) or not allowed:
            raise ValueError(f"space: {t} takes a non-empty list of choices from {full[t]}, got {allowed!r}")
        for c in allowed:
            if c not in full[t]:
                hint = f" (lora_<r> takes r from the ranks {list(ranks)})" if str(c).startswith("lora_") else (
                    f" (registered kinds: {', '.join(kinds.describe())}; a new kind is a glora.kinds.Kind "
                    "registered with @glora.kinds.register)")
                raise ValueError(f"space: {t}={c!r} is not a valid choice; valid: {full[t]}{hint}")
        out[t] = [c for c in full[t] if c in allowed]
    return out
