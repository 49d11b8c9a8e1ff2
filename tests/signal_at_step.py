"""`python tests/signal_at_step.py SIGNAL STEP SCRIPT ARGS...`: run a stage script that sends itself
SIGNAL (e.g. SIGTERM) right after its STEP-th step (a training batch, or a search generation), as
a cluster or a user would mid-run. Under torchrun only rank 1 receives it: the others must learn
of it from the ranks' agreement."""
import os
import runpy
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine.trainer
import search.evolution

SIGNAL, STEP = signal.Signals[sys.argv[1]], int(sys.argv[2])
_steps = []


def _then_signal(step):
    def stepped(*args, **kwargs):
        out = step(*args, **kwargs)
        _steps.append(1)
        if len(_steps) == STEP and os.environ.get("RANK", "1") == "1":
            os.kill(os.getpid(), SIGNAL)
        return out

    return stepped


engine.trainer.train_step = _then_signal(engine.trainer.train_step)
search.evolution.EvolutionSearch.step = _then_signal(search.evolution.EvolutionSearch.step)
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
