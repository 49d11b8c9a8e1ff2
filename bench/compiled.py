"""Kernels per training step, eager and compiled (train.compile), for every method; where steps are
timed (a GPU; the CPU without --quick), their time and peak memory too.

What a GPU pays for a small step is launches, so kernels per step are counted on any machine:
- eager: the aten operators a step dispatches that compute (the lowest in the profiler's operator
  tree, views and allocations left out); each launches at least one kernel on a GPU;
- compiled: the kernels inductor generated for the step's graphs (each runs once a call), plus the
  aten operators still dispatched (the matmuls and attention inductor calls out to, the loss, and
  what runs outside the graphs: an eager optimizer, gradient accumulation).
On the CPU the counts are of the forward and backward (the optimizer apart, see kernel_count), from
a ViT of the benchmarked model's depth at a tiny width (the kernels do not depend on the width):
eager at the full depth; compiled at depths 1 and 2, extrapolated linearly to the full depth (each
block compiles to the same kernels). Besides kernels, `launches` counts what the CPU would launch
with the graphs captured as CUDA graphs. On CUDA the counts are the benchmarked model's own, of the
whole step: the kernels the GPU ran and the launches the CPU made.

Each method is measured alone, eager and compiled side by side: compiling resets torch.compile's
caches, so that no method inherits another's graphs.
"""
from __future__ import annotations

import dataclasses
import functools
import random
import time
from typing import Callable, Optional

import timm
import torch

from engine.compile import Compiler
from engine.loops import train_step
from engine.trainer import adamw
from glora.inject import glora_layers, make_static, sample_subnet, used_flags, write_subnet

from . import variants as V
from .report import FASTER, Target, at_most, row, skipped
from .settings import Settings
from .timing import interleaved, median, peak_bytes

METHODS = ("supernet", "full fine-tuning", "retrain", "LoRA", "bias-only")  # in the order they are timed
SHORT = dict(zip(("supernet", "full", "retrain", "lora", "bias"), METHODS))  # --methods on the command line
TIMED_ON_CPU = ("supernet", "retrain", "full fine-tuning")  # what train.compile=auto decides on
COUNT_KWARGS = dict(img_size=32, patch_size=8, embed_dim=64, num_heads=1)  # heads of width 64, as ViT-S/B
# Operators that launch no kernel: allocations, and those that only read or reshape metadata.
NO_KERNEL = {"empty", "empty_like", "empty_strided", "resize_", "lift_fresh", "resolve_conj", "resolve_neg", "set_",
             "_unsafe_view"}
GRAPH_CALLS = ("CompiledFunction", "CompiledFunctionBackward")  # the profiler's names of a graph's call
THIRD = Target("ratio <= 0.333 (>= 3x faster)", lambda r: r <= 1 / 3)


@dataclasses.dataclass
class Step:
    """One method's training step, eager or compiled: `run()` takes a step (a supernet draws its subnet)."""
    run: Callable[[], object]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    compiler: Optional[Compiler] = None
    note: str = ""
    generated: int = 0  # kernels inductor generated for its graphs (see warm)


def lora_subnet(s: Settings, model) -> dict:
    """Our LoRA baseline (configs/methods/lora.yaml): B = lora_r in every layer, nothing else."""
    r = max(s.ranks)
    return {n: {"A": "none", "B": f"lora_{r}", "C": "none", "D": "none", "E": "none"} for n in glora_layers(model)}


def build(s: Settings, method: str, compiled: bool) -> Step:
    """The method's model and optimizer as the stages train them, eager or under train.compile=true
    (which resets torch.compile's caches: build a method's compiled step after its eager one)."""
    variant = {"supernet": lambda: V.supernet(s), "retrain": lambda: V.fixed(s),
               "LoRA": lambda: V.fixed(s, lambda m: lora_subnet(s, m), label="B = lora on every layer:"),
               "bias-only": lambda: V.bias_only(s), "full fine-tuning": lambda: V.full(s)}[method]()
    x = torch.randn(s.batch_size, 3, s.img_size, s.img_size, device=s.device)
    y = torch.randint(0, s.num_classes, (s.batch_size,), device=s.device)
    model, optimizer = variant.model, variant.optimizer
    d = s.defaults["train"]
    if not compiled:
        return Step(lambda: train_step(model, x, y, optimizer, s.device, s.amp), model, optimizer, note=variant.note)
    compiler = Compiler(True, s.device)
    draw: Callable[[], object] = lambda: None  # noqa: E731
    if method == "supernet":  # the static form: the subnet is written into tensors before each step
        make_static(model)
        optimizer = adamw(model, d["lr"], d["weight_decay"], s.device, used_flags(model))
        rng = random.Random(s.seed)
        draw = lambda: write_subnet(model, sample_subnet(model, rng))  # noqa: E731
    optimizer = compiler.optimizer(optimizer)
    compiler.prepare(optimizer)
    net = compiler.module(model)

    def run():
        draw()
        with compiler.tracking("train", x):
            return train_step(net, x, y, optimizer, s.device, s.amp)

    return Step(run, model, optimizer, compiler, variant.note)


