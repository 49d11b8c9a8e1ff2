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
from pathlib import Path
from typing import Iterable, Optional

from glora.errors import UserError
from glora.io import load_yaml
from glora.family import read_metadata

from .config import flatten

RECORD = "run.yaml"
# The config every stage's result depends on; each stage adds its own keys (USES).
COMMON = ("seed", "device", "protocol", "model", "data", "family", "glora", "adapter")
# What each stage's result depends on besides COMMON (the stage's own section, and what it reads).
USES = {"supernet": ("train",), "search": ("search", "train.amp", "supernet"),
        "retrain": ("method", "retrain", "train.amp", "supernet")}
# What --resume lets change: where the data and its cache live, how often the supernet is validated.
RESUME_FREE = ("data.root", "data.cache", "data.cache_dir", "train.eval_every")
# What an upstream file and the stage that reads it must share: the backbone (model.*), the adapter
# family and its settings (family, glora.*, adapter.*), the task and its preprocessing; with the data
# itself (class count, lists digest). The protocol too: a release-2023 supernet has trained on
# val200, which an honest search scores on.
EXPERIMENT = ("protocol", "model", "family", "glora", "adapter", "data.task", "data.benchmark", "data.shots",
              "data.img_size", "data.interpolation", "data.mean", "data.std")
# Keys that records and files written before they existed lack: read as their value then.
_BEFORE = {"protocol": "honest", "data.benchmark": "vtab", "data.shots": None, "data.shot_seed": None,
           "data.test_sets": [], "family": "glora", "adapter": {}}
_DATA = {"num_classes": "data: class count", "fingerprint": "data: the task's list files (digest)"}


def new_run_id() -> str:
    """A run's id: when it started, and a few random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _identity(cfg: dict, data: dict, keys: Iterable[str], free: Iterable[str] = ()) -> dict:
    """The flat config keys under `keys` but not `free`, with the data's class count and lists digest."""
    flat = {k: v for k, v in {**_BEFORE, **flatten(cfg)}.items() if _under(k, keys) and not _under(k, free)}
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
    """What differs between a run's record and a resume of it, over the keys the stage depends on."""
    keys = [*COMMON, *uses]
    return differences(_identity(record["config"], record["data"], keys, RESUME_FREE),
                       _identity(cfg, data, keys, RESUME_FREE))


def lineage(cfg: dict, data: dict, upstream: dict, run: str, stage: str) -> dict:
    """What a stage's outputs carry about how they were made."""
    return {"run": run, "stage": stage, "experiment": {k: v for k, v in flatten(cfg).items() if _under(k, EXPERIMENT)},
            "data": dict(data), "upstream": dict(upstream)}


def read_lineage(path: Path) -> Optional[dict]:
    """The lineage an upstream file carries (adapters files in their metadata, YAML files as a key)."""
    if path.suffix == ".safetensors":
        return read_metadata(path).get("lineage")
    content = load_yaml(path)
    return content.get("lineage") if isinstance(content, dict) else None


def lineage_differences(theirs: Optional[dict], cfg: dict, data: dict) -> Optional[list[str]]:
    """What differs between the experiment an upstream file was made for and this one (None: it says nothing)."""
    if not isinstance(theirs, dict) or "experiment" not in theirs:
        return None
    ours = _identity(cfg, data, EXPERIMENT)
    before = {k: v for k, v in _BEFORE.items() if k in ours}  # keys that files written before them lack
    return differences({**before, **theirs["experiment"], **{_DATA[k]: theirs["data"].get(k) for k in _DATA}}, ours)


def check_lineage(path: Path, theirs: Optional[dict], cfg: dict, data: dict) -> None:
    """Refuse an upstream file made for another backbone, space, task, preprocessing or data."""
    diffs = lineage_differences(theirs, cfg, data)
    if diffs is None:
        raise UserError(f"{path}: it says nothing of how it was made (written by hand or by an older version); "
                        "make it again with this config")
    if diffs:
        raise UserError(f"{path} was made for another experiment: {'; '.join(diffs)} (there → here); "
                        f"run its stage ({theirs.get('stage')}) again with this config, or use the config it was made with")
