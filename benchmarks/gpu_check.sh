#!/usr/bin/env bash
# The GPU check of issue 11 in one command: end to end, profile, speed, data. At most ~8 minutes on
# one H200; every file goes under OUT_DIR, with OUT_DIR/summary.json holding one status per part.
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on a CUDA machine
#   TINY=1 bash benchmarks/gpu_check.sh OUT_DIR     # CPU dry run: tiny model and images, same steps
#   WORK=/tmp/pss_check bash benchmarks/gpu_check.sh $OUT/check   # on the device machine: images and
#                                                   # checkpoints in WORK, only logs and results in OUT_DIR
#
# 1. end to end (e2e_*): a synthetic ImageFolder of JPEGs (8 classes, 64 training / 16 validation
#    images each, 224 px); with configs/vit-b/magnitude_cyclic_80_0.yaml for 2 short epochs:
#    `torchrun --nproc_per_node 1 main_finetune.py` in bf16 (O1) with TRAIN.CUDA_GRAPHS; the same
#    in fp16 (AMP_DTYPE float16, GradScaler) without; a run stopped by SIGTERM mid-epoch (exit 3)
#    and started again with the same command (exit 0, logs continuous); --eval, sweep_drop.py and
#    image_patches.py on the result; the fast step against eager on a small model (gpu_check.py fast-step).
# 2. profile: benchmarks/profile_step.py at rho 1 and 0.2, eager and CUDA graphs.
# 3. speed (speed_*): benchmarks/train_step.py, ours against timm's BEiT-B, batch 128, bf16: eager,
#    CUDA graphs (the fast mode), torch.compile (rho 1 and 0.2, in whatever time is left).
# 4. data: the training loader (RandAugment, random erasing; Mixup/CutMix run on the device) at
#    8 and 16 workers against the images/s of each rho's fast step.
# Each check runs under its own time limit and writes OUT_DIR/status/<name>.json; the log of all
# of them is OUT_DIR/gpu_check.log. ONLY="e2e_sigterm_resume speed_compile" reruns just those checks
# into an existing OUT_DIR (the later ones read what e2e_data and e2e_bf16_cuda_graphs wrote). Dependencies missing on the machine (timm, yacs, termcolor,
# PyYAML, ...) are installed from the wheels in .whl/ (benchmarks/fetch_wheels.sh fills it).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [ $# -ne 1 ]; then echo "usage: [TINY=1] bash benchmarks/gpu_check.sh OUT_DIR" >&2; exit 2; fi
mkdir -p "$1/status" && OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
[ -n "${ONLY:-}" ] || : > "$LOG"
BUDGET=${BUDGET:-470}  # seconds for everything; the compile part gets what is left
START=$SECONDS
log() { echo "$@" | tee -a "$LOG"; }

status() {  # status <name> <pass|fail|skipped> <seconds> <detail>
  "$PY" - "$OUT/status/$1.json" "$1" "$2" "$3" "$4" <<'EOF'
import json, sys
path, name, status, seconds, detail = sys.argv[1:]
json.dump({'name': name, 'status': status, 'seconds': int(seconds), 'detail': detail}, open(path, 'w'))
EOF
  log "== $1: $2 ($3 s) $4"
}

selected() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
record() { selected "$1" && status "$1" "$2" 0 "$3"; }  # record <name> <status> <detail>: a check not run

check() {  # check <name> <limit s> <command...>: run it under a time limit, record its status
  local name=$1 limit=$2
  shift 2
  selected "$name" || return 0
  log ""
  log "== $name (limit ${limit}s): $*"
  local start=$SECONDS rc
  if declare -F "$1" >/dev/null; then  # a shell function here: it bounds its own commands' time
    "$@" >>"$LOG" 2>&1
  else
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  fi
  rc=$?
  if [ $rc -eq 0 ]; then status "$name" pass $((SECONDS - start)) ""
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status "$name" fail $((SECONDS - start)) "timed out after ${limit}s"
  else status "$name" fail $((SECONDS - start)) "exit $rc (see gpu_check.log)"; fi
  return $rc
}

