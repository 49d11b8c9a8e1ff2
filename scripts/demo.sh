#!/usr/bin/env bash
# The offline demo: build the bundled digits task, pretrain a tiny ViT on it without labels, then run
# GLoRA (supernet, search, retrain) and three baselines of the same backbone (GLoRA with one config
# for every layer, LoRA, a linear probe) as one grid of scripts/launch.py into outputs/demo/<method>/,
# showing each cell's progress, and print the results table.
# Reproducible: every process computes on one thread (OMP_NUM_THREADS=1 here and --cpus-per-job 1
# for the grid's jobs), so its float sums run in one fixed order and the same machine gives the same
# table every time; the four cells run side by side (--slots 4) to use the cores one thread leaves.
# Usage: scripts/demo.sh [--set key=value ...]   (launch it again to resume: complete stages are skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
"$PYTHON" -m data build-demo --root outputs/demo-data
"$PYTHON" scripts/demo_backbone.py configs/demo.yaml outputs/demo-data/backbone.safetensors
exec "$PYTHON" scripts/launch.py --name demo --experiment configs/demo.yaml --tasks digits \
  --configs glora glora-uniform lora linear --slots 4 --cpus-per-job 1 "$@"
