"""Stage 2: evolutionary search on val200 (test under protocol release-2023: test-selected) for the
best subnet within the parameter budget.

Under torchrun every rank scores its share of each generation and rank 0 writes every file."""
from engine import distributed, method, protocol
from engine.experiment import build_model, eval_loader, load_data
from engine.figures import draw_search
from engine.run import cli, log
from engine.searcher import Searcher
from glora import save_subnet
from glora.io import save_json
from search.evolution import EvolutionSearch
from search.score import SubnetScorer


def main(stage):
    cfg, device, s = stage.cfg, stage.device, stage.cfg["search"]
    method.check_has_supernet(cfg, "search.py")
    family = method.family(cfg)
    scored_on = protocol.split(cfg, "search")
    if scored_on == "test":
        log.warning("protocol %s: every candidate is scored on the test split; the accuracy this search selects "
                    "is test-selected", cfg["protocol"])
    val = load_data(cfg, scored_on)
    model = build_model(cfg, val.num_classes).to(device)
    family.load(model, method.supernet_file(cfg))
    model.eval()

    space = method.candidates(cfg, family, model)
    scorer = SubnetScorer(family.scoring_model(model), eval_loader(cfg, val, device), cfg["train"]["amp"])
    evo = EvolutionSearch(space, scorer, generations=s["generations"], population=s["population"],
                          parents=s["parents"], mutations=s["mutations"], mutation_prob=s["mutation_prob"],
                          crossovers=s["crossovers"], seed=cfg["seed"], early_stop=s["early_stop"],
                          rank=distributed.rank(), world_size=distributed.world_size(), gather=distributed.all_gather)

    searcher = Searcher(stage, evo)
    with stage.begin(searcher.start()):
        searcher.fit()
        if stage.main:
            write_results(stage, family, evo, space, scored_on, searcher.seconds)


def write_results(stage, family, evo, space, scored_on, seconds):
    """best_subnet.yaml (what the retrain reads), the figures and summary.json."""
    cfg, s = stage.cfg, stage.cfg["search"]
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
        f"best_{acc_key}": best.acc1, "scored_on": scored_on, **protocol.describe(cfg), "best_params": best.params,
        "candidates_scored": len(records), "candidates_pruned": sum(r.pruned for r in records),
        "images_forwarded": sum(r.images or 0 for r in records), "generations": evo.generation,
        "search_seconds": seconds, "processes": distributed.world_size(), "best_subnet": str(path),
        "peak_memory_mb": stage.peak_memory_mb(),
    })
    log.info("best subnet: %s acc1 %.2f%s with %d adapter parameters -> %s", scored_on, best.acc1,
             " (test-selected)" if scored_on == "test" else "", best.params, path)


if __name__ == "__main__":
    cli("search", main, __doc__)
