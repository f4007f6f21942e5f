#!/usr/bin/env bash
# The README's main job (`make demo`): RetinaNet with a CAS-ViT-XS backbone,
# trained from scratch on generated COCO-format shapes through tools/train.py,
# evaluated through tools/test.py (COCO bbox mAP), with the predictions drawn
# (tools/demo_common.sh: train_and_test, shared with demo_seg.sh and demo_cls.sh).
# About 5 minutes on 2 CPU cores. Everything lands in work_dirs/demo/; the
# console shows progress and the summary (tools/demo_common.sh).
source "$(dirname "$0")/demo_common.sh"
CONFIG=configs/detection/toy/retinanet_casvit_xs_toy-shapes.py
WORK=work_dirs/demo
start=$SECONDS

echo "== 1/4 generating the toy COCO data set in data/toy_coco"
"$PY" tools/dataset_converters/make_toy_coco.py data/toy_coco

train_and_test "$CONFIG" "$WORK" "$WORK/predictions.pkl" --show-dir "$(pwd)/$WORK/vis"

echo "== 4/4 drawing the training curves"
"$PY" tools/analysis_tools/plot_curves.py "$WORK" --out "$WORK/curves.png" \
  --title 'CAS-ViT-XS RetinaNet, toy shapes' > /dev/null

"$PY" tools/misc/demo_summary.py det "$WORK" "$(( TRAINED_AT - start ))" "$(( SECONDS - start ))"
