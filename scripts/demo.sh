#!/usr/bin/env bash
# The offline demo: build the bundled digits task, pretrain a tiny ViT on it without labels, then run
# GLoRA (supernet, search, retrain) and three baselines of the same backbone (GLoRA with one config
# for every layer, LoRA, a linear probe) as one grid of scripts/launch.py into outputs/demo/<method>/,
# and print the results table. A few minutes on a 2-core CPU.
# Usage: scripts/demo.sh [--set key=value ...]   (launch it again to resume: complete stages are skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" -m data build-demo --root outputs/demo-data
"$PYTHON" scripts/demo_backbone.py configs/demo.yaml outputs/demo-data/backbone.safetensors
exec "$PYTHON" scripts/launch.py --name demo --experiment configs/demo.yaml --tasks digits \
  --configs glora glora-uniform lora linear "$@"
