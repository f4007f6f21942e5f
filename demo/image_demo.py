"""Detect (and segment) objects in images with a CAS-ViT detector.

mmdet's ``DetInferencer`` does the work; this script only makes sure
``casvit_mm`` is imported and prints where the painted pictures went.

    python demo/image_demo.py IMAGE_OR_FOLDER CONFIG --weights CHECKPOINT \
        [--out-dir outputs] [--pred-score-thr 0.3] [--device cpu]

Writes ``OUT_DIR/vis/<image name>`` (boxes, class names, scores and, for
Mask R-CNN, masks drawn over the image) and ``OUT_DIR/preds/<name>.json``.
"""
import argparse
import os.path as osp

import casvit_mm  # noqa: F401  (registers CASViT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument('config', help='a detection config, e.g. '
                        'configs/detection/mask_rcnn_casvit_xs.py')
    parser.add_argument('--weights', required=True, help='checkpoint of that config')
    parser.add_argument('--out-dir', default='outputs', help='where pictures are written')
    parser.add_argument('--pred-score-thr', type=float, default=0.3,
                        help='draw only predictions scoring at least this')
    parser.add_argument('--device', default='cpu', help='e.g. cpu or cuda:0')
    args = parser.parse_args()
    for path, what in ((args.inputs, 'input'), (args.config, 'config'),
                       (args.weights, 'checkpoint')):
        if not osp.exists(path):
            raise SystemExit(f'The {what} {path!r} does not exist.')

    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=args.config, weights=args.weights,
                               device=args.device, show_progress=False)
    results = inferencer(args.inputs, out_dir=args.out_dir, no_save_pred=False,
                         pred_score_thr=args.pred_score_thr)
    for pred in results['predictions']:
        kept = sum(score >= args.pred_score_thr for score in pred['scores'])
        print(f'{kept} objects scoring >= {args.pred_score_thr}')
    print(f'painted images: {osp.join(args.out_dir, "vis")}')


if __name__ == '__main__':
    main()
