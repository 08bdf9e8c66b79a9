#!/usr/bin/env bash
# README command A: set up the environment (idempotent) and run the main job.
#   bash tools/run_demo.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/tools/setup_env.sh"
VENV="${S2A_VENV:-$REPO/.venv}"
cd "$REPO"
# The job: train Semantic FPN + S2AFormer-mini from scratch with 2 processes
# (torchrun; gloo + CPU DDP without CUDA) on ADE20K-format demo data, then
# evaluate the trained and the untrained weights and draw the predictions.
#   DEMO_ROOT (data/demo/ade20k)  DEMO_WORK_DIR (work_dirs/demo)  DEMO_ITERS (160)
export S2A_PYTHON="$VENV/bin/python"
PY="$S2A_PYTHON"
CONFIG=configs/demo/fpn_s2aformer_mini_ade20k_demo.py
ROOT="${DEMO_ROOT:-data/demo/ade20k}"
WORK="${DEMO_WORK_DIR:-work_dirs/demo}"
ITERS="${DEMO_ITERS:-160}"
PORT="${PORT:-$((29500 + RANDOM % 1000))}"
export PORT
# One thread per process: 2 processes on 2 cores; more threads only contend.
export OMP_NUM_THREADS=1
# Library deprecation warnings (and DDP's channels-last stride notice) would bury the progress.
export PYTHONWARNINGS=ignore
# Progress lines as they happen, also when the output goes to a file or pipe.
export PYTHONUNBUFFERED=1
DATA_OPTS=(train_dataloader.dataset.data_root="$ROOT" val_dataloader.dataset.data_root="$ROOT"
           test_dataloader.dataset.data_root="$ROOT")
t0=$SECONDS
say() { printf '\n[demo %4ds] %s\n' "$((SECONDS - t0))" "$*"; }

# Only ever delete what this script wrote: DEMO_ROOT / DEMO_WORK_DIR may point anywhere.
if [ -f "$ROOT/annotations/validation/ADE_val_00000060.png" ]; then
  say "demo data already in $ROOT"
elif [ -n "$(ls -A "$ROOT" 2>/dev/null)" ]; then
  echo "[demo] ERROR: DEMO_ROOT=$ROOT is not empty and holds no complete demo data set;" \
       "point DEMO_ROOT at a new or empty directory (nothing was deleted)." >&2
  exit 1
else
  say "generating ADE20K-format demo data in $ROOT (200 train / 60 val images, 128x128)"
  # Written next to ROOT and renamed when complete, so an interrupted run leaves no half set.
  mkdir -p "$(dirname "$ROOT")"
  TMP_ROOT="$(mktemp -d "$(dirname "$ROOT")/.demo-data.XXXXXX")"
  trap 'rm -rf "$TMP_ROOT"' EXIT
  "$PY" tools/data/generate_demo_data.py ade20k --root "$TMP_ROOT/ade20k" --num-train 200 \
    --num-val 60 --size 128
  rmdir "$ROOT" 2>/dev/null || true
  mv "$TMP_ROOT/ade20k" "$ROOT"
fi
# The demo's outputs; a rerun replaces them and refuses a work dir holding anything else.
OUTPUTS=(train untrained.pth untrained.log test_untrained test_trained predictions)
for entry in $(ls -A "$WORK" 2>/dev/null); do
  case " ${OUTPUTS[*]} " in
    *" $entry "*) ;;
    *) echo "[demo] ERROR: DEMO_WORK_DIR=$WORK holds '$entry', which the demo did not write;" \
            "point DEMO_WORK_DIR at a new or empty directory (nothing was deleted)." >&2
       exit 1 ;;
  esac
done
for entry in "${OUTPUTS[@]}"; do rm -rf "${WORK:?}/$entry"; done
mkdir -p "$WORK"

say "training Semantic FPN + S2AFormer-mini from scratch: $ITERS iterations, 2 processes x 8 images"
t_train=$SECONDS
bash tools/dist_train.sh "$CONFIG" 2 --work-dir "$WORK/train" \
  --cfg-options "${DATA_OPTS[@]}" train_cfg.max_iters="$ITERS" train_cfg.val_interval="$ITERS" \
  default_hooks.checkpoint.interval="$ITERS" param_scheduler.1.end="$ITERS"
t_train=$((SECONDS - t_train))
CKPT="$WORK/train/iter_$ITERS.pth"
[ -f "$CKPT" ] || { echo "[demo] ERROR: training did not write $CKPT" >&2; exit 1; }

say "saving the untrained (initial) weights for comparison"
"$PY" -c 'import sys; from s2aformer_mm.engine.launch import save_initial_checkpoint as s
s(sys.argv[1], sys.argv[2], seed=0)' "$CONFIG" "$WORK/untrained.pth" > "$WORK/untrained.log" 2>&1 \
  || { cat "$WORK/untrained.log"; exit 1; }

metric() { "$PY" -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['mIoU']:.2f}\")" "$1"; }
say "evaluating the untrained weights"
"$PY" tools/test.py "$CONFIG" "$WORK/untrained.pth" --work-dir "$WORK/test_untrained" \
  --cfg-options "${DATA_OPTS[@]}" 2>&1 | grep --line-buffered "Iter(test)\|s2aformer\]"
say "evaluating the trained model and drawing its predictions"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test_trained" --show-dir "$WORK/predictions" \
  --cfg-options "${DATA_OPTS[@]}" 2>&1 | grep --line-buffered "Iter(test)\|s2aformer\]"

before=$(metric "$WORK/test_untrained/test_metrics.json")
after=$(metric "$WORK/test_trained/test_metrics.json")
# -print -quit, not | head -1: under pipefail, find's SIGPIPE once head exits ended the script.
pics=$(find "$WORK/predictions" -name '*.png' -print -quit)
say "done"
echo "  training ($ITERS iterations, 2 processes): ${t_train}s"
echo "  mIoU on $(ls "$ROOT/images/validation" | wc -l) validation images: untrained $before -> trained $after"
echo "  prediction pictures (ground truth | prediction, drawn over the image): $(dirname "${pics:-$WORK/predictions/none}")"
