"""Baseline: a linear probe of the same backbone (only the head trains), with the retrain's settings.

It is the all-`none` GLoRA subnet, so it runs through exactly the retrain's loop and data.
Writes `<output>/linear_probe/results.json` with `test_acc`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from glora import compact_subnet, glora_layers, set_subnet  # noqa: E402
from engine.loops import evaluate  # noqa: E402
from engine.experiment import build_model, eval_loader, load_data, train_loader  # noqa: E402
from glora.inject import head_params, mark_trainable  # noqa: E402
from glora.io import save_json  # noqa: E402
from glora.model import count_params  # noqa: E402
from engine.run import Stage, cli, log  # noqa: E402
from engine.trainer import Trainer  # noqa: E402


def main(args):
    stage = Stage("linear_probe", args, uses=("retrain", "train.amp"))
    cfg, device = stage.cfg, stage.device
    train = load_data(cfg, "train800val200")
    test = eval_loader(cfg, load_data(cfg, "test"), device)
    model = build_model(cfg, train.num_classes)
    set_subnet(model, {n: dict.fromkeys("ABCDE", "none") for n in glora_layers(model)})
    compact_subnet(model)
    mark_trainable(model)
    model.to(device)
    trainer = Trainer(stage, model, train_loader(cfg, train, device), "retrain", amp=cfg["train"]["amp"])
    trainer.start()
    trainer.fit()
    if not stage.main:
        return stage.close()
    acc = evaluate(model, test, device, cfg["train"]["amp"])
    save_json(stage.dir / "results.json", {"task": cfg["data"]["task"], "test_acc": acc,
                                           "head_params": head_params(model),
                                           "trainable_params": count_params(model, trainable_only=True),
                                           "epochs": trainer.epochs})
    log.info("linear probe: test acc1 %.2f", acc)
    stage.close()


if __name__ == "__main__":
    cli(main, __doc__)
