#!/usr/bin/env bash
# README command A: set up the environment (idempotent) and run the main job.
#   bash tools/run_demo.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/tools/setup_env.sh"
VENV="${S2A_VENV:-$REPO/.venv}"
cd "$REPO"
echo "[demo] every variant through mmpretrain, mmseg and mmdet: params, MACs and output shapes"
exec "$VENV/bin/python" tools/analysis/model_summary.py "$@"
