"""The run harness of the three stages: config, stage runner, training/eval loops, checkpoints,
experiment building, torchrun and figures. It builds on `glora` (the method), `data` and `search`;
none of those imports it."""
