"""Stage 3: retrain the chosen subnet (or a family's fixed adapters) on train800val200, test it, export it:
merged into a plain timm ViT where the adapter family merges, else as its adapters with a model card
that states their measured inference cost.

`retrain.epochs: 0` trains nothing: the subnet is tested with the supernet's weights (protocol
release-2023 reports it so). `data.test_sets` tests the final model on further sets too (domain
generalization), each restricted to the classes it holds where the registry says so (ImageNet-A, -R)."""
import copy
import time

from engine import method, protocol
from engine.experiment import (benchmark_labels, check_test_sets, eval_loader, export_metadata, inference_cost,
                               load_data, load_test_sets, save_card, save_hub, test_on_sets, train_loader)
from engine.loops import evaluate
from engine.run import cli, log
from engine.trainer import Trainer
from glora import save_subnet
from glora.inject import head_params
from glora.io import save_json
from glora.merge import export_merged
from glora.model import count_params


def main(stage):
    cfg, device, r = stage.cfg, stage.device, stage.cfg["retrain"]
    check_test_sets(cfg, stage.data["num_classes"])  # before any work
    train = load_data(cfg, protocol.split(cfg, "retrain"))
    test_split = load_data(cfg, "test")
    test = eval_loader(cfg, test_split, device)  # streamed from its cache file if large
    test_sets = load_test_sets(cfg, train.num_classes)
    built = method.retrain_model(cfg, train.num_classes)
    model = built.model.to(device)
    log.info("%s: %s with %d adapter parameters (+ backbone %d, head %d), init from %s", cfg["method"],
             f"subnet {r['subnet']}" if built.subnet is not None else f"family {built.family.name}",
             built.adapter_params, built.backbone_params, head_params(model), r["init"])

    trainer = Trainer(stage, model, train_loader(cfg, train, device), "retrain", amp=cfg["train"]["amp"])
    with stage.begin(trainer.start()):
        trainer.fit()
        # The test accuracy of the final epoch (with epochs 0, of the supernet's weights), evaluated
        # once. Both evaluations run in float32 so that merged and unmerged agree (bf16 rounds the
        # two forms differently).
        start = time.perf_counter()
        test_acc = evaluate(model, test, device, amp=False)
        timings = {"retrain_train_s": trainer.train_seconds, "retrain_epoch_s": trainer.timings["epoch_seconds"],
                   "test_eval_s": time.perf_counter() - start}
        if stage.main:
            export(stage, built, trainer.epochs, test, len(test_split), test_sets, test_acc, timings,
                   trainer.compiler.report())


def export(stage, built, epochs, test, test_images, test_sets, test_acc, timings, compiled):
    """Merge into a plain timm model where the family merges and test it (and on data.test_sets), and
    write the adapters, the subnet, the merged file, results.json (with `compiled`: what ran under
    torch.compile) and the Hub folder, or for a family that does not merge the model card with the
    adapters' measured inference cost."""
    cfg, device, r = stage.cfg, stage.device, stage.cfg["retrain"]
    model, subnet, family = built.model, built.subnet, built.family
    # merge refuses non-finite weights before anything is written
    merged = family.merge(copy.deepcopy(model)) if family.mergeable else None
    start = time.perf_counter()
    # A subnet of none but `none` merges into the very same layers: no merge applies, nothing to test.
    test_acc_merged = evaluate(merged, test, device, amp=False) if merged is not None and built.adapter_params else None
    timings["test_eval_merged_s"] = time.perf_counter() - start
    final = model if merged is None else merged
    shifted = test_on_sets(cfg, final, test_sets, device, test_acc if test_acc_merged is None else test_acc_merged,
                           test_images)
    num_classes = stage.data["num_classes"]
    described = {**export_metadata(cfg, num_classes), "lineage": stage.lineage()}  # what the files say
    adapters = family.save(model, stage.dir / "adapters.safetensors", extra=described)
    if subnet is not None:
        save_subnet(stage.dir / "subnet.yaml", subnet, params=built.adapter_params, source=r["subnet"])
    path = None if merged is None else export_merged(merged, stage.dir / "merged.safetensors", described)
    stage.writer.add_scalar("perf/test_acc1", test_acc, epochs)
    if test_acc_merged is not None:
        stage.writer.add_scalar("perf/test_acc1_merged", test_acc_merged, epochs)

    results = {
        "method": cfg["method"], "family": family.name, "task": cfg["data"]["task"], "model": cfg["model"]["name"],
        "num_classes": num_classes, "test_acc": test_acc, "test_acc_merged": test_acc_merged,
        "adapter_params": built.adapter_params, "backbone_params": built.backbone_params,
        "head_params": head_params(final), "trainable_params": count_params(model, trainable_only=True),
        "subnet": None if subnet is None else r["subnet"], "backbone": r["backbone"],
        "val_acc1_search": built.source.get("val_acc1"), "init": r["init"], "epochs": epochs,
        "merged_checkpoint": None if path is None else str(path), "adapters_checkpoint": str(adapters),
        "timings": {**timings, **method.upstream_timings(cfg)}, "peak_memory_mb": stage.peak_memory_mb(),
        "compile": compiled, **protocol.describe(cfg), **benchmark_labels(cfg),
    }
    if test_acc_merged is None:
        results["why_not_merged"] = method.why_not_merged(family, built.adapter_params)
    if merged is None:  # what the adapters cost at inference, against the plain model, timed here
        results["inference"] = inference_cost(cfg, model, test, device)
    if "test_acc1" in built.source:  # release-2023: the search scored this subnet on test
        results["test_acc1_search"] = built.source["test_acc1"]
    if shifted:
        results["test_sets"] = shifted
    results["config"] = cfg  # the resolved config, every key (engine/keys.py)
    save_json(stage.dir / "results.json", results)
    card = save_hub(cfg, merged, results) if merged is not None else save_card(cfg, family, results)
    log.info("test acc1 %.2f, merged %s, %d trainable params -> %s%s", test_acc,
             "–" if test_acc_merged is None else f"{test_acc_merged:.2f}", results["trainable_params"], path or card,
             " (protocol release-2023: test-selected)" if results["test_selected"] else "")
    for name, row in shifted.items():
        log.info("test set %s: acc1 %.2f over %d images (%s)", name, row["test_acc"], row["images"], row["classes"])


if __name__ == "__main__":
    cli("retrain", main, __doc__)
