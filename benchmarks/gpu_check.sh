#!/usr/bin/env bash
# The GPU check in one command, sized for one call on a lent GPU: about 6 minutes on one H200,
# never past BUDGET seconds (default 400), with OUT_DIR holding only what such a call returns.
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on a CUDA machine
#   TINY=1 bash benchmarks/gpu_check.sh OUT_DIR     # CPU dry run: tiny model and images, same parts
#
# OUT_DIR receives three files, rewritten after every part (a killed script runs no cleanup):
# summary.json (every check's status: pass, fail, skipped or not_reached, with the reason),
# gpu_check.log (the progress lines) and gpu_check.tar.gz (every log and result, without
# checkpoints). Everything else lives in WORK (default /dev/shm/pss_gpu_check where it has 16 GiB
# free, else ${TMPDIR:-/tmp}/pss_gpu_check; emptied at the start unless ONLY is set).
#
# Parts, in order of value; once less than ~20 s is left before the deadline, the rest is
# recorded `skipped`, and a check the deadline cuts short is `skipped` too:
# 0. setup: packages this Python lacks, from the wheels in WHEELS (default .whl, filled by
#    benchmarks/fetch_wheels.sh), installed with `pip install --target WORK/site` (a system
#    environment may be read-only) and put on PYTHONPATH; versions and GPU.
# 1. fast_step_vs_eager: fast_step.TrainStep replayed from CUDA graphs against the eager step on a
#    small model (gpu_check.py fast-step): per-step loss and grad norm and every weight change, a
#    new LR per step in each of build_optimizer's groups, bf16 and fp16 (one overflowing step),
#    host syncs forbidden; and drop path and random selection draw new numbers at every replay.
# 2. end to end (e2e_*), on a synthetic ImageFolder of JPEGs (8 classes, 64 training / 16
#    validation images each, 224 px) with configs/vit-b/magnitude_cyclic_80_0.yaml:
#    `torchrun --nproc_per_node 1 main_finetune.py` in bf16 with TRAIN.CUDA_GRAPHS (2 epochs) and,
#    alongside, in fp16 with the GradScaler, eager (1 epoch); --eval, sweep_drop.py and
#    image_patches.py on the fp16 run's checkpoint; a run stopped by SIGTERM a quarter into its
#    epoch (exit 3) and started again (exit 0, logs continuous), eager and with CUDA graphs (a
#    2-block model, batch 8: small checkpoints, 64 steps). Runs that do not depend on each other
#    run at the same time.
# 3. speed_cuda_graphs: benchmarks/train_step.py, ours at rho 1 ... 0.2 against timm's BEiT-B,
#    batch 128, bf16, both replayed from CUDA graphs; profile_cuda_graphs: profile_step.py at rho 1
#    and 0.2; speed_eager; data_loader: the training loader at 8 and 16 workers against each rho's
#    step; data_end_to_end: benchmarks/dali_gpu_check.py, the training step at every rho fed by
#    synthetic tensors, the default loader (16 workers) and DALI (4 threads; where nvidia.dali is
#    installed, with DALI's images/s at 2, 4 and 8 threads); profile_eager; speed_compile
#    (torch.compile, rho 1 and 0.2, in the time left).
# Each check runs under min(its own limit, the time left) and logs to logs/<check>.log in the archive.
# ONLY="check names" reruns those checks into the same WORK (a check reads what earlier ones left
# there: e2e_data's images, the fp16 run's checkpoint). PYTHON: the interpreter (default python3).
set -u -o pipefail
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [ $# -ne 1 ]; then echo "usage: [TINY=1] [BUDGET=seconds] [WORK=dir] bash benchmarks/gpu_check.sh OUT_DIR" >&2; exit 2; fi
mkdir -p "$1" && OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
if [ -n "${TINY:-}" ]; then BUDGET=${BUDGET:-1500}; else BUDGET=${BUDGET:-400}; fi
DEADLINE=$((START + BUDGET))
RESERVE=10   # seconds kept back for the last pack
MIN_LEFT=20  # a check is not started with less than this left

if [ -z "${WORK:-}" ]; then
  WORK=${TMPDIR:-/tmp}/pss_gpu_check
  shm_kib=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
  if [ -z "${TINY:-}" ] && [ "${shm_kib:-0}" -ge $((16 * 1024 * 1024)) ]; then WORK=/dev/shm/pss_gpu_check; fi
fi
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
case "$WORK/" in "$OUT"/*) echo "error: WORK ($WORK) must be outside OUT_DIR ($OUT)" >&2; exit 2;; esac
if [ -z "${ONLY:-}" ]; then
  if [ -n "$(ls -A "$WORK")" ] && [ ! -e "$WORK/.pss_gpu_check" ]; then
    echo "error: WORK ($WORK) holds files not written by gpu_check.sh; give an empty or new folder" >&2; exit 2
  fi
  rm -rf "${WORK:?}"/* && rm -f "$OUT/summary.json" "$OUT/gpu_check.log" "$OUT/gpu_check.tar.gz"
fi
touch "$WORK/.pss_gpu_check"
REPORT="$WORK/report"  # everything that goes into the archive
mkdir -p "$REPORT/status" "$REPORT/logs"
LOG="$REPORT/gpu_check.log"
log() { echo "$@" | tee -a "$LOG"; }

# every check, in the order it runs; each starts as not_reached, so a killed run's summary says so
CHECKS=(setup_dependencies fast_step_vs_eager e2e_data e2e_bf16_cuda_graphs e2e_bf16_cuda_graphs_logs
        e2e_fp16_grad_scaler e2e_fp16_grad_scaler_logs e2e_eval e2e_sweep_drop e2e_image_patches
        e2e_sigterm_resume_eager e2e_sigterm_resume_cuda_graphs speed_cuda_graphs profile_cuda_graphs speed_eager
        data_loader data_end_to_end profile_eager speed_compile)
selected() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

status() {  # status <name> <pass|fail|skipped|not_reached> <seconds> <detail> [log: its tail joins a failure]
  "$PY" - "$REPORT/status/$1.json" "$@" <<'EOF'
import json, sys
path, name, status, seconds, detail = sys.argv[1:6]
entry = {'name': name, 'status': status, 'seconds': int(seconds), 'detail': detail}
if len(sys.argv) > 6 and status == 'fail':
    with open(sys.argv[6], errors='replace') as f:
        entry['log_tail'] = [line.rstrip()[:300] for line in f if line.strip()][-6:]
json.dump(entry, open(path, 'w'), indent=1)
EOF
  [ "$2" = not_reached ] || log "== $1: $2 ($3 s) $4"
}
passed() { grep -q '"status": "pass"' "$REPORT/status/$1.json" 2>/dev/null; }
needs() {  # needs <check> <name>: whether <check> passed; if not, <name> is recorded skipped
  passed "$1" && return 0
  selected "$2" && status "$2" skipped 0 "needs $1, which did not pass"
  return 1
}

check() {  # check <name> <limit s> <command...>: run it under min(limit, time left), record its status
  local name=$1 own=$2 limit=$2
  shift 2
  selected "$name" || return 0
  local left=$((DEADLINE - RESERVE - SECONDS)) cut=""
  if [ $left -lt $MIN_LEFT ]; then status "$name" skipped 0 "not started: ${left}s left before the deadline"; return 1; fi
  if [ $left -lt "$limit" ]; then limit=$left; cut=1; fi
  local out="$REPORT/logs/$name.log" start=$SECONDS rc
  log "-- $name (limit ${limit}s)"
  echo "$*" > "$out"
  timeout -k 10 "$limit" "$@" >> "$out" 2>&1
  rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then status "$name" pass $took ""; return 0; fi
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    if [ -n "$cut" ]; then status "$name" skipped $took "stopped at the deadline after ${took}s (own limit ${own}s)"
    else status "$name" fail $took "timed out after ${limit}s" "$out"; fi
  else
    status "$name" fail $took "exit $rc" "$out"
  fi
  return 1
}

pack() {  # OUT_DIR <- summary.json, gpu_check.log, gpu_check.tar.gz
  "$PY" benchmarks/gpu_check.py pack "$REPORT" "$OUT" "$@" --meta \
    "{\"budget_s\": $BUDGET, \"elapsed_s\": $((SECONDS - START)), \"tiny\": $([ -n "${TINY:-}" ] && echo true || echo false)}" \
    2>&1 | tee -a "$LOG"
}

for name in "${CHECKS[@]}"; do selected "$name" && status "$name" not_reached 0 ""; done
log "gpu_check.sh: OUT_DIR $OUT, WORK $WORK, budget ${BUDGET}s, started $(date -u +%FT%TZ)"

# --- 0. setup ---------------------------------------------------------------------------------------
SITE="$WORK/site"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
check setup_dependencies 60 "$PY" benchmarks/gpu_check.py install-missing --wheels "${WHEELS:-.whl}" --target "$SITE"
"$PY" - "$REPORT/versions.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, platform, sys
import torch
versions = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
            'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None}
try:
    import timm
    versions['timm'] = timm.__version__
except ImportError:
    versions['timm'] = None
json.dump(versions, open(sys.argv[1], 'w'))
print(' '.join(f'{k} {v}' for k, v in versions.items()))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version \
  --format=csv 2>&1 | tee -a "$LOG"

# --- sizes --------------------------------------------------------------------------------------------
CFG=configs/vit-b/magnitude_cyclic_80_0.yaml
if [ -n "${TINY:-}" ]; then
  export TINY=1  # as the Python parts read it
  DEVICE=cpu; AMP=(); SIZE=32; PER_CLASS=(8 2); BATCH=8; SIG_BATCH=2; BENCH_BATCH=4; WORKERS=(1 2)
  TRAIN_WORKERS=0; SIDE_WORKERS=0; DATA_BATCHES=3
  MODEL=(DATA.IMG_SIZE 32 MODEL.VIT.PATCH_SIZE 8 MODEL.VIT.EMBED_DIM 32 MODEL.VIT.DEPTH 2 MODEL.VIT.NUM_HEADS 2)
  SIG_MODEL=(); COMPILE_RHOS=(1.0); COMPILE_TIMM=(--timm-model none)
else
  DEVICE=cuda; AMP=(--amp); SIZE=224; PER_CLASS=(64 16); BATCH=32; SIG_BATCH=8; BENCH_BATCH=128; WORKERS=(8 16)
  TRAIN_WORKERS=8  # the two training runs side by side: 16 workers on 16 CPUs
  SIDE_WORKERS=4   # five runs side by side after them
  DATA_BATCHES=32  # two rounds of 16 workers, after the first round
  MODEL=(); SIG_MODEL=(MODEL.VIT.DEPTH 2); COMPILE_RHOS=(1.0 0.2); COMPILE_TIMM=()
fi
STEPS=$((8 * PER_CLASS[0] / BATCH))  # optimizer steps per epoch (drop_last)
SIG_STEPS=$((8 * PER_CLASS[0] / SIG_BATCH))
DATA="$WORK/data"
E2E="$REPORT/e2e"  # run folders: logs archived, checkpoints not
run_dir() { echo "$E2E/pss/$1"; }
TRAIN=(--cfg "$CFG" --data-path "$DATA" --output "$E2E" --amp-opt-level O1 --opts "${MODEL[@]}"
       TRAIN.WARMUP_EPOCHS 1 PRINT_FREQ 4 TRAIN.KEEP_CHECKPOINTS 1)
SIDE=(--cfg "$CFG" --data-path "$DATA" --batch-size "$BATCH")  # reads the fp16 run's checkpoint
RESULT="$(run_dir fp16)/checkpoint.pth"

# --- 1. the fast step against eager; the images meanwhile --------------------------------------------
check fast_step_vs_eager 150 "$PY" benchmarks/gpu_check.py fast-step --device $DEVICE --out "$REPORT/fast_step.json" &
check e2e_data 90 "$PY" benchmarks/gpu_check.py make-data "$DATA" --classes 8 --train "${PER_CLASS[0]}" \
  --val "${PER_CLASS[1]}" --size $SIZE &
wait
pack

# --- 2. end to end ------------------------------------------------------------------------------------
if needs e2e_data e2e_bf16_cuda_graphs; then
  { check e2e_bf16_cuda_graphs 180 "$PY" -m torch.distributed.run --nproc_per_node 1 --master_port 29511 \
      main_finetune.py --batch-size "$BATCH" "${TRAIN[@]}" TRAIN.EPOCHS 2 DATA.NUM_WORKERS $TRAIN_WORKERS \
      TRAIN.CUDA_GRAPHS True TAG bf16_cuda_graphs \
    && check e2e_bf16_cuda_graphs_logs 30 "$PY" benchmarks/gpu_check.py check-run "$(run_dir bf16_cuda_graphs)" \
      --epochs 2 --steps-per-epoch $STEPS; } &
fi
if needs e2e_data e2e_fp16_grad_scaler; then
  { check e2e_fp16_grad_scaler 180 "$PY" -m torch.distributed.run --nproc_per_node 1 --master_port 29512 \
      main_finetune.py --batch-size "$BATCH" "${TRAIN[@]}" TRAIN.EPOCHS 1 DATA.NUM_WORKERS $TRAIN_WORKERS \
      AMP_DTYPE float16 TAG fp16 \
    && check e2e_fp16_grad_scaler_logs 30 "$PY" benchmarks/gpu_check.py check-run "$(run_dir fp16)" \
      --epochs 1 --steps-per-epoch $STEPS; } &
fi
wait
for name in e2e_bf16_cuda_graphs e2e_fp16_grad_scaler; do
  passed "$name" || needs "$name" "${name}_logs" || true
done
pack

if needs e2e_fp16_grad_scaler e2e_eval; then
  check e2e_eval 120 "$PY" main_finetune.py "${SIDE[@]}" --resume "$RESULT" --eval \
    --opts "${MODEL[@]}" DATA.NUM_WORKERS $SIDE_WORKERS &
fi
if needs e2e_fp16_grad_scaler e2e_sweep_drop; then
  check e2e_sweep_drop 150 "$PY" sweep_drop.py "${SIDE[@]}" --pretrained "$RESULT" --output "$E2E/sweep" \
    --opts "${MODEL[@]}" DATA.NUM_WORKERS $SIDE_WORKERS &
fi
if needs e2e_fp16_grad_scaler e2e_image_patches; then
  check e2e_image_patches 120 "$PY" image_patches.py "${SIDE[@]}" --pretrained "$RESULT" --output "$E2E/patches" \
    --opts "${MODEL[@]}" DATA.NUM_WORKERS $SIDE_WORKERS &
fi
for graphs in eager cuda_graphs; do  # a quarter into the epoch: SIGTERM; then the same command again
  name=e2e_sigterm_resume_$graphs
  needs e2e_data "$name" || continue
  check "$name" 180 "$PY" benchmarks/gpu_check.py sigterm-resume "$(run_dir "sigterm_$graphs")" \
    --stop-after $((SIG_STEPS / 4)) --epochs 1 --steps-per-epoch $SIG_STEPS --logs "$REPORT/logs/$name" -- \
    "$PY" main_finetune.py --batch-size $SIG_BATCH "${TRAIN[@]}" "${SIG_MODEL[@]}" TRAIN.EPOCHS 1 \
    DATA.NUM_WORKERS $SIDE_WORKERS TRAIN.CUDA_GRAPHS "$([ $graphs = eager ] && echo False || echo True)" \
    TAG "sigterm_$graphs" &
done
wait
pack

# --- 3. speed, profile, data ----------------------------------------------------------------------------
BENCH=("$PY" benchmarks/train_step.py --cfg "$CFG" --device $DEVICE "${AMP[@]}" --batch-size $BENCH_BATCH
       --out "$REPORT/results" --warmup 3 --repeats 10)
[ ${#MODEL[@]} -gt 0 ] && BENCH+=(--opts "${MODEL[@]}")
PROFILE=("$PY" benchmarks/profile_step.py --cfg "$CFG" --device $DEVICE "${AMP[@]}" --batch-size $BENCH_BATCH
         --rhos 1.0 0.2 --out "$REPORT/profile" --opts "${MODEL[@]}" MODEL.NUM_CLASSES 1000)
cuda_only() {  # cuda_only <name> <limit> <command...>
  if [ $DEVICE = cuda ]; then check "$@"; else selected "$1" && status "$1" skipped 0 "needs CUDA"; fi
}
cuda_only speed_cuda_graphs 120 "${BENCH[@]}" --cuda-graphs
pack
cuda_only profile_cuda_graphs 90 "${PROFILE[@]}" --cuda-graphs
pack
check speed_eager 120 "${BENCH[@]}"
pack
check data_loader 120 "${BENCH[@]}" --mode data --data-batches $DATA_BATCHES --workers "${WORKERS[@]}"
pack
if selected data_end_to_end; then  # DALI cannot be carried to a host without a package index: measure without it
  FEEDS=(synthetic torch dali)
  "$PY" -c 'import nvidia.dali' 2>/dev/null || { FEEDS=(synthetic torch); log "nvidia.dali is not installed: data_end_to_end runs without its DALI feed"; }
  DALI_CHECK=("$PY" benchmarks/dali_gpu_check.py "$REPORT/dali" --work "$WORK/dali_images" --feeds "${FEEDS[@]}")
  [ -n "${TINY:-}" ] && DALI_CHECK+=(--rhos 1.0 0.2)
  check data_end_to_end 150 "${DALI_CHECK[@]}"
  pack
fi
check profile_eager 90 "${PROFILE[@]}"
pack
if selected speed_compile && [ $((DEADLINE - RESERVE - SECONDS)) -lt 60 ]; then
  status speed_compile skipped 0 "not started: $((DEADLINE - RESERVE - SECONDS))s left, compiling needs more"
else
  check speed_compile 600 "${BENCH[@]}" --compile --rhos "${COMPILE_RHOS[@]}" "${COMPILE_TIMM[@]}"
fi

log ""
log "done in $((SECONDS - START))s (budget ${BUDGET}s); OUT_DIR $OUT: summary.json, gpu_check.log, gpu_check.tar.gz"
pack --print
