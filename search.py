"""Stage 2: evolutionary search on val200 (test under protocol release-2023: test-selected) for the
best subnet within the parameter budget.

Under torchrun every rank scores its share of each generation and rank 0 writes every file."""
import json
import time
from pathlib import Path

from tqdm import tqdm

from engine import distributed, method, protocol
from engine.checkpoint import latest_state, save_checkpoint
from engine.experiment import build_model, eval_loader, load_data
from engine.figures import draw_search
from engine.run import Stage, cli, log
from engine.stop import Stopped
from glora import save_subnet
from glora.io import atomic_write, save_json
from search.evolution import EvolutionSearch
from search.score import SubnetScorer


def main(args):
    stage = Stage("search", args)
    cfg, device, s = stage.cfg, stage.device, stage.cfg["search"]
    method.check_has_supernet(cfg, "search.py")
    family = method.family(cfg)
    supernet_file = stage.upstream(method.supernet_rel(cfg), "no trained supernet; run train.py with this config first")
    scored_on = protocol.split(cfg, "search")
    if scored_on == "test":
        log.warning("protocol %s: every candidate is scored on the test split; the accuracy this search selects "
                    "is test-selected", cfg["protocol"])
    val = load_data(cfg, scored_on)
    model = build_model(cfg, val.num_classes).to(device)
    family.load(model, supernet_file)
    model.eval()

    space = method.candidates(cfg, family, model)
    scorer = SubnetScorer(family.scoring_model(model), eval_loader(cfg, val, device), cfg["train"]["amp"])
    evo = EvolutionSearch(space, scorer, generations=s["generations"], population=s["population"],
                          parents=s["parents"], mutations=s["mutations"], mutation_prob=s["mutation_prob"],
                          crossovers=s["crossovers"], seed=cfg["seed"], early_stop=s["early_stop"],
                          rank=distributed.rank(), world_size=distributed.world_size(), gather=distributed.all_gather)

    ckpt, log_file = stage.dir / "checkpoint", stage.dir / "candidates.jsonl"
    seconds = 0.0
    state = latest_state(ckpt, stage.run) if stage.resume else None
    if state is not None:
        evo.load_state(state["evolution"])
        seconds = float(state["seconds"])
        log.info("resumed from the checkpoint of run %s after generation %d (%d candidates scored)", stage.run,
                 evo.generation, len(evo.records))
    elif stage.resume:
        log.info("no checkpoint of this run in %s yet: it starts from generation 0", ckpt)
    stage.begin(evo.generation)

    bar = tqdm(range(evo.generation, s["generations"]), desc="search", initial=evo.generation,
               total=s["generations"], disable=not stage.main)
    for _ in bar:
        start = time.perf_counter()
        records = evo.step()
        seconds += time.perf_counter() - start
        for tag, value in evo.scalars(records).items():
            stage.writer.add_scalar(tag, value, evo.generation)
        stage.writer.flush()  # every checkpointed generation has its curves on disk
        best = evo.best()
        bar.set_postfix(best=f"{best.acc1:.2f}", params=f"{best.params / 1e6:.3f}M")
        if stage.main:  # the candidate log is rewritten whole, so a resumed run never repeats a line
            lines = "".join(json.dumps(r.log_line()) + "\n" for r in evo.records.values())
            atomic_write(log_file, lambda tmp: Path(tmp).write_text(lines))
            save_checkpoint(ckpt, stage.run, {"evolution": evo.state(), "seconds": seconds})
        if stage.stop.requested():  # under torchrun every rank asks: all stop after the same generation
            raise Stopped(f"{stage.stop.received or 'a signal to another rank'} after generation {evo.generation} "
                          f"of {s['generations']} (checkpoint written)")
    if not stage.main:
        return stage.close()

    best = evo.best()
    acc_key = "test_acc1" if scored_on == "test" else "val_acc1"
    path = save_subnet(stage.dir / "best_subnet.yaml", space.subnet(best.key), params=best.params,
                       **{acc_key: best.acc1}, scored_on=scored_on, protocol=cfg["protocol"],
                       generation=best.generation, budget=list(s["budget"]),
                       **family.subnet_metadata(), lineage=stage.lineage())
    records = evo.records.values()
    # the figure plots accuracies: a candidate stopped early has only a bound
    draw_search(stage.dir, [vars(r) for r in records if not r.pruned], vars(best), s["budget"], space.subnet(best.key),
                stage.writer, evo.generation)
    save_json(stage.dir / "summary.json", {
        f"best_{acc_key}": best.acc1, "scored_on": scored_on, **protocol.describe(cfg), "best_params": best.params, "candidates_scored": len(records),
        "candidates_pruned": sum(r.pruned for r in records), "images_forwarded": sum(r.images or 0 for r in records),
        "generations": evo.generation, "search_seconds": seconds, "processes": distributed.world_size(),
        "best_subnet": str(path), "peak_memory_mb": stage.peak_memory_mb(),
    })
    log.info("best subnet: %s acc1 %.2f%s with %d adapter parameters -> %s", scored_on, best.acc1,
             " (test-selected)" if scored_on == "test" else "", best.params, path)
    stage.close()


if __name__ == "__main__":
    cli(main, __doc__)
