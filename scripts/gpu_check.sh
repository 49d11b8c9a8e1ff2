#!/usr/bin/env bash
# GPU run-book: on one GPU, in at most 8 minutes (one H100), run
#   1. the CUDA tests (pytest -m cuda),
#   2. a short three-stage run of a randomly initialised ViT-B/16 on a synthetic 224-px task
#      (bf16 autocast, batch 64, eval batch 256, a 5,000-image test split),
#   3. the benchmark's GPU mode (python -m bench --quick: ViT-B/16, batch 64, bf16),
#   4. the rest of the test suite, in the time left,
# and write every figure to OUT/gpu_check.json (each part's status and seconds, the card, the
# stages' timings and peak memory, the bench rows). A failed or timed-out part is recorded and the
# next one runs.
#
# Usage: bash scripts/gpu_check.sh [--out DIR] [--tests all|cuda|none] [--skip PARTS] [--seconds N] [--smoke]
#   --out DIR       where everything goes (default outputs/gpu_check)
#   --tests WHICH   all (default): the CUDA tests first, the others last; cuda: only those; none
#   --skip PARTS    comma-separated parts to leave out, of: stages,bench
#   --seconds N     the whole run's time limit (default 470); each part gets at most what is left
#   --smoke         a tiny ViT and a 32-px task, on the CPU if there is no GPU: checks this script
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

out=outputs/gpu_check tests=all skip="" seconds=470 smoke=0
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; out=$2; shift 2 ;;
    --tests) [ $# -ge 2 ] || die "--tests needs all, cuda or none"; tests=$2; shift 2 ;;
    --skip) [ $# -ge 2 ] || die "--skip needs parts, e.g. --skip bench"; skip=$2; shift 2 ;;
    --seconds) [ $# -ge 2 ] || die "--seconds needs a number"; seconds=$2; shift 2 ;;
    --smoke) smoke=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case $tests in all|cuda|none) ;; *) die "--tests $tests: use all, cuda or none" ;; esac
[[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -ge 60 ] || die "--seconds $seconds: give a whole number of seconds, at least 60"
for part in ${skip//,/ }; do
  case $part in stages|bench) ;; *) die "--skip $part: the parts that can be skipped are stages and bench" ;; esac
done
skipped() { [[ ",$skip," == *",$1,"* ]]; }

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null) || die "cannot import torch with $PYTHON"
if [ "$gpus" -eq 0 ] && [ $smoke -eq 0 ]; then
  die "no CUDA GPU is visible: this run-book needs one (use --smoke to check the script itself on a CPU)"
fi
device=cuda; [ "$gpus" -eq 0 ] && device=cpu
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
parts="$out/parts.jsonl"
: > "$parts"
deadline=$(( $(date +%s) + seconds ))

# part NAME CAP_SECONDS COMMAND...: run it with the smaller of CAP and the time left, log to OUT/NAME.log,
# and append {"part", "status", "seconds"} to parts.jsonl.
part() {
  local name=$1 cap=$2; shift 2
  local left=$(( deadline - $(date +%s) ))
  local limit=$(( cap < left ? cap : left )) status start rc
  if [ $limit -lt 10 ]; then
    status=no_time; rc=0; start=$(date +%s)
  else
    echo "gpu_check: $name (at most ${limit} s)"
    start=$(date +%s)
    timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    tail -n 3 "$out/$name.log"
  fi
  echo "{\"part\": \"$name\", \"status\": \"$status\", \"exit\": $rc, \"seconds\": $(( $(date +%s) - start ))}" >> "$parts"
  echo "gpu_check: $name $status"
}

if [ $smoke -eq 1 ]; then
  img=32 task=synthetic32 test=100 epochs=1 gens=1 pop=4
  model="{name: vit_tiny_patch16_224, pretrained: false, kwargs: {img_size: 32, patch_size: 8, depth: 2, embed_dim: 48, num_heads: 3}}"
else
  img=224 task=synthetic224 test=5000 epochs=3 gens=2 pop=10
  model="{name: vit_base_patch16_224, pretrained: false}"
fi
cat > "$out/stages.yaml" <<EOF
# The run-book's three-stage run (written by scripts/gpu_check.sh).
output: $out/run
device: $device
model: $model
data: {root: $out/data, task: $task, img_size: $img, batch_size: 64, eval_batch_size: 256}
train: {epochs: $epochs, warmup_epochs: 1, eval_every: $epochs, eval_subnets: 2, ckpt_every: $epochs, amp: true}
search: {generations: $gens, population: $pop, parents: 4, mutations: $(( pop / 2 )), crossovers: $(( pop / 2 )), budget: [0.0, 1.0]}
retrain: {epochs: 2, warmup_epochs: 1, ckpt_every: 2}
EOF

stages() {
  set -e
  "$PYTHON" -m data build-synthetic --root "$out/data" --task "$task" --test "$test" --img-size "$img"
  for stage in train search retrain; do
    local t0; t0=$(date +%s%N)
    "$PYTHON" "$stage.py" "$out/stages.yaml"
    echo "{\"stage\": \"$stage\", \"wall_ms\": $(( ($(date +%s%N) - t0) / 1000000 ))}" >> "$out/stage_walls.jsonl"
  done
}
export -f stages
export PYTHON out task test img

rm -rf "$out/run" "$out/stage_walls.jsonl"
[ "$tests" = none ] || part tests_cuda 150 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider --junitxml="$out/tests_cuda.xml"
skipped stages || part stages 240 bash -c stages
if ! skipped bench; then
  if [ $smoke -eq 1 ]; then bench=(--only inference --reps 1 --device "$device"); else bench=(--quick); fi
  part bench 240 "$PYTHON" -m bench "${bench[@]}" --json "$out/bench.json"
fi
if [ "$tests" = all ]; then  # in parallel where pytest-xdist is installed (2 torch threads per worker)
  workers=(); "$PYTHON" -c "import xdist" 2>/dev/null && workers=(-n 8)
  OMP_NUM_THREADS=2 part tests_rest 600 "$PYTHON" -m pytest -q -m "not cuda" -p no:cacheprovider ${workers[@]+"${workers[@]}"} \
    --junitxml="$out/tests_rest.xml"
fi

"$PYTHON" scripts/gpu_report.py "$out" || exit 1
