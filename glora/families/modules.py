"""The modules the families put into a timm ViT: prompt tokens, bottleneck adapters, and low-rank or
linear adapters around a frozen linear layer; and how a family finds the ViT's blocks.

A module's size (prompt tokens, rank, bottleneck width) is one of its `choices`: fixed, or, in a
supernet, drawn at every training forward from the run's generator, as GLoRA's layers draw theirs.
Storage is allocated for the largest choice; a size k uses the first k tokens, rows or columns,
and `compact()` keeps only those. The frozen weights of a wrapped linear layer keep their names
(`weight`, `bias`), so backbone state-dict keys never change.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLOCK_PARTS = ("norm1", "attn.qkv", "norm2", "mlp.fc1", "mlp.fc2", "drop_path2")


def vit_blocks(model: nn.Module, family: str) -> dict[str, nn.Module]:
    """The transformer blocks of a timm ViT (or DeiT) by qualified name, in order."""
    blocks = getattr(model, "blocks", None)
    found = isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0
    if not found or not all(_has(b, part) for b in blocks for part in BLOCK_PARTS):
        raise ValueError(f"family {family} adapts the blocks of a ViT (model.blocks[i] with {', '.join(BLOCK_PARTS)}); "
                         f"{type(model).__name__} has none: use a timm ViT or DeiT (or family glora)")
    return {f"blocks.{i}": b for i, b in enumerate(blocks)}


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def token_count(model: nn.Module, family: str) -> int:
    """Tokens entering the first block (patches and class/register tokens): what prompts come on top of."""
    patch_embed = model.patch_embed
    patch_drop = getattr(model, "patch_drop", nn.Identity())
    if getattr(model, "dynamic_img_size", False) or not isinstance(patch_drop, nn.Identity):
        raise ValueError(f"family {family} inserts prompt tokens, which needs a fixed token count: "
                         "build the model without dynamic_img_size and patch_drop_rate")
    return patch_embed.num_patches + model.num_prefix_tokens


class Sized(nn.Module):
    """An adapter module whose size is one of `choices`: fixed (`size`), or drawn per training forward."""

    def __init__(self, choices: Sequence[int], rng: Optional[random.Random] = None):
        super().__init__()
        self.choices = tuple(sorted({int(c) for c in choices}))
        self.size: Optional[int] = self.choices[0] if len(self.choices) == 1 else None
        self.rng = rng
        self.compacted = False

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The trainable tensors (a wrapped linear layer's frozen `weight` and `bias` are not)."""
        return {n: p for n, p in self.named_parameters(recurse=False) if n not in ("weight", "bias")}

    def set_size(self, size: Optional[int], where: str = "module") -> None:
        if size is not None and size not in self.choices:
            raise ValueError(f"{where}: size {size} is not one of {list(self.choices)}")
        if self.compacted and size != self.size:
            raise ValueError(f"{where}: a compacted module only holds its size {self.size}")
        self.size = size

    def active(self) -> int:
        """The size of this forward: the fixed one, or (training) a uniform draw from the choices."""
        if self.size is not None:
            return self.size
        if not self.training:
            raise RuntimeError(f"{type(self).__name__} in eval mode has no fixed size: set a subnet before evaluating")
        if self.rng is None:
            raise RuntimeError(f"{type(self).__name__} has no sampler: pass rng to the family's inject")
        return self.rng.choice(self.choices)

    @torch.no_grad()
    def _keep(self, name: str, value: Tensor) -> None:
        """Replace a parameter by `value` (a slice of it), as a fresh contiguous parameter."""
        setattr(self, name, nn.Parameter(value.clone(memory_format=torch.contiguous_format),
                                         requires_grad=getattr(self, name).requires_grad))

    def compact(self) -> None:
        """Keep only the storage of the fixed size (its parameter count is then the closed form)."""
        if self.size is None:
            raise RuntimeError("compact() needs a fixed size")
        if not self.compacted:
            self._slice(self.size)
            self.compacted = True

    def _slice(self, k: int) -> None:
        raise NotImplementedError


