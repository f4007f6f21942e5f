"""Write the fused (deploy) checkpoint of a trained CAS-ViT model.

The checkpoint loads strictly into the config's ``deploy=True`` variant
(``configs/*/deploy/``), which builds the fused structure directly: test and
deploy it without refolding every run. Works for detection, segmentation and
classification configs alike; the fused model is checked against the trained
one before anything is written (mmpretrain's ``reparameterize_model.py`` does
the same switch for classifiers only, without the check).

Example:
  python tools/model_converters/casvit_reparameterize.py \\
      configs/detection/retinanet_casvit_m.py work_dirs/retinanet_casvit_m/epoch_12.pth \\
      work_dirs/retinanet_casvit_m/epoch_12_deploy.pth
  python tools/test.py configs/detection/deploy/retinanet_casvit_m.py \\
      work_dirs/retinanet_casvit_m/epoch_12_deploy.pth
"""
import argparse
import os
import os.path as osp

import torch

from casvit_mm.cli import reparameterize


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the training config of the checkpoint')
    parser.add_argument('checkpoint', help='a whole-model checkpoint (tools/train.py)')
    parser.add_argument('out', help='where to write the fused checkpoint (.pth)')
    parser.add_argument('--tol', type=float, default=1e-4,
                        help='largest accepted max|fused - trained| / max|trained|')
    args = parser.parse_args()
    for what, path in (('config', args.config), ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            parser.error(f'{what} {path!r} does not exist')
    if not args.out.endswith('.pth'):
        parser.error(f'out {args.out!r}: give a .pth file name')
    return args


def main():
    args = parse_args()
    state_dict, error = reparameterize(args.config, args.checkpoint, tol=args.tol)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    meta = dict(casvit_deploy=True, source_checkpoint=osp.basename(args.checkpoint),
                config=osp.basename(args.config))
    torch.save(dict(meta=meta, state_dict=state_dict), args.out)
    print(f'wrote {args.out}: fused features differ from the trained model by {error:.1e} '
          f'of their scale; load it with the config\'s deploy variant '
          f'(configs/*/deploy/{osp.basename(args.config)})')


if __name__ == '__main__':
    main()
