#!/usr/bin/env bash
# README command B: set up the environment (idempotent) and run the test suite.
#   bash tools/run_tests.sh [extra pytest args]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/tools/setup_env.sh"
VENV="${S2A_VENV:-$REPO/.venv}"
cd "$REPO"
echo "[tests] running pytest (CPU; ~$(ls tests/test_*.py | wc -l) files)"
exec "$VENV/bin/python" -m pytest tests -ra "$@"
