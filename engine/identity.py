"""Run identity and lineage: what a stage was started with, so that `--resume` continues only that
run and a stage refuses an upstream file made for another experiment.

- The run record, `<stage>/run.yaml`: the run's id, the resolved config, the task's data (class
  count and a digest of its four lists) and the SHA-256 of every upstream file the stage read.
- Lineage, carried by what a stage hands on (supernet.safetensors, best_subnet.yaml, the retrain's
  files): the run and stage that made it, the experiment (backbone, space, task, preprocessing),
  the data, and the digests of the upstream files it was made from.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable, Optional

from glora.errors import UserError
from glora.io import load_yaml
from glora.family import read_metadata

from . import keys
from .config import flatten

RECORD = "run.yaml"
_DATA = {"num_classes": "data: class count", "fingerprint": "data: the task's list files (digest)"}


class _Uses(Mapping):
    """stage -> the config keys its result depends on and its --resume compares: every key the
    declaration (engine.keys) says the stage uses, but those --resume may change."""

    def __getitem__(self, stage: str) -> tuple[str, ...]:
        if stage not in keys.STAGES:
            raise KeyError(stage)
        return tuple(keys.used_by(stage))

    def __iter__(self):
        return iter(keys.STAGES)

    def __len__(self) -> int:
        return len(keys.STAGES)


USES = _Uses()


def new_run_id() -> str:
    """A run's id: when it started, and a few random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def data_identity(lists) -> dict:
    """What a run records of its task's data (a data.checks.TaskLists): the class count and the lists' digest."""
    return {"num_classes": lists.num_classes, "fingerprint": lists.fingerprint()}


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _identity(cfg: dict, data: dict, names: Iterable[str]) -> dict:
    """The flat config keys under `names` (a key a record lacks at the value it implies, see
    engine.keys.Key.before), with the data's class count and lists digest."""
    names = list(names)
    flat = {k: v for k, v in {**keys.before(), **flatten(cfg)}.items() if _under(k, names)}
    return {**flat, **{_DATA[k]: data.get(k) for k in _DATA}}


def differences(old: dict, new: dict) -> list[str]:
    """`key (old → new)` for every key whose value differs (a key one side lacks shows as absent)."""
    def show(d: dict, k: str) -> str:
        if k not in d:
            return "absent"
        return f"{d[k][:12]}…" if k == _DATA["fingerprint"] and isinstance(d[k], str) else repr(d[k])

    return [f"{k} ({show(old, k)} → {show(new, k)})" for k in sorted(set(old) | set(new))
            if k not in old or k not in new or old[k] != new[k]]


def resume_differences(record: dict, cfg: dict, data: dict, uses: Iterable[str]) -> list[str]:
    """What differs between a run's record and a resume of it, over the keys `uses` (USES[stage])."""
    return differences(_identity(record["config"], record["data"], uses), _identity(cfg, data, uses))


def resume_changes(record: dict, cfg: dict, stage: str) -> list[str]:
    """The keys --resume may change (engine.keys: they cannot change the stage's result) that changed."""
    free = [k.name for k in keys.KEYS.values() if k.resume_free and stage in k.stages]
    return differences(*(({k: v for k, v in flatten(c).items() if _under(k, free)}) for c in (record["config"], cfg)))


def lineage(cfg: dict, data: dict, upstream: dict, run: str, stage: str) -> dict:
    """What a stage's outputs carry about how they were made."""
    return {"run": run, "stage": stage,
            "experiment": {k: v for k, v in flatten(cfg).items() if _under(k, keys.experiment())},
            "data": dict(data), "upstream": dict(upstream)}


def read_lineage(path: Path) -> Optional[dict]:
    """The lineage an upstream file carries (adapters files in their metadata, YAML files as a key)."""
    if path.suffix == ".safetensors":
        return read_metadata(path).get("lineage")
    content = load_yaml(path)
    return content.get("lineage") if isinstance(content, dict) else None


def lineage_differences(theirs: Optional[dict], cfg: dict, data: dict) -> Optional[tuple[list[str], list[str]]]:
    """(what differs, what differs but is served: notes) between the experiment an upstream file was
    made for and this one; None where it says nothing. Experiment keys compare equal, but where their
    declaration says how an upstream value serves another (glora.space: a wider space serves a narrower)."""
    if not isinstance(theirs, dict) or "experiment" not in theirs:
        return None
    names = keys.experiment()
    here = _identity(cfg, data, names)
    there = {**{k: v for k, v in keys.before().items() if k in here}, **theirs["experiment"],
             **{_DATA[k]: theirs["data"].get(k) for k in _DATA}}
    refused, notes = [], []
    for key in (keys.KEYS[n] for n in names):
        if key.serves is not None:
            sides = [{n: _value(side, n) for n in names} for side in (there, here)]
            for side in (there, here):
                for k in [k for k in side if _under(k, [key.name])]:
                    del side[k]
            r, n = key.serves(*sides)
            refused, notes = refused + r, notes + n
    return differences(there, here) + refused, notes


def _value(flat: dict, name: str):
    """A key's value from flat keys: itself, or the mapping of its flattened sub-keys (None if none)."""
    if name in flat:
        return flat[name]
    nested: dict = {}
    for k, v in flat.items():
        if k.startswith(name + "."):
            *parents, leaf = k[len(name) + 1:].split(".")
            node = nested
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = v
    return nested or None


def check_lineage(path: Path, theirs: Optional[dict], cfg: dict, data: dict) -> list[str]:
    """Refuse an upstream file made for another backbone, space, task, preprocessing or data;
    returns the notes on what differs but is served (a narrower glora.space)."""
    found = lineage_differences(theirs, cfg, data)
    if found is None:
        raise UserError(f"{path}: it says nothing of how it was made (written by hand or by an older version); "
                        "make it again with this config")
    diffs, notes = found
    if diffs:
        raise UserError(f"{path} was made for another experiment: {'; '.join(diffs)} (there → here); "
                        f"run its stage ({theirs.get('stage')}) again with this config, or use the config it was made with")
    return notes
