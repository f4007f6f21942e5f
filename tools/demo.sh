#!/usr/bin/env bash
# The README's main job (`make demo`): RetinaNet with a CAS-ViT-XS backbone,
# trained from scratch on generated COCO-format shapes through tools/train.py,
# evaluated through tools/test.py (COCO bbox mAP), with the predictions drawn.
# About 5 minutes on 2 CPU cores. Everything lands in work_dirs/demo/; the
# console shows progress and the summary (tools/demo_common.sh).
source "$(dirname "$0")/demo_common.sh"
CONFIG=configs/detection/toy/retinanet_casvit_xs_toy-shapes.py
WORK=work_dirs/demo
start=$SECONDS

echo "== 1/3 generating the toy COCO data set in data/toy_coco"
"$PY" tools/dataset_converters/make_toy_coco.py data/toy_coco

echo "== 2/3 training $CONFIG (300 iterations, from scratch)"
rm -rf "$WORK"
mkdir -p "$WORK"
quiet "$WORK/train_console.log" "$PY" tools/train.py "$CONFIG" --work-dir "$WORK"
train_done=$SECONDS

echo "== 3/3 testing iter_300.pth on the val split, drawing predictions"
quiet "$WORK/test_console.log" "$PY" tools/test.py "$CONFIG" "$WORK/iter_300.pth" \
  --work-dir "$WORK" --show-dir "$(pwd)/$WORK/vis" --out "$WORK/predictions.pkl"
"$PY" tools/analysis_tools/plot_curves.py "$WORK" --out "$WORK/curves.png" \
  --title 'CAS-ViT-XS RetinaNet, toy shapes' > /dev/null

"$PY" tools/misc/demo_summary.py det "$WORK" "$(( train_done - start ))" "$(( SECONDS - start ))"
