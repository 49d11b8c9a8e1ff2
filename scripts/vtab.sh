#!/usr/bin/env bash
# Run one VTAB-1k task: the three GLoRA stages into outputs/vtab/TASK/, or, with --method NAME, the
# stages that method needs (configs/methods/NAME.yaml over the task's config) into outputs/vtab/NAME/TASK/.
# Usage: scripts/vtab.sh TASK [--method NAME] [--resume] [--set key=value ...]   (e.g. --set data.root=/data/vtab-1k)
set -euo pipefail
cd "$(dirname "$0")/.."
methods=$(ls configs/methods | sed 's/\.yaml//' | tr '\n' ' ')
if [ $# -lt 1 ]; then
  echo "usage: scripts/vtab.sh TASK [--method NAME] [--resume] [--set key=value ...]; tasks: $(ls configs/vtab | sed 's/\.yaml//' | tr '\n' ' '); methods: $methods" >&2
  exit 2
fi
task=$1; shift
configs=(configs/vtab/$task.yaml)
if [ ! -f "${configs[0]}" ]; then
  echo "error: no config ${configs[0]}; for a task of your own, copy one and set data.task and data.root" >&2
  exit 2
fi
args=()
while [ $# -gt 0 ]; do
  if [ "$1" = --method ]; then
    if [ $# -lt 2 ] || [ ! -f "configs/methods/$2.yaml" ]; then
      echo "error: --method ${2:-}: no preset configs/methods/${2:-}.yaml; methods: $methods" >&2
      exit 2
    fi
    configs+=("configs/methods/$2.yaml")
    args=(--set "output=outputs/vtab/$2/$task" "${args[@]}")  # before the user's --set: theirs win
    shift 2
  else
    args+=("$1"); shift
  fi
done
PYTHON=${PYTHON:-python}
scripts=$("$PYTHON" -m engine.method "${configs[@]}" "${args[@]}")
for script in $scripts; do
  "$PYTHON" "$script" "${configs[@]}" "${args[@]}"
done
