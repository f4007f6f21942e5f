#!/usr/bin/env bash
# The README's main job. For now: build every CAS-ViT size and print its complexity.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python tools/analysis_tools/get_flops.py --all-archs --shape 224 224
