"""Parameters and GFLOPs of CAS-ViT sizes or of a whole model from a config.

GFLOPs follow the paper's counting (see ``casvit_mm.complexity``), so at
224x224 the classifier rows reproduce the paper's table.

Examples:
    python tools/analysis_tools/get_flops.py --all-archs --shape 224 224
    python tools/analysis_tools/get_flops.py configs/detection/retinanet_casvit_m.py --shape 800 1344
"""
import argparse

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import MODELS, init_default_scope

from casvit_mm import CASViT
from casvit_mm.complexity import CASViTClassifier, count_flops, count_params


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', help='a detector / segmentor / classifier config')
    parser.add_argument('--arch', nargs='+', default=[], help='CAS-ViT sizes to count')
    parser.add_argument('--all-archs', action='store_true', help="every size: xs s m t l")
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    return parser.parse_args()


def arch_rows(archs, shape):
    x = torch.zeros(1, 3, *shape)
    print(f'CAS-ViT complexity at {shape[0]}x{shape[1]} (GFLOPs: paper/thop convention; '
          f'classifier = backbone + BN + pool + head + dist_head, 1000 classes)')
    print(f"{'arch':<5}{'params (M)':>12}{'GFLOPs':>9}{'dense params (M)':>18}"
          f"{'dense GFLOPs':>14}  output shapes")
    for arch in archs:
        classifier = CASViTClassifier(arch).eval()
        dense = CASViT(arch).eval()
        with torch.no_grad():
            shapes = ' '.join('x'.join(map(str, o.shape[1:])) for o in dense(x))
        print(f'{arch:<5}{count_params(classifier) / 1e6:>12.2f}'
              f'{count_flops(classifier, x) / 1e9:>9.3f}'
              f'{count_params(dense) / 1e6:>18.2f}{count_flops(dense, x) / 1e9:>14.3f}  {shapes}')


def config_row(path, shape, options):
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model).eval()  # init_weights() is not called: no loading
    x = torch.zeros(1, 3, *shape)
    flops = count_flops(model, x, mode='tensor')
    backbone = getattr(model, 'backbone', None)
    print(f'{path} at {shape[0]}x{shape[1]} (paper/thop convention)')
    print(f'  params: {count_params(model) / 1e6:.2f} M   GFLOPs: {flops / 1e9:.3f}')
    if backbone is not None:
        print(f'  backbone {type(backbone).__name__}: params {count_params(backbone) / 1e6:.2f} M'
              f'   GFLOPs {count_flops(backbone, x) / 1e9:.3f}')


def main():
    args = parse_args()
    archs = list(CASViT.arch_settings) if args.all_archs else args.arch
    if not archs and not args.config:
        raise SystemExit('Name a config, --arch SIZE ... or --all-archs.')
    if archs:
        arch_rows(archs, args.shape)
    if args.config:
        config_row(args.config, args.shape, args.cfg_options)


if __name__ == '__main__':
    main()
