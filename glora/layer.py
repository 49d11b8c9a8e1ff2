"""GLoRALinear: a frozen linear layer with the five GLoRA support tensors, computed by structure.

    y = x (W + W⊙A + B)ᵀ + b + b⊙D + E + (W·C)ᵀ

W (out × in) and b (out) are the frozen pretrained weights, ⊙ the element-wise product with
broadcasting. The five support tensors and their choices (r: a configured LoRA rank):

    A  scales the weight   lora_r (out×in, rank r), vector (out×1), scalar (1×1), none
    B  shifts the weight   lora_r (out×in, rank r), vector (out×1), scalar (1×1), none
    C  prompt through W    lora_r (in×1, rank r),   vector (in×1),                none
    D  scales the bias     vector (out),            scalar (1),                   none
    E  shifts the bias     vector (out),            scalar (1),                   none

A layer without bias takes none of C, D, E (they would add a bias the plain layer lacks).

Shared storage (the supernet's weight sharing), R the largest rank:

    Ad (out,R)  Au (R,in)  Bd (out,R)  Bu (R,in)  Cd (in,R)  Cu (R,1)  D (out)  E (out)

A choice is carved out of it: lora_k -> Xd[:, :k] @ Xu[:k, :], vector -> Xd[:, :1], scalar ->
Xd[0, 0]; for D and E, vector -> the whole vector, scalar -> its first element. Every *d, D and E
start at zero and every *u Xavier-uniform, so an untrained layer is the pretrained one. These
names and shapes are the on-disk format of supernet checkpoints (as in the authors' release).

Parameters of a config (what a budget counts): A or B: lora_k -> k·(in+out), vector -> out,
scalar -> 1; C: lora_k -> k·(in+1), vector -> in; D or E: vector -> out, scalar -> 1; none -> 0.

For a fixed config the layer is a plain linear layer with

    W' = W + W⊙A + B        b' = b + b⊙D + E + W·C

every W on the right the frozen pretrained weight (the merge, glora/merge.py). The forward
computes by structure: only A = lora_k builds the dense matrix; A vector/scalar scales x Wᵀ,
B = lora_k is the LoRA path (x Buᵀ) Bdᵀ, B vector/scalar adds sum(x) times it, and C, D, E fold into
the bias.

What each choice is (its storage, carving, count, compaction, static form and figure label) is
owned by its kind, registered in glora/kinds.py; the tables here are the paper's four kinds, and a
registered kind may add its own storage after the shared one.

Static form (one graph for every subnet, for torch.compile and CUDA graphs). Carving changes the
control flow with every sampled config; the static form writes the config into numbers instead, a
row `switch` per layer (`switch_row`): a rank mask m (R entries) for each of A, B, C and the
selectors v, s of vector and scalar. Each choice, carved and in static form:

    choice    carving              static form (the same numbers; everything not chosen is 0)
    lora_k    Xd[:, :k] @ Xu[:k]   Xd diag(m) Xu,  m = k ones, then zeros
    vector    Xd[:, :1]            v·Xd[:, :1]     (D, E: v·X)
    scalar    Xd[0, 0]             s·Xd[0, 0]      (D, E: s·X[0])
    none      (nothing)            0

The static forward always builds the sum of the three, A = Ad diag(mA) Au + vA·Ad[:, :1] + sA·Ad[0, 0]
(B and C likewise, C without a scalar; D = vD·D + sD·D[0], E likewise), and computes y = x W'ᵀ + b'
densely. For every config this equals carving: the masked columns and rows and the kinds not
chosen add exact zeros and receive exact zero gradients. What carving changes besides the values
is which storage tensors take part in a step (`used_storage`: Au only under A = lora_k, nothing
under none): an optimizer step must leave the others untouched, so the row ends with a flag per
storage tensor (MaskedAdamW, glora/optim.py, reads them).
"""
from __future__ import annotations

import random
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kinds
from .space import TENSORS, LayerConfig, SearchSpace

# The shared storage of every adapted layer; also its names in checkpoints (see the module docstring).
# A registered kind may add storage of its own (glora/kinds.py), after these.
STORAGE = ("Ad", "Au", "Bd", "Bu", "Cd", "Cu", "D", "E")


