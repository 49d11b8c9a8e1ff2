"""What a method is made of: its adapter family, the stages it runs, the subnet its retrain trains,
what else trains.

`family` names the adapter family (glora.family: GLoRA, or another registered one) and the
family's config section holds its settings. Baselines are configs here, not pipelines: LoRA or
scale-and-shift restrict `glora.space`; `retrain.subnet` says where the retrained subnet of a
family with a supernet comes from (the search, one config for every layer, a seeded random draw
within the budget, or a subnet file); a family without one trains its settings' adapters, from
scratch; `retrain.backbone` adds the backbone's biases (BitFit) or all of it (full fine-tuning)
to the adapters and head. configs/methods/ holds one preset per method.
"""
from __future__ import annotations

import importlib
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from glora.errors import UserError
from glora.family import Family, get_family
from glora.io import load_yaml
from glora.inject import Subnet, head_names
from glora.subnet import load_subnet
from search.evolution import CandidateSpace

from . import experiment, protocol  # experiment imports this module too: its names are read at call time
from .keys import SUBNETS

STAGE_SCRIPTS = {"supernet": "train.py", "search": "search.py", "retrain": "retrain.py"}


def family(cfg: dict) -> Family:
    """The experiment's adapter family (`family`) with its settings (its config section)."""
    try:
        cls = get_family(cfg["family"])
    except ValueError as e:
        raise UserError(f"family={cfg['family']!r}: {e}; fix it in the config or with --set family=NAME") from None
    if cls.section != "adapter" and cfg["adapter"]:
        raise UserError(f"adapter={cfg['adapter']} is set but family {cls.name} takes its settings from "
                        f"{cls.section}.*: move them there, or set family to the family they are for")
    try:
        return cls(**(cfg[cls.section] or {}))
    except ValueError as e:
        raise UserError(f"{where(cls)}: {e}") from None


def where(cls) -> str:
    """Where a family's settings are, for messages: `glora config`, `adapter config of family noah`."""
    return f"{cls.section} config" + ("" if cls.section == cls.name else f" of family {cls.name}")


def import_plugins(modules: list[str]) -> None:
    """Import the modules `plugins` names (they register choice kinds or adapter families), from
    PYTHONPATH or the working folder."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # an error of the module itself, as much as a missing one
            raise UserError(f"plugins: cannot import {name!r} ({type(e).__name__}: {e}); put it on PYTHONPATH or in "
                            "the working folder, or fix it") from None


def check(cfg: dict) -> None:
    """The rules that span keys: the method's keys fit together and with the protocol (every stage
    checks them before any work, after each key's own rule, engine.config.validate_config)."""
    import_plugins(cfg["plugins"])  # first: what they register is what the rules below accept
    r = cfg["retrain"]
    subnet = r["subnet"]
    fam = family(cfg)
    if not fam.supernet and (subnet != "uniform" or r["uniform"] is not None or r["init"] != "scratch"):
        raise UserError(f"family {fam.name} has no supernet: it trains the adapters its settings ({fam.section}.*) "
                        "give every block, from scratch; set retrain.subnet=uniform, retrain.uniform=null and "
                        "retrain.init=scratch (as its preset in configs/methods/ does)")
    if subnet == "uniform" and fam.supernet:
        try:
            fam.uniform_config(r["uniform"])
        except ValueError as e:
            raise UserError(str(e)) from None
    if subnet != "uniform" and r["uniform"] is not None:
        raise UserError(f"retrain.uniform is set but retrain.subnet={subnet!r} does not use it: "
                        "set retrain.subnet=uniform, or retrain.uniform=null")
    protocol.check(cfg)


def check_has_supernet(cfg: dict, script: str) -> None:
    """train.py and search.py work on a supernet: refuse a family without one."""
    fam = family(cfg)
    if not fam.supernet:
        raise UserError(f"family {fam.name} has no supernet, so {script} has nothing to do: its method runs "
                        "retrain.py alone (python -m engine.method CONFIG... lists the stages a config needs)")


