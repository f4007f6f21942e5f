"""Segment an image with a Semantic FPN + CAS-ViT and save the overlay.

mmseg's ``MMSegInferencer`` does the work (it runs the config's test
pipeline, Resize + ResizeToMultiple(32) included); this script only imports
``casvit_mm``, writes the painted picture where asked and prints how much of
the image each class covers.

    python demo/seg_demo.py IMAGE CONFIG --weights CHECKPOINT [--out outputs/seg_overlay.png]

The arguments follow mmdet's ``demo/image_demo.py``, as the other two demos do.
"""
import argparse
import os.path as osp

import casvit_mm  # noqa: F401  (registers CASViT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('image', help='an image file')
    parser.add_argument('config', help='a segmentation config, e.g. '
                        'configs/segmentation/fpn_casvit_xs_toy.py')
    parser.add_argument('--weights', required=True, help='checkpoint of that config')
    parser.add_argument('--out', default='outputs/seg_overlay.png',
                        help='where the overlay image is written')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the painted label map, 0-1')
    parser.add_argument('--device', default='cpu', help='e.g. cpu or cuda:0')
    args = parser.parse_args()
    for path, what in ((args.image, 'image'), (args.config, 'config'),
                       (args.weights, 'checkpoint')):
        if not osp.isfile(path):
            raise SystemExit(f'{what} {path!r} does not exist.')

    import mmcv
    import numpy as np
    from mmseg.apis import MMSegInferencer

    inferencer = MMSegInferencer(model=args.config, weights=args.weights,
                                 device=args.device)
    result = inferencer(args.image, return_vis=True, opacity=args.opacity)
    # One image in, so one painted image (RGB) and one label map out.
    mmcv.imwrite(mmcv.rgb2bgr(result['visualization']), args.out)
    pred = np.asarray(result['predictions'])
    classes = inferencer.model.dataset_meta['classes']
    ids, counts = np.unique(pred, return_counts=True)
    share = ', '.join(f'{classes[i]} {c / pred.size:.0%}' for i, c in zip(ids, counts))
    print(f'{args.image}: {pred.shape[1]}x{pred.shape[0]} label map ({share}); '
          f'overlay written to {args.out}')


if __name__ == '__main__':
    main()
