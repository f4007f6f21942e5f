#!/usr/bin/env bash
# Distributed training with torchrun: NPROC processes on this machine (GPUs, or
# CPU processes with the gloo backend when there is no CUDA).
#   bash tools/dist_train.sh CONFIG NPROC [train.py options...]
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on each.
# Stopping: SIGTERM or SIGUSR1 to torchrun (or to any worker) makes every worker
# finish the same iteration, save it and stop; torchrun then exits 1, its summary
# shows the workers' exitcode 75, and WORK_DIR/preempted names the checkpoint.
# Continue with the same command and --resume. torchrun forwards the signal and
# SIGKILLs the workers TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default 30) s later: make
# it longer than one iteration plus one checkpoint save.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash tools/dist_train.sh CONFIG NPROC [train.py options...]" >&2
  exit 2
fi
CONFIG=$1
NPROC=$2
TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The repository's virtual environment when there is one, else `python`.
PYTHON=${PYTHON:-$( [[ -x $TOOLS/../.venv/bin/python ]] && echo "$TOOLS/../.venv/bin/python" || echo python)}

# torchrun forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT; SIGUSR1 too (Slurm's --signal).
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
  --nproc_per_node="$NPROC" \
  "$TOOLS/train.py" "$CONFIG" --launcher pytorch "${@:3}"
