# Shared by the three demo scripts (`make demo`, `make demo-seg`, `make demo-cls`),
# which source it: the interpreter, the thread setting and the quiet console.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
# One compute thread, and one image-loading worker (in the configs): the two
# cores. Measured on 2 shared cores: with 2 OpenMP threads an iteration took
# 8-30 s as soon as anything else ran, against about 1 s with 1 thread; on an
# idle machine 2 threads would save about a minute. Override by exporting it.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# quiet LOG COMMAND...: run COMMAND, keep all it prints in LOG, show only the
# progress lines (iteration, loss, ETA, metrics). Everything else a tool prints
# (the config, the hook table, COCO's tables) stays in LOG; mmengine also keeps
# its own log, config included, in WORK/<timestamp>/<timestamp>.log. On a
# failure the end of LOG is shown and the script stops with the same status.
PROGRESS='(Iter|Epoch)\((train|val|test)\)'
quiet() {
  local log=$1
  shift
  set +e
  "$@" 2>&1 | tee "$log" | { grep --line-buffered -E "$PROGRESS" || true; }
  local status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "failed (exit $status); the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit "$status"
  fi
}

# train_and_test CONFIG WORK TEST_OUT [TEST_ARGS...]: train CONFIG from scratch
# into WORK (a fresh directory), then test its last checkpoint into WORK/test,
# writing the predictions to TEST_OUT (more tools/test.py arguments after it).
# Sets CKPT (the checkpoint) and TRAINED_AT (the script's SECONDS when training
# ended).
train_and_test() {
  local config=$1 work=$2 out=$3
  shift 3
  echo "== 2/4 training $config (from scratch)"
  rm -rf "$work"
  mkdir -p "$work"
  quiet "$work/train_console.log" "$PY" tools/train.py "$config" --work-dir "$work"
  TRAINED_AT=$SECONDS
  CKPT=$(cat "$work/last_checkpoint")
  echo "== 3/4 testing $(basename "$CKPT") on the validation split"
  quiet "$work/test_console.log" \
    "$PY" tools/test.py "$config" "$CKPT" --work-dir "$work/test" --out "$out" "$@"
}
