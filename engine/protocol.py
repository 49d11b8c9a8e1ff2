"""The protocols a run follows: which split each stage reads, and how its numbers are labelled.

- honest (the default): the supernet trains on train800, the search scores on val200, the retrain
  trains on train800val200 and reports the test accuracy of its final epoch, evaluated once.
- release-2023: the authors' code as the paper came out: the supernet trains on train800val200,
  the search scores every candidate on test, nothing is retrained (retrain.epochs: 0 evaluates the
  subnet with the supernet's weights): the reported accuracy is the best candidate's test accuracy,
  a test-selected number, and labelled so wherever it is printed.
"""
from __future__ import annotations

from glora.errors import UserError

HONEST, RELEASE_2023 = "honest", "release-2023"
PROTOCOLS = (HONEST, RELEASE_2023)
# stage use -> split: the supernet's training and validation, the search's scoring, the retrain's training
_SPLITS = {
    HONEST: {"supernet": "train800", "supernet_val": "val200", "search": "val200", "retrain": "train800val200"},
    RELEASE_2023: {"supernet": "train800val200", "supernet_val": "val200", "search": "test", "retrain": "train800val200"},
}
LABELS = {HONEST: "honest", RELEASE_2023: "test-selected"}
DESCRIPTIONS = {
    HONEST: "honest: supernet on {train800}, search on {val200}, retrain on {train800val200}; test accuracy of the "
            "final epoch, evaluated once",
    RELEASE_2023: "release-2023 (test-selected): supernet on {train800val200}, every candidate scored on {test}, no "
                  "retrain; the accuracy is the best candidate's test accuracy, selected on the test set itself",
}
# What the splits are called in each benchmark's layout (data/layout.py).
_NAMES = {
    "vtab": {"train800": "train800", "val200": "val200", "train800val200": "train800val200", "test": "test"},
    "fewshot": {"train800": "the K-shot list", "val200": "val_meta.list", "train800val200": "the K-shot list",
                "test": "test_meta.list"},
    "dg": {"train800": "the K-shot list", "val200": "the selection list", "train800val200": "the K-shot list",
           "test": "the test list"},
}


def split(cfg: dict, use: str) -> str:
    """The split a stage reads for `use` (supernet, supernet_val, search, retrain) under the run's protocol."""
    return _SPLITS[cfg["protocol"]][use]


def check(cfg: dict) -> None:
    """The protocol's demands on the rest of the config."""
    if cfg["protocol"] == RELEASE_2023:
        r = cfg["retrain"]
        if r["epochs"] != 0 or r["subnet"] != "searched" or r["init"] != "supernet":
            raise UserError("protocol=release-2023 has no retrain: it reports the searched subnet with the supernet's "
                            "weights; set retrain.epochs=0 (retrain.subnet=searched, retrain.init=supernet), e.g. with "
                            "configs/protocols/release-2023.yaml")
    if cfg["retrain"]["epochs"] == 0 and cfg["retrain"]["init"] != "supernet":
        raise UserError("retrain.epochs=0 evaluates the subnet with the supernet's weights, but retrain.init=scratch "
                        "has none (an untrained head): set retrain.init=supernet or retrain.epochs ≥ 1")


def description(cfg: dict) -> str:
    """One line on the run's protocol, in its benchmark's names for the splits."""
    return DESCRIPTIONS[cfg["protocol"]].format(**_NAMES[cfg["data"]["benchmark"]])


def describe(cfg: dict) -> dict:
    """What a results file says of its protocol."""
    p = cfg["protocol"]
    return {"protocol": p, "test_selected": p == RELEASE_2023, "protocol_label": LABELS[p],
            "protocol_description": description(cfg)}
