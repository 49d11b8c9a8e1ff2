"""Adapter families: the one interface through which a frozen timm model is adapted, and their registry.

A family puts its adapters into a model, says which tensors train and are saved (its adapters and
the classifier head), counts its adapter parameters by closed form, and either merges into plain
weights (the exported model is an ordinary timm model) or does not (the export is the adapters,
loaded back with `attach`). A family with a supernet also has keyed choices per layer or block:
training draws a subnet every forward, the search keys on the choices, the retrain fixes one.

GLoRA is one family (glora/families/glora.py); VPT-deep, AdaptFormer, RepAdapter and NOAH sit
beside it in glora/families/. An experiment names its family (`family`), and the family takes
its settings from one config section (`section`: glora's own, or `adapter` for the others).
"""
from __future__ import annotations

import importlib
import json
import random
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional

from torch import Tensor, nn

from .errors import UserError
from .inject import head_names
from .io import load_tensors, save_tensors, tensors_metadata

Subnet = dict  # {layer or block name: {key: choice}}
FORMAT = "glora-family-adapters/1"  # adapters files of the families other than GLoRA (which keeps its own)


class Setting(NamedTuple):
    """One setting of a family: its default, a check of a value, and what a good value is."""

    default: Any
    accepts: Callable[[Any], bool]
    wanted: str


def positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def probability(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1


class Family:
    """One way of adapting a frozen timm model; subclasses fill in the methods their kind needs.

    Every family: `inject`, `adapter_modules`, `count`. A mergeable family: `merge`. A family
    with a supernet: `slots`, `set_subnet`, `sample_subnet`, `check_subnet`, `compact` (and
    `uniform_subnet` where one config can serve every layer).
    """

    name: ClassVar[str]
    section: ClassVar[str] = "adapter"  # the config section that holds its settings
    settings: ClassVar[dict[str, Setting]] = {}
    mergeable: ClassVar[bool] = False
    supernet: ClassVar[bool] = False
    paper: ClassVar[str] = ""  # the method's paper, for model cards
    why_not_merged: ClassVar[str] = ""  # a non-mergeable family: why no plain model computes what it does
    uniform_example: ClassVar[str] = ""  # a supernet family: one layer's config, as retrain.uniform takes it

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.settings))
        if unknown:
            raise ValueError(f"no setting {', '.join(unknown)}; its settings: {', '.join(self.settings) or 'none'}")
        self.options = {k: options.get(k, s.default) for k, s in self.settings.items()}
        for key, value in self.options.items():
            if not self.settings[key].accepts(value):
                raise ValueError(f"{key}={value!r}: expected {self.settings[key].wanted}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"

    # ------------------------------------------------------------------------------ every family

    def inject(self, model: nn.Module, rng: Optional[random.Random] = None) -> None:
        """Put the adapters into `model` in place (a supernet's layers draw their subnets from `rng`)."""
        raise NotImplementedError

    def adapter_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The modules holding the adapters, by qualified name; each has `adapter_parameters()`."""
        raise NotImplementedError

    def count(self, model: nn.Module) -> int:
        """Adapter parameters of the model as configured now, by closed form (a supernet: its fixed subnet)."""
        raise NotImplementedError

    def adapter_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The tensors that train and are saved: every adapter parameter and the head, by state-dict key."""
        keys = {f"{n}.{k}" for n, m in self.adapter_modules(model).items() for k in m.adapter_parameters()}
        heads = tuple(f"{h}." for h in head_names(model))
        return {k: v for k, v in model.state_dict().items() if k in keys or k.startswith(heads)}

    def mark_trainable(self, model: nn.Module) -> list[str]:
        """Freeze the backbone; the adapters and the classifier head train. Returns the trainable names."""
        model.requires_grad_(False)
        for module in self.adapter_modules(model).values():
            for p in module.adapter_parameters().values():
                p.requires_grad_(True)
        for name in head_names(model):
            model.get_submodule(name).requires_grad_(True)
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def merge(self, model: nn.Module) -> nn.Module:
        """A mergeable family: the plain timm model computing the same function (in place)."""
        raise TypeError(f"family {self.name} does not merge: {self.why_not_merged}")

    # ------------------------------------------------------------------------------ a supernet

    def slots(self, model: nn.Module) -> dict[str, dict[str, dict[Any, int]]]:
        """Per layer or block: each key's choices and their adapter parameters (what the search counts)."""
        raise TypeError(f"family {self.name} has no supernet")

    def set_subnet(self, model: nn.Module, subnet: Optional[Mapping]) -> None:
        """Fix every layer's choices (all must be named), or with None return them to sampling."""
        raise TypeError(f"family {self.name} has no supernet")

    def current_subnet(self, model: nn.Module) -> Optional[Subnet]:
        """The fixed subnet, or None while the layers sample (or for a family without a supernet)."""
        return None

    def sample_subnet(self, model: nn.Module, rng: random.Random) -> Subnet:
        """A random subnet: every key of every layer drawn uniformly from its choices."""
        return {n: {k: rng.choice(list(c)) for k, c in keys.items()} for n, keys in self.slots(model).items()}

    def check_subnet(self, model: nn.Module, subnet: Mapping) -> Subnet:
        """`subnet` as a plain dict if it names every layer of the model with valid choices, else ValueError."""
        slots = self.slots(model)
        unknown, missing = sorted(set(subnet) - set(slots)), sorted(set(slots) - set(subnet))
        if unknown or missing:
            raise ValueError(f"subnet does not fit the model: unknown layers {unknown[:4]}, "
                             f"missing layers {missing[:4]}")
        out = {}
        for name, keys in slots.items():
            cfg = subnet[name]
            if not isinstance(cfg, Mapping) or set(cfg) != set(keys):
                raise ValueError(f"{name}: a config maps {list(keys)} to choices, got {cfg!r}")
            for key, costs in keys.items():
                if cfg[key] not in costs:
                    raise ValueError(f"{name}: {key}={cfg[key]!r} is not a choice; choices: {list(costs)}")
            out[name] = {k: cfg[k] for k in keys}
        return out

    def uniform_config(self, layer: Optional[Mapping]) -> dict:
        """The one config of every layer: `layer` (retrain.uniform), or what the settings imply if they do."""
        if layer is None:
            raise ValueError(f"family {self.name} needs retrain.uniform, the config of every layer or block "
                             f"(e.g. {self.uniform_example})")
        return dict(layer)

    def uniform_subnet(self, model: nn.Module, layer: Optional[Mapping]) -> Subnet:
        """A subnet with one config (`uniform_config(layer)`) in every layer."""
        return self.check_subnet(model, dict.fromkeys(self.slots(model), self.uniform_config(layer)))

    def subnet_params(self, model: nn.Module, subnet: Mapping) -> int:
        """Adapter parameters of `subnet` by the closed form the slots hold."""
        slots = self.slots(model)
        return sum(slots[n][k][c] for n, cfg in self.check_subnet(model, subnet).items() for k, c in cfg.items())

    def compact(self, model: nn.Module) -> None:
        """Drop the storage the fixed subnet does not use (the retrain model)."""
        raise TypeError(f"family {self.name} has no supernet")

    def scoring_model(self, model: nn.Module) -> Callable[[Mapping], nn.Module]:
        """`load(subnet)`: the module whose forward is the subnet's (the search scores candidates with it)."""
        def load(subnet):
            self.set_subnet(model, subnet)
            return model.eval()

        return load

    # ------------------------------------------------------------------------------ a static supernet

    static: ClassVar[bool] = False  # a supernet family with a static form (a compiled step serves every subnet)

    def make_static(self, model: nn.Module) -> None:
        """Give the supernet its static form: the subnet lives in tensors the forward reads, so that
        writing another one never changes the graph (train.compile)."""
        raise TypeError(f"family {self.name} has no static form")

    def write_subnet(self, model: nn.Module, subnet: Mapping) -> None:
        """The static form's set_subnet: write `subnet` into those tensors in place."""
        raise TypeError(f"family {self.name} has no static form")

    def used_flags(self, model: nn.Module) -> dict:
        """Each storage parameter with its flag tensor (1: the subnet written now uses it), which
        glora.optim.MaskedAdamW reads to leave unused storage untouched, as AdamW does without gradient."""
        raise TypeError(f"family {self.name} has no static form")

    # ------------------------------------------------------------------------------ files

    def subnet_metadata(self) -> dict:
        """What a subnet file (best_subnet.yaml) says of the family it was searched for."""
        return {"family": self.name}

    def metadata(self) -> dict:
        """What an adapters file says of the family besides its tensors."""
        return {"family": self.name, "settings": self.options}

    def save(self, model: nn.Module, path, extra: Optional[dict] = None) -> Path:
        """Adapters-only file: adapter tensors and head, with the family, its settings and the subnet."""
        from .merge import first_nonfinite

        tensors = self.adapter_state(model)
        bad = first_nonfinite(tensors)
        if bad is not None:
            raise UserError(f"{path}: not written, {bad} holds non-finite values (training diverged); lower the lr")
        subnet = self.current_subnet(model)
        meta = {**self.metadata(), "subnet": subnet, "compact": subnet is not None and self.compacted(model),
                **(extra or {})}
        return save_tensors(path, tensors, {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}})

    def compacted(self, model: nn.Module) -> bool:
        return False

    def load(self, model: nn.Module, path) -> dict:
        """Load an adapters file made for this family, these settings and this model; return its metadata.

        A file holding a compacted subnet fixes and compacts the model's layers first.
        """
        from .merge import first_nonfinite

        meta = read_metadata(path)
        if meta.get("family") != self.name or meta.get("settings") != json.loads(json.dumps(self.options)):
            raise UserError(f"{path}: adapters of family {meta.get('family')} with settings {meta.get('settings')}, "
                            f"not of {self.name} with {self.options}; use the config it was made with")
        if meta.get("subnet") is not None:
            try:
                self.set_subnet(model, meta["subnet"])
            except ValueError as e:
                raise UserError(f"{path}: {e}; it was made for another model") from None
            if meta.get("compact"):
                self.compact(model)
        tensors, expected = load_tensors(path), self.adapter_state(model)
        bad = first_nonfinite(tensors)
        if bad is not None:
            raise UserError(f"{path}: {bad} holds non-finite values (the run that wrote it diverged); "
                            "train it again with a lower lr")
        wrong = sorted(k for k in expected.keys() | tensors.keys()
                       if k not in tensors or k not in expected or tensors[k].shape != expected[k].shape)
        if wrong:
            k = wrong[0]
            got = tuple(tensors[k].shape) if k in tensors else "missing"
            want = tuple(expected[k].shape) if k in expected else "absent"
            raise UserError(f"{path}: tensor {k} is {got} in the file but {want} in the model "
                            "(another model or num_classes?)")
        model.load_state_dict(tensors, strict=False)
        return meta


