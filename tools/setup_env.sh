#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and install the stack
# that casvit-mm is tested on: torch, mmcv built from source WITH its compiled
# ops, mmengine, mmdet, mmsegmentation, mmpretrain, and casvit-mm (editable).
#
# Why a script: mmcv 2.1.0 has no wheel for current torch, so it is compiled
# (about 16 minutes on 2 cores). The built wheel is kept in a per-machine
# wheelhouse keyed by the torch build, so every later run -- a second clone, CI
# on the same machine, a re-created venv -- reuses it and finishes in seconds.
#
# Environment knobs (all optional):
#   PYTHON              interpreter that creates the venv      (python3.11, else python3)
#   CASVIT_VENV         where the venv lives                   (.venv in the repo)
#   CASVIT_WHEELHOUSE   where built mmcv wheels are kept        (~/.cache/casvit-mm/wheels)
#   TORCH_SPEC          the torch requirement                   (torch==2.13.0)
#   TORCHVISION_SPEC    the matching torchvision (mmpretrain imports it) (torchvision==0.28.0)
#   TORCH_INDEX_URL     index to take torch from, e.g. https://download.pytorch.org/whl/cu128
#                       for a CUDA build (default: the configured pip index; on a CPU
#                       machine pick https://download.pytorch.org/whl/cpu to avoid the
#                       multi-GB CUDA wheel)
#   FORCE_CUDA=1        build mmcv's CUDA ops even when no GPU is visible (needs nvcc);
#                       with a CUDA torch and a visible GPU they are built anyway
#   MAX_JOBS            parallel compile jobs                  (number of cores)
#   CASVIT_EXTRAS       extras of casvit-mm to install          (tests)
#   CASVIT_LITERT=1     also LiteRT (the `litert` extra, then litert-torch without its
#                       dependencies; about 800 MB; docs/deploy.md, Mobile)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${CASVIT_VENV:-.venv}
WHEELHOUSE=${CASVIT_WHEELHOUSE:-$HOME/.cache/casvit-mm/wheels}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.28.0}  # the release paired with torch 2.13
MMCV_SPEC=mmcv==2.1.0
EXTRAS=${CASVIT_EXTRAS:-tests}
[[ ${CASVIT_LITERT:-0} == 1 ]] && EXTRAS=$EXTRAS,litert
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

say() { printf '[setup_env] %s\n' "$*"; }
die() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }

