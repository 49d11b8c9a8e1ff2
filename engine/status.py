"""Exit statuses of the stage scripts (train.py, search.py, retrain.py), for people and launchers."""

OK = 0  # the stage is done
USER_ERROR = 2  # bad input, an OS error on the outputs or a refused resume: one `error:` line says why
STOPPED = 75  # EX_TEMPFAIL (sysexits.h): a signal stopped it after a checkpoint; the same command with --resume continues
