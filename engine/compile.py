"""train.compile: the training step and the evaluation forward under torch.compile, where that pays.

`auto` compiles where the bench measured that it pays (PAYS). On CUDA in one process the graphs are
captured as CUDA graphs (mode reduce-overhead: the batch is copied into static input buffers, the
parameters, the optimizer's state and the static supernet's switch table keep their addresses and
are updated in place). Shapes are static: the last, smaller batch of an epoch and evaluation have
graphs of their own, compiled once (warm-up); a new subnet never compiles anything, because the
supernet takes its static form (glora/layer.py) and MaskedAdamW reads its flags from the same table.

On the CPU random ops fall back to torch's own, so a compiled step draws the drop-path masks that
an eager one draws; on CUDA inductor draws them from its own generator, seeded from torch's (runs
stay reproducible and resume exactly, but the masks are not eager's). GLORA_COMPILE_BACKEND
(tests: aot_eager) traces without generating code, to count graphs cheaply.
"""
from __future__ import annotations

import contextlib
import os
import time
import torch
from torch import Tensor, nn

from glora.optim import MaskedAdamW

# What `auto` means on each device, from `python -m bench` (README, "Compiled training step"): on the
# CPU the structured eager step costs less than the compiled static one, which computes every
# layer densely; on a GPU the step is bound by kernel launches, which one captured graph removes.
PAYS = {"cuda": True, "cpu": False}
SETTINGS = (False, True, "auto")


def wanted(setting, device: torch.device) -> bool:
    """Whether train.compile (false, true or auto) compiles on `device`."""
    return PAYS.get(device.type, False) if setting == "auto" else bool(setting)


def dynamo_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, from torch's dynamo counters."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


class Compiler:
    """What train.compile makes of a stage's step, and what compiling cost (`report`).

    `module(model)` is the model compiled (forward and backward; under torchrun DDP wraps it, as
    dynamo cannot trace DDP's own forward), trained and evaluated alike; `optimizer(opt)` compiles a
    MaskedAdamW's update (on CUDA, where its hundreds of small updates would otherwise be as many
    launches); `tracking(kind, x)` wraps every call, counting the graphs each compiles: a compile for
    an input signature (kind, shape) already compiled is a recompilation, which a new subnet must
    never cause.
    """

    def __init__(self, setting, device: torch.device, processes: int = 1):
        self.setting, self.device, self.enabled = setting, device, wanted(setting, device)
        self.graphs_captured = device.type == "cuda" and processes == 1
        backend = os.environ.get("GLORA_COMPILE_BACKEND", "inductor")
        self.options = dict(dynamic=False, backend=backend,
                            mode="reduce-overhead" if self.graphs_captured and backend == "inductor" else None)
        if self.enabled:
            torch.compiler.reset()  # a stage compiles afresh, also after another stage in this process
        if self.enabled and device.type == "cpu":
            from torch._inductor import config as inductor

            inductor.fallback_random = True  # the drop-path masks of eager (module docstring)
        self.parts: list[str] = []
        self.seconds = 0.0
        self.graphs = 0
        self.recompilations = 0
        self._signatures: set = set()
        self._breaks = dynamo_counts()[1]

    def module(self, model: nn.Module) -> nn.Module:
        """`model` compiled (its training forward and backward, and its evaluation forward)."""
        if not self.enabled:
            return model
        self.parts.append("training step (forward and backward)")
        return torch.compile(model, **self.options)

    def optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """A MaskedAdamW's update compiled, on CUDA (see `prepare` for CUDA graphs); other optimizers,
        and the CPU, where compiling hundreds of small updates costs more than it saves, step eagerly."""
        if self.enabled and isinstance(optimizer, MaskedAdamW) and self.device.type == "cuda":
            optimizer.update = torch.compile(optimizer.update, **self.options)
            self.parts.append("optimizer step (MaskedAdamW)")
        return optimizer

    def prepare(self, optimizer: torch.optim.Optimizer) -> None:
        """Before the first step (after a resume has loaded the state): with CUDA graphs, a compiled
        MaskedAdamW's state exists in full and keeps its address, marked static as torch's own
        compiled optimizers mark theirs (else every replay would copy it in, and the update that
        writes it could not be captured)."""
        if not (self.graphs_captured and "optimizer step (MaskedAdamW)" in self.parts):
            return
        mark = getattr(torch._dynamo, "mark_static_address", None)
        for p in (p for group in optimizer.param_groups for p in group["params"]):
            for t in optimizer.init_state(p).values():
                if mark is not None:
                    mark(t)

    def evaluation(self, compiled: nn.Module) -> nn.Module:
        """The evaluation forward of a `module(model)`, its calls counted as kind "eval"."""
        if not self.enabled:
            return compiled
        self.parts.append("evaluation forward")
        return _Tracked(compiled, self)

    @contextlib.contextmanager
    def tracking(self, kind: str, x: Tensor):
        """Count the graphs compiled inside (and the seconds of the calls that compiled)."""
        if not self.enabled:
            yield
            return
        if self.graphs_captured:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        signature = (kind, tuple(x.shape), x.dtype)
        before, start = dynamo_counts()[0], time.perf_counter()
        yield
        new = dynamo_counts()[0] - before
        if new:
            self.graphs += new
            self.seconds += time.perf_counter() - start
            self.recompilations += signature in self._signatures
        self._signatures.add(signature)

    def report(self) -> dict:
        """For the log and summary.json: what was compiled, compile seconds, graphs, recompilations."""
        return {"setting": self.setting, "device": self.device.type, "compiled": self.enabled,
                "parts": list(self.parts), "backend": self.options["backend"] if self.enabled else None,
                "cuda_graphs": self.enabled and self.options["mode"] == "reduce-overhead",
                "compile_seconds": round(self.seconds, 2), "graphs": self.graphs,
                "recompilations": self.recompilations, "graph_breaks": dynamo_counts()[1] - self._breaks}

    def plan(self) -> str:
        """What the stage compiles, for the log as it begins."""
        if not self.enabled:
            why = f" (auto compiles where it pays: {', '.join(d for d, y in PAYS.items() if y)})" \
                if self.setting == "auto" else ""
            return f"train.compile={self.setting}: eager on {self.device.type}{why}"
        return (f"train.compile={self.setting}: compiling the {', '.join(self.parts)} on {self.device.type}"
                f"{' with CUDA graphs' if self.report()['cuda_graphs'] else ''}")

    def describe(self) -> str:
        """What compiling cost, for the log as the stage ends."""
        if not self.enabled:
            return self.plan()
        r = self.report()
        return (f"train.compile={self.setting}: compiled {', '.join(r['parts'])} on {self.device.type}"
                f"{' with CUDA graphs' if r['cuda_graphs'] else ''}: {r['compile_seconds']:.1f} s compiling, "
                f"{r['graphs']} graphs, {r['recompilations']} recompilations, {r['graph_breaks']} graph breaks")


class _Tracked(nn.Module):
    """A compiled model whose calls are counted by its Compiler (kind "eval")."""

    def __init__(self, compiled: nn.Module, compiler: Compiler):
        super().__init__()
        self.compiled, self.compiler = compiled, compiler

    def forward(self, x: Tensor) -> Tensor:
        with self.compiler.tracking("eval", x):
            return self.compiled(x)

