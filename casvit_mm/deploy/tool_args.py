"""What the export tools that calibrate share: their arguments and loading the model.

``tools/deployment/quantize.py`` (onnxruntime / NNCF int8) and
``tools/deployment/export_mobile.py`` (ExecuTorch int8) both take a config and
a trained checkpoint, calibrate on the config's own images and may score the
result with its evaluator; the arguments for that, their checks and the
loading (config overrides, data on disk, a CAS-ViT in its training form) live
here once.
"""
import argparse
from typing import Sequence, Tuple

__all__ = ['add_calibration_args', 'check_calibration_args', 'load_model']


def add_calibration_args(parser: argparse.ArgumentParser, shape_help: str = None,
                         calib_images_help: str = 'images to calibrate on (default 32)',
                         calib_images: int = 32):
    """``--shape``, ``--calib-images``, ``--calib-split``, ``--calib-batch`` and
    ``--cfg-options``; ``calib_images=None`` leaves the default to the tool (it
    depends on another argument)."""
    from mmengine.config import DictAction
    parser.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                        help=shape_help or 'exported image size (default: that of a val '
                        'image after the test pipeline); smaller images are padded '
                        'bottom-right')
    parser.add_argument('--calib-images', type=int, default=calib_images,
                        help=calib_images_help)
    parser.add_argument('--calib-split', choices=['train', 'val'], default='train',
                        help='train: the training images through the test pipeline '
                        '(default); val: the val loader')
    parser.add_argument('--calib-batch', type=int, default=8)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs')


def check_calibration_args(parser: argparse.ArgumentParser, args,
                           positive: Sequence[str] = ('calib_images', 'calib_batch')):
    """``parser.error`` unless the config (and a ``--checkpoint`` if given) exist
    and the counts named in ``positive`` are >= 1."""
    import os.path as osp
    for what, path in (('config', args.config),
                       ('--checkpoint', getattr(args, 'checkpoint', None))):
        if path and not osp.isfile(path):
            parser.error(f'{what} {path!r} does not exist')
    if min(getattr(args, name) for name in positive) < 1:
        parser.error(', '.join('--' + n.replace('_', '-') for n in positive)
                     + ' must each be >= 1')


def load_model(args, need_training_form: bool = True) -> Tuple[object, object]:
    """``(cfg, model)``: the config with ``--cfg-options`` merged, its test split and
    calibration split checked on disk, the model built with ``--checkpoint``.
    Stops with a message (``SystemExit``) if the model has no CAS-ViT backbone, or
    (``need_training_form``) if it is built fused (``deploy=True``)."""
    from casvit_mm import CASViT
    from casvit_mm.cli import build_model, check_data, load_config
    cfg = load_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    check_data(cfg, ['test', args.calib_split])
    model = build_model(cfg, checkpoint=getattr(args, 'checkpoint', None))
    model.eval()
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, CASViT):
        raise SystemExit(f'{args.config} has no CASViT backbone')
    if need_training_form and backbone.deploy:
        raise SystemExit(f'{args.config} builds a fused (deploy=True) backbone: give the '
                         f'training config and checkpoint')
    return cfg, model
