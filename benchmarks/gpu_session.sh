#!/usr/bin/env bash
# One lease of a CUDA machine, in one call: the GPU tests, `benchmarks.gpu_check` (the README's
# "Proving the GPU path"), then the structure recipe (stage 15's `structures_parts`) fine-tuned on
# the GPU for what time is left, its weights converted to a model file. Everything lands in $OUT.
#
#   OUT=/tmp/out LABEL_MAPS='.gpu_data/label_maps/*.nii.gz' bash benchmarks/gpu_session.sh
#
# Settings (environment of this script only; the package reads none):
#   OUT          folder for the results (JSON lines, logs, model file)
#   LABEL_MAPS   glob of the training label maps (the 20 of ../shared/data/label_maps)
#   BUDGET_S     seconds this script may take in all (default 560)
#   WHEELS       folder of wheels to install first into /tmp/site (default .whl; skipped if absent)
#   DEVICE       cuda (default) or cpu, for a rehearsal
#   TINY         1: small sizes everywhere (a rehearsal on the CPU, seconds)
set -u -o pipefail
START=$(date +%s)
BUDGET_S=${BUDGET_S:-560}
DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
WHEELS=${WHEELS:-.whl}
export PYTHONUNBUFFERED=1
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python3 -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  nproc; } 2>&1 | tee "$OUT/environment.txt"

# 1. the tests marked gpu
if [ "$DEVICE" != cpu ]; then
  timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tail -n 30 | tee "$OUT/pytest_gpu.txt"
fi

# 2. the GPU path (five parts, one JSON line each)
if [ "$TINY" = 1 ]; then GC_ARGS=(--tiny); else GC_ARGS=(); fi
[ "${SKIP_CHECK:-0}" = 1 ] || timeout 270 python3 -m benchmarks.gpu_check --device "$DEVICE" "${GC_ARGS[@]}" \
  --output "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check rc=$? ($(left) s left)"

# 3. the structure recipe on the GPU: stage 15 fine-tuned with 4x the slices per step
TRAIN_S=$(( $(left) - 60 ))
if [ "$TRAIN_S" -lt 60 ]; then echo "no time left to train ($TRAIN_S s)"; exit 0; fi
if [ "$DEVICE" = cpu ]; then ACC=cpu; PREC=32-true; else ACC=gpu; PREC=bf16-mixed; fi
if [ "$TINY" = 1 ]; then STEPS=(trainer.max_epochs=1 trainer.limit_train_batches=2); else
  STEPS=(trainer.max_epochs=16 trainer.limit_train_batches=250); fi
MAX_TIME=$(printf '00:00:%02d:%02d' $((TRAIN_S / 60)) $((TRAIN_S % 60)))
timeout $((TRAIN_S + 45)) python3 train.py experiment=structures_parts \
  "data.label_maps=$LABEL_MAPS" fold=all threads=8 seed=20261204 init_weights=structures \
  trainer.accelerator=$ACC trainer.precision=$PREC "${STEPS[@]}" +trainer.max_time=$MAX_TIME \
  trainer.check_val_every_n_epoch=1000 \
  data.batch_size=4 data.reuse_steps=2 model.slices.per_step=32 model.optimizer.lr=4.0e-4 \
  paths.log_dir=/tmp/runs task_name=structures_gpu > "$OUT/train.log" 2>&1
echo "train rc=$? ($(left) s left)"
CKPT=$(ls -t /tmp/runs/structures_gpu/runs/*/checkpoints/*.ckpt 2>/dev/null | head -n 1)
if [ -n "$CKPT" ]; then
  echo "checkpoint $CKPT"
  python3 -m synthseg_lite.commands.artifact "$CKPT" "$OUT/structures_gpu.pt" --precision float16 \
    --extra "converted=$(date -u +%FT%TZ)" --extra "checkpoint=$(basename "$CKPT")" 2>&1 | tail -n 3
fi
grep -E "it/s|s/it" "$OUT/train.log" | tail -n 1 | tr '\r' '\n' | tail -n 1
echo "done ($(left) s left)"
