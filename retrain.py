"""Stage 3: retrain the chosen subnet on train800val200, test it, merge it into a plain timm ViT, export.

`retrain.epochs: 0` trains nothing: the subnet is tested with the supernet's weights (protocol
release-2023 reports it so). `data.test_sets` tests the merged model on further sets too (domain
generalization), each restricted to the classes it holds where the registry says so (ImageNet-A, -R)."""
import copy
import time

from engine import method, protocol
from engine.experiment import (benchmark_labels, build_model, check_test_sets, eval_loader, export_metadata,
                               load_data, load_test_sets, save_hub, test_on_sets, train_loader)
from engine.loops import evaluate
from engine.run import Stage, cli, log
from engine.trainer import Trainer
from glora import compact_subnet, load_adapters, merge_glora, save_adapters, save_subnet, set_subnet, subnet_params
from glora.errors import UserError
from glora.inject import head_params, mark_trainable
from glora.io import save_json
from glora.merge import export_merged
from glora.model import count_params


def main(args):
    stage = Stage("retrain", args)
    cfg, device, r = stage.cfg, stage.device, stage.cfg["retrain"]
    method.check_upstream(stage)
    check_test_sets(cfg, stage.data["num_classes"])  # before any work

    train = load_data(cfg, protocol.split(cfg, "retrain"))
    test_split = load_data(cfg, "test")
    test = eval_loader(cfg, test_split, device)  # streamed from its cache file if large
    test_sets = load_test_sets(cfg, train.num_classes)
    model = build_model(cfg, train.num_classes)
    subnet, meta = method.retrain_subnet(cfg, model)
    if r["init"] == "supernet":
        load_adapters(model, method.supernet_file(cfg))
    set_subnet(model, subnet)
    compact_subnet(model)  # only the subnet's own parameters exist, and train
    mark_trainable(model)
    backbone_params = method.train_backbone(model, r["backbone"])
    model.to(device)
    adapter_params = subnet_params(model, subnet)
    if "params" in meta and meta["params"] != adapter_params:
        raise UserError(f"retrain.subnet={r['subnet']}: the file says {meta['params']} parameters but they count "
                        f"{adapter_params}; it was searched for another model or other glora settings")
    log.info("%s: subnet %s with %d adapter parameters (+ backbone %d, head %d), init from %s", cfg["method"],
             r["subnet"], adapter_params, backbone_params, head_params(model), r["init"])

    trainer = Trainer(stage, model, train_loader(cfg, train, device), "retrain", amp=cfg["train"]["amp"])
    trainer.start()
    trainer.fit()
    # The test accuracy of the final epoch (with epochs 0, of the supernet's weights), evaluated
    # once. Both evaluations run in float32 so that merged and unmerged agree (bf16 rounds the
    # two forms differently).
    start = time.perf_counter()
    test_acc = evaluate(model, test, device, amp=False)
    eval_seconds = time.perf_counter() - start
    if not stage.main:
        return stage.close()
    merged = merge_glora(copy.deepcopy(model))  # refuses non-finite weights before anything is written
    start = time.perf_counter()
    # A subnet of none but `none` merges into the very same layers: no merge applies, nothing to test.
    test_acc_merged = evaluate(merged, test, device, amp=False) if adapter_params else None
    merged_eval_seconds = time.perf_counter() - start
    shifted = test_on_sets(cfg, merged, test_sets, device, test_acc if test_acc_merged is None else test_acc_merged,
                           len(test_split))
    save_adapters(model, stage.dir / "adapters.safetensors", extra={"lineage": stage.lineage()})
    save_subnet(stage.dir / "subnet.yaml", subnet, params=adapter_params, source=r["subnet"])
    path = export_merged(merged, stage.dir / "merged.safetensors",
                         {**export_metadata(cfg, train.num_classes), "lineage": stage.lineage()})
    stage.writer.add_scalar("perf/test_acc1", test_acc, trainer.epoch)
    if test_acc_merged is not None:
        stage.writer.add_scalar("perf/test_acc1_merged", test_acc_merged, trainer.epoch)

    timings = {"retrain_train_s": trainer.train_seconds, "retrain_epoch_s": trainer.timings["epoch_seconds"],
               "test_eval_s": eval_seconds,
               "test_eval_merged_s": merged_eval_seconds, **method.upstream_timings(cfg)}
    results = {
        "method": cfg["method"], "task": cfg["data"]["task"], "model": cfg["model"]["name"],
        "num_classes": train.num_classes, "test_acc": test_acc, "test_acc_merged": test_acc_merged,
        "adapter_params": adapter_params, "backbone_params": backbone_params, "head_params": head_params(merged),
        "trainable_params": count_params(model, trainable_only=True), "subnet": r["subnet"],
        "backbone": r["backbone"], "val_acc1_search": meta.get("val_acc1"), "init": r["init"], "epochs": trainer.epochs,
        "merged_checkpoint": str(path), "timings": timings, "peak_memory_mb": stage.peak_memory_mb(),
        "compile": trainer.compiler.report(),
        **protocol.describe(cfg), **benchmark_labels(cfg),
    }
    if "test_acc1" in meta:  # release-2023: the search scored this subnet on test
        results["test_acc1_search"] = meta["test_acc1"]
    if shifted:
        results["test_sets"] = shifted
    save_json(stage.dir / "results.json", results)
    save_hub(cfg, merged, results)
    log.info("test acc1 %.2f, merged %s, %d trainable params -> %s%s", test_acc,
             "–" if test_acc_merged is None else f"{test_acc_merged:.2f}", results["trainable_params"], path,
             " (protocol release-2023: test-selected)" if results["test_selected"] else "")
    for name, row in shifted.items():
        log.info("test set %s: acc1 %.2f over %d images (%s)", name, row["test_acc"], row["images"], row["classes"])
    stage.close()


if __name__ == "__main__":
    cli(main, __doc__)
