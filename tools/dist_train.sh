#!/usr/bin/env bash
# Distributed training with torchrun (one process per GPU; gloo + CPU DDP without CUDA).
#   bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args]
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host PORT=29500 bash tools/dist_train.sh ...
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args]" >&2; exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The project venv when there is one (tools/setup_env.sh), else python from PATH.
PYTHON=${S2A_PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python)}

# Up-front checks once, before the processes start: a refusal (missing data, file, bad
# option) is then printed once and is the last thing on screen, not once per process
# followed by torchrun's traceback.
"$PYTHON" "$REPO/tools/train.py" "$CONFIG" --launcher pytorch "$@" --check-only || exit $?

exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" --nproc_per_node="$GPUS" \
    "$REPO/tools/train.py" "$CONFIG" --launcher pytorch "$@"
