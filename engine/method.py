"""What a method is made of: the stages it runs, the subnet its retrain trains, what else trains.

Baselines are configs here, not pipelines: LoRA or scale-and-shift restrict `glora.space`;
`retrain.subnet` says where the retrained subnet comes from (the search, one layer config for
every layer, a seeded random draw within the budget, or a subnet file); `retrain.backbone` adds
the backbone's biases (BitFit) or all of it (full fine-tuning) to the adapters and head.
configs/methods/ holds one preset per method.
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from glora.errors import UserError
from glora.io import load_yaml
from glora.inject import (Subnet, compact_subnet, head_names, mark_trainable, set_subnet, subnet_params,
                          uniform_subnet)
from glora.merge import load_adapters
from glora.space import TENSORS, SearchSpace
from glora.subnet import load_subnet
from search.evolution import CandidateSpace

from . import protocol
from .experiment import build_model
from .keys import SUBNETS

STAGE_SCRIPTS = {"supernet": "train.py", "search": "search.py", "retrain": "retrain.py"}


def check(cfg: dict) -> None:
    """The rules that span keys: the method's keys fit together and with the protocol (every stage
    checks them before any work, after each key's own rule, engine.config.validate_config)."""
    r = cfg["retrain"]
    subnet = r["subnet"]
    try:
        SearchSpace(cfg["glora"]["ranks"], cfg["glora"]["space"])
    except ValueError as e:
        raise UserError(f"glora config: {e}") from None
    if subnet == "uniform":
        uniform_config(cfg)
    if subnet != "uniform" and r["uniform"] is not None:
        raise UserError(f"retrain.uniform is set but retrain.subnet={subnet!r} does not use it: "
                        "set retrain.subnet=uniform, or retrain.uniform=null")
    protocol.check(cfg)


def uniform_config(cfg: dict) -> dict:
    """retrain.uniform, or the one layer config of a `glora.space` with one choice per tensor."""
    layer, space = cfg["retrain"]["uniform"], cfg["glora"]["space"] or {}
    if layer is not None:
        return layer
    choices = {t: [c] if isinstance(c, str) else c for t, c in space.items()}
    if set(choices) != set(TENSORS) or any(not isinstance(c, list) or len(c) != 1 for c in choices.values()):
        raise UserError("retrain.subnet=uniform needs retrain.uniform, the layer config of every layer, e.g. "
                        "{A: vector, B: lora_4, D: vector} (tensors left out are none; {} trains the head alone), "
                        "or a glora.space with one choice for each of A..E")
    return {t: c[0] for t, c in choices.items()}


def supernet_file(cfg: dict) -> Path:
    """The supernet that search and retrain (init: supernet) read: the run's own, or `supernet`."""
    return Path(cfg["supernet"] or Path(cfg["output"]) / "supernet" / "supernet.safetensors")


def check_trains_supernet(cfg: dict) -> None:
    """train.py trains `<output>/supernet/`: refuse a config whose other stages read another supernet."""
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


def retrain_subnet(cfg: dict, model: nn.Module) -> tuple[Subnet, dict]:
    """The subnet the retrain trains, with what its source records of it (params, val_acc1, ...)."""
    source = cfg["retrain"]["subnet"]
    if source == "searched":
        return load_subnet(Path(cfg["output"]) / "search" / "best_subnet.yaml", model)
    if source == "uniform":
        try:
            return uniform_subnet(model, uniform_config(cfg)), {}
        except ValueError as e:
            raise UserError(f"retrain.uniform: {e}") from None
    if source == "random":  # the draw that starts the search, without the search
        s = cfg["search"]
        space = CandidateSpace.from_model(model, s["budget"], s["max_tries"])
        return space.subnet(space.sample(random.Random(cfg["seed"]))), {"budget": list(s["budget"])}
    return load_subnet(source, model)


@dataclass
class Retrained:
    """The model the retrain trains, its subnet, what the subnet's source records of it (params,
    val_acc1, ...) and the parameter counts: the subnet's adapters, the backbone parameters added."""

    model: nn.Module
    subnet: Subnet
    source: dict
    adapter_params: int
    backbone_params: int


def retrain_model(cfg: dict, num_classes: int) -> Retrained:
    """The method's subnet on the backbone, from the supernet's weights or scratch (retrain.init),
    compacted (only the subnet's own parameters exist, and train) with the backbone parameters
    retrain.backbone adds; a subnet file whose parameter count differs is refused."""
    r = cfg["retrain"]
    model = build_model(cfg, num_classes)
    subnet, source = retrain_subnet(cfg, model)
    if r["init"] == "supernet":
        load_adapters(model, supernet_file(cfg))
    set_subnet(model, subnet)
    compact_subnet(model)
    mark_trainable(model)
    backbone_params = train_backbone(model, r["backbone"])
    adapter_params = subnet_params(model, subnet)
    if "params" in source and source["params"] != adapter_params:
        raise UserError(f"retrain.subnet={r['subnet']}: the file says {source['params']} parameters but they count "
                        f"{adapter_params}; it was searched for another model or other glora settings")
    return Retrained(model, subnet, source, adapter_params, backbone_params)


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
