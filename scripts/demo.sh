#!/usr/bin/env bash
# The offline demo: build the bundled digits task, run the three stages and a linear probe of the
# same backbone on a tiny ViT, then print the results table. A few minutes on a 2-core CPU.
# Usage: scripts/demo.sh [--resume] [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" -m data build-demo --root outputs/demo-data
for stage in train.py search.py retrain.py scripts/linear_probe.py; do
  "$PYTHON" "$stage" configs/demo.yaml "$@"
done
"$PYTHON" scripts/summarize.py outputs/demo --baseline linear_probe
