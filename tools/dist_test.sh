#!/usr/bin/env bash
# Distributed testing with torchrun (one process per GPU; gloo without CUDA).
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py args]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT as in tools/dist_train.sh.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py args]" >&2; exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${S2A_PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python)}

# Up-front checks once, before the processes start: a refusal (missing data, file, bad
# option) is then printed once and is the last thing on screen, not once per process
# followed by torchrun's traceback.
"$PYTHON" "$REPO/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@" --check-only || exit $?

exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" --nproc_per_node="$GPUS" \
    "$REPO/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
