"""The names this module held before it was split by idea, importable from here as before: class
counts (data/classes.py), a task's splits (data/splits.py), evaluation-only sets (data/test_sets.py)
and the uncached dataset (data/dataset.py)."""

from .classes import label_problems, resolve_num_classes, task_num_classes
from .dataset import VTABDataset
from .splits import SplitData, load_split, read_split
from .test_sets import load_test_set, read_test_set

__all__ = ["SplitData", "VTABDataset", "label_problems", "load_split", "load_test_set", "read_split", "read_test_set",
           "resolve_num_classes", "task_num_classes"]
