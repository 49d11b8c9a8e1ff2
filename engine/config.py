"""Experiment config: the declared defaults (engine/keys.py), then the experiment's YAML file(s),
then `--set key=value` overrides; every value checked against its key's rule."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from glora.errors import UserError
from glora.io import load_yaml, parse_yaml, save_yaml

from . import keys

# The declaration's defaults as a readable file (written by `python -m engine.keys --write`; a test
# holds it to the declaration). Configs are loaded over the declaration itself.
DEFAULTS = Path(__file__).resolve().parent.parent / "configs" / "defaults.yaml"


def load_config(paths: Union[str, Sequence[str], None] = None, overrides: Iterable[str] = ()) -> dict:
    """The resolved config of one experiment (a nested dict); several files apply in order,
    e.g. a task's config, then a method preset (configs/methods/NAME.yaml)."""
    cfg = keys.defaults()
    for path in [paths] if isinstance(paths, (str, Path)) else paths or []:
        user = load_yaml(path) or {}
        if not isinstance(user, dict):
            raise UserError(f"{path}: a config file is a YAML mapping of sections (model, data, ...)")
        _merge(cfg, user, str(path), prefix="")
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set train.epochs=10")
        if not text.strip():
            raise UserError(f"--set {item!r}: no value after '='; give one (null for none: --set {key}=null)")
        _set(cfg, key, parse_yaml(text, f"--set {item!r}"), where="--set")
    if cfg["output"] is None and cfg["data"]["task"]:
        cfg["output"] = str(Path("outputs") / str(cfg["data"]["task"]))
    return cfg


def validate_config(cfg: dict) -> None:
    """Raise a UserError naming the first key whose value breaks its rule, and what would fit.
    data.task comes first: with no task there is no experiment (and output has no default)."""
    for key in sorted(keys.KEYS.values(), key=lambda k: k.name != "data.task"):
        value = get(cfg, key.name)
        if not key.rule.accepts(value):
            raise UserError(f"{key.name}={value!r}: expected {key.rule.wanted}; fix it in the config or with "
                            f"--set {key.name}=...")


def save_config(cfg: dict, path) -> Path:
    return save_yaml(path, cfg)


def get(cfg: dict, name: str) -> Any:
    """The value of a dotted key, e.g. get(cfg, "train.lr")."""
    for part in name.split("."):
        cfg = cfg[part]
    return cfg


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-4}, "model": {"kwargs": {"depth": 2}}}` -> `{"train.lr": 1e-4, "model.kwargs.depth": 2}`."""
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + str(key)] = value
    return flat


def _merge(base: dict, new: dict, where: str, prefix: str) -> None:
    if not prefix and "family" in new and new["family"] != base.get("family"):
        base["adapter"] = {}  # adapter settings are their family's: another family starts from its own defaults
    for key, value in new.items():
        full = prefix + str(key)
        declared = keys.KEYS.get(full)
        if key not in base:
            raise UserError(f"{where}: unknown key {full!r}; valid keys{' in ' + prefix[:-1] if prefix else ''}: "
                            f"{sorted(base)} (python train.py --help-config lists them all)")
        if declared is not None and declared.mapping:  # merged key by key; null empties it
            if value is not None and not isinstance(value, dict):
                raise UserError(f"{where}: {full} is a mapping (e.g. {{key: value}}), got {value!r}")
            base[key] = None if value is None else {**(base[key] or {}), **copy.deepcopy(value)}
        elif declared is None:  # a section
            if not isinstance(value, dict):
                raise UserError(f"{where}: {full} is a section (keys {sorted(base[key])}), got {value!r}")
            _merge(base[key], value, where, full + ".")
        else:
            base[key] = declared.rule.coerce(value)


def _set(cfg: dict, key: str, value: Any, where: str) -> None:
    nested = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    _merge(cfg, nested, f"{where} {key}", prefix="")