def kernel_count(step: Step, device: torch.device, calls: int = 1) -> dict:
    """What one call of `step.run` dispatches (the mean of `calls`).

    On the CPU, of the forward and backward (the optimizer apart: on a GPU AdamW is fused, a few
    launches whatever the number of tensors, and MaskedAdamW is one more compiled graph): `kernels`,
    the aten operators that compute plus the kernels inductor generated for the graphs; `launches`,
    what the CPU would launch were the graphs captured as CUDA graphs (one per graph call, plus the
    operators dispatched outside them). On CUDA, of the whole step: the kernels the GPU ran, and the
    launches (kernels, graphs, copies) the CPU made."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            step.run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.events()
    if device.type == "cuda":
        kernels = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in events)
        launches = sum(e.name.startswith("cu") and "Launch" in e.name or e.name.startswith("cudaMemcpy") for e in events)
        return {"kernels": kernels / calls, "launches": launches / calls}
    model = [e for e in events if not any(a.startswith("Optimizer.step#") for a in _ancestors(e))]
    ops = [e for e in model if _computes(e)]
    # A compiled graph's call (forward or backward; any backend: inductor runs a CompiledFxGraph in it).
    in_graphs = sum(any(a in GRAPH_CALLS for a in _ancestors(e)) for e in ops)
    graph_calls = sum(e.name in GRAPH_CALLS for e in model)
    return {"aten_ops": len(ops) / calls, "generated": step.generated,
            "kernels": len(ops) / calls + step.generated, "launches": (graph_calls + len(ops) - in_graphs) / calls}


def _ancestors(event) -> list[str]:
    names = []
    while event.cpu_parent is not None:
        event = event.cpu_parent
        names.append(event.name)
    return names


def _computes(event) -> bool:
    """An aten operator that launches work itself: neither view nor allocation, and no operator it
    calls computes (aten::mm counts, not its resolve_conj; aten::relu_ does not, its clamp_min_ does)."""
    return (event.name.startswith("aten::") and _launches(event.name[6:])
            and not any(_computes_below(c) for c in event.cpu_children))


def _computes_below(event) -> bool:
    return _computes(event) or any(_computes_below(c) for c in event.cpu_children)


@functools.lru_cache(maxsize=None)
def _launches(name: str) -> bool:
    if name in NO_KERNEL:
        return False
    try:
        packet = getattr(torch.ops.aten, name)
    except AttributeError:
        return True
    return not any(getattr(packet, o).is_view for o in packet.overloads())


def warm(step: Step) -> None:
    """Compile (CUDA graphs record on a later call), counting the kernels inductor generates."""
    from torch._inductor import metrics

    before = metrics.generated_kernel_count
    for _ in range(3 if step.compiler is not None else 1):
        step.run()
    step.generated = metrics.generated_kernel_count - before


def count_method(s: Settings, method: str, compiled: bool) -> dict:
    step = build(s, method, compiled)
    warm(step)
    return kernel_count(step, s.device, 4 if method == "supernet" and not compiled else 1)


def cpu_counts(s: Settings, methods) -> tuple[dict, dict, str]:
    """Eager and compiled kernel counts per step on the CPU, from tiny-width ViTs (module docstring)."""
    with torch.device("meta"):
        depth = len(timm.create_model(s.model, **s.model_kwargs).blocks)

    def tiny(d):
        return dataclasses.replace(s, kwargs={**s.kwargs, **COUNT_KWARGS, "depth": d}, img_size=32, batch_size=2)

    eager = {m: count_method(tiny(depth), m, False) for m in methods}
    compiled = {}
    for m in methods:
        one, two = count_method(tiny(1), m, True), count_method(tiny(2), m, True)
        compiled[m] = {k: one[k] + (depth - 1) * (two[k] - one[k]) for k in one}
    return eager, compiled, (f"eager: a {depth}-block ViT of width 64; compiled: 1- and 2-block ViTs of width 64, "
                             f"extrapolated to {depth} blocks")


def bench_compiled(s: Settings, methods=METHODS, timed: Optional[tuple] = None,
                   deadline: Optional[float] = None) -> list[dict]:
    """Kernels per step of every method, eager and compiled; the `timed` methods' time and peak memory
    (default: every method on CUDA, none on the CPU with --quick, else TIMED_ON_CPU), until
    `deadline` (time.monotonic()); on CUDA the counts come from the timed steps themselves."""
    cuda = s.device.type == "cuda"
    if timed is None:
        timed = METHODS if cuda else () if s.quick else TIMED_ON_CPU
    timed = [m for m in methods if m in timed]
    rows, counts = time_methods(s, timed, deadline, count=cuda)
    if not cuda:
        eager, compiled, how = cpu_counts(s, methods)
        counts = {m: (eager[m], compiled[m]) for m in methods}
    else:
        how = f"{s.model}, batch {s.batch_size}: CUDA kernels the profiler saw run"
    count_rows = []
    for figure in ("kernels", "launches"):
        count_rows += [row(f"{figure} per step", f"{m} step, compiled", c[figure], f"{m} step, eager", e[figure],
                           FASTER, unit=f"{figure}/step", counts_compiled=c, counts_eager=e, note=how)
                       for m, (e, c) in counts.items()]
        if "supernet" in counts and "bias-only" in counts:
            count_rows.append(row(f"{figure} per step", "supernet step, compiled", counts["supernet"][1][figure],
                                  "bias-only step, eager", counts["bias-only"][0][figure], unit=f"{figure}/step"))
    return count_rows + rows


def time_methods(s: Settings, methods, deadline: Optional[float], count: bool = False) -> tuple[list[dict], dict]:
    """Each method's eager and compiled step, interleaved: time and peak memory (and kernel counts
    with `count`); then the ratios the compiled step is held to."""
    rows, secs, mem, counts = [], {}, {}, {}
    for m in methods:
        if deadline is not None and time.monotonic() > deadline:
            rows.append(skipped("compiled step", f"{m} step, compiled", f"{m} step, eager", "out of time"))
            continue
        eager = build(s, m, False)
        warm(eager)
        compiled = build(s, m, True)
        start = time.perf_counter()
        warm(compiled)
        warm_s = time.perf_counter() - start
        if count:
            counts[m] = (kernel_count(eager, s.device, 4 if m == "supernet" else 1), kernel_count(compiled, s.device))
        times = interleaved({"eager": eager.run, "compiled": compiled.run}, s.reps, s.warmup, s.device)
        for kind, step in (("eager", eager), ("compiled", compiled)):
            secs[m, kind] = median(times[kind])
            step.model.zero_grad(set_to_none=True)
            mem[m, kind] = peak_bytes(step.run, s.device, step.model, step.optimizer) / 2**20
        report = compiled.compiler.report()
        rows.append(row("compiled step", f"{m} step, compiled", secs[m, "compiled"], f"{m} step, eager",
                        secs[m, "eager"], FASTER, unit="s/step", ours_mb=mem[m, "compiled"], baseline_mb=mem[m, "eager"],
                        ours_per_s=s.batch_size / secs[m, "compiled"], baseline_per_s=s.batch_size / secs[m, "eager"],
                        per_s_unit="img/s", compile_s=report["compile_seconds"], warmup_s=warm_s, graphs=report["graphs"],
                        note=f"{report['compile_seconds']:.0f} s compiling, {report['graphs']} graphs"
                             f"{', CUDA graphs' if report['cuda_graphs'] else ''}; {eager.note}"))
        del eager, compiled
    rows += held_to(secs, mem)
    return rows, counts


def held_to(secs: dict, mem: dict) -> list[dict]:
    """The compiled supernet step against compiled full fine-tuning (<= 1) and today's eager
    supernet step (>= 3x faster), the compiled retrain against compiled full fine-tuning (<= 0.8),
    and each compiled step's peak memory against eager's (<= 1)."""
    pairs = [("supernet", "full fine-tuning", at_most(1.0)), ("supernet", None, THIRD),
             ("retrain", "full fine-tuning", at_most(0.8))]
    rows = []
    for ours, base, target in pairs:
        key = (base, "compiled") if base else (ours, "eager")
        if (ours, "compiled") in secs and key in secs:
            rows.append(row("compiled step", f"{ours} step, compiled", secs[ours, "compiled"],
                            f"{base} step, compiled" if base else f"{ours} step, eager (today's)", secs[key], target,
                            unit="s/step"))
    for m, kind in mem:
        if kind == "compiled":
            rows.append(row("compiled step", f"{m} peak memory, compiled", mem[m, "compiled"], f"{m} peak memory, eager",
                            mem[m, "eager"], at_most(1.0), unit="MB"))
    return rows
