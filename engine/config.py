"""Experiment config: defaults.yaml, then the experiment's YAML file(s), then `--set key=value` overrides."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import yaml

from glora.errors import UserError
from glora.io import load_yaml, save_yaml

DEFAULTS = Path(__file__).resolve().parent.parent / "configs" / "defaults.yaml"
# Mappings merged key by key (null empties them): timm's kwargs take any key; the space, the
# uniform layer config and a family's settings are checked where they are used (glora.space names
# the valid choices, each family its settings).
FREE_FORM = {"model.kwargs", "glora.space", "retrain.uniform", "adapter"}
ANY_TYPE = {"model.pretrained"}  # false, a hub tag or a path


def load_config(paths: Union[str, Sequence[str], None] = None, overrides: Iterable[str] = ()) -> dict:
    """The resolved config of one experiment (a nested dict); several files apply in order,
    e.g. a task's config, then a method preset (configs/methods/NAME.yaml)."""
    cfg = load_yaml(DEFAULTS)
    for path in [paths] if isinstance(paths, (str, Path)) else paths or []:
        user = load_yaml(path) or {}
        if not isinstance(user, dict):
            raise UserError(f"{path}: a config file is a YAML mapping of sections (model, data, ...)")
        _merge(cfg, user, str(path), prefix="")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set train.epochs=10")
        _set(cfg, key.strip(), _parse_value(text), where="--set")
    if cfg["output"] is None and cfg["data"]["task"]:
        cfg["output"] = str(Path("outputs") / str(cfg["data"]["task"]))
    return cfg


def save_config(cfg: dict, path) -> Path:
    return save_yaml(path, cfg)


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-4}, "model": {"kwargs": {"depth": 2}}}` -> `{"train.lr": 1e-4, "model.kwargs.depth": 2}`."""
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + str(key)] = value
    return flat


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            return float(value)
        except ValueError:
            pass
    return value


def _check_type(old: Any, new: Any, key: str, where: str) -> Any:
    if old is None or new is None:
        return new
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    if isinstance(old, bool) != isinstance(new, bool) or (
        not isinstance(new, type(old)) and not (isinstance(old, (list, str)) and isinstance(new, (list, str)))
    ):
        raise UserError(f"{where}: {key} should be a {type(old).__name__} like {old!r}, got {new!r}")
    return new


def _merge(base: dict, new: dict, where: str, prefix: str) -> None:
    if not prefix and "family" in new and new["family"] != base.get("family"):
        base["adapter"] = {}  # adapter settings are their family's: another family starts from its own defaults
    for key, value in new.items():
        full = prefix + str(key)
        if key not in base:
            raise UserError(f"{where}: unknown key {full!r}; valid keys{' in ' + prefix[:-1] if prefix else ''}: {sorted(base)}")
        if full in FREE_FORM:
            if value is not None and not isinstance(value, dict):
                raise UserError(f"{where}: {full} is a mapping (e.g. {{key: value}}), got {value!r}")
            base[key] = None if value is None else {**(base[key] or {}), **copy.deepcopy(value)}
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{where}: {full} is a section (keys {sorted(base[key])}), got {value!r}")
            _merge(base[key], value, where, full + ".")
        else:
            base[key] = value if full in ANY_TYPE else _check_type(base[key], value, full, where)


def _set(cfg: dict, key: str, value: Any, where: str) -> None:
    nested = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    _merge(cfg, nested, f"{where} {key}", prefix="")