# --- dependencies -----------------------------------------------------------------------------------
missing=$("$PY" - <<'EOF'
import importlib.util
wanted = {'timm': 'timm', 'yacs': 'yacs', 'termcolor': 'termcolor', 'yaml': 'PyYAML', 'matplotlib': 'matplotlib',
          'PIL': 'pillow', 'numpy': 'numpy'}
print(' '.join(pkg for mod, pkg in wanted.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  log "installing from ${WHEELS:-.whl}: $missing"
  "$PY" -m pip install -q --no-index --find-links "${WHEELS:-.whl}" $missing >>"$LOG" 2>&1 \
    || log "pip could not install all of: $missing (see above)"
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import sys, torch, timm
print(f'python {sys.version.split()[0]}, torch {torch.__version__}, timm {timm.__version__}, CUDA {torch.version.cuda}, '
      f'GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else None}')
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version \
  --format=csv 2>&1 | tee -a "$LOG"

# --- sizes ----------------------------------------------------------------------------------------
CFG=configs/vit-b/magnitude_cyclic_80_0.yaml
if [ -n "${TINY:-}" ]; then
  DEVICE=cpu; AMP=(); SIZE=32; PER_CLASS=(8 2); BATCH=8; BENCH_BATCH=4; WORKERS=(1 2); NPROC_WORKERS=0; DATA_BATCHES=5
  MODEL=(DATA.IMG_SIZE 32 MODEL.VIT.PATCH_SIZE 8 MODEL.VIT.EMBED_DIM 32 MODEL.VIT.DEPTH 2 MODEL.VIT.NUM_HEADS 2)
  COMPILE_RHOS=(1.0); COMPILE_TIMM=(--timm-model none)
else
  DEVICE=cuda; AMP=(--amp); SIZE=224; PER_CLASS=(64 16); BATCH=32; BENCH_BATCH=128; WORKERS=(8 16); NPROC_WORKERS=8
  DATA_BATCHES=40  # 2.5 rounds of 16 workers: a steady state, not the first batch of each
  MODEL=()
  COMPILE_RHOS=(1.0 0.2); COMPILE_TIMM=()
fi
EPOCHS=2
STEPS=$((8 * PER_CLASS[0] / BATCH))  # optimizer steps per epoch (drop_last)
WORK=${WORK:-$OUT/work}  # images and checkpoints (1 GB each for ViT-B): put it outside OUT_DIR on the device
DATA="$WORK/data"
E2E="$WORK/e2e"
TRAIN=(--cfg "$CFG" --data-path "$DATA" --batch-size "$BATCH" --output "$E2E" --amp-opt-level O1 --opts
       "${MODEL[@]}" TRAIN.EPOCHS $EPOCHS TRAIN.WARMUP_EPOCHS 1 DATA.NUM_WORKERS $NPROC_WORKERS PRINT_FREQ 4
       SAVE_FREQ 1 TRAIN.KEEP_CHECKPOINTS 1)
run_dir() { echo "$E2E/pss/$1"; }

# --- 1. end to end ----------------------------------------------------------------------------------
check e2e_data 120 "$PY" benchmarks/gpu_check.py make-data "$DATA" --classes 8 --train "${PER_CLASS[0]}" \
  --val "${PER_CLASS[1]}" --size $SIZE

check e2e_bf16_cuda_graphs 150 "$PY" -m torch.distributed.run --nproc_per_node 1 --master_port 29511 \
  main_finetune.py "${TRAIN[@]}" TRAIN.CUDA_GRAPHS True TAG bf16_cuda_graphs \
  && check e2e_bf16_cuda_graphs_logs 30 "$PY" benchmarks/gpu_check.py check-run "$(run_dir bf16_cuda_graphs)" \
       --epochs $EPOCHS --steps-per-epoch $STEPS

check e2e_fp16_grad_scaler 150 "$PY" -m torch.distributed.run --nproc_per_node 1 --master_port 29512 \
  main_finetune.py "${TRAIN[@]}" AMP_DTYPE float16 TAG fp16 \
  && check e2e_fp16_grad_scaler_logs 30 "$PY" benchmarks/gpu_check.py check-run "$(run_dir fp16)" \
       --epochs $EPOCHS --steps-per-epoch $STEPS

# SIGTERM mid-epoch (after 1.5 epochs of steps), then the same command again
sigterm_run() {
  local dir; dir=$(run_dir sigterm)
  local cmd=("$PY" main_finetune.py "${TRAIN[@]}" TRAIN.CUDA_GRAPHS True TAG sigterm)
  "${cmd[@]}" > "$OUT/e2e_sigterm_first.log" 2>&1 &  # no `timeout` around it: the signal goes to python
  local pid=$! want=$((STEPS + STEPS / 2)) deadline=$((SECONDS + 150))
  while kill -0 $pid 2>/dev/null; do
    if [ -f "$dir/train_log.json" ] && [ "$(wc -l < "$dir/train_log.json")" -ge $want ]; then
      kill -TERM $pid; break
    fi
    if [ $SECONDS -gt $deadline ]; then kill -KILL $pid; break; fi
    sleep 0.05
  done
  wait $pid; local rc=$?
  echo "first run: exit $rc (3 expected)"
  [ $rc -eq 3 ] || return 1
  grep -q "SIGTERM received: checkpoint written at epoch [0-9]*, step" "$OUT/e2e_sigterm_first.log" || return 1
  timeout -k 10 150 "${cmd[@]}" > "$OUT/e2e_sigterm_second.log" 2>&1; rc=$?
  echo "second run: exit $rc (0 expected)"
  [ $rc -eq 0 ] && grep -q "resuming at epoch 1, step" "$OUT/e2e_sigterm_second.log" \
    && "$PY" benchmarks/gpu_check.py check-run "$dir" --epochs $EPOCHS --steps-per-epoch $STEPS
}
check e2e_sigterm_resume 200 sigterm_run

RESULT="$(run_dir bf16_cuda_graphs)/checkpoint.pth"
check e2e_eval 90 "$PY" main_finetune.py --cfg "$CFG" --data-path "$DATA" --batch-size "$BATCH" --resume "$RESULT" \
  --eval --opts "${MODEL[@]}" DATA.NUM_WORKERS $NPROC_WORKERS
check e2e_sweep_drop 120 "$PY" sweep_drop.py --cfg "$CFG" --data-path "$DATA" --batch-size "$BATCH" \
  --pretrained "$RESULT" --output "$E2E/sweep" --opts "${MODEL[@]}" DATA.NUM_WORKERS $NPROC_WORKERS
check e2e_image_patches 90 "$PY" image_patches.py --cfg "$CFG" --data-path "$DATA" --batch-size "$BATCH" \
  --pretrained "$RESULT" --output "$E2E/patches" --opts "${MODEL[@]}" DATA.NUM_WORKERS $NPROC_WORKERS
check e2e_fast_step_vs_eager 120 "$PY" benchmarks/gpu_check.py fast-step --device $DEVICE --out "$OUT/fast_step.json"

# --- 2. profile -------------------------------------------------------------------------------------
PROFILE=("$PY" benchmarks/profile_step.py --cfg "$CFG" --device $DEVICE "${AMP[@]}" --batch-size $BENCH_BATCH
         --rhos 1.0 0.2 --out "$OUT/profile" --opts "${MODEL[@]}" MODEL.NUM_CLASSES 1000)
check profile_eager 90 "${PROFILE[@]}"
if [ $DEVICE = cuda ]; then check profile_cuda_graphs 90 "${PROFILE[@]}" --cuda-graphs
else record profile_cuda_graphs skipped "needs CUDA"; fi

# --- 3. speed ----------------------------------------------------------------------------------------
BENCH=("$PY" benchmarks/train_step.py --cfg "$CFG" --device $DEVICE "${AMP[@]}" --batch-size $BENCH_BATCH
       --out "$OUT/results" --warmup 3 --repeats 10)
[ ${#MODEL[@]} -gt 0 ] && BENCH+=(--opts "${MODEL[@]}")
check speed_eager 120 "${BENCH[@]}"
if [ $DEVICE = cuda ]; then check speed_cuda_graphs 120 "${BENCH[@]}" --cuda-graphs
else record speed_cuda_graphs skipped "needs CUDA"; fi

# --- 4. data -----------------------------------------------------------------------------------------
check data_loader 120 "${BENCH[@]}" --mode data --data-batches $DATA_BATCHES --workers "${WORKERS[@]}"

# --- 3b. torch.compile, in the time left -------------------------------------------------------------
left=$((BUDGET - (SECONDS - START)))
if [ $left -gt 60 ]; then
  check speed_compile $left "${BENCH[@]}" --compile --rhos "${COMPILE_RHOS[@]}" "${COMPILE_TIMM[@]}"
else record speed_compile fail "no time left (${left}s)"; fi

if [ "$WORK" != "$OUT/work" ]; then  # the runs' logs and small outputs, without images and checkpoints
  (cd "$WORK" && find e2e -type f ! -name '*.pth' -print0 | tar --null -cf - -T - 2>/dev/null) | (cd "$OUT" && tar -xf -)
fi
log ""
log "all checks done in $((SECONDS - START))s; summary in $OUT/summary.json"
"$PY" benchmarks/gpu_check.py summary "$OUT" | tee -a "$LOG"
