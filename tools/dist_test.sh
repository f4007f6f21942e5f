#!/usr/bin/env bash
# Distributed testing with torchrun: NPROC processes on this machine (GPUs, or
# CPU processes with the gloo backend when there is no CUDA).
#   bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py options...]
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on each.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py options...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The repository's virtual environment when there is one, else `python`.
PYTHON=${PYTHON:-$( [[ -x $TOOLS/../.venv/bin/python ]] && echo "$TOOLS/../.venv/bin/python" || echo python)}

exec "$PYTHON" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
  --nproc_per_node="$NPROC" \
  "$TOOLS/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
