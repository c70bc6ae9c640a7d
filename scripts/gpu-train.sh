#!/bin/bash
# One training run on a CUDA machine (README, "Training on a GPU"), from the newest release in
# weights/ and the compact training folder .gpu/data (`make gpu-data`). Run as `bash scripts/gpu-train.sh`.
# Returns through $OUT: weights/ (the exported model, six files under 16 MiB), train.txt (console,
# every 4th progress line), log.jsonl.gz. Training and export need no constriction.
# Run it from the repository root. Settings (environment): MIN minutes of training (7, fractions
# allowed), SLACK seconds for start-up and the final checkpoint before `timeout` stops the trainer
# (45), BATCH (32), LR peak (2e-4), SEED (0), DEV (cuda), PY (python3), RUN (its run folder,
# /tmp/run), EXTRA_PATH (put after the project on PYTHONPATH). If the first try leaves no
# checkpoint (a crash at start), it tries once more in fp32 with the time left. Exit status: 0
# when the export came back, 1 otherwise (the console says why).
# Dry run on the CPU, with constriction hidden as on the GPU machine:
#   mkdir -p /tmp/block /tmp/out && echo 'raise ImportError' > /tmp/block/constriction.py
#   OUT=/tmp/out PY=.venv/bin/python DEV=cpu MIN=1 BATCH=2 EXTRA_PATH=/tmp/block bash scripts/gpu-train.sh
# Measured once on an H200 (torch 2.11, SEED=31): 6,430 steps of 32 crops in 7 minutes, ~490 crops/s
# (38x a 2-core CPU's 12.8), 15-17 steps/s; whether a larger batch gives more crops/s is not measured.
set -u -o pipefail
: "${OUT:?OUT must name the folder whose files come back}"
[ -d .gpu/data ] && [ -d weights ] && [ -d vaecodec ] || { echo "run from the repository root, with .gpu/data (make gpu-data)" >&2; exit 1; }
PY=${PY:-python3}; DEV=${DEV:-cuda}; MIN=${MIN:-7}; SLACK=${SLACK:-45}; BATCH=${BATCH:-32}
LR=${LR:-2e-4}; SEED=${SEED:-0}; RUN=${RUN:-/tmp/run}
export PYTHONPATH=.${EXTRA_PATH:+:$EXTRA_PATH} PYTHONUNBUFFERED=1
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296
log="$OUT/train.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -2
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
rm -rf -- "$RUN"
t0=$(date +%s)
limit=$(awk -v m="$MIN" -v s="$SLACK" 'BEGIN { printf "%d", m * 60 + s }')
train() {   # train SECONDS MINUTES [options...]: the trainer, stopped by SIGTERM (then KILL) at SECONDS
  timeout -s TERM -k 30 "$1" "$PY" -m vaecodec train --data .gpu/data --out "$RUN" --init weights \
    --device "$DEV" --batch "$BATCH" --lr "$LR" --decay-fraction 0.5 --minutes "$2" \
    --val-every 1000 --checkpoint-minutes 2 --seed "$SEED" "${@:3}" 2>&1 |
    tr '\r' '\n' | awk 'NR % 4 == 1 || !/it\/s|step\/s|s\/step/' | tee -a "$log"
}
train "$limit" "$MIN"; status=$?
if [ ! -f "$RUN/checkpoint.safetensors" ]; then
  left=$(( limit - ($(date +%s) - t0) - 15 ))
  echo "== the first try (status $status) left no checkpoint; ${left}s left" | tee -a "$log"
  if [ "$left" -gt $(( SLACK + 30 )) ]; then
    echo "== again in fp32, NCHW" | tee -a "$log"
    train "$left" "$(awk -v l="$left" -v s="$SLACK" 'BEGIN { print (l - s) / 60 }')" \
      --precision fp32 --no-channels-last; status=$?
  fi
fi
echo "== trainer status $status (124: stopped by timeout; its checkpoint is still exported)" | tee -a "$log"
[ -f "$RUN/log.jsonl" ] && gzip -c "$RUN/log.jsonl" > "$OUT/log.jsonl.gz"
"$PY" -m vaecodec export "$RUN/checkpoint.safetensors" --out "$OUT/weights" 2>&1 | tail -5 | tee -a "$log" ||
  { echo "== no export: nothing to bring back" | tee -a "$log"; exit 1; }
ls -la "$OUT" "$OUT/weights"
