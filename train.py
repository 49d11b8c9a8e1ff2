"""Stage 1: train the supernet (GLoRA's, or another adapter family's) on train800 (train800val200
under protocol release-2023), one random subnet per forward pass."""
import random
import time

from engine import method, protocol
from engine.experiment import build_model, eval_loader, load_data, train_loader
from engine.loops import evaluate
from engine.run import cli, log
from engine.trainer import Trainer
from glora.inject import head_params
from glora.io import save_json
from glora.model import count_params


def main(stage):
    method.check_trains_supernet(stage.cfg)
    cfg, device, family = stage.cfg, stage.device, method.family(stage.cfg)
    train = load_data(cfg, protocol.split(cfg, "supernet"))
    val = eval_loader(cfg, load_data(cfg, protocol.split(cfg, "supernet_val")), device)
    sampler = random.Random(cfg["seed"])  # every sampled subnet comes from here
    model = build_model(cfg, train.num_classes, sampler).to(device)
    log.info("trainable parameters: %d (head %d)", count_params(model, trainable_only=True), head_params(model))

    # A few fixed subnets whose validation accuracy tracks how the supernet as a whole learns.
    references = [family.sample_subnet(model, random.Random(cfg["seed"] + 1 + i))
                  for i in range(cfg["train"]["eval_subnets"])]

    def validate():
        accs = {}
        for i, subnet in enumerate(references):
            family.set_subnet(model, subnet)
            accs[f"perf/val_acc1/subnet{i}"] = evaluate(trainer.eval_model, val, device, cfg["train"]["amp"])
        family.set_subnet(model, None)
        if accs:
            accs["perf/val_acc1"] = sum(accs.values()) / len(accs)
        return accs

    trainer = Trainer(stage, model, train_loader(cfg, train, device), "train", validate,
                      cfg["train"]["eval_every"], sampler, cfg["train"]["amp"])
    with stage.begin(trainer.start()):
        start = time.perf_counter()
        metrics = trainer.fit()
        if not stage.main:
            return
        path = family.save(model, stage.dir / "supernet.safetensors", extra={"epochs": trainer.epochs,
                                                                           "lineage": stage.lineage()})
        save_json(stage.dir / "summary.json", {
            "epochs": trainer.epochs, "train_seconds": trainer.train_seconds,
            "wall_seconds_this_run": time.perf_counter() - start, "num_classes": train.num_classes,
            "val_acc1_reference_subnets": metrics, "supernet": str(path), "peak_memory_mb": stage.peak_memory_mb(),
            "trained_on": protocol.split(cfg, "supernet"), **protocol.describe(cfg),
            "compile": trainer.compiler.report(), **trainer.timings,
        })
        log.info("supernet written to %s", path)


if __name__ == "__main__":
    cli("supernet", main, __doc__)
