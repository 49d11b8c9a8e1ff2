#!/usr/bin/env bash
# GPU run-book: on one GPU, in at most 8 minutes (one H100), run
#   1. the benchmark's compiled section (python -m bench --quick --only compiled: ViT-B/16, batch 64,
#      bf16): the training step of supernet, full fine-tuning, retrain, LoRA and bias-only, eager
#      and compiled side by side: time, kernels, launches and peak memory per step (methods that no
#      longer fit its time are left out, in that order),
#   2. two short three-stage runs of a randomly initialised ViT-B/16 on a synthetic 224-px task of
#      100 classes (bf16, batch 64, a 5,000-image test split), eager and compiled (train.compile),
#   3. the CUDA tests (pytest -m cuda), then the rest of the test suite, in the time left,
# and write every figure to OUT/gpu_check.json: each part's status and seconds, the card, the
# stages' timings and peak memory, the bench rows, and one whole VTAB-1k task with the release's
# schedule (500-epoch supernet, 20 x 50 search, 100-epoch retrain) projected from the measured
# epochs, eager and compiled. It prints the targets of the compiled step (compiled supernet step
# <= 1.0x compiled full fine-tuning and >= 3x faster than the eager one, compiled retrain <= 0.8x
# compiled full fine-tuning, peak memory not above eager, a whole task <= 5 minutes). A failed or
# timed-out part is recorded and the next one runs.
#
# Usage: bash scripts/gpu_check.sh [--out DIR] [--tests all|cuda|none] [--skip PARTS] [--seconds N] [--smoke]
#   --out DIR       where everything goes (default outputs/gpu_check)
#   --tests WHICH   all (default): the CUDA tests, then the others in the time left; cuda: only those; none
#   --skip PARTS    comma-separated parts to leave out, of: stages,bench
#   --seconds N     the whole run's time limit (default 470); each part gets at most what is left
#   --smoke         a tiny ViT and a 32-px task, on the CPU if there is no GPU: checks this script (each
#                   part may take 4 times as long: compiling on a CPU is slow)
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
  cap=$(( cap * (smoke ? 4 : 1) ))
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
  img=32 task=synthetic32 test=100 epochs=2 gens=1 pop=4 classes=10
  model="{name: vit_tiny_patch16_224, pretrained: false, kwargs: {img_size: 32, patch_size: 8, depth: 2, embed_dim: 48, num_heads: 3}}"
  bench=(--only compiled --tiny --methods supernet,retrain --reps 1 --device "$device")
else  # 100 classes: the bench's head, so the stages' compiled supernet may find the bench's kernels in the cache
  img=224 task=synthetic224 test=5000 epochs=3 gens=2 pop=10 classes=100
  model="{name: vit_base_patch16_224, pretrained: false}"
  bench=(--quick --only compiled --seconds 120)
fi
# Three epochs (the first compiles), validated after each: the later ones are the steady state a
# projection of the release's schedule reads.
for run in eager compiled; do
  compile=false; [ $run = compiled ] && compile=true
  cat > "$out/stages_$run.yaml" <<EOF
# The run-book's three-stage run, $run (written by scripts/gpu_check.sh).
output: $out/run_$run
device: $device
model: $model
data: {root: $out/data, task: $task, img_size: $img, batch_size: 64, eval_batch_size: 256}
train: {epochs: $epochs, warmup_epochs: 1, eval_every: 1, eval_subnets: 2, ckpt_every: $epochs, amp: true, compile: $compile}
search: {generations: $gens, population: $pop, parents: 4, mutations: $(( pop / 2 )), crossovers: $(( pop / 2 )), budget: [0.0, 1.0]}
retrain: {epochs: $epochs, warmup_epochs: 1, ckpt_every: $epochs}
EOF
done

stages() {
  set -e
  "$PYTHON" -m data build-synthetic --root "$out/data" --task "$task" --test "$test" --img-size "$img" --classes "$classes"
  for run in eager compiled; do
    for stage in train search retrain; do
      local t0; t0=$(date +%s%N)
      "$PYTHON" "$stage.py" "$out/stages_$run.yaml"
      echo "{\"run\": \"$run\", \"stage\": \"$stage\", \"wall_ms\": $(( ($(date +%s%N) - t0) / 1000000 ))}" >> "$out/stage_walls.jsonl"
    done
  done
}
export -f stages
export PYTHON out task test img classes

rm -rf "$out"/run_* "$out/stage_walls.jsonl" "$out/bench.json"
if ! skipped bench; then
  part bench 200 "$PYTHON" -m bench "${bench[@]}" --json "$out/bench.json"
fi
skipped stages || part stages 190 bash -c stages
[ "$tests" = none ] || part tests_cuda 150 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider --junitxml="$out/tests_cuda.xml"
if [ "$tests" = all ]; then  # in parallel where pytest-xdist is installed (2 torch threads per worker)
  workers=(); "$PYTHON" -c "import xdist" 2>/dev/null && workers=(-n 8)
  OMP_NUM_THREADS=2 part tests_rest 600 "$PYTHON" -m pytest -q -m "not cuda" -p no:cacheprovider ${workers[@]+"${workers[@]}"} \
    --junitxml="$out/tests_rest.xml"
fi

"$PYTHON" scripts/gpu_report.py "$out" || exit 1
