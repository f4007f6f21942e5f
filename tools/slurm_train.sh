#!/usr/bin/env bash
# Training on a Slurm cluster: one task per GPU, mmengine reads the Slurm
# variables (--launcher slurm).
#   [GPUS=8] [GPUS_PER_NODE=8] bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options...]
# CPUS_PER_TASK (default 5) and SRUN_ARGS (extra srun options) are passed to srun.
#
# Pre-emption and time limits: srun gets --signal=$SIGNAL (default USR1@120:
# SIGUSR1 to every task 120 s before the job's time limit). On SIGUSR1, and on
# the SIGTERM Slurm sends at pre-emption, tools/train.py finishes the current
# iteration, saves it as the latest checkpoint of WORK_DIR and stops (exit
# status 75). Continue with the same command plus --resume. To requeue by
# itself, run this script from an `sbatch --requeue` job script with REQUEUE=1
# and --resume in the options (with nothing to resume, training starts afresh):
# after a pre-emption the script calls `scontrol requeue $SLURM_JOB_ID`.
# Choose SIGNAL's lead time longer than one iteration plus one checkpoint save.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-$( [[ -x $TOOLS/../.venv/bin/python ]] && echo "$TOOLS/../.venv/bin/python" || echo python)}

# Written by training when a signal stopped it (srun's status may be a killed
# task's rather than 75): its presence after srun means "pre-empted, saved".
rm -f "$WORK_DIR/preempted"
status=0
# SRUN_ARGS is split on spaces on purpose: it holds several srun options.
# shellcheck disable=SC2086
srun -p "$PARTITION" --job-name="$JOB_NAME" \
  --gres="gpu:$GPUS_PER_NODE" --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" \
  --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 --signal="${SIGNAL:-USR1@120}" \
  ${SRUN_ARGS:-} \
  "$PYTHON" -u "$TOOLS/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "${@:5}" \
  || status=$?
if [[ -f $WORK_DIR/preempted ]]; then
  echo "[slurm_train] pre-empted; saved $(cat "$WORK_DIR/preempted"). Continue with the same command and --resume." >&2
  if [[ ${REQUEUE:-0} == 1 && -n ${SLURM_JOB_ID:-} ]]; then
    scontrol requeue "$SLURM_JOB_ID"
  fi
  exit 75
fi
exit "$status"
