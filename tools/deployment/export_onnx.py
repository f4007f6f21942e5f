"""Export a deployed CAS-ViT backbone (and a Semantic FPN segmentor) to ONNX.

Every file written is checked: onnxruntime runs it on a random image and its
outputs are compared with the *eval-mode* PyTorch model (before any folding),
``max|diff| / max|reference|`` per output against ``--tol`` (1e-4). The tool
prints ``OK`` or ``FAIL`` per file and exits with 1 if any check fails.

What is exported (static shapes: batch and image size are fixed):
  NAME_backbone.onnx  the deployed backbone: image -> the 4 feature maps
  NAME.onnx           for a segmentation config, the deployed segmentor:
                      image -> decode-head logits at 1/4 of the input size
                      (resize to the image and argmax are left to the caller)
Detectors are exported backbone only (their NMS post-processing is not part
of this tool).

Examples:
  python tools/deployment/export_onnx.py configs/segmentation/fpn_casvit_m.py \\
      --checkpoint work_dirs/fpn_casvit_m/iter_40000.pth --shape 512 512
  python tools/deployment/export_onnx.py --arch m --checkpoint checkpoints/cas-vit-m.pth
"""
import argparse
import copy
import os
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))
from casvit_mm import CASViT  # noqa: E402
from casvit_mm.apis import build_model, relative_error  # noqa: E402
from casvit_mm.onnx_export import (SegmentorLogits, export_onnx,  # noqa: E402
                                   onnxruntime_session, run_onnxruntime)
from casvit_mm.models.fusion import switch_model_to_deploy  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', help='a detection, segmentation or '
                        'classification config of this repo (or give --arch)')
    parser.add_argument('--arch', help='export a bare CAS-ViT backbone of this size '
                        '(xs s m t l) instead of a config\'s')
    parser.add_argument('--checkpoint', help='weights: of the whole model with a config, '
                        'of the backbone (any layout casvit_mm loads) with --arch')
    parser.add_argument('--shape', nargs=2, type=int, default=[512, 512],
                        metavar=('H', 'W'), help='input height and width (default 512 512)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--out-dir', default='work_dirs/onnx')
    parser.add_argument('--tol', type=float, default=1e-4,
                        help='largest accepted max|diff| / max|reference|')
    parser.add_argument('--exporter', choices=['dynamo', 'torchscript'], default='dynamo',
                        help='torch.onnx.export(dynamo=True) (default, maintained) or the '
                        'deprecated TorchScript exporter')
    args = parser.parse_args()
    if bool(args.config) == bool(args.arch):
        parser.error('give either a config or --arch')
    for what, path in (('config', args.config), ('--checkpoint', args.checkpoint)):
        if path and not osp.isfile(path):
            parser.error(f'{what} {path!r} does not exist')
    if min(args.shape) < 32 or args.batch < 1:
        parser.error('--shape needs H, W >= 32 (the backbone has stride 32), --batch >= 1')
    return args


def check(name, reference_model, deployed, example, out_dir, args):
    """Export ``deployed``, run it in onnxruntime, compare with ``reference_model``."""
    path = osp.join(out_dir, f'{name}.onnx')
    export_onnx(deployed, example, path, dynamo=args.exporter == 'dynamo')
    outputs = run_onnxruntime(onnxruntime_session(path), example)
    with torch.no_grad():
        reference = reference_model(example)
    error = relative_error(reference, outputs)
    ok = error <= args.tol
    shapes = ', '.join('x'.join(map(str, o.shape)) for o in outputs)
    print(f'{"OK  " if ok else "FAIL"} {path}: outputs {shapes}; max |onnxruntime - '
          f'PyTorch eval| / max |PyTorch eval| = {error:.2e} (tolerance {args.tol:g})',
          flush=True)
    return ok


def main():
    args = parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    example = torch.randn(args.batch, 3, *args.shape)
    if args.arch:
        init_cfg = (dict(type='Pretrained', checkpoint=args.checkpoint)
                    if args.checkpoint else None)
        backbone = CASViT(args.arch, init_cfg=init_cfg)
        backbone.init_weights()
        model, name = None, f'casvit_{args.arch}'
    else:
        model = build_model(args.config, checkpoint=args.checkpoint)
        backbone = getattr(model, 'backbone', None)
        if not isinstance(backbone, CASViT):
            raise SystemExit(f'{args.config} has no CASViT backbone: nothing to deploy')
        name = osp.splitext(osp.basename(args.config))[0]
    backbone.eval()
    ok = check(f'{name}_backbone', backbone,
               switch_model_to_deploy(copy.deepcopy(backbone), channels_last=False),
               example, args.out_dir, args)
    if model is not None and hasattr(model, 'decode_head'):
        reference = SegmentorLogits(model).eval()
        deployed = SegmentorLogits(
            switch_model_to_deploy(copy.deepcopy(model), channels_last=False))
        ok = check(name, reference, deployed, example, args.out_dir, args) and ok
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