# ---------------------------------------------------------------------------------- the registry

FAMILIES: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family available by its name."""
    FAMILIES[cls.name] = cls
    return cls


def get_family(name: str) -> type[Family]:
    """The family class registered as `name` (the built-in ones register on first use)."""
    importlib.import_module(".families", __package__)
    if name not in FAMILIES:
        raise ValueError(f"no adapter family {name!r}; registered: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def read_metadata(path) -> dict:
    """The metadata of any adapters file (GLoRA's own format or the other families')."""
    from .merge import ADAPTER_FORMAT, read_adapter_metadata

    meta = tensors_metadata(path)
    if meta.get("format") == ADAPTER_FORMAT:
        return {"family": "glora", **read_adapter_metadata(path)}
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not an adapters file (format {meta.get('format')!r}, expected {FORMAT!r} "
                        f"or {ADAPTER_FORMAT!r})")
    return {k: json.loads(v) for k, v in meta.items() if k != "format"}


def attach(model: nn.Module, path) -> nn.Module:
    """Put the adapters of an (unmerged) adapters file onto the plain timm model they were trained on.

    `model`: the pretrained backbone built with a head of the file's class count; the family and
    its settings come from the file. Returns the model in eval mode.
    """
    meta = read_metadata(path)
    try:
        family = get_family(meta.get("family"))(**meta.get("settings", {}))
        family.inject(model)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    family.load(model, path)
    family.mark_trainable(model)
    return model.eval()