class PromptTokens(Sized):
    """Prompt tokens that enter one ViT block (VPT-deep, NOAH's visual prompts).

    Before the block, the prompts in the sequence (an earlier block's) are replaced by this block's
    `size` tokens, right after the class (prefix) tokens, as VPT places them; a size of 0 leaves the
    sequence as it is. After the last block (`last`) the prompts leave, so that the final norm,
    the pooling and the head see the model's own tokens only. `base`: the tokens without prompts.
    """

    def __init__(self, block: nn.Module, choices: Sequence[int], dim: int, *, prefix: int, base: int, bound: float,
                 dropout: float = 0.0, last: bool = False, rng: Optional[random.Random] = None):
        super().__init__(choices, rng)
        like = dict(device=block.norm1.weight.device, dtype=block.norm1.weight.dtype)
        self.tokens = nn.Parameter(torch.empty(max(self.choices), dim, **like).uniform_(-bound, bound))
        self.prefix, self.base = prefix, base
        self.drop = nn.Dropout(dropout)
        block.register_forward_pre_hook(self.enter)
        if last:
            block.register_forward_hook(self.leave)

    def enter(self, block: nn.Module, args: tuple) -> Optional[tuple]:
        x, *rest = args
        n = self.active()
        if n == 0:
            return None
        p, present = self.prefix, x.shape[1] - self.base
        prompts = self.drop(self.tokens[:n].to(x.dtype).expand(x.shape[0], -1, -1))
        return (torch.cat([x[:, :p], prompts, x[:, p + present:]], dim=1), *rest)

    def leave(self, block: nn.Module, args: tuple, y: Tensor) -> Tensor:
        present = y.shape[1] - self.base
        return y if present == 0 else torch.cat([y[:, :self.prefix], y[:, self.prefix + present:]], dim=1)

    def _slice(self, k: int) -> None:
        self._keep("tokens", self.tokens[:k])


class Bottleneck(Sized):
    """up(dropout(act(down(x)))): the adapter MLP of AdaptFormer and NOAH, of width `size` (0: off).

    `init`: "lora" (AdaptFormer: down Kaiming-uniform, up and both biases zero, so an untrained
    adapter adds nothing) or "xavier" (NOAH: both weights Xavier-uniform, biases N(0, 1e-6)).
    """

    def __init__(self, choices: Sequence[int], dim: int, *, act: nn.Module, dropout: float, init: str,
                 like: dict, rng: Optional[random.Random] = None):
        super().__init__(choices, rng)
        k = max(self.choices)
        self.down = nn.Parameter(torch.empty(k, dim, **like))
        self.down_bias = nn.Parameter(torch.zeros(k, **like))
        self.up = nn.Parameter(torch.empty(dim, k, **like))
        self.up_bias = nn.Parameter(torch.zeros(dim, **like))
        if init == "lora":
            nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
            nn.init.zeros_(self.up)
        else:
            nn.init.xavier_uniform_(self.down)
            nn.init.xavier_uniform_(self.up)
            nn.init.normal_(self.down_bias, std=1e-6)
            nn.init.normal_(self.up_bias, std=1e-6)
        self.act, self.drop = act, nn.Dropout(dropout)

    def branch(self, x: Tensor, k: int) -> Tensor:
        h = self.drop(self.act(F.linear(x, self.down[:k], self.down_bias[:k])))
        return F.linear(h, self.up[:, :k], self.up_bias)

    def _slice(self, k: int) -> None:
        self._keep("down", self.down[:k])
        self._keep("down_bias", self.down_bias[:k])
        self._keep("up", self.up[:, :k])
        self._keep("up_bias", self.up_bias[:self.up_bias.shape[0] if k else 0])


