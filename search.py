"""Stage 2: evolutionary search on val200 for the best subnet within the parameter budget."""
import json
import time
from pathlib import Path

from tqdm import tqdm

from engine import distributed
from glora import load_adapters, save_subnet
from glora.errors import UserError
from engine.experiment import build_model, eval_tensors, load_data
from engine.figures import draw_search
from glora.io import atomic_write, load_yaml, save_json, save_yaml
from engine.run import Stage, cli, log
from search.evolution import CandidateSpace, EvolutionSearch
from search.score import MergedScorer


def main(args):
    stage = Stage("search", args)
    if distributed.world_size() > 1:
        raise UserError("search.py runs in one process (it scores candidates one by one); start it with python, not torchrun")
    cfg, device, s = stage.cfg, stage.device, stage.cfg["search"]
    supernet_file = stage.root / "supernet" / "supernet.safetensors"
    if not supernet_file.is_file():
        raise UserError(f"{supernet_file}: no trained supernet; run train.py with this config first")
    val = load_data(cfg, "val200")
    model = build_model(cfg, val.num_classes).to(device)
    load_adapters(model, supernet_file)
    model.eval()

    space = CandidateSpace.from_model(model, s["budget"], s["max_tries"])
    images, labels = eval_tensors(cfg, val, device)
    scorer = MergedScorer(model, images, labels, cfg["data"]["eval_batch_size"], cfg["train"]["amp"])
    evo = EvolutionSearch(space, scorer, generations=s["generations"], population=s["population"],
                          parents=s["parents"], mutations=s["mutations"], mutation_prob=s["mutation_prob"],
                          crossovers=s["crossovers"], seed=cfg["seed"])

    ckpt, log_file = stage.dir / "checkpoint.yaml", stage.dir / "candidates.jsonl"
    seconds = 0.0
    if stage.resume and ckpt.is_file():
        state = load_yaml(ckpt)
        evo.load_state(state["evolution"])
        seconds = float(state["seconds"])
        log.info("resumed after generation %d (%d candidates scored)", evo.generation, len(evo.records))
    elif stage.resume:
        log.info("no checkpoint in %s: starting from generation 0", ckpt)
    stage.begin()

    bar = tqdm(range(evo.generation, s["generations"]), desc="search", initial=evo.generation, total=s["generations"])
    for _ in bar:
        start = time.perf_counter()
        records = evo.step()
        seconds += time.perf_counter() - start
        best = evo.best()
        accs = [r.acc1 for r in records]
        w = stage.writer
        w.add_scalar("search/best_acc1", best.acc1, evo.generation)
        w.add_scalar("search/mean_acc1", sum(accs) / len(accs), evo.generation)
        w.add_scalar("search/params_M", best.params / 1e6, evo.generation)
        bar.set_postfix(best=f"{best.acc1:.2f}", params=f"{best.params / 1e6:.3f}M")
        # The candidate log is rewritten whole from the records, so a resumed run never repeats a line.
        lines = "".join(json.dumps({"generation": r.generation, "acc1": r.acc1, "params": r.params,
                                    "layers": [",".join(c) for c in r.key]}) + "\n" for r in evo.records.values())
        atomic_write(log_file, lambda tmp: Path(tmp).write_text(lines))
        save_yaml(ckpt, {"evolution": evo.state(), "seconds": seconds})

    best = evo.best()
    path = save_subnet(stage.dir / "best_subnet.yaml", space.subnet(best.key), params=best.params,
                       val_acc1=best.acc1, generation=best.generation, budget=list(s["budget"]),
                       ranks=list(cfg["glora"]["ranks"]))
    draw_search(stage.dir, [vars(r) for r in evo.records.values()], vars(best), s["budget"], space.subnet(best.key),
                stage.writer, evo.generation)
    save_json(stage.dir / "summary.json", {
        "best_val_acc1": best.acc1, "best_params": best.params, "candidates_scored": len(evo.records),
        "generations": evo.generation, "search_seconds": seconds, "best_subnet": str(path),
        "peak_memory_mb": stage.peak_memory_mb(),
    })
    log.info("best subnet: val acc1 %.2f with %d adapter parameters -> %s", best.acc1, best.params, path)
    stage.close()


if __name__ == "__main__":
    cli(main, __doc__)
