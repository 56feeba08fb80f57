#!/usr/bin/env bash
# The GPU check: one command that proves the CUDA path and measures it on one GPU within 8 minutes.
#
#   bash scripts/device_check.sh --carry .carry --out "$OUT"   # on a GPU machine (docs/tooling.md: the GPU check)
#   bash scripts/device_check.sh --smoke --out /tmp/check      # CPU rehearsal, tiny sizes (make test runs it)
#
# Parts, in order, each with a time limit, all of them within --budget seconds (default 465; the
# expected times are for one H200, see the README):
#   install      CARRY/wheels/*.whl (scripts/device_carry.sh) into a folder put on PYTHONPATH, with
#                pip --no-index --no-deps: the machine's own torch is used, never replaced;
#                CARRY/fashion-mnist becomes FASHION_MNIST_DIR (real images for the CUDA tests)
#   environment  nvidia-smi, the Python packages import, CUDA is there (else the check stops)
#   tests        pytest -m cuda tests/test_cuda_*.py (test_cuda_loss.py, test_cuda_training.py)
#   loss         python -m cloob_tools.bench_loss: ClipLoss, direct and chunked CLOOB, d = 1024, bf16 features,
#                N = 8,192 ... 262,144 (as far as memory and time allow), a profile at N = 32,768
#   train        python -m cloob_tools.bench_train: RN50 at batch 256, amp_bf16, CLOOB vs CLIP samples/s
#   summary      python -m cloob_tools.perf_report: OUT/summary.md (targets and tables) and OUT/parts.json
# --smoke runs the same parts on the CPU with tiny sizes, without install, environment and tests.
#
# OUT receives summary.md, parts.json, loss.json, train.json and device_check.log (everything
# printed). A part that fails or runs out of time is named on the console, in parts.json and in
# summary.md; the next parts still run (none after install or environment fail), and the exit
# status is 1.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
SMOKE=0
CARRY=""
OUT_DIR=${OUT:-$REPO/device-check-out}
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --carry) CARRY=${2:?--carry needs a folder}; shift 2 ;;
    --out) OUT_DIR=${2:?--out needs a folder}; shift 2 ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "device_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$BUDGET" ] || BUDGET=$([ $SMOKE = 1 ] && echo 300 || echo 465)
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [ -n "$CARRY" ] && [ -d "$CARRY" ]; then CARRY=$(cd "$CARRY" && pwd); fi  # before the cd below
rm -f "$OUT_DIR"/{summary.md,parts.json,parts.tsv,loss.json,train.json,device_check.log}
cd "$REPO"
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"

SUMMARY_RESERVE=15  # seconds kept for the summary
FAILED=()

record() {  # PART STATUS SECONDS DETAIL
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$OUT_DIR/parts.tsv"
  echo "=== [$1] $2${4:+: $4} ($3 s)"
  [ "$2" != FAILED ] || FAILED+=("$1")
}

limit() {  # MAX_SECONDS -> MAX_SECONDS or what is left of --budget before the summary, the less
  local left=$((DEADLINE - SUMMARY_RESERVE - SECONDS))
  echo $(($1 < left ? $1 : left))
}

run_part() {  # PART MAX_SECONDS COMMAND...
  local part=$1 limit start status command
  limit=$(limit "$2")
  shift 2
  command="$*"
  if [ "$limit" -lt 3 ]; then
    record "$part" FAILED 0 "not started: $limit s left of --budget $BUDGET"
    return 1
  fi
  echo "=== [$part] up to $limit s: ${command:0:400}"
  start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  status=$?
  case $status in
    0) record "$part" ok $((SECONDS - start)) "" ;;
    124|137) record "$part" FAILED $((SECONDS - start)) "stopped after its $limit s limit" ;;
    *) record "$part" FAILED $((SECONDS - start)) "exit status $status" ;;
  esac
  return $status
}

skip() { record "$1" skipped 0 "$2"; }

