#!/usr/bin/env bash
# Run the three GLoRA stages for one VTAB-1k task into outputs/vtab/TASK/.
# Usage: scripts/vtab.sh TASK [--resume] [--set key=value ...]   (e.g. --set data.root=/data/vtab-1k)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: scripts/vtab.sh TASK [--resume] [--set key=value ...]; tasks: $(ls configs/vtab | sed 's/\.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
task=$1; shift
config=configs/vtab/$task.yaml
if [ ! -f "$config" ]; then
  echo "error: no config $config; for a task of your own, copy one and set data.task and data.root" >&2
  exit 2
fi
PYTHON=${PYTHON:-python}
for stage in train search retrain; do
  "$PYTHON" "$stage.py" "$config" "$@"
done
