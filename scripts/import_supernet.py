"""Import a supernet trained elsewhere (e.g. by the authors' release) as this project's supernet file.

The release's GLoRA layers keep the same storage names and shapes (Ad Au Bd Bu Cd Cu D E per
adapted layer), so its state dict carries over: this picks the adapter and head tensors out of
a `.pth`/`.safetensors` state dict, checks them against the model the config builds, and writes
`<output>/supernet/supernet.safetensors`, ready for `search.py` and `retrain.py`.
Usage: python scripts/import_supernet.py CONFIG CHECKPOINT [--set key=value ...]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm

from glora import UserError, save_adapters
from engine import method
from engine.experiment import build_model
from engine.run import Stage, execute
from glora.merge import adapter_state


def import_supernet(stage: Stage, checkpoint: str) -> Path:
    """Write `checkpoint`'s adapters and head as the supernet stage's output, as a run of that stage."""
    if method.family(stage.cfg).name != "glora":
        raise UserError(f"family={stage.cfg['family']}: this script imports GLoRA supernets (the authors' release); "
                        "set family=glora")
    model = build_model(stage.cfg, stage.data["num_classes"])
    try:
        state = timm.models.load_state_dict(checkpoint, weights_only=True)
    except Exception as e:  # safetensors and pickle raise many types for a foreign file
        raise UserError(f"{checkpoint}: cannot read a state dict ({type(e).__name__}: {e})") from None
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DDP wrapper
    wanted = adapter_state(model)
    missing = [k for k in wanted if k not in state]
    wrong = [k for k in wanted if k in state and state[k].shape != wanted[k].shape]
    if missing or wrong:
        k = (wrong or missing)[0]
        got = tuple(state[k].shape) if k in state else "missing"
        raise UserError(f"{checkpoint}: {k} is {got}, this config's model needs {tuple(wanted[k].shape)} "
                        f"({len(missing)} missing, {len(wrong)} of another shape); check glora.ranks, "
                        "glora.targets, model.name and data.num_classes")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    stage.record["imported_from"] = str(checkpoint)  # a train.py --resume has nothing to continue
    with stage.begin():  # the previous supernet run moves to previous/
        return save_adapters(model, stage.dir / "supernet.safetensors",
                             extra={"imported_from": str(checkpoint), "lineage": stage.lineage()})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    args.resume = False  # an import is always a fresh run of the supernet stage

    def run(stage):
        path = import_supernet(stage, args.checkpoint)
        print(f"supernet written to {path}; next: python search.py {args.config}")

    return execute("supernet", run, args)


if __name__ == "__main__":
    sys.exit(main())
