"""Every config value checked before a stage writes a file or decodes an image: types, ranges,
finiteness, lengths. One rule per key (a test holds RULES to the keys of configs/defaults.yaml)."""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from data.transforms import INTERPOLATIONS
from glora.errors import UserError

from data.layout import BENCHMARKS

from .method import BACKBONES, INITS
from .protocol import PROTOCOLS

Rule = tuple[Callable[[Any], bool], str]  # (accepts the value?, what a good value is)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int, hi: int | None = None) -> Rule:
    return (lambda v: _is_int(v) and lo <= v and (hi is None or v <= hi),
            f"an integer ≥ {lo}" + (f" and ≤ {hi}" if hi is not None else ""))


def number(lo: float = 0.0, *, above: bool = False, hi: float | None = None) -> Rule:
    """A finite number ≥ lo (> lo with `above`), and ≤ hi if given."""
    return (lambda v: _is_number(v) and (v > lo if above else v >= lo) and (hi is None or v <= hi),
            f"a finite number {'>' if above else '≥'} {lo:g}" + (f" and ≤ {hi:g}" if hi is not None else ""))


def numbers(n: int, *, positive: bool = False) -> Rule:
    return (lambda v: isinstance(v, list) and len(v) == n and all(_is_number(x) and (x > 0 or not positive) for x in v),
            f"a list of {n} finite{' positive' if positive else ''} numbers")


def one_of(*options) -> Rule:
    return lambda v: v in options, "one of " + ", ".join(map(str, options))


def optional(rule: Rule) -> Rule:
    return lambda v: v is None or rule[0](v), f"null or {rule[1]}"


TEXT: Rule = (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
MAPPING: Rule = (lambda v: isinstance(v, dict), "a mapping")
FLAG: Rule = (lambda v: isinstance(v, bool), "true or false")
PATTERNS: Rule = (lambda v: isinstance(v, list) and all(isinstance(p, str) and p for p in v),
                  "a list of glob patterns over layer names")
BUDGET: Rule = (lambda v: numbers(2)[0](v) and 0 <= v[0] <= v[1],
                "[min, max]: two finite numbers, 0 ≤ min ≤ max (millions of adapter parameters)")
DEVICE: Rule = (lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v) is not None,
                "auto, cpu, cuda or cuda:N")
TASK: Rule = (lambda v: isinstance(v, str) and v not in ("", ".", "..") and not re.search(r"[/\\]", v),
              "the name of a task folder under data.root: give an experiment config (e.g. "
              "configs/vtab/dtd.yaml) or --set data.task=NAME")


def schedule(section: str, min_epochs: int = 1) -> dict[str, Rule]:
    """The keys of a fine-tuning stage (train, retrain): epochs, AdamW and its cosine schedule, checkpoints."""
    return {
        f"{section}.epochs": integer(min_epochs), f"{section}.lr": number(above=True),
        f"{section}.weight_decay": number(), f"{section}.warmup_epochs": integer(0),
        f"{section}.warmup_lr": number(), f"{section}.min_lr": number(), f"{section}.ckpt_every": integer(1),
    }


RULES: dict[str, Rule] = {
    "data.task": TASK,  # first: with no task there is no experiment (and output has no default)
    "method": TEXT,
    "family": TEXT,  # a registered adapter family (engine.method.family)
    "adapter": optional(MAPPING),  # the family's own settings, checked by the family (engine.method.family)
    "protocol": one_of(*PROTOCOLS),
    "supernet": optional(TEXT),
    "seed": integer(0, 2**63 - 1),
    "output": TEXT,
    "device": DEVICE,
    "model.name": TEXT,
    "model.pretrained": (lambda v: v is None or isinstance(v, (bool, str)), "false, a timm tag or a weights file path"),
    "model.kwargs": (lambda v: v is None or isinstance(v, dict), "a mapping of timm.create_model keyword arguments"),
    "data.root": TEXT,
    "data.benchmark": one_of(*BENCHMARKS),
    "data.shots": optional(integer(1)),
    "data.shot_seed": optional(integer(0)),
    "data.test_sets": (lambda v: isinstance(v, list) and all(TASK[0](t) for t in v),
                       "a list of task folder names under data.root (e.g. [imagenetv2, imagenet-sketch])"),
    "data.num_classes": optional(integer(2)),
    "data.img_size": integer(1),
    "data.interpolation": one_of(*INTERPOLATIONS),
    "data.mean": numbers(3),
    "data.std": numbers(3, positive=True),
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1),
    "data.resident_mb": number(),
    "data.cache": FLAG,
    "data.cache_dir": optional(TEXT),
    "glora.ranks": (lambda v: isinstance(v, list) and v and all(integer(1)[0](r) for r in v),
                    "a non-empty list of positive integers (LoRA ranks)"),
    "glora.targets": optional(PATTERNS),
    "glora.exclude": optional(PATTERNS),
    "glora.space": optional(MAPPING),  # its choices are checked against the space (engine.method.check)
    **schedule("train"),
    "train.amp": FLAG,
    "train.eval_every": integer(0),
    "train.eval_subnets": integer(0),
    "search.generations": integer(1),
    "search.population": integer(1),
    "search.parents": integer(1),
    "search.mutations": integer(0),
    "search.mutation_prob": number(hi=1.0),
    "search.crossovers": integer(0),
    "search.budget": BUDGET,
    "search.max_tries": integer(1),
    "search.early_stop": FLAG,
    **schedule("retrain", min_epochs=0),  # 0: evaluate the subnet with the supernet's weights
    "retrain.init": one_of(*INITS),
    "retrain.subnet": TEXT,  # searched, uniform, random or a subnet file (engine.method.check)
    "retrain.uniform": optional(MAPPING),
    "retrain.backbone": one_of(*BACKBONES),
}


def validate_config(cfg: dict) -> None:
    """Raise a UserError naming the first key whose value breaks its rule, and what would fit."""
    for key, (accepts, wanted) in RULES.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if not accepts(value):
            raise UserError(f"{key}={value!r}: expected {wanted}; fix it in the config or with --set {key}=...")