finish() {
  # parts.tsv, the parts so far, becomes parts.json.
  SUMMARY_RESERVE=0 run_part summary 30 "$PYTHON" -m cloob_tools.perf_report summary "$OUT_DIR" &&
    rm -f "$OUT_DIR/parts.tsv"
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo "=== device check FAILED: ${FAILED[*]} (see $OUT_DIR/device_check.log)"
    exit 1
  fi
  echo "=== device check passed: $OUT_DIR/summary.md"
  exit 0
}

check() {
  DEADLINE=$((SECONDS + BUDGET))
  echo "=== device check ($([ $SMOKE = 1 ] && echo 'smoke: CPU, tiny sizes' || echo GPU)), budget $BUDGET s, output $OUT_DIR"

  if [ $SMOKE = 1 ]; then
    skip install "--smoke"
    skip environment "--smoke"
    skip tests "--smoke (no CUDA tests on the CPU)"
    MACHINE="CPU rehearsal (--smoke)"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # no spinning OpenMP threads on a shared machine
    LOSS_ARGS=(--device cpu --sizes 256 --dims 32 --repeats 1 --isolate none --profile-sizes 256)
    TRAIN_ARGS=(--model tiny-test-vit-cloob --batch-size 16 --precision fp32 --steps 4 --warmup-steps 1
                --repeats 1 --workers 0 --timeout 120)
  else
    if [ -n "$CARRY" ]; then
      if ! ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
        record install FAILED 0 "no wheels in $CARRY/wheels: build the folder here with scripts/device_carry.sh"
        finish
      fi
      SITE=${TMPDIR:-/tmp}/device-check-site
      rm -rf "$SITE"
      run_part install 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "$CARRY"/wheels/*.whl || finish
      export PYTHONPATH="$PYTHONPATH:$SITE"
      if [ -d "$CARRY/fashion-mnist" ]; then export FASHION_MNIST_DIR=$(cd "$CARRY/fashion-mnist" && pwd); fi
    else
      skip install "no --carry folder: the machine's own packages"
    fi
    run_part environment 90 bash -c '
      if command -v nvidia-smi >/dev/null; then nvidia-smi; fi
      "$0" -c "
import sys, torch, open_clip, open_clip_train.main, webdataset, cloob_tools.data, training.main
print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"CUDA\", torch.version.cuda,
      \"open_clip\", open_clip.__version__, \"FASHION_MNIST_DIR\", cloob_tools.data.fashion_mnist_dir())
if not torch.cuda.is_available():
    sys.exit(\"no CUDA device: the CUDA tests would only be skipped\")
print(\"GPU:\", torch.cuda.get_device_name(0))
"' "$PYTHON" || finish
    MACHINE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    # -rA: the tests' printed figures (errors against float64, peak memory, resume deviation) too.
    # tests/test_cuda_*.py only: other test modules import packages the GPU machine lacks. In one process
    # (-o addopts=): pyproject's -n 2 needs pytest-xdist, which the GPU machine may not have.
    run_part tests 240 "$PYTHON" -m pytest -o addopts= -p no:cacheprovider -q -rA --durations=15 -m cuda tests/test_cuda_*.py
    LOSS_ARGS=(--device cuda --sizes 8192,16384,32768,65536,131072,262144 --dims 1024 --repeats 3
               --max-warmup-seconds 5 --profile-sizes 32768)
    TRAIN_ARGS=(--model RN50-cloob --batch-size 256 --precision amp_bf16 --steps 60 --warmup-steps 15
                --repeats 2 --workers 12 --timeout 75)
  fi

  # bench_loss starts no case after its part's limit less 20 s, so that its JSON is complete.
  run_part loss 180 "$PYTHON" -m cloob_tools.bench_loss "${LOSS_ARGS[@]}" --precision bf16 \
    --impls clip,cloob-direct,cloob-chunked --budget-seconds $(($(limit 180) - 20)) \
    --note "scripts/device_check.sh" --out "$OUT_DIR/loss.json"
  run_part train 180 "$PYTHON" -m cloob_tools.bench_train "${TRAIN_ARGS[@]}" \
    --note "${MACHINE:-GPU}, scripts/device_check.sh" --out "$OUT_DIR/train.json"
  finish
}

check 2>&1 | tee "$OUT_DIR/device_check.log"
exit "${PIPESTATUS[0]}"
