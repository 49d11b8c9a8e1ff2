#!/usr/bin/env bash
# The offline demo: build the bundled digits task, pretrain a tiny ViT on it without labels, run the
# three stages and a linear probe of the same backbone, then print the results table. A few minutes on a 2-core CPU.
# Usage: scripts/demo.sh [--resume] [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" -m data build-demo --root outputs/demo-data
"$PYTHON" scripts/demo_backbone.py configs/demo.yaml outputs/demo-data/backbone.safetensors
for stage in train.py search.py retrain.py scripts/linear_probe.py; do
  "$PYTHON" "$stage" configs/demo.yaml "$@"
done
"$PYTHON" scripts/summarize.py outputs/demo --baseline linear_probe
