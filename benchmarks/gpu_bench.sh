#!/usr/bin/env bash
# GPU benchmark (issue 5): ViT-B at batch 128, bf16 autocast, one CUDA GPU, about 6 minutes.
#
#   OUT=/path/to/results bash benchmarks/gpu_bench.sh      # OUT defaults to benchmarks/results
#
# Runs, in this order, each under its own time limit so that one slow part cannot eat the rest:
#   1. the training step: our model at rho 1.0 ... 0.2, timm's BEiT-B, the bf16 matmul peak
#   2. the same in inference (model only, eval, no autograd)
#   3. the bias lookup and the sdpa mask layout alone (benchmarks/attention_bias.py)
#   4. the data pipeline on synthetic JPEGs (images/s per loader worker)
#   5. the training step again with torch.compile (compile time and graph counts per rho)
# Every part writes <name>.json and <name>.md to $OUT; the log of all of them is $OUT/gpu_bench.log.
# PARTS="train inference" (names as above: train inference attention_bias data train_compile)
# runs only those; PARTS=train_cudagraphs (not in the default set, about 4 more minutes) times the
# step with torch.compile(mode='reduce-overhead'), whose CUDA graphs remove the kernel-launch cost
# that bounds eager steps at small rho.
# Needs python3 with a CUDA build of torch (and torchvision); installs timm 1.0.22, yacs and
# termcolor with pip, or from wheels in $WHEELS (default .whl) when pip cannot reach an index.
set -u -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
CFG=configs/vit-b/magnitude_cyclic_80_0.yaml
mkdir -p "$OUT"
LOG="$OUT/gpu_bench.log"
: > "$LOG"
failed=()

log() { echo "$@" | tee -a "$LOG"; }

# --- dependencies ---------------------------------------------------------------------------------
if ! timeout 120 "$PY" -m pip install -q --retries 1 --timeout 15 timm==1.0.22 yacs termcolor >>"$LOG" 2>&1; then
  log "pip could not install from an index; trying wheels in ${WHEELS:-.whl}"
  "$PY" -m pip install -q --no-index --find-links "${WHEELS:-.whl}" timm yacs termcolor >>"$LOG" 2>&1 \
    || log "no wheels either: using whatever is installed"
fi
if ! "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"; then
import sys
import torch, timm, yacs  # noqa: F401  (fails here, with the missing name, if one is absent)
print(f'python {sys.version.split()[0]}, torch {torch.__version__}, timm {timm.__version__}, '
      f'CUDA {torch.version.cuda}, GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else None}')
sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')
EOF
  log "FAILED: dependencies or CUDA missing (see above)"
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee -a "$LOG"

# --- benchmarks -----------------------------------------------------------------------------------
PARTS=${PARTS:-train inference attention_bias data train_compile}
run() {  # run <name> <seconds> <command...>
  local name=$1 limit=$2
  shift 2
  [[ " $PARTS " == *" $name "* ]] || return 0
  log ""
  log "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  if timeout "$limit" "$@" 2>&1 | tee -a "$LOG"; then
    log "== $name done in $((SECONDS - start))s"
  else
    log "== $name FAILED or timed out after $((SECONDS - start))s"
    failed+=("$name")
  fi
}

BENCH=("$PY" benchmarks/train_step.py --cfg "$CFG" --device cuda --amp --batch-size 128 --out "$OUT")
run train 150 "${BENCH[@]}" --mode train --warmup 3 --repeats 10
run inference 90 "${BENCH[@]}" --mode inference --warmup 3 --repeats 10
run attention_bias 60 "$PY" benchmarks/attention_bias.py --batch-size 128 --out "$OUT"
run data 90 "${BENCH[@]}" --mode data --data-batches 5 --workers 1 4 8
run train_compile 300 "${BENCH[@]}" --mode train --warmup 3 --repeats 10 --compile
run train_cudagraphs 300 "${BENCH[@]}" --mode train --warmup 3 --repeats 10 --compile --compile-mode reduce-overhead

log ""
if [ ${#failed[@]} -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi
log "all parts done in ${SECONDS}s; results in $OUT"
