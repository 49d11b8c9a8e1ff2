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
from pathlib import Path

from torch import nn

from glora.errors import UserError
from glora.io import load_yaml
from glora.inject import Subnet, head_names, uniform_subnet
from glora.space import TENSORS, SearchSpace
from glora.subnet import load_subnet
from search.evolution import CandidateSpace

from . import protocol

SUBNETS = ("searched", "uniform", "random")  # or the path of a subnet YAML
BACKBONES = ("frozen", "bias", "all")
INITS = ("supernet", "scratch")
STAGE_SCRIPTS = {"supernet": "train.py", "search": "search.py", "retrain": "retrain.py"}


def check(cfg: dict) -> None:
    """The method's keys are valid and fit together (every stage checks them before any work)."""
    r = cfg["retrain"]
    for key, valid in (("init", INITS), ("backbone", BACKBONES)):
        if r[key] not in valid:
            raise UserError(f"retrain.{key}={r[key]!r}: use one of {', '.join(valid)}")
    subnet = r["subnet"]
    if not isinstance(subnet, str) or (subnet not in SUBNETS and Path(subnet).suffix not in (".yaml", ".yml")):
        raise UserError(f"retrain.subnet={subnet!r}: use {', '.join(SUBNETS)}, or the path of a subnet YAML "
                        "(e.g. another run's search/best_subnet.yaml)")
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


def check_upstream(stage) -> None:
    """The files the retrain reads exist and were made for this experiment (checked before any
    work, see engine.run.Stage.upstream), or one line says what makes them."""
    cfg = stage.cfg
    r = cfg["retrain"]
    if r["subnet"] == "searched":
        stage.upstream("search/best_subnet.yaml", "no searched subnet; run search.py with this config first "
                       "(or set retrain.subnet to uniform, random or a subnet file)")
    elif r["subnet"] not in SUBNETS:
        stage.upstream(str(Path(r["subnet"]).resolve()), f"retrain.subnet={r['subnet']} names no such subnet file",
                       transfer=True)
    if r["init"] == "supernet":
        stage.upstream(supernet_rel(cfg), "no trained supernet to start from; run train.py or set retrain.init=scratch")


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
