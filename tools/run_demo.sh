#!/usr/bin/env bash
# README command A: set up the environment (idempotent) and run the main job.
#   bash tools/run_demo.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/tools/setup_env.sh"
VENV="$(realpath -m "${S2A_VENV:-$REPO/.venv}")"   # absolute: the steps below change directory
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
case "$ITERS" in
  ''|*[!0-9]*|0|1) echo "[demo] ERROR: DEMO_ITERS=$ITERS; it must be an integer >= 2." >&2; exit 2 ;;
esac
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
# A step's whole output (environment, config, hook tables) goes to LOG, as mmengine's own log
# file; the screen shows the lines matching PATTERN. A failure shows its output from the first
# traceback on (a one-line [s2aformer] ERROR is already on screen).
quiet() {  # quiet LOG PATTERN COMMAND...
  local log=$1 pattern=$2 rc
  shift 2
  mkdir -p "$(dirname "$log")"
  set +e
  "$@" 2>&1 | tee "$log" | grep --line-buffered -E "$pattern"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    if ! tail -n 1 "$log" | grep -q '^\[s2aformer\] ERROR'; then
      echo "[demo] ERROR: step failed (exit $rc); its output from the first traceback ($log):" >&2
      { grep -q Traceback "$log" && sed -n '/Traceback/,$p' "$log" || tail -n 60 "$log"; } >&2
    fi
    exit "$rc"
  fi
}
PROGRESS='Iter\(train\)|Iter\((val|test)\) \[[0-9]+/[0-9]+\] +aAcc|^\[s2aformer\]'

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
OUTPUTS=(train untrained.pth untrained.log test_untrained test_trained predictions curves.png)
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
echo "  (full output: $WORK/train/console.log)"
VAL_EVERY=$(( ITERS >= 4 ? ITERS / 4 : ITERS ))   # 4 points on the mIoU curve
WARMUP=$(( ITERS >= 40 ? 20 : ITERS / 2 ))          # the config's 20 warm-up iterations
LOG_EVERY=$(( ITERS >= 80 ? 10 : 1 ))               # the config logs every 10
t_train=$SECONDS
quiet "$WORK/train/console.log" "$PROGRESS" bash tools/dist_train.sh "$CONFIG" 2 \
  --work-dir "$WORK/train" --cfg-options "${DATA_OPTS[@]}" train_cfg.max_iters="$ITERS" \
  train_cfg.val_interval="$VAL_EVERY" default_hooks.checkpoint.interval="$ITERS" \
  default_hooks.logger.interval="$LOG_EVERY" param_scheduler.0.end="$WARMUP" param_scheduler.1.begin="$WARMUP" param_scheduler.1.end="$ITERS"
t_train=$((SECONDS - t_train))
CKPT="$WORK/train/iter_$ITERS.pth"
[ -f "$CKPT" ] || { echo "[demo] ERROR: training did not write $CKPT" >&2; exit 1; }

say "saving the untrained (initial) weights for comparison"
"$PY" -c 'import sys; from s2aformer_mm.apis import save_initial_checkpoint as s
s(sys.argv[1], sys.argv[2], seed=0)' "$CONFIG" "$WORK/untrained.pth" > "$WORK/untrained.log" 2>&1 \
  || { cat "$WORK/untrained.log"; exit 1; }

metric() { "$PY" -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['mIoU']:.2f}\")" "$1"; }
say "drawing the training loss and validation mIoU"
curves=$("$PY" tools/analysis/plot_curves.py "$WORK/train" --out "$WORK/curves.png")
echo "$curves"

say "evaluating the untrained weights"
quiet "$WORK/test_untrained/console.log" "$PROGRESS" "$PY" tools/test.py "$CONFIG" \
  "$WORK/untrained.pth" --work-dir "$WORK/test_untrained" --cfg-options "${DATA_OPTS[@]}"
say "evaluating the trained model and drawing its predictions"
quiet "$WORK/test_trained/console.log" "$PROGRESS" "$PY" tools/test.py "$CONFIG" "$CKPT" \
  --work-dir "$WORK/test_trained" --show-dir "$WORK/predictions" --cfg-options "${DATA_OPTS[@]}"

before=$(metric "$WORK/test_untrained/test_metrics.json")
after=$(metric "$WORK/test_trained/test_metrics.json")
# -print -quit, not | head -1: under pipefail, find's SIGPIPE once head exits ended the script.
pics=$(find "$WORK/predictions" -name '*.png' -print -quit)
say "done"
echo "  training ($ITERS iterations, 2 processes): ${t_train}s"
echo "  mIoU on $(ls "$ROOT/images/validation" | wc -l) validation images: untrained $before -> trained $after"
echo "  prediction pictures (ground truth | prediction, drawn over the image): $(dirname "${pics:-$WORK/predictions/none}")"
echo "  curves (training loss, validation mIoU): $WORK/curves.png"
echo "  full logs: $WORK/train/console.log, $WORK/test_*/console.log"
