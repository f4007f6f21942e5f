"""Convert official CAS-ViT weights for casvit-mm.

    python tools/model_converters/casvit_to_mm.py SRC.pth checkpoints/NAME.pth [--config CONFIG]

What it writes depends on what ``SRC`` is (``--target`` overrides):

- an official ImageNet classifier ``cas-vit-{xs,s,m,t}.pth`` -> an mmpretrain
  ImageClassifier checkpoint (``configs/classification``; the detection and
  segmentation configs read the same file as their backbone's ImageNet weights);
- an official whole model (mmdet 2.24 RetinaNet / Mask R-CNN, mmseg 0.24
  Semantic FPN) -> the mmdet 3 / mmseg 1 checkpoint of the matching config;
- an official dense backbone (no classifier), or ``--target backbone`` -> the
  bare dense backbone, for ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

Every rename is printed; the result is loaded with ``strict=True`` into the
model of the config that fits (``--config``, or the one its keys point to),
and when ``--config`` is not that one the tool says which config fits. The input
is read without executing pickled code; running the tool on its own output
changes nothing. ``--ema`` takes the ``model_ema`` weights when present.
See docs/checkpoints.md for the table of official files.
"""
import argparse
import os
import os.path as osp
import re

import torch

from casvit_mm.checkpoint import CheckpointError, safe_load
from casvit_mm.checkpoint.layouts import (BACKBONE_PREFIX, backbone_part, extract_state_dict,
                                          is_classifier, is_whole_model, module_renames,
                                          to_backbone, to_mm_model, to_mmpretrain, unwrap)

TARGETS = ('auto', 'mmpretrain', 'backbone', 'model')


def parse_args():
    parser = argparse.ArgumentParser(description='Convert official CAS-ViT checkpoints.')
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--target', choices=TARGETS, default='auto',
                        help='auto: a whole detector/segmentor stays a whole model, an '
                        'ImageNet file becomes an mmpretrain classifier, a dense backbone '
                        'stays a backbone')
    parser.add_argument('--config', help='the config the result must load into strictly '
                        '(default: the repository config its keys point to)')
    parser.add_argument('--ema', action='store_true', help="use 'model_ema' weights")
    return parser.parse_args()


def _dataset_meta(meta):
    """mmdet 3 / mmseg 1 ``dataset_meta`` from an mmcv 1.x ``meta`` (CLASSES, PALETTE)."""
    out = {}
    if isinstance(meta, dict):
        if meta.get('CLASSES') is not None:
            out['classes'] = tuple(meta['CLASSES'])
        if meta.get('PALETTE') is not None:
            out['palette'] = [tuple(int(c) for c in p) for p in meta['PALETTE']]
        if isinstance(meta.get('dataset_meta'), dict):
            out.update(meta['dataset_meta'])
    return out


def convert(src, target='auto', ema=False):
    """Returns ``(checkpoint dict, renames)``; renames are ``(old, new)`` module names."""
    checkpoint = safe_load(src)
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if ema:
        if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get('model_ema'), dict)):
            raise CheckpointError(f"{src!r} has no 'model_ema' weights; drop --ema.")
        checkpoint = checkpoint['model_ema']
    state_dict = unwrap(extract_state_dict(checkpoint, repr(src)))
    if target == 'auto':
        if is_whole_model(state_dict):
            target = 'model'
        elif is_classifier(state_dict):
            target = 'mmpretrain'
        else:  # an official dense backbone (norm0/2/4/6, no classifier)
            target = 'backbone'
    if target == 'model':
        if not is_whole_model(state_dict):
            raise CheckpointError(f'{src!r} is not a whole detector/segmentor (no backbone. '
                                  f'and head keys); use --target mmpretrain or backbone.')
        converted = to_mm_model(state_dict)
        renames = [(BACKBONE_PREFIX + a, BACKBONE_PREFIX + b) for a, b in module_renames(
            backbone_part(state_dict), backbone_part(converted))]
    else:
        converted = (to_mmpretrain if target == 'mmpretrain' else to_backbone)(state_dict)
        renames = module_renames(state_dict, converted)
    out_meta = dict(converted_from=osp.basename(src), target=target)
    dataset_meta = _dataset_meta(meta)
    if dataset_meta:
        out_meta['dataset_meta'] = dataset_meta
    return dict(state_dict=converted, meta=out_meta), renames


def print_renames(renames):
    """Every rename, one line per block (``network.{2i}.{j}`` -> ``stages.{i}.{j}``)."""
    if not renames:
        print('no keys renamed (already in casvit-mm layout)')
        return
    lines = {}
    for old, new in renames:
        block_old = re.match(r'(.*network\.\d+\.\d+)\.', old + '.')
        block_new = re.match(r'(.*stages\.\d+\.\d+)\.', new + '.')
        if block_old and block_new:
            old, new = block_old.group(1) + '.*', block_new.group(1) + '.*'
        lines.setdefault(old, new)
    print(f'renamed ({len(renames)} modules):')
    for old, new in lines.items():
        print(f'  {old} -> {new}')


def check_fits(state_dict, config):
    """Load ``state_dict`` strictly into the model of ``config``; the error text or None."""
    from casvit_mm.cli import build_model
    model = build_model(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, ValueError) as e:
        lines = str(e).strip().splitlines()
        return ' '.join(line.strip() for line in lines[:4])[:600]
    return None


def check_config(state_dict, config):
    """Strict load into ``config`` (given, or the one the keys point to).

    A given config that does not fit is a ``CheckpointError`` saying which one
    fits; when the tool picked the config itself, a misfit is printed as a note.
    """
    from casvit_mm.checkpoint.whole_model import CONFIG_ROOT, matching_config
    from casvit_mm.models import CASViT
    match, why = matching_config(state_dict, CASViT.arch_settings)
    given = config is not None
    if not given:
        if match is None:
            print(f'note: no config of this repository fits: {why}')
            return
        config = osp.join(CONFIG_ROOT, match)
    shown = config if given else f'configs/{match}'
    error = check_fits(state_dict, config)
    if error is None:
        print(f'loads strictly into {shown}' + (f' (model {why})' if match else ''))
        return
    hint = (f'The file fits configs/{match} (model {why}).' if match else
            f'No config of this repository fits: {why}.')
    message = f'The converted weights do not load strictly into {shown}: {error} {hint}'
    if given:
        raise CheckpointError(message)
    print(f'note: {message}')


def main():
    args = parse_args()
    try:
        checkpoint, renames = convert(args.src, args.target, args.ema)
        print_renames(renames)
        if checkpoint['meta']['target'] != 'backbone':
            check_config(checkpoint['state_dict'], args.config)
    except CheckpointError as e:
        raise SystemExit(f'error: {e}')
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(checkpoint, args.dst)
    print(f"wrote {args.dst}: {len(checkpoint['state_dict'])} tensors "
          f"({checkpoint['meta']['target']})")


if __name__ == '__main__':
    main()
