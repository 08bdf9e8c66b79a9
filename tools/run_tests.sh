#!/usr/bin/env bash
# README command B: set up the environment (idempotent), lint, and run the whole test suite.
#   bash tools/run_tests.sh [extra pytest args]     e.g. -m 'not e2e' for the unit tests only
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/tools/setup_env.sh"
VENV="$(realpath -m "${S2A_VENV:-$REPO/.venv}")"   # absolute: the steps below change directory
cd "$REPO"
echo "[tests] ruff check (ruff.toml)"
"$VENV/bin/ruff" check .
echo "[tests] running pytest (CPU; unit tests, then the end-to-end tool runs in tests/e2e/)"
exec "$VENV/bin/python" -m pytest tests -ra "$@"
