#!/bin/bash
# One training run on a borrowed GPU (README, "Training on a borrowed GPU"), from weights/ and the
# compact training folder .gpu/data (`make gpu-data`, carried). Run there as `bash scripts/gpu-train.sh`.
# Returns through $OUT: weights/ (the exported model, six files under 16 MiB), train.txt (console,
# every 4th progress line), log.jsonl.gz. Training and export need no constriction.
# Settings (environment): MIN minutes of training (7), BATCH (32), LR peak (2e-4), DEV (cuda), PY
# (python3), RUN (its run folder, /tmp/run), EXTRA_PATH (put before the project on PYTHONPATH).
# If the first try leaves no checkpoint (a crash at start), it tries once more in fp32.
# Dry run on the CPU, with constriction hidden as on the GPU machine:
#   mkdir -p /tmp/block /tmp/out && echo 'raise ImportError' > /tmp/block/constriction.py
#   OUT=/tmp/out PY=.venv/bin/python DEV=cpu MIN=1 BATCH=2 EXTRA_PATH=/tmp/block bash scripts/gpu-train.sh
# Session 31 (H200, torch 2.11): 6,430 steps of 32 crops in 7 minutes, ~490 crops/s (38x the
# 2-core CPU's 12.8), 15-17 steps/s; whether a larger batch gives more crops/s is not measured.
set -u
PY=${PY:-python3}; DEV=${DEV:-cuda}; MIN=${MIN:-7}; BATCH=${BATCH:-32}; LR=${LR:-2e-4}
export PYTHONPATH=.${EXTRA_PATH:+:$EXTRA_PATH} PYTHONUNBUFFERED=1
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -2
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
RUN=${RUN:-/tmp/run}; rm -rf $RUN
t0=$(date +%s)
limit=$(( ${MIN%.*} * 60 + 45 ))
train() {
  timeout -s TERM $1 $PY -m vaecodec train --data .gpu/data --out $RUN --init weights \
    --device $DEV --batch $BATCH --lr $LR --decay-fraction 0.5 --minutes $2 --val-every 1000 \
    --checkpoint-minutes 2 --seed 31 "${@:3}" 2>&1 | tr '\r' '\n' | awk 'NR % 4 == 1 || !/it\/s|step\/s|s\/step/' | tee -a $OUT/train.txt
}
train $limit $MIN
if [ ! -f $RUN/checkpoint.safetensors ]; then
  used=$(( $(date +%s) - t0 ))
  echo "== first try left no checkpoint after ${used}s; again in fp32, NCHW" | tee -a $OUT/train.txt
  left=$(( limit - used - 15 ))
  [ $left -gt 60 ] && train $left $(( (left - 45) / 60 )) --precision fp32 --no-channels-last
fi
ls -la $RUN
$PY -m vaecodec export $RUN/checkpoint.safetensors --out $OUT/weights 2>&1 | tail -5 | tee -a $OUT/train.txt
gzip -c $RUN/log.jsonl > $OUT/log.jsonl.gz
ls -la $OUT $OUT/weights
