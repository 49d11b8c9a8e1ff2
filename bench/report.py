"""Result rows, their targets, the printed table and the JSON file."""
from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class Target:
    text: str
    check: Callable[[float], bool]


def at_most(x: float) -> Target:
    return Target(f"ratio <= {x:g}", lambda r: r <= x)


FASTER = Target("ratio < 1", lambda r: r < 1)
SAME = Target("|ratio - 1| <= 0.02", lambda r: abs(r - 1) <= 0.02)
TWICE = Target("ratio <= 0.5 (>= 2x throughput)", lambda r: r <= 0.5)


def row(section: str, name: str, ours_s: float, baseline: str, baseline_s: float,
        target: Optional[Target] = None, unit: str = "s", **extra) -> dict:
    """One comparison: ratio = ours_s / baseline_s, both timed in this run (below 1: ours faster)."""
    ratio = ours_s / baseline_s if baseline_s else math.nan
    return dict(section=section, name=name, ours_s=ours_s, baseline=baseline, baseline_s=baseline_s,
                ratio=ratio, unit=unit, target=target.text if target else None,
                met=bool(target.check(ratio)) if target else None, **extra)


def skipped(section: str, name: str, baseline: str, why: str) -> dict:
    return dict(section=section, name=name, ours_s=None, baseline=baseline, baseline_s=None, ratio=None,
                unit="s", target=None, met=None, note=f"skipped: {why}")


def environment(settings) -> dict:
    import timm

    try:
        import peft
        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    cuda = settings.device.type == "cuda"
    memory = ("parameters, gradients and optimizer state + the peak allocated on top of what was allocated "
              "before one step (" + ("torch.cuda.max_memory_allocated" if cuda else
                                     "the torch profiler's allocation events") + "; tensor memory)")
    return dict(device=settings.device.type, device_name=torch.cuda.get_device_name(settings.device) if cuda
                else cpu_name(), threads=settings.threads, cores=os.cpu_count(), quick=settings.quick,
                model=settings.model, batch_size=settings.batch_size, amp=settings.amp, reps=settings.reps,
                warmup=settings.warmup, peak_mb=memory, torch=torch.__version__, timm=timm.__version__,
                peft=peft_version)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(x, spec=".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def print_table(rows: list[dict]) -> None:
    """Rows grouped by section; ratio = ours_s / baseline_s, below 1 means ours is faster."""
    name_w = min(36, max(len(r["name"]) for r in rows))
    base_w = min(60, max(len(str(r["baseline"])) for r in rows))
    target_w = max(len(r.get("target") or "") for r in rows)
    head = (f"{'name':<{name_w}}  {'baseline':<{base_w}}  {'ours_s':>9} {'base_s':>9} {'ratio':>6}  "
            f"{'target':<{target_w}}  {'met':<3}  extra")
    section = None
    for r in rows:
        if r.get("section") != section:
            section = r.get("section")
            print(f"\n== {section} ==")
            print(head)
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        extra = []
        if r.get("ours_mb") is not None:
            extra.append(f"peak MB {r['ours_mb']:.0f} vs {r['baseline_mb']:.0f}")
        if r.get("ours_per_s") is not None:
            extra.append(f"{r.get('per_s_unit', '/s')} {r['ours_per_s']:.2f} vs {r['baseline_per_s']:.2f}")
        if r.get("note"):
            extra.append(r["note"])
        print(f"{r['name'][:name_w]:<{name_w}}  {str(r['baseline'])[:base_w]:<{base_w}}  {_fmt(r['ours_s']):>9} "
              f"{_fmt(r['baseline_s']):>9} {_fmt(r['ratio'], '.2f'):>6}  {r.get('target') or '':<{target_w}}  "
              f"{met:<3}  {'; '.join(extra)}")


def write_json(path, rows: list[dict], env: dict) -> Path:
    """The rows as a JSON list, each carrying the run's environment, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([{**r, "env": env} for r in rows], indent=1, default=float) + "\n")
    os.replace(tmp, path)
    return path