class QuickGELU(nn.Module):
    """x·σ(1.702x), the activation of NOAH's adapters."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ParallelAdapter(Bottleneck):
    """AdaptFormer's AdaptMLP: beside a block's MLP, reading the MLP branch's input x (before norm2),
    its output scaled by `scale` and added after the branch's drop-path:
    x + drop_path(mlp(norm2(x))) + scale · up(dropout(relu(down(x))))."""

    def __init__(self, block: nn.Module, dim: int, width: int, *, scale: float, dropout: float):
        like = dict(device=block.norm2.weight.device, dtype=block.norm2.weight.dtype)
        super().__init__((width,), dim, act=nn.ReLU(), dropout=dropout, init="lora", like=like)
        self.scale = scale
        self._x: Optional[Tensor] = None
        block.norm2.register_forward_hook(self.read)  # norm2 is applied to the MLP branch's input
        block.drop_path2.register_forward_hook(self.add)

    def read(self, norm: nn.Module, args: tuple, y: Tensor) -> None:
        self._x = args[0]

    def add(self, drop_path: nn.Module, args: tuple, y: Tensor) -> Tensor:
        x, self._x = self._x, None
        return y + self.scale * self.branch(x, self.active())


class SequentialAdapter(Bottleneck):
    """NOAH's adapter: after a block's MLP branch (after its drop-path), m + up(dropout(act(down(m))))."""

    def __init__(self, block: nn.Module, choices: Sequence[int], dim: int, *, dropout: float,
                 rng: Optional[random.Random] = None):
        like = dict(device=block.norm2.weight.device, dtype=block.norm2.weight.dtype)
        super().__init__(choices, dim, act=QuickGELU(), dropout=dropout, init="xavier", like=like, rng=rng)
        block.drop_path2.register_forward_hook(self.add)

    def add(self, drop_path: nn.Module, args: tuple, y: Tensor) -> Tensor:
        k = self.active()
        return y if k == 0 else y + self.branch(y, k)


class WrappedLinear(Sized):
    """A frozen nn.Linear taken over with its `weight` and `bias` under the same names."""

    def __init__(self, linear: nn.Linear, choices: Sequence[int], rng: Optional[random.Random] = None):
        super().__init__(choices, rng)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @property
    def like(self) -> dict:
        return dict(device=self.weight.device, dtype=self.weight.dtype)


class LoRALinear(WrappedLinear):
    """NOAH's LoRA on a frozen linear layer: y = x Wᵀ + b + (dropout(x) A[:r]ᵀ) B[:, :r]ᵀ, rank r = `size`
    (0: off); A Kaiming-uniform and B zero, so an untrained LoRA adds nothing."""

    def __init__(self, linear: nn.Linear, choices: Sequence[int], *, dropout: float,
                 rng: Optional[random.Random] = None):
        super().__init__(linear, choices, rng)
        r = max(self.choices)
        self.lora_a = nn.Parameter(torch.empty(r, self.in_features, **self.like))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, r, **self.like))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        r = self.active()
        return y if r == 0 else y + F.linear(F.linear(self.drop(x), self.lora_a[:r]), self.lora_b[:, :r])

    def _slice(self, k: int) -> None:
        self._keep("lora_a", self.lora_a[:k])
        self._keep("lora_b", self.lora_b[:, :k])


class RepAdapterLinear(WrappedLinear):
    """RepAdapter before a frozen linear layer: y = W·a(x) + b with the linear adapter
    a(x) = x + scale·(B (dropout(A x + a₀)) + b₀), A (h × in), B grouped (in × h/groups: output
    group j reads hidden group j) — linear in x, so it merges into W and b (`merged`).
    A is Xavier-uniform, B and the biases zero: an untrained adapter is the identity."""

    def __init__(self, linear: nn.Linear, *, width: int, groups: int, scale: float, dropout: float):
        super().__init__(linear, (width,))
        d, h = self.in_features, width
        if h % groups or d % groups:
            raise ValueError(f"repadapter: width {h} and the layer's {d} inputs must both divide into {groups} groups")
        self.groups, self.scale = groups, scale
        self.down = nn.Parameter(nn.init.xavier_uniform_(torch.empty(h, d, **self.like)))
        self.down_bias = nn.Parameter(torch.zeros(h, **self.like))
        self.up = nn.Parameter(torch.zeros(d, h // groups, **self.like))
        self.up_bias = nn.Parameter(torch.zeros(d, **self.like))
        self.drop = nn.Dropout(dropout)

    def dense_up(self) -> Tensor:
        """B as the (in × h) block-diagonal matrix its groups make."""
        g = self.groups
        return torch.block_diag(*self.up.view(g, self.in_features // g, -1))

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.drop(F.linear(x, self.down, self.down_bias))
        return F.linear(x + self.scale * F.linear(hidden, self.dense_up(), self.up_bias), self.weight, self.bias)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The plain layer computing the same (dropout off): W' = W + s·W B A, b' = b + s·W (B a₀ + b₀)."""
        up = self.dense_up()
        weight = self.weight + self.scale * (self.weight @ up) @ self.down
        shift = self.scale * self.weight @ (up @ self.down_bias + self.up_bias)
        bias = shift if self.bias is None else self.bias + shift
        for name, t in (("weight", weight), ("bias", bias)):
            if not torch.isfinite(t).all():
                raise ValueError(f"merged {name} has non-finite values; refusing to merge")
        linear = nn.Linear(self.in_features, self.out_features, bias=True, **self.like)
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
        return linear.requires_grad_(False)

    def _slice(self, k: int) -> None:  # one fixed width: nothing to drop
        pass
