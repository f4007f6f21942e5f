#!/usr/bin/env bash
# `make demo-cls`: CAS-ViT-XS image classification (mmpretrain), trained from
# scratch on the generated image-folder set through tools/train.py, evaluated
# through tools/test.py (top-1 accuracy), then a few validation images
# classified by demo/cls_demo.py (ImageClassificationInferencer).
# Everything lands in work_dirs/demo_cls/; the console shows progress and the
# summary (tools/demo_common.sh).
source "$(dirname "$0")/demo_common.sh"
CONFIG=configs/classification/casvit_xs_toy.py
WORK=work_dirs/demo_cls
start=$SECONDS

echo "== 1/4 generating the toy image-folder set in data/toy_imagenet"
"$PY" tools/dataset_converters/make_toy_imagenet.py data/toy_imagenet

train_and_test "$CONFIG" "$WORK" "$WORK/predictions.pkl"

echo "== 4/4 classifying one val image of each class"
"$PY" demo/cls_demo.py data/toy_imagenet/val/*/*_0000.JPEG "$CONFIG" --weights "$CKPT"

"$PY" tools/misc/demo_summary.py cls "$WORK" "$(( TRAINED_AT - start ))" "$(( SECONDS - start ))"
