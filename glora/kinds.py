"""Choice kinds: what a GLoRA support tensor may be, one registered class each.

A layer config names one choice per support tensor A..E (glora/layer.py): `lora_<r>`, `vector`,
`scalar`, `none`, or a kind registered here. A kind owns everything that depends on what it is:

- `tensors`: the support tensors it may be chosen for; `ranked`: its choices are `<name>_<r>`, r
  one of `glora.ranks`; `default`: it is in the paper's space (an unrestricted `glora.space`);
  a kind that is not enters a space only where `glora.space` names it;
- `storage`: storage it adds to a layer, beyond the shared storage every layer holds (Ad, Au, Bd,
  Bu, Cd, Cu, D, E); `reads`: the storage its carving reads (what a step gives a gradient);
- `carve`: the tensor it stands for, in a shape that broadcasts where the tensor enters
  W' = W + W⊙A + B and b' = b + b⊙D + E + W·C (A, B: against (out, in); C: (in, 1); D, E: (out,));
  the merge, the dense forward and the search's merged scoring all compute W' and b' from it;
- `params`: its parameter count by closed form (what the budget counts);
- `keep`: what of its storage a compacted layer (the retrain's) keeps;
- `switch_width`, `switch_entries`, `static`: its part of the static form (the compiled step):
  the numbers a subnet writes for it and the tensor those numbers select, equal to `carve`;
- `fast`: what the structured forward may take it as (`scale`: A per output channel, `shift`: B
  per output channel, `lowrank`: B as x Buᵀ Bdᵀ, `none`); anything else takes the dense path,
  which is exact for every kind;
- `label`, `colour`: its face in the subnet figure.

The space, the layer, the counts, the merge, the static form and the figures ask the kind; a
choice whose kind is not registered is refused where the config or subnet file names it.

A new kind is a subclass of `Kind` decorated with `@register` (see `Kind` for the minimum).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Optional

from torch import Tensor

if TYPE_CHECKING:
    from .layer import GLoRALinear

TENSORS = ("A", "B", "C", "D", "E")
VECTORS = ("D", "E")  # support tensors stored as one (out,) vector; A, B, C as down/up halves


class Kind:
    """One kind of choice for a support tensor.

    A new, unranked kind needs `name`, `tensors`, `params`, `carve` and, unless it reads the
    shared storage, `storage` and `reads`; its static form is then its selector times `carve`,
    and compaction keeps what it reads. A ranked kind also gives `switch_entries`/`static`.
    """

    name: ClassVar[str]
    tensors: ClassVar[tuple[str, ...]] = TENSORS
    ranked: ClassVar[bool] = False
    default: ClassVar[bool] = False
    label: ClassVar[str] = ""  # "" for the kind's name
    colour: ClassVar[str] = "#b07aa1"

    def choices(self, ranks: tuple[int, ...]) -> list[str]:
        return [f"{self.name}_{r}" for r in ranks] if self.ranked else [self.name]

    def storage(self, tensor: str, in_features: int, out_features: int, max_rank: int, like: dict) -> dict[str, Tensor]:
        """Initial values of the storage this kind adds to a layer (names unique across kinds)."""
        return {}

    def reads(self, tensor: str, rank: int) -> set[str]:
        """Names of the storage that carving this choice reads."""
        return set()

    def params(self, tensor: str, rank: int, in_features: int, out_features: int) -> int:
        raise NotImplementedError

    def carve(self, layer: GLoRALinear, tensor: str, rank: int) -> Optional[Tensor]:
        raise NotImplementedError

    def keep(self, layer: GLoRALinear, tensor: str, rank: int) -> dict[str, Tensor]:
        """The storage a compacted layer keeps for this choice (carving must work on it)."""
        return {name: getattr(layer, name) for name in self.reads(tensor, rank)}

    def fast(self, tensor: str) -> Optional[str]:
        return None

    def switch_width(self, tensor: str, max_rank: int) -> int:
        return max_rank if self.ranked else 1

    def switch_entries(self, tensor: str, rank: int, max_rank: int) -> list[float]:
        """This choice's numbers in a switch row (the other kinds of the tensor write zeros)."""
        return [1.0]

    def static(self, layer: GLoRALinear, tensor: str, entries: Tensor) -> Optional[Tensor]:
        """The tensor the entries select: `carve` when they are this choice's, zero when they are zeros."""
        return entries[0] * self.carve(layer, tensor, 0)

    def figure_label(self, rank: int) -> str:
        return f"{self.label or self.name}{rank if self.ranked else ''}"


KINDS: dict[str, Kind] = {}  # by name, in registration order (the order of choices in a space)


