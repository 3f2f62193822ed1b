#!/usr/bin/env bash
# One lease of a CUDA machine, in one call. Phases (PHASES, in this order):
#   tests   the tests marked gpu
#   check   benchmarks.gpu_check, all parts (the README's "Proving the GPU path")
#   probe   benchmarks.slice_steps: the structure preset's step at 32/128/256/512 slices (TRAIN=3d:
#           the 3D step at the patch planned for 12 GB)
#   train   the shipped structure model's recipe (structures_fov160; its last stages ran the same
#           recipe on 192^3 crops, structures_fov192) for the time left,
#           converted to $OUT/structures_gpu.pt (float16):
#           TRAIN=scratch (default): experiment=structures_gpu (2.5D) from random weights, at the
#           size the probe found fastest in slices/s that still gives MIN_STEPS steps (else 256
#           slices), its cosine schedule fitted to the time left;
#           TRAIN=finetune: structures_fov160 from the shipped model, 4x the slices a step
#           (the run of 2026-12-04 did it with stage 15's structures_parts), for the time left;
#           TRAIN=3d: experiment=structures_3d (SynthSeg's setting: a 3D network, nnU-Net's), its
#           polynomial schedule fitted to the time left at the probe's step rate (the probe then
#           times the 3D step at the patch planned for 12 GB), else at STEPS_PER_S.
#           INIT (a model file, e.g. an earlier lease's structures_gpu.pt) starts any of them from
#           those weights, so that a run longer than one lease goes on lease after lease.
#
#   OUT=/tmp/out LABEL_MAPS='.gpu_data/label_maps/*.nii.gz' bash benchmarks/gpu_session.sh
#   OUT=/tmp/out DEVICE=cpu TINY=1 PHASES="probe train" LABEL_MAPS=... bash benchmarks/gpu_session.sh
#
# Settings (environment of this script only; the package reads none):
#   OUT          folder for the results (JSON lines, logs, model file)
#   LABEL_MAPS   glob of the training label maps (the 20 of ../shared/data/label_maps)
#   BUDGET_S     seconds this script may take in all (default 560)
#   PHASES       default "tests check probe train"
#   TRAIN        scratch (default), finetune or 3d;  MIN_STEPS  default 3000;  SEED  default 20261204
#   INIT         model file whose weights start the run (finetune: default the shipped model)
#   STEPS_PER_S  TRAIN=3d without the probe: the step rate the schedule is fitted to (default 1.0,
#                a guess until a lease has measured it: slice_steps.json, train.log's last it/s)
#   TRAIN_ARGS   extra train.py overrides (e.g. "model.slices.context=7 model.unet.in_channels=7")
#   REAL_VAL     folder with t1.nii.gz and aseg.nii.gz: validated on every VAL_EVERY epochs
#                (default 4; per-structure Dice in TensorBoard, whose event files land in $OUT)
#   WHEELS       folder of wheels to install first into /tmp/site (default .whl; skipped if absent)
#   DEVICE       cuda (default) or cpu, for a rehearsal;  TINY  1: small sizes everywhere
#   RUNS         folder of the training runs (default /tmp/runs)
#   PYTHON       the interpreter (default python3)
set -u -o pipefail
START=$(date +%s)
BUDGET_S=${BUDGET_S:-560}
DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
WHEELS=${WHEELS:-.whl}
PHASES=${PHASES:-tests check probe train}
TRAIN=${TRAIN:-scratch}
MIN_STEPS=${MIN_STEPS:-3000}
SEED=${SEED:-20261204}
RUNS=${RUNS:-/tmp/runs}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
has() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  nproc; } 2>&1 | tee "$OUT/environment.txt"
if [ "$TINY" = 1 ]; then TINY_ARG=(--tiny); else TINY_ARG=(); fi
if [ "$DEVICE" = cpu ]; then ACC=cpu; PREC=32-true; else ACC=gpu; PREC=bf16-mixed; fi

if has tests && [ "$DEVICE" != cpu ]; then
  timeout 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tail -n 30 | tee "$OUT/pytest_gpu.txt"
fi
if has check; then
  timeout 270 "$PY" -m benchmarks.gpu_check --device "$DEVICE" "${TINY_ARG[@]}" \
    --output "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
  echo "gpu_check rc=$? ($(left) s left)"
fi
SLICES=256
if has probe; then
  if [ "$TRAIN" = 3d ]; then  # the 3D step at the patch planned for 12 GB, 2 volumes
    PROBE=(--experiment structures_3d --slices 1 --volumes 2 --steps 10)
    [ "$TINY" = 1 ] || PROBE+=(--gpu-memory-gb 12)
  elif [ "$TINY" = 1 ]; then PROBE=(--slices 4 16 --volumes 8 --steps 15)
  else PROBE=(--slices 32 128 256 512 --volumes 8 --steps 15); fi
  timeout 150 "$PY" -m benchmarks.slice_steps --device "$DEVICE" --precision $PREC \
    --label-maps "$LABEL_MAPS" "${PROBE[@]}" "${TINY_ARG[@]}" \
    --output "$OUT/slice_steps.json" > "$OUT/slice_steps.log" 2>&1
  echo "slice_steps rc=$? ($(left) s left)"
fi
if ! has train; then echo "done ($(left) s left)"; exit 0; fi

