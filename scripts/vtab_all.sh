#!/usr/bin/env bash
# Run every VTAB-1k task in turn, then write the results table to outputs/vtab/results.{md,csv}.
# Usage: scripts/vtab_all.sh [--resume] [--set key=value ...]; a failed task is reported and the rest go on.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
failed=()
for config in configs/vtab/*.yaml; do
  task=$(basename "$config" .yaml)
  bash scripts/vtab.sh "$task" "$@" || failed+=("$task")
done
"$PYTHON" scripts/summarize.py outputs/vtab
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed tasks: ${failed[*]}" >&2
  exit 1
fi
