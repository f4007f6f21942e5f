"""Convert official CAS-ViT weights for casvit-mm.

    python tools/model_converters/casvit_to_mm.py cas-vit-m.pth checkpoints/casvit-m_in1k.pth
    python tools/model_converters/casvit_to_mm.py cas-vit-m.pth checkpoints/casvit-m_backbone.pth --target backbone

``--target mmpretrain`` (default) writes an ImageClassifier checkpoint (backbone,
``head.head`` and ``head.dist_head``) for ``configs/classification``;
``--target backbone`` writes the bare dense backbone (classifier dropped) for
``init_cfg=dict(type='Pretrained', checkpoint=...)`` in detection and
segmentation configs (those also accept the official file directly).
The input is read without executing pickled code; running the tool on its own
output changes nothing. ``--ema`` takes the ``model_ema`` weights when present.
"""
import argparse
import os
import os.path as osp

import torch

from casvit_mm.checkpoint import (CheckpointError, extract_state_dict, safe_load,
                                  to_backbone, to_mmpretrain)


def parse_args():
    parser = argparse.ArgumentParser(description='Convert official CAS-ViT checkpoints.')
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--target', choices=['mmpretrain', 'backbone'], default='mmpretrain')
    parser.add_argument('--ema', action='store_true', help="use 'model_ema' weights")
    return parser.parse_args()


def convert(src, target='mmpretrain', ema=False):
    checkpoint = safe_load(src)
    if ema:
        if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get('model_ema'), dict)):
            raise CheckpointError(f"{src!r} has no 'model_ema' weights; drop --ema.")
        checkpoint = checkpoint['model_ema']
    state_dict = extract_state_dict(checkpoint, repr(src))
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v
                  for k, v in state_dict.items()}
    convert_fn = to_mmpretrain if target == 'mmpretrain' else to_backbone
    return dict(state_dict=convert_fn(state_dict),
                meta=dict(converted_from=osp.basename(src), target=target))


def main():
    args = parse_args()
    try:
        checkpoint = convert(args.src, args.target, args.ema)
    except CheckpointError as e:
        raise SystemExit(f'error: {e}')
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(checkpoint, args.dst)
    print(f"wrote {args.dst}: {len(checkpoint['state_dict'])} tensors ({args.target})")


if __name__ == '__main__':
    main()