# Everything that decides what gets installed; a change re-runs the install.
fingerprint=$(cat tools/setup_env.sh setup.py requirements/*.txt \
  | { echo "$TORCH_SPEC ${TORCH_INDEX_URL:-} $EXTRAS"; cat; } | sha256sum | cut -c1-16)
stamp=$VENV/.casvit-setup-$fingerprint

check_ops() {
  # A real NMS call: mmcv without compiled ops imports fine and fails only here.
  "$VENV/bin/python" - <<'EOF'
import torch
from mmcv.ops import nms
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
scores = torch.tensor([0.9, 0.8, 0.7])
_, keep = nms(boxes, scores, iou_threshold=0.5)
assert keep.tolist() == [0, 2], keep
import casvit_mm  # registers CASViT; fails here if the package is broken
import mmdet.models, mmseg.models, mmpretrain.models  # every codebase imports
print(f'[setup_env] ok: torch {torch.__version__}, mmcv ops work (nms), casvit_mm imports')
EOF
}

fix_torchvision_without_ops() {
  # PyPI's torchvision wheels are CUDA builds: with a CPU torch their C++ ops cannot
  # load, and torchvision 0.28 then crashes at import (an unguarded fake-kernel
  # registration: "operator torchvision::nms does not exist"). mmpretrain imports
  # torchvision but uses only its pure-Python parts, so guard those two registrations
  # (nms, qnms) the way torchvision already guards all the others.
  "$VENV/bin/python" -c 'import torchvision' 2>/dev/null && return 0
  "$VENV/bin/python" - <<'PY'
import importlib.util, pathlib, re
path = pathlib.Path(importlib.util.find_spec('torchvision').submodule_search_locations[0],
                    '_meta_registrations.py')
path.write_text(re.sub(
    r'@torch\.library\.register_fake\(("torchvision::q?nms")\)',
    r'@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))',
    path.read_text()))
print(f'[setup_env] torchvision has no C++ ops with this torch build: guarded its nms fake '
      f'kernels in {path.name} so that it imports (its pure-Python parts work)')
PY
  "$VENV/bin/python" -c 'import torchvision' || die "torchvision does not import with this torch build"
}

if [[ -f $stamp ]]; then
  check_ops && exit 0
  say "the environment was complete once but fails its check now: reinstalling"
fi

if [[ ! -x $VENV/bin/python ]]; then
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }

say "installing $TORCH_SPEC and build tools"
# setuptools<82: mmcv's setup.py imports pkg_resources, removed in setuptools 82.
pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
pip install -q "setuptools>=77,<82" wheel ninja packaging numpy pillow
# --no-deps: torchvision must not replace the chosen torch build with another one.
pip install -q --no-deps ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCHVISION_SPEC"
fix_torchvision_without_ops

torch_tag=$("$VENV/bin/python" -c 'import sys, torch; v = torch.__version__.replace("+", "_"); print(f"torch{v}-py{sys.version_info[0]}{sys.version_info[1]}")')
wheel_dir=$WHEELHOUSE/$torch_tag
mkdir -p "$wheel_dir"

if ! "$VENV/bin/python" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; then
  if ! ls "$wheel_dir"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    log=$wheel_dir/mmcv-build.log
    say "building $MMCV_SPEC with compiled ops for $torch_tag ($MAX_JOBS jobs; about 16 min on 2 cores)"
    say "full log: $log"
    # --no-build-isolation: the build must see the installed torch, or it silently
    # skips the ops. Progress: ninja's [n/N] counter, one line per compiled file.
    set +e
    pip wheel -v --no-deps --no-build-isolation --no-binary mmcv -w "$wheel_dir" "$MMCV_SPEC" 2>&1 \
      | tee "$log" \
      | awk '/^ *\[[0-9]+\/[0-9]+\]/ { f = ""; for (i = 2; i < NF; i++) if ($i == "-c") f = $(i + 1);
                                      n = split(f, p, "/"); print "[setup_env] compiling " $1 " " p[n]; fflush() }'
    status=${PIPESTATUS[0]}
    set -e
    [[ $status -eq 0 ]] || die "mmcv build failed (exit $status); see $log"
  else
    say "reusing the mmcv wheel built earlier: $(ls "$wheel_dir"/mmcv-2.1.0-*.whl)"
  fi
  pip install -q --no-deps --force-reinstall "$wheel_dir"/mmcv-2.1.0-*.whl
  # mmcv's own runtime dependencies (opencv, addict, yapf, ...), now that the wheel is in.
  pip install -q "$MMCV_SPEC" -f "$wheel_dir"
fi

say "installing the OpenMMLab stack and casvit-mm (editable)"
pip install -q -f "$wheel_dir" -r requirements/stack.txt
pip install -q -f "$wheel_dir" -e ".[${EXTRAS}]"

# the start-up hook that lets any process read casvit_mm:: configs (docs/own_project.md)
"$VENV/bin/python" -c "import sys; assert 'casvit_mm_config_hook' in sys.modules" \
  || die "casvit_mm_config_hook.pth was not installed into site-packages (setup.py's editable_wheel step)"

if [[ $EXTRAS == *litert* ]]; then
  # its declared transformers would break mmpretrain's import (requirements/litert.txt)
  say "installing litert-torch without its dependencies (requirements/litert-nodeps.txt)"
  pip install -q --no-deps -r requirements/litert-nodeps.txt
  "$VENV/bin/python" -c 'import litert_torch, ai_edge_litert.interpreter, mmpretrain.models' \
    || die "litert-torch does not import next to mmpretrain"
fi

# mmdeploy last: its wheel pins protobuf<=3.20.2, which would break onnx / onnxruntime, so
# the wheel goes in without dependencies and its real ones come from requirements/mmdeploy.txt.
say "installing mmdeploy (without its protobuf pin; see requirements/mmdeploy.txt)"
protobuf_before=$("$VENV/bin/python" -c 'import google.protobuf as p; print(p.__version__)')
pip install -q -r requirements/mmdeploy.txt
pip install -q --no-deps -r requirements/mmdeploy-nodeps.txt
"$VENV/bin/python" - "$protobuf_before" <<'EOF' || die "mmdeploy does not import next to onnx"
import sys
import google.protobuf, onnx, onnxruntime  # noqa: F401  (they import next to mmdeploy)
import casvit_mm  # noqa: F401  (patches mmdeploy for torch >= 2.9 on import)
from mmdeploy.apis import build_task_processor, torch2onnx  # noqa: F401
assert google.protobuf.__version__ == sys.argv[1], (google.protobuf.__version__, sys.argv[1])
print(f'[setup_env] ok: mmdeploy imports, protobuf {sys.argv[1]} kept')
EOF

check_ops || die "mmcv.ops does not work: the mmcv wheel in $wheel_dir was built without ops; delete it and re-run"
rm -f "$VENV"/.casvit-setup-*
touch "$stamp"
say "done: activate with 'source $VENV/bin/activate'"