def candidates(cfg: dict, fam: Family, model: nn.Module) -> CandidateSpace:
    """The subnets of the model within search.budget, as the search draws and breeds them."""
    return CandidateSpace.from_model(model, cfg["search"]["budget"], cfg["search"]["max_tries"], fam)


def supernet_file(cfg: dict) -> Path:
    """The supernet that search and retrain (init: supernet) read: the run's own, or `supernet`."""
    return Path(cfg["supernet"] or Path(cfg["output"]) / "supernet" / "supernet.safetensors")


def check_trains_supernet(cfg: dict) -> None:
    """train.py trains `<output>/supernet/`: refuse a family without a supernet, and a config whose
    other stages read another supernet."""
    check_has_supernet(cfg, "train.py")
    own = Path(cfg["output"]) / "supernet" / "supernet.safetensors"
    if supernet_file(cfg).resolve() != own.resolve():
        raise UserError(f"supernet={cfg['supernet']}: this experiment reads a supernet trained elsewhere, so train.py "
                        f"would train one ({own}) that nothing reads; unset it (--set supernet=null) to train one here")


def supernet_rel(cfg: dict) -> str:
    """The supernet as an upstream file of a stage: relative to the output folder (the run's own)
    or absolute (`supernet`)."""
    return str(Path(cfg["supernet"]).resolve()) if cfg["supernet"] else "supernet/supernet.safetensors"


def upstream_stages(cfg: dict) -> list[str]:
    """The stages the retrain builds on: the supernet if the search or the retrain's init reads
    one, the search for a searched subnet."""
    r = cfg["retrain"]
    searched = r["subnet"] == "searched"
    return ["supernet"] * (searched or r["init"] == "supernet") + ["search"] * searched


def upstream(cfg: dict) -> dict[str, Path]:
    """The folders of the stages the retrain builds on (see upstream_stages)."""
    folders = {"supernet": supernet_file(cfg).parent, "search": Path(cfg["output"]) / "search"}
    return {s: folders[s] for s in upstream_stages(cfg)}


def upstream_timings(cfg: dict) -> dict[str, float]:
    """What the stages the retrain builds on took (from their summary.json), for results.json."""
    timings = {}
    for key, stage, field in (("supernet_train_s", "supernet", "train_seconds"), ("search_s", "search", "search_seconds")):
        summary = upstream(cfg).get(stage, Path("-")) / "summary.json"
        if summary.is_file():
            timings[key] = load_yaml(summary).get(field)
    return timings


def stages(cfg: dict) -> list[str]:
    """The stages the method runs, in order; a supernet that `supernet` names is trained elsewhere."""
    check(cfg)
    return [s for s in upstream_stages(cfg) if not (s == "supernet" and cfg["supernet"])] + ["retrain"]


@dataclass(frozen=True)
class Upstream:
    """A file a stage reads from an earlier stage: `rel` under the output folder (or absolute),
    `missing` what makes it; a `transfer` (a subnet file named by retrain.subnet) may come from
    another experiment (a note says so; the reader checks that it fits the model)."""

    rel: str
    missing: str
    transfer: bool = False


def upstream_files(cfg: dict, stage: str) -> list[Upstream]:
    """The upstream files a stage reads, which it checks before any work (engine.run.Stage)."""
    supernet = Upstream(supernet_rel(cfg), "no trained supernet; run train.py with this config first")
    if stage == "search":
        return [supernet]
    if stage != "retrain":
        return []
    r, files = cfg["retrain"], []
    if r["subnet"] == "searched":
        files.append(Upstream("search/best_subnet.yaml", "no searched subnet; run search.py with this config first "
                              "(or set retrain.subnet to uniform, random or a subnet file)"))
    elif r["subnet"] not in SUBNETS:
        files.append(Upstream(str(Path(r["subnet"]).resolve()), f"retrain.subnet={r['subnet']} names no such subnet "
                              "file", transfer=True))
    if r["init"] == "supernet":
        files.append(Upstream(supernet.rel, "no trained supernet to start from; run train.py or set "
                              "retrain.init=scratch"))
    return files


