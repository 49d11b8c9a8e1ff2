"""`python tests/kill_after_checkpoint.py SCRIPT ARGS...`: run a stage script whose rank 0 dies
(os._exit, no clean-up) right after writing its first checkpoint; under torchrun the other ranks
are then torn down, as when one rank of a real run is killed."""
import os
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine.trainer

_save = engine.trainer.save_checkpoint


def _save_then_die(*args, **kwargs):
    _save(*args, **kwargs)
    os._exit(9)


engine.trainer.save_checkpoint = _save_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
