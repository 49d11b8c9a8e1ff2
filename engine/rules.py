"""What a config value may be: one Rule per key (engine/keys.py), built from the constructors here."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Rule:
    """`accepts(value)` says whether a value is good; `wanted` says what a good value is, for the
    error line and the key's help; `coerce` turns what YAML reads into the key's type first."""

    accepts: Callable[[Any], bool]
    wanted: str
    coerce: Callable[[Any], Any] = lambda v: v
    options: Optional[tuple] = None  # one_of's choices, for whoever needs the list


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _to_float(v):
    """A string that reads as a number ("nan", "inf") as that float (the rule then judges it)."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    return v


def integer(lo: int, hi: int | None = None) -> Rule:
    return Rule(lambda v: _is_int(v) and lo <= v and (hi is None or v <= hi),
                f"an integer ≥ {lo}" + (f" and ≤ {hi}" if hi is not None else ""))


def number(lo: float = 0.0, *, above: bool = False, hi: float | None = None) -> Rule:
    """A finite number ≥ lo (> lo with `above`), and ≤ hi if given."""
    return Rule(lambda v: _is_number(v) and (v > lo if above else v >= lo) and (hi is None or v <= hi),
                f"a finite number {'>' if above else '≥'} {lo:g}" + (f" and ≤ {hi:g}" if hi is not None else ""),
                coerce=_to_float)


def numbers(n: int, *, positive: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, list) and len(v) == n and all(_is_number(x) and (x > 0 or not positive) for x in v),
                f"a list of {n} finite{' positive' if positive else ''} numbers")


def one_of(*options) -> Rule:
    return Rule(lambda v: v in options, "one of " + ", ".join(map(str, options)), options=options)


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.accepts(v), f"null or {rule.wanted}",
                lambda v: v if v is None else rule.coerce(v), rule.options)


def text(wanted: str = "a non-empty string") -> Rule:
    return Rule(lambda v: isinstance(v, str) and v.strip() != "", wanted)


def matching(pattern: str, wanted: str) -> Rule:
    """A string matching `pattern` as a whole."""
    return Rule(lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None, wanted)


TEXT = text()
MAPPING = Rule(lambda v: isinstance(v, dict), "a mapping")
FLAG = Rule(lambda v: isinstance(v, bool), "true or false")
PATTERNS = Rule(lambda v: isinstance(v, list) and all(isinstance(p, str) and p for p in v),
                "a list of glob patterns over layer names")
