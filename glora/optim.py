"""MaskedAdamW: AdamW for the static supernet step, which leaves the storage a subnet does not use untouched."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import Tensor


def adamw_step(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: Tensor, lr: Tensor, beta1: float, beta2: float,
               eps: float, weight_decay: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step of torch.optim.AdamW's arithmetic, out of place: the new (parameter, first and second
    moments, step count). Bias corrections in float64, as torch takes them from Python floats."""
    step = step + 1
    p = p * (1 - lr * weight_decay)
    m = m.lerp(g, 1 - beta1)
    v = v * beta2 + g * g * (1 - beta2)
    t = step.to(torch.float64)
    denom = v.sqrt() / (1 - beta2 ** t).sqrt() + eps
    return p - lr / (1 - beta1 ** t) * (m / denom), m, v, step


def masked_adamw_(groups: list[tuple]) -> None:
    """AdamW in place over `groups` of (params, grads, exp_avgs, exp_avg_sqs, steps, flags, lr, beta1,
    beta2, eps, weight_decay): where a parameter's flag is 0 its values, moments and step count stay
    as they are; a flag of None always steps."""
    for params, grads, exp_avgs, exp_avg_sqs, steps, flags, lr, beta1, beta2, eps, weight_decay in groups:
        for p, g, m, v, step, flag in zip(params, grads, exp_avgs, exp_avg_sqs, steps, flags):
            new = adamw_step(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay)
            for old, value in zip((p, m, v, step), new):
                old.copy_(value if flag is None else torch.where(flag > 0, value, old))


class MaskedAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW, except that a parameter whose flag is 0 in a step is left untouched by it: no
    decay, no moment update, its step count unchanged.

    That is what AdamW does to a parameter without gradient, which is how a carved supernet step
    leaves the storage its subnet does not read (e.g. Au under A = vector). In the static form every
    storage tensor gets a gradient (zero where unused), so `flags` (parameter -> 0-d tensor, e.g.
    glora.inject.used_flags) say which ones the subnet written for this step uses; a parameter
    without a flag (the head) always steps. A tensor the subnet uses in part (Ad under lora_2 of
    rank 4) steps whole, zero-gradient columns included, as it does under carving.

    Flags, step counts and learning rates are tensors, so `update` (masked_adamw_) can be replaced
    by its torch.compile'd form once and serves every subnet and every learning rate. The state and
    state_dict are torch.optim.AdamW's (step, exp_avg, exp_avg_sq per parameter): either optimizer
    resumes from the other's checkpoint.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, flags: Optional[Mapping[Tensor, Tensor]] = None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.flags = dict(flags or {})
        self.update: Callable[[list[tuple]], None] = masked_adamw_
        self._lrs: list[Tensor] = []  # each group's lr as a tensor, refreshed when the float changes
        self._lr_floats: list[Optional[float]] = []

    def init_state(self, p: Tensor) -> dict:
        """The state of `p`, created as torch's AdamW starts it (on p's device, the step count too)."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _lr(self, i: int) -> Tensor:
        group = self.param_groups[i]
        if len(self._lrs) <= i:
            device = group["params"][0].device if group["params"] else None
            self._lrs.append(torch.zeros((), dtype=torch.float64, device=device))
            self._lr_floats.append(None)
        if self._lr_floats[i] != group["lr"]:  # a scheduler sets the float; the update reads the tensor
            self._lrs[i].fill_(group["lr"])
            self._lr_floats[i] = group["lr"]
        return self._lrs[i]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = []
        for i, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            states = [self.init_state(p) for p in params]
            beta1, beta2 = group["betas"]
            groups.append((params, [p.grad for p in params], [s["exp_avg"] for s in states],
                           [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                           [self.flags.get(p) for p in params], self._lr(i), beta1, beta2, group["eps"],
                           group["weight_decay"]))
        self.update(groups)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for p, state in self.state.items():  # torch's AdamW keeps the step count on the CPU
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
        self._lr_floats = [None] * len(self._lr_floats)