def retrain_subnet(cfg: dict, fam: Family, model: nn.Module) -> tuple[Subnet | None, dict]:
    """The subnet the retrain trains (None for a family without a supernet), with what its source
    records of it (params, val_acc1, ...)."""
    source = cfg["retrain"]["subnet"]
    if not fam.supernet:
        return None, {}
    if source == "uniform":
        try:
            return fam.uniform_subnet(model, cfg["retrain"]["uniform"]), {}
        except ValueError as e:
            raise UserError(f"retrain.uniform: {e}") from None
    if source == "random":  # the draw that starts the search, without the search
        space = candidates(cfg, fam, model)
        return space.subnet(space.sample(random.Random(cfg["seed"]))), {"budget": list(cfg["search"]["budget"])}
    path = Path(cfg["output"]) / "search" / "best_subnet.yaml" if source == "searched" else Path(source)
    subnet, meta = load_subnet(path)
    try:
        return fam.check_subnet(model, subnet), meta
    except ValueError as e:
        raise UserError(f"{path}: {e}; it was searched for another model or other {fam.section} settings") from None


def prepare_retrain(cfg: dict, fam: Family, model: nn.Module) -> tuple[Subnet | None, dict]:
    """The retrain model: its subnet fixed (from the supernet's weights with retrain.init: supernet)
    and compacted, so that only what trains exists; the adapters and head train. Returns the
    subnet and what its source records of it."""
    subnet, meta = retrain_subnet(cfg, fam, model)
    if cfg["retrain"]["init"] == "supernet":
        fam.load(model, supernet_file(cfg))
    if subnet is not None:
        fam.set_subnet(model, subnet)
        fam.compact(model)  # only the subnet's own parameters exist, and train
    fam.mark_trainable(model)
    return subnet, meta


def why_not_merged(fam: Family, adapter_params: int) -> str:
    """Why results.json has no merged accuracy: the family does not merge, or nothing was adapted."""
    if not fam.mergeable:
        return f"family {fam.name} does not merge: {fam.why_not_merged}"
    return "the subnet holds no adapter parameters: the merged model is the plain model, with nothing to test twice"


@dataclass
class Retrained:
    """The model the retrain trains, its family, its subnet (None for a family without a supernet),
    what the subnet's source records of it (params, val_acc1, ...) and the parameter counts: the
    adapters', the backbone parameters added."""

    model: nn.Module
    family: Family
    subnet: Subnet | None
    source: dict
    adapter_params: int
    backbone_params: int


def retrain_model(cfg: dict, num_classes: int) -> Retrained:
    """The method's adapters on the backbone: a supernet family's subnet, from the supernet's weights
    or scratch (retrain.init), compacted (only the subnet's own parameters exist, and train); with
    the backbone parameters retrain.backbone adds. A subnet file whose parameter count differs is
    refused."""
    r, fam = cfg["retrain"], family(cfg)
    model = experiment.build_model(cfg, num_classes)
    subnet, source = prepare_retrain(cfg, fam, model)
    backbone_params = train_backbone(model, r["backbone"])
    adapter_params = fam.count(model)
    if "params" in source and source["params"] != adapter_params:
        raise UserError(f"retrain.subnet={r['subnet']}: the file says {source['params']} parameters but they count "
                        f"{adapter_params}; it was searched for another model or other {fam.section} settings")
    return Retrained(model, fam, subnet, source, adapter_params, backbone_params)


def train_backbone(model: nn.Module, backbone: str) -> int:
    """Let the backbone parameters that `retrain.backbone` names train too (biases: every
    parameter named `bias`; all: every parameter); returns how many elements that adds."""
    heads = tuple(f"{h}." for h in head_names(model))
    added = 0
    for name, p in model.named_parameters():
        if p.requires_grad or name.startswith(heads):
            continue
        if backbone == "all" or (backbone == "bias" and name.rpartition(".")[2] == "bias"):
            p.requires_grad_(True)
            added += p.numel()
    return added


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.method CONFIG... [--set k=v]` prints the scripts of the method's stages."""
    from .config import load_config
    from .run import parse_args  # engine.run checks configs with this module: imported here, not at the top

    args = parse_args(argv, description=main.__doc__)
    try:
        print(" ".join(STAGE_SCRIPTS[s] for s in stages(load_config(args.config, args.overrides))))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
