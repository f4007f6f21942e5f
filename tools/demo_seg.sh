#!/usr/bin/env bash
# `make demo-seg`: Semantic FPN with a CAS-ViT-XS backbone, trained from
# scratch on the generated ADE20K-format set through tools/train.py, evaluated
# through tools/test.py (mIoU with the official resize-to-multiple-of-32), then
# one validation image segmented by demo/seg_demo.py (MMSegInferencer) and
# saved as an overlay. Everything lands in work_dirs/demo_seg/; the console
# shows progress and the summary (tools/demo_common.sh).
source "$(dirname "$0")/demo_common.sh"
CONFIG=configs/segmentation/fpn_casvit_xs_toy.py
WORK=work_dirs/demo_seg
start=$SECONDS

echo "== 1/4 generating the toy ADE20K set in data/toy_ade"
"$PY" tools/dataset_converters/make_toy_ade.py data/toy_ade

train_and_test "$CONFIG" "$WORK" "$WORK/label_maps"

echo "== 4/4 segmenting one validation image"
"$PY" demo/seg_demo.py data/toy_ade/images/validation/ADE_val_00000001.jpg \
  "$CONFIG" --weights "$CKPT" --out "$WORK/overlay_ADE_val_00000001.png"

"$PY" tools/misc/demo_summary.py seg "$WORK" "$(( TRAINED_AT - start ))" "$(( SECONDS - start ))"
