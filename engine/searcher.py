"""The generation loop of the search stage: resume, curves, the candidate log, checkpoints and
stop signals around search.evolution.EvolutionSearch (which is the algorithm and knows none of them)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from glora.io import atomic_write
from search.evolution import EvolutionSearch

from .checkpoint import latest_state, save_checkpoint
from .run import Stage, log
from .stop import Stopped


class Searcher:
    """Runs `evo`'s remaining generations for `stage`, as engine.trainer.Trainer runs epochs:
    after each generation rank 0 rewrites `candidates.jsonl` and the checkpoint, and a stop
    signal ends the loop there."""

    def __init__(self, stage: Stage, evo: EvolutionSearch):
        self.stage, self.evo = stage, evo
        self.generations = stage.cfg["search"]["generations"]
        self.ckpt_dir, self.log_file = stage.dir / "checkpoint", stage.dir / "candidates.jsonl"
        self.seconds = 0.0  # spent scoring, over every run of the search

    def start(self) -> int:
        """With --resume continue from the run's last checkpoint. Returns the generations done."""
        state = latest_state(self.ckpt_dir, self.stage.run) if self.stage.resume else None
        if state is not None:
            self.evo.load_state(state["evolution"])
            self.seconds = float(state["seconds"])
            log.info("resumed from the checkpoint of run %s after generation %d of %d (%d candidates scored)",
                     self.stage.run, self.evo.generation, self.generations, len(self.evo.records))
        elif self.stage.resume:
            log.info("no checkpoint of this run in %s yet: it starts from generation 0", self.ckpt_dir)
        return self.evo.generation

    def fit(self) -> None:
        stage, evo = self.stage, self.evo
        bar = tqdm(range(evo.generation, self.generations), desc="search", initial=evo.generation,
                   total=self.generations, disable=not stage.main)
        for _ in bar:
            start = time.perf_counter()
            records = evo.step()
            self.seconds += time.perf_counter() - start
            for tag, value in evo.scalars(records).items():
                stage.writer.add_scalar(tag, value, evo.generation)
            stage.writer.flush()  # every checkpointed generation has its curves on disk
            best = evo.best()
            bar.set_postfix(best=f"{best.acc1:.2f}", params=f"{best.params / 1e6:.3f}M")
            if stage.main:  # the candidate log is rewritten whole, so a resumed run never repeats a line
                lines = "".join(json.dumps(r.log_line()) + "\n" for r in evo.records.values())
                atomic_write(self.log_file, lambda tmp: Path(tmp).write_text(lines))
                save_checkpoint(self.ckpt_dir, stage.run, {"evolution": evo.state(), "seconds": self.seconds})
            if stage.stop.requested():  # under torchrun every rank asks: all stop after the same generation
                raise Stopped(f"{stage.stop.received or 'a signal to another rank'} after generation "
                              f"{evo.generation} of {self.generations} (checkpoint written)")
