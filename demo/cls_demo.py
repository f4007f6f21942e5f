"""Classify images with a CAS-ViT classifier (mmpretrain).

mmpretrain's ``ImageClassificationInferencer`` does the work; this script
only imports ``casvit_mm`` and prints one line per image.

    python demo/cls_demo.py IMAGE [IMAGE ...] CONFIG --weights CHECKPOINT

The arguments follow mmdet's ``demo/image_demo.py``, as the other two demos do.
"""
import argparse
import os.path as osp

import casvit_mm  # noqa: F401  (registers CASViT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('config', help='a classification config, e.g. '
                        'configs/classification/casvit_xs_toy.py')
    parser.add_argument('--weights', required=True, help='checkpoint of that config')
    parser.add_argument('--device', default='cpu', help='e.g. cpu or cuda:0')
    args = parser.parse_args()
    for path in [*args.images, args.config, args.weights]:
        if not osp.isfile(path):
            raise SystemExit(f'{path!r} does not exist.')

    from mmpretrain.apis import ImageClassificationInferencer

    inferencer = ImageClassificationInferencer(
        model=args.config, pretrained=args.weights, device=args.device)
    for path, result in zip(args.images, inferencer(args.images)):
        print(f"{path}: {result['pred_class']} ({result['pred_score']:.2f})")


if __name__ == '__main__':
    main()
