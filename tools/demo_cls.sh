#!/usr/bin/env bash
# `make demo-cls`: CAS-ViT-XS image classification (mmpretrain), trained from
# scratch on the generated image-folder set through tools/train.py, evaluated
# through tools/test.py (top-1 accuracy), then a few validation images
# classified by demo/cls_demo.py (ImageClassificationInferencer).
# Everything lands in work_dirs/demo_cls/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CONFIG=configs/classification/casvit_xs_toy.py
WORK=work_dirs/demo_cls
start=$SECONDS

echo "== 1/4 generating the toy image-folder set in data/toy_imagenet"
"$PY" tools/dataset_converters/make_toy_imagenet.py data/toy_imagenet

echo "== 2/4 training $CONFIG (from scratch)"
rm -rf "$WORK"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK"
train_done=$SECONDS
CKPT=$(cat "$WORK/last_checkpoint")

echo "== 3/4 testing $(basename "$CKPT") on the val split"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test" --out "$WORK/predictions.pkl"

echo "== 4/4 classifying one val image of each class"
"$PY" demo/cls_demo.py data/toy_imagenet/val/*/*_0000.JPEG "$CONFIG" --weights "$CKPT"

"$PY" - "$WORK" "$(( train_done - start ))" "$(( SECONDS - start ))" <<'PYEOF'
import glob, json, os.path as osp, sys
work, train_s, total_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
files = [p for p in glob.glob(osp.join(work, 'test', '*', '*.json'))
         if osp.basename(p)[:-5] == osp.basename(osp.dirname(p))]
metrics = json.load(open(sorted(files)[-1]))
print('\n== CAS-ViT-XS (from scratch) on the toy image-folder val split (4 classes)')
print(f"top-1 accuracy {metrics['accuracy/top1'] / 100:.3f}")
print(f'predictions: {work}/predictions.pkl')
print(f'time: {train_s} s to generate and train, {total_s} s in all')
PYEOF