TRAIN_S=$(( $(left) - 60 ))
if [ "$TRAIN_S" -lt 60 ]; then echo "no time left to train ($TRAIN_S s)"; exit 0; fi
MAX_TIME=$(printf '00:00:%02d:%02d' $((TRAIN_S / 60)) $((TRAIN_S % 60)))
if [ "$TRAIN" = finetune ]; then
  if [ "$TINY" = 1 ]; then STEPS=(trainer.max_epochs=1 trainer.limit_train_batches=2); else
    STEPS=(trainer.max_epochs=16 trainer.limit_train_batches=250); fi
  ARGS=(experiment=structures_fov160 "init_weights=${INIT:-structures}" data.batch_size=4
        data.reuse_steps=2 model.slices.per_step=32 model.optimizer.lr=4.0e-4 "${STEPS[@]}"
        trainer.check_val_every_n_epoch=1000)
else
  # scratch (2.5D) and 3d: the probed size with the most slices/s that still gives MIN_STEPS steps
  # in the time left (3d's probe has one size), else the fallback rate (scratch ~8 steps/s at 256
  # slices; 3d STEPS_PER_S); epochs of 250 steps fitted to 90 % of the time, so that the schedule
  # ends before max_time stops the run
  if [ "$TRAIN" = 3d ]; then FALLBACK=${STEPS_PER_S:-1.0}; else FALLBACK=8.0; fi
  read -r SLICES EPOCHS RATE < <("$PY" - "$OUT/slice_steps.json" "$TRAIN_S" "$MIN_STEPS" "$TINY" \
    "$FALLBACK" <<'EOF'
import json, sys
path, train_s, min_steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
tiny, fallback = sys.argv[4] == "1", float(sys.argv[5])
try:
    runs = [r for r in map(json.loads, open(path)) if r.get("steps_per_s")]
except OSError:
    runs = []
ok = [r for r in runs if r["steps_per_s"] * train_s >= min_steps] or runs
best = max(ok, key=lambda r: r["slices_per_s"]) if ok else {"slices_per_step": 256, "steps_per_s": fallback}
epochs = 1 if tiny else max(1, int(best["steps_per_s"] * train_s * 0.9 / 250))
print(best["slices_per_step"], epochs, best["steps_per_s"])
EOF
)
  SLICES=${SLICES:-256}; EPOCHS=${EPOCHS:-$(( TRAIN_S * 7 / 250 ))}  # no probe: ~8 steps/s
  if [ "$TINY" = 1 ]; then LIMIT=2; else LIMIT=250; fi
  ARGS=(trainer.max_epochs=$EPOCHS trainer.limit_train_batches=$LIMIT
        trainer.check_val_every_n_epoch=1000)
  if [ "$TINY" = 1 ]; then ARGS+=(gpu_memory_gb=null model.unet.n_stages=3 model.unet.deep_supr_num=1
    model.unet.base_features=4 model.unet.max_features=16 synth.voxel_mm=2.0
    "synth.patch_shape=[48,48,48]"); fi
  if [ "$TRAIN" = 3d ]; then ARGS=(experiment=structures_3d "${ARGS[@]}"); SIZE="3D"
  else ARGS=(experiment=structures_gpu model.slices.per_step=$SLICES "${ARGS[@]}")
    SIZE="$SLICES slices a step"; fi
  [ -n "${INIT:-}" ] && ARGS+=("init_weights=$INIT")
  echo "$TRAIN: $SIZE, $EPOCHS epochs of $LIMIT steps ($RATE steps/s)"
fi
if [ -n "${REAL_VAL:-}" ]; then
  ARGS+=(data/real_val=oasis "data.real_val.0.images=$REAL_VAL/t1.nii.gz"
         "data.real_val.0.references=$REAL_VAL/aseg.nii.gz"
         trainer.check_val_every_n_epoch=${VAL_EVERY:-4})
fi
# shellcheck disable=SC2206  # TRAIN_ARGS: words on purpose
ARGS+=(${TRAIN_ARGS:-})
timeout $((TRAIN_S + 45)) "$PY" train.py "${ARGS[@]}" "data.label_maps=$LABEL_MAPS" fold=all \
  threads=8 seed=$SEED trainer.accelerator=$ACC trainer.precision=$PREC +trainer.max_time=$MAX_TIME \
  "paths.log_dir=$RUNS" task_name=structures_gpu > "$OUT/train.log" 2>&1
echo "train rc=$? ($(left) s left)"
CKPT=$(ls -t "$RUNS"/structures_gpu/runs/*/checkpoints/last.ckpt 2>/dev/null | head -n 1)
[ -n "$CKPT" ] || CKPT=$(ls -t "$RUNS"/structures_gpu/runs/*/checkpoints/*.ckpt 2>/dev/null | head -n 1)
if [ -n "$CKPT" ]; then
  echo "checkpoint $CKPT"
  "$PY" -m synthseg_lite.commands.artifact "$CKPT" "$OUT/structures_gpu.pt" --precision float16 \
    --extra "converted=$(date -u +%FT%TZ)" --extra "checkpoint=$(basename "$CKPT")" \
      --extra "training=gpu_session.sh TRAIN=$TRAIN ${ARGS[*]} seed=$SEED max_time=$MAX_TIME" \
      --extra "init=${INIT:-none}" \
    2>&1 | tail -n 3
  cp "$(dirname "$CKPT")"/../.hydra/overrides.yaml "$OUT/overrides.yaml" 2>/dev/null
fi
find "$RUNS"/structures_gpu -name 'events.out.tfevents.*' -size -16M 2>/dev/null | head -n 2 |
  while read -r f; do cp "$f" "$OUT/"; done
grep -E "it/s|s/it" "$OUT/train.log" | tail -n 1 | tr '\r' '\n' | tail -n 1
echo "done ($(left) s left)"
