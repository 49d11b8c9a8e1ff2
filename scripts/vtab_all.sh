#!/usr/bin/env bash
# Every VTAB-1k task as one grid of scripts/launch.py: outputs/vtab_all/<task>/seed<k>/, then the table
# outputs/vtab_all/results.md. Launch it again to resume: complete stages are skipped, started ones resumed.
# Usage: scripts/vtab_all.sh [--seeds 0 1 2] [--executor slurm --partition P ...] [--set key=value ...]
# (any option of scripts/launch.py; a failed task is reported and the others go on).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/launch.py --name vtab_all --tasks vtab "$@"