def switch_layout(space: SearchSpace) -> list[tuple[str, kinds.Kind, int]]:
    """The switch row's parts before the storage flags: (tensor, kind, width) for each kind among
    each tensor's choices, in order (the paper's space: the rank masks of A, B, C and the selectors
    vA, sA, vB, sB, vC, vD, sD, vE, sE)."""
    return [(t, k, k.switch_width(t, space.max_rank)) for t in TENSORS for k in space.tensor_kinds(t)]


def extra_storage(space: SearchSpace) -> list[tuple[str, kinds.Kind]]:
    """(tensor, kind) of every kind in the space that may add storage of its own."""
    return [(t, k) for t in TENSORS for k in space.tensor_kinds(t)]


def used_storage(cfg: LayerConfig) -> set[str]:
    """The storage tensors that carving `cfg` reads, i.e. those an eager step gives a gradient, as
    each choice's kind says (lora_k reads Xd and Xu, vector and scalar Xd alone, D and E the vector
    itself, none nothing)."""
    used = set()
    for t in TENSORS:
        kind, rank = kinds.parse(cfg[t])
        used |= kind.reads(t, rank)
    return used


class GLoRALinear(nn.Module):
    """A supernet (or, with a fixed config, a subnet) layer that replaces one frozen nn.Linear.

    `weight` and `bias` keep their names so backbone state-dict keys do not change. With no fixed
    config, each training forward draws a layer config from the shared `rng`.
    """

    def __init__(self, linear: nn.Linear, space: SearchSpace, rng: Optional[random.Random] = None):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.space = space
        self.rng = rng
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

        out_f, in_f, r = self.out_features, self.in_features, space.max_rank
        like = dict(device=self.weight.device, dtype=self.weight.dtype)
        # The *d halves start at zero so an untrained layer computes exactly the pretrained one.
        self.Ad = nn.Parameter(torch.zeros(out_f, r, **like))
        self.Au = nn.Parameter(nn.init.xavier_uniform_(torch.empty(r, in_f, **like)))
        self.Bd = nn.Parameter(torch.zeros(out_f, r, **like))
        self.Bu = nn.Parameter(nn.init.xavier_uniform_(torch.empty(r, in_f, **like)))
        self.Cd = nn.Parameter(torch.zeros(in_f, r, **like))
        self.Cu = nn.Parameter(nn.init.xavier_uniform_(torch.empty(r, 1, **like)))
        self.D = nn.Parameter(torch.zeros(out_f, **like))
        self.E = nn.Parameter(torch.zeros(out_f, **like))
        self.storage_names = list(STORAGE)
        for t, kind in extra_storage(space):  # a registered kind's own storage
            for name, value in kind.storage(t, in_f, out_f, r, like).items():
                if name in self.storage_names:
                    raise ValueError(f"kind {kind.name} adds storage {name!r}, which the layer already holds")
                setattr(self, name, nn.Parameter(value))
                self.storage_names.append(name)

        self.config: Optional[LayerConfig] = None  # fixed config, or None to sample
        self.sampled: Optional[LayerConfig] = None  # config of the latest forward
        self.compacted = False
        self.static = False  # computes the config written in `switch` (see make_static)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in self.storage_names}

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.has_bias}, ranks={list(self.space.ranks)}, config={self.config}"
        )

    # ----------------------------------------------------------------------------- config

    def set_config(self, cfg: Optional[Mapping[str, str]], where: str = "layer") -> None:
        """Fix the layer config (a dict A..E -> choice), or return to random sampling with None."""
        if cfg is not None:
            cfg = self.space.validate(cfg, self.has_bias, where)
        if self.compacted and cfg != self.config:
            raise ValueError(f"{where}: a compacted layer only holds its config {self.config}")
        self.config = cfg
        if self.static and cfg is not None:
            self.switch.copy_(torch.tensor(self.switch_row(cfg)))

    def active_config(self) -> LayerConfig:
        if self.config is not None:
            return self.config
        if not self.training:
            raise RuntimeError(
                "GLoRALinear in eval mode has no fixed config: call set_subnet(model, subnet) "
                "(or layer.set_config) before evaluating; only training samples subnets"
            )
        if self.rng is None:
            raise RuntimeError("GLoRALinear has no sampler: pass rng to inject_glora or call set_sampler")
        return self.space.sample(self.rng, self.has_bias)

    # ----------------------------------------------------------------------------- carving

    def carve(self, tensor: str, choice: str) -> Optional[Tensor]:
        """The support tensor of one choice, in its natural (broadcastable) shape, or None: what the
        choice's kind carves out of the storage (glora/kinds.py)."""
        kind, rank = kinds.parse(choice)
        return kind.carve(self, tensor, rank)

    def merged_bias(self, cfg: LayerConfig) -> Optional[Tensor]:
        """b' = b + b⊙D + E + W·C, with the frozen W (None if the layer has no bias and needs none)."""
        bias = self.bias
        D, E, C = self.carve("D", cfg["D"]), self.carve("E", cfg["E"]), self.carve("C", cfg["C"])
        if D is not None:  # D is "none" whenever the layer has no bias
            bias = bias + bias * D
        if E is not None:
            bias = E.expand(self.out_features) if bias is None else bias + E
        if C is not None:
            wc = (self.weight @ C).squeeze(1)
            bias = wc if bias is None else bias + wc
        return bias

    def merged_weight(self, cfg: LayerConfig) -> Tensor:
        """W' = W + W⊙A + B, materialized (out × in)."""
        weight = self.weight
        A, B = self.carve("A", cfg["A"]), self.carve("B", cfg["B"])
        if A is not None:
            weight = weight + self.weight * A
        if B is not None:
            weight = weight + B
        return weight

    # ----------------------------------------------------------------------------- forward

    def forward(self, x: Tensor) -> Tensor:
        if self.static:
            return self.forward_static(x)
        cfg = self.active_config()
        self.sampled = cfg
        bias = self.merged_bias(cfg)
        (a_kind, _), (b_kind, b_rank) = kinds.parse(cfg["A"]), kinds.parse(cfg["B"])
        a_fast, b_fast = a_kind.fast("A"), b_kind.fast("B")
        if a_fast not in ("none", "scale") or b_fast not in ("none", "shift", "lowrank") or self.weight.requires_grad:
            # A low-rank A is the one term with no cheaper form than the dense out×in matrix (its
            # gradient needs the full weight gradient dyᵀx); once W' is built, B folds into it.
            # So does a kind that declares no structured form (exact for any kind), and an
            # unfrozen W (the fused backward below assumes W is frozen).
            return F.linear(x, self.merged_weight(cfg), bias)
        if a_fast == "none" and b_fast == "none":
            return F.linear(x, self.weight, bias)
        # W⊙A with A per output channel (vector, scalar) scales the output channels; a B constant
        # along the input axis adds sum(x) times its per-output value; a low-rank B is the LoRA path.
        scale = self.carve("A", cfg["A"]) if a_fast == "scale" else None
        shift = self.carve("B", cfg["B"]) if b_fast == "shift" else None
        down, up = b_kind.halves(self, "B", b_rank) if b_fast == "lowrank" else (None, None)
        return structured_linear(x, self.weight, bias, scale, shift, down, up)

    def forward_dense(self, x: Tensor) -> Tensor:
        """The slow reference: materialize W' and b' every call (the authors' release does this)."""
        cfg = self.active_config()
        self.sampled = cfg
        return F.linear(x, self.merged_weight(cfg), self.merged_bias(cfg))

    # ----------------------------------------------------------------------------- static form

    def make_static(self, switch: Tensor) -> None:
        """From now on compute the config written in `switch` (a row of `switch_width` numbers on the
        layer's device, written by `set_config` or glora.inject.write_subnet), whatever the mode."""
        if self.compacted:
            raise RuntimeError("a compacted layer has no static form: it holds one config's storage only")
        self.register_buffer("switch", switch, persistent=False)
        self.static = True
        if self.config is not None:
            self.set_config(self.config)

    def switch_width(self) -> int:
        """Numbers in this layer's switch row: each kind's entries (switch_layout), a flag per storage tensor."""
        return sum(w for _, _, w in switch_layout(self.space)) + len(self.storage_names)

    def switch_row(self, cfg: LayerConfig) -> list[float]:
        """`cfg` as the numbers the static form reads: for each tensor the entries of its chosen kind
        (a rank mask, a selector; the other kinds' entries 0), then a flag per storage tensor that
        carving reads (`used_storage`), in storage order."""
        row = []
        for t, kind, width in switch_layout(self.space):
            chosen, rank = kinds.parse(cfg[t])
            row += chosen.switch_entries(t, rank, self.space.max_rank) if chosen is kind else [0.0] * width
        used = used_storage(cfg)
        return row + [float(n in used) for n in self.storage_names]

    def used_flags(self) -> dict[str, Tensor]:
        """Each storage tensor's flag in `switch` (1: the written config uses it), a 0-d view."""
        start = self.switch_width() - len(self.storage_names)
        return {name: self.switch[start + i] for i, name in enumerate(self.storage_names)}

    def static_tensors(self) -> dict[str, Optional[Tensor]]:
        """A..E as the static form builds them from `switch`: each kind's part summed (None where no
        kind of a tensor has a part), in the order of switch_layout."""
        parts: dict[str, Optional[Tensor]] = dict.fromkeys(TENSORS)
        start = 0
        for t, kind, width in switch_layout(self.space):
            part = kind.static(self, t, self.switch[start:start + width])
            start += width
            if part is not None:
                parts[t] = part if parts[t] is None else parts[t] + part
        return parts

    def forward_static(self, x: Tensor) -> Tensor:
        """y = x W'ᵀ + b' with A..E built from `switch` (the static form of the module docstring): the
        same graph for every config, which equals carving the config that `switch` holds."""
        A, B, C, D, E = self.static_tensors().values()
        weight = self.weight
        if A is not None:
            weight = weight + self.weight * A
        if B is not None:
            weight = weight + B
        if self.bias is None:  # C, D and E are none on a layer without bias
            return F.linear(x, weight)
        bias = self.bias
        if D is not None:
            bias = bias + self.bias * D
        if E is not None:
            bias = bias + E
        if C is not None:
            bias = bias + (self.weight @ C).squeeze(1)
        return F.linear(x, weight, bias)

    # ----------------------------------------------------------------------------- subnet

    @torch.no_grad()
    def compact(self) -> None:
        """Keep only the storage the fixed config uses, so trainable elements == the formula.

        Carving still works on the sliced storage: lora_k keeps k columns/rows, vector one
        column, scalar one element, none nothing.
        """
        if self.config is None:
            raise RuntimeError("compact() needs a fixed config")
        if self.compacted:  # new Parameters would orphan an optimizer that holds the current ones
            return
        if self.static:
            raise RuntimeError("compact() of a static layer: its switch row addresses the full storage")
        kept = {}
        for t in TENSORS:
            kind, rank = kinds.parse(self.config[t])
            kept.update(kind.keep(self, t, rank))
        for name in self.storage_names:  # storage no chosen kind keeps is left empty
            self._replace(name, kept.get(name, getattr(self, name)[:0]))
        self.compacted = True

    def _replace(self, name: str, value: Tensor) -> None:
        old = getattr(self, name)
        # Fresh row-major strides: a (1, 1) slice of (out, R) storage keeps strides (R, 1), which
        # DDP's gradient buckets (laid out row-major) warn about on every step.
        value = value.clone(memory_format=torch.contiguous_format)
        setattr(self, name, nn.Parameter(value, requires_grad=old.requires_grad))

    def adapter_params(self) -> int:
        """Elements of the fixed config (== storage size once compacted)."""
        if self.config is None:
            raise RuntimeError("adapter_params() needs a fixed config")
        return self.space.count(self.config, self.in_features, self.out_features)

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding W', b' of the fixed config (the reparameterization)."""
        if self.config is None:
            raise RuntimeError("merging needs a fixed config: call set_subnet first")
        weight, bias = self.merged_weight(self.config), self.merged_bias(self.config)
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and not torch.isfinite(t).all():
                raise ValueError(f"merged {name} has non-finite values; refusing to merge")
        linear = nn.Linear(self.in_features, self.out_features, bias=bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
        linear.requires_grad_(False)
        return linear


def structured_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], scale: Optional[Tensor],
                      shift: Optional[Tensor], down: Optional[Tensor], up: Optional[Tensor]) -> Tensor:
    """y = (x Wᵀ)·(1 + a) + sum(x)·β + (x Buᵀ) Bdᵀ + b', for a frozen W (see _StructuredLinear).

    `scale` (a) and `shift` (β) are an (out, 1) column or a 0-d scalar, `down`/`up` the (out, r)
    and (r, in) halves of a low-rank B; any of them may be None. Under autocast, x, b' and the
    low-rank B are cast to the autocast dtype as F.linear would cast them, while a and β stay in
    their own dtype: they fold into W before W is cast, and 1 + a is never rounded on its own
    (in bf16, 1 + a == 1 for every |a| below 2⁻⁹, which would drop a small a from the forward).
    """
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        with torch.autocast(kind, enabled=False):
            return _StructuredLinear.apply(cast(x), weight, cast(bias), scale, shift, cast(down), cast(up))
    return _StructuredLinear.apply(x, weight, bias, scale, shift, down, up)


class _StructuredLinear(torch.autograd.Function):
    """The GLoRA terms that need no dense W', as one autograd node with hand-fused BLAS calls.

    Left to autograd, each term costs its own node, an extra pass over the (tokens × out)
    activations and gradients, and skinny matmuls in slow memory layouts. Here, in the forward,
    the per-output scale and shift fold into the (out × in) weight (cheaper than the activations
    whenever tokens > in) and the LoRA path accumulates into the output in place; the backward is

        da = Σₙ dy ⊙ (x Wᵀ)     dβ = dyᵀ sum(x)     dBd = dyᵀ t     dBu = (dy Bd)ᵀ x     db' = Σₙ dy
        dx = dy (W·(1 + a) + β 1ᵀ) + (dy Bd) Bu                                        (t = x Buᵀ)

    NOTE: da needs x Wᵀ on its own; when a trains, that product is kept and scaled instead.
    W, a and β arrive in the parameters' dtype and fold (W·(1 + a) + β 1ᵀ) before the cast to
    the dtype of x; everything else arrives in the dtype of x.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, down, up):
        out_f, in_f = weight.shape
        x2 = x.reshape(-1, in_f)
        need = ctx.needs_input_grad
        xsum = x2.sum(1) if shift is not None else None
        base = None
        if scale is not None and need[3]:
            base = x2 @ weight.to(x2.dtype).t()
            # y = base·(1 + a) + b', computed in a's precision and rounded once into y's dtype.
            gain, y = 1 + scale.reshape(-1), torch.empty_like(base)
            torch.mul(base, gain, out=y) if bias is None else torch.addcmul(bias, base, gain, out=y)
            if shift is not None:
                y.addr_(xsum, shift.reshape(-1).to(y.dtype).expand(out_f))
        else:
            w = _scaled_shifted(weight, scale, shift).to(x2.dtype)
            y = x2 @ w.t() if bias is None else torch.addmm(bias, x2, w.t())
        t = None
        if down is not None:
            t = x2 @ up.t()
            y.addmm_(t, down.t())
        ctx.save_for_backward(
            x2 if down is not None and need[6] else None, weight, scale, shift, down, up, base, t,
            xsum if shift is not None and need[4] else None,
        )
        ctx.has_bias, ctx.x_shape = bias is not None, x.shape
        return y.view(*x.shape[:-1], out_f)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, scale, shift, down, up, base, t, xsum = ctx.saved_tensors
        need = ctx.needs_input_grad
        dy = dy.reshape(-1, weight.shape[0])
        dx = dbias = dscale = dshift = ddown = dup = None
        if ctx.has_bias and need[2]:
            dbias = dy.sum(0)
        if need[3]:
            dscale = _per_output((dy * base).sum(0), scale)
        if need[4]:
            dshift = _per_output(xsum @ dy, shift)
        dt = None
        if down is not None and (need[0] or need[6]):
            dt = dy @ down.t().contiguous().t()  # column-major Bd: the fast layout for this skinny matmul
        if down is not None and need[5]:
            ddown = (t.t() @ dy).t()  # = dyᵀ t, computed as tᵀ dy: the fast layout
        if need[6]:
            dup = dt.t() @ x2
        if need[0]:
            dx = dy @ _scaled_shifted(weight, scale, shift).to(dy.dtype)
            if dt is not None:
                dx.addmm_(dt, up)
            dx = dx.view(ctx.x_shape)
        return dx, None, dbias, dscale, dshift, ddown, dup


def _scaled_shifted(weight: Tensor, scale: Optional[Tensor], shift: Optional[Tensor]) -> Tensor:
    """W·(1 + a) + β 1ᵀ, with a and β each an (out, 1) column, a 0-d scalar or None."""
    if scale is None:
        return weight if shift is None else weight + shift
    return weight * (1 + scale) if shift is None else torch.addcmul(shift, weight, 1 + scale)


def _per_output(grad: Tensor, like: Tensor) -> Tensor:
    """A per-output-channel gradient (out,) in the shape and dtype of its (out, 1) or 0-d parameter."""
    return (grad.sum() if like.dim() == 0 else grad.view_as(like)).to(like.dtype)