def register(cls: type[Kind]) -> type[Kind]:
    """Class decorator: make a kind available by its name."""
    if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*", cls.name):
        raise ValueError(f"kind name {cls.name!r}: lower-case words joined by _ (a ranked kind adds _<r>)")
    unknown = sorted(set(cls.tensors) - set(TENSORS))
    if unknown:
        raise ValueError(f"kind {cls.name}: unknown tensors {unknown}; the tensors are {list(TENSORS)}")
    KINDS[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """Remove a kind (a test's own, once it is done)."""
    KINDS.pop(name, None)


def parse(choice: str) -> tuple[Kind, int]:
    """`"lora_8"` -> (the lora kind, 8); `"vector"` -> (the vector kind, 0); ValueError if no
    registered kind makes that choice."""
    if isinstance(choice, str):
        if choice in KINDS and not KINDS[choice].ranked:
            return KINDS[choice], 0
        name, _, rank = choice.rpartition("_")
        if name in KINDS and KINDS[name].ranked and rank.isdigit() and int(rank) > 0:
            return KINDS[name], int(rank)
    raise ValueError(f"{choice!r} is no registered choice kind (registered: {', '.join(describe())}; a new "
                     "kind is a glora.kinds.Kind registered with @glora.kinds.register)")


def describe() -> list[str]:
    return [f"{k.name}_<r>" if k.ranked else k.name for k in KINDS.values()]


def kinds_for(tensor: str, default_only: bool = False) -> list[Kind]:
    """The registered kinds a tensor may take (with `default_only`, those of the paper's space)."""
    return [k for k in KINDS.values() if tensor in k.tensors and (k.default or not default_only)]


# ------------------------------------------------------------------------------------- the paper's kinds
# A, B, C carve from down/up halves Xd (rows, R) and Xu (R, cols), R the largest rank; D and E are
# vectors (out,). Every *d, D and E start at zero and every *u Xavier-uniform (glora/layer.py).


def _halves(layer: GLoRALinear, tensor: str) -> tuple[Tensor, Tensor]:
    return getattr(layer, tensor + "d"), getattr(layer, tensor + "u")


@register
class LoRA(Kind):
    """lora_r: Xd[:, :r] @ Xu[:r, :], a rank-r matrix (A, B: out × in; C: in × 1)."""

    name, tensors, ranked, default, label = "lora", ("A", "B", "C"), True, True, "L"

    def reads(self, tensor, rank):
        return {tensor + "d", tensor + "u"}

    def params(self, tensor, rank, in_features, out_features):
        return rank * (in_features + 1) if tensor == "C" else rank * (in_features + out_features)

    def carve(self, layer, tensor, rank):
        down, up = _halves(layer, tensor)
        return down[:, :rank] @ up[:rank, :]

    def halves(self, layer, tensor, rank) -> tuple[Tensor, Tensor]:
        down, up = _halves(layer, tensor)
        return down[:, :rank], up[:rank]

    def keep(self, layer, tensor, rank):
        down, up = self.halves(layer, tensor, rank)
        return {tensor + "d": down, tensor + "u": up}

    def fast(self, tensor):
        return "lowrank" if tensor == "B" else None  # a low-rank A needs the dense W⊙A

    def switch_entries(self, tensor, rank, max_rank):
        return [float(i < rank) for i in range(max_rank)]  # the rank mask m

    def static(self, layer, tensor, entries):
        down, up = _halves(layer, tensor)
        return (down * entries) @ up  # Xd diag(m) Xu


@register
class Vector(Kind):
    """vector: one value per output channel (A, B: Xd[:, :1], (out, 1); C: (in, 1); D, E: (out,))."""

    name, default, label, colour = "vector", True, "vec", "#f28e2b"

    def reads(self, tensor, rank):
        return {tensor} if tensor in VECTORS else {tensor + "d"}

    def params(self, tensor, rank, in_features, out_features):
        return in_features if tensor == "C" else out_features

    def carve(self, layer, tensor, rank):
        return getattr(layer, tensor) if tensor in VECTORS else _halves(layer, tensor)[0][:, :1]

    def keep(self, layer, tensor, rank):
        if tensor in VECTORS:
            return {tensor: getattr(layer, tensor)}
        down, up = _halves(layer, tensor)
        return {tensor + "d": down[:, :1], tensor + "u": up[:0]}

    def fast(self, tensor):
        return {"A": "scale", "B": "shift"}.get(tensor)


@register
class Scalar(Kind):
    """scalar: one value for the whole tensor (Xd[0, 0]; D, E: their first element)."""

    name, tensors, default, label, colour = "scalar", ("A", "B", "D", "E"), True, "sc", "#59a14f"

    def reads(self, tensor, rank):
        return {tensor} if tensor in VECTORS else {tensor + "d"}

    def params(self, tensor, rank, in_features, out_features):
        return 1

    def carve(self, layer, tensor, rank):
        return getattr(layer, tensor)[0] if tensor in VECTORS else _halves(layer, tensor)[0][0, 0]

    def keep(self, layer, tensor, rank):
        if tensor in VECTORS:
            return {tensor: getattr(layer, tensor)[:1]}
        down, up = _halves(layer, tensor)
        return {tensor + "d": down[:1, :1], tensor + "u": up[:0]}

    def fast(self, tensor):
        return {"A": "scale", "B": "shift"}.get(tensor)


@register
class NoneKind(Kind):
    """none: the tensor is absent (zero)."""

    name, default, label, colour = "none", True, "", "#eeeeee"

    def params(self, tensor, rank, in_features, out_features):
        return 0

    def carve(self, layer, tensor, rank):
        return None

    def keep(self, layer, tensor, rank):
        if tensor in VECTORS:
            return {tensor: getattr(layer, tensor)[:0]}
        down, up = _halves(layer, tensor)
        return {tensor + "d": down[:, :0], tensor + "u": up[:0]}

    def fast(self, tensor):
        return "none"

    def switch_width(self, tensor, max_rank):
        return 0

    def switch_entries(self, tensor, rank, max_rank):
        return []

    def static(self, layer, tensor, entries):
        return None


__all__ = ["Kind", "KINDS", "TENSORS", "register", "unregister", "parse", "kinds_for", "describe"]
