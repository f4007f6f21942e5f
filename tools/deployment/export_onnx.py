"""Export a deployed CAS-ViT model to ONNX: the backbone, and whole models end to end.

Every export goes through the one dispatch (``casvit_mm.deploy.dispatch``), and
every file holds the CAS-ViT in its export form (``switch_model_to_deploy(
form='export')``: the fused weights as plain 4-D ops, docs/deploy.md). Whole
models: mmdeploy's ``torch2onnx`` with the shipped deploy config of the task,
backend and shape mode (any mmdet / mmseg / mmpretrain head):

  python tools/deployment/export_onnx.py CONFIG --checkpoint CKPT \
      [--backend onnxruntime|openvino] [--shape-mode dynamic|static] [--image IMG]
  -> OUT_DIR/NAME_<backend>_<shape-mode>/end2end.onnx (+ end2end.xml for OpenVINO),
     checked against the PyTorch model's test_step at the export image and at two
     other sizes (a dynamic file; a static one takes every image resized to its size).

``--wrappers`` writes instead the hand-written graph kept for detectors
(``dispatch.exact_graph``: RetinaNet and Mask R-CNN with mmdet's exact
candidate selection and the data preprocessor inside, fixed H and W,
docs/deploy.md says when to use it) -> OUT_DIR/NAME.onnx: images as loaded
(float, 0-255, BGR, already resized) -> boxes (B, 100, 4), scores (B, 100),
labels (B, 100) after NMS (Mask R-CNN: also masks (B, 100, H, W) bool pasted
into the image); check: every detection of mmdet's test_step found, same
label, IoU >= 0.99, score within 1e-3 (and >= 99 % of the matched masks'
pixels equal).

Always: OUT_DIR/NAME_backbone.onnx, the deployed backbone (image -> the
feature maps, --shape, batch dynamic with the TorchScript exporter), checked
against the eval-mode backbone (max|diff| / max|reference| <= --tol, 1e-4).
The tool prints ``OK`` or ``FAIL`` per file and exits with 1 if any check fails.

``--eval`` also scores the PyTorch model and the file written (mmdeploy's, through its
backend model; or the hand-written graph, on a test split the pipeline does not
resize, at --shape) on the config's test split with its test evaluator, and prints
both metrics (the parity criterion of docs/deploy.md: within 0.005).

Examples:
  python tools/deployment/export_onnx.py configs/detection/retinanet_casvit_m.py \\
      --checkpoint work_dirs/retinanet_casvit_m/epoch_12.pth
  python tools/deployment/export_onnx.py configs/segmentation/fpn_casvit_m.py \\
      --checkpoint work_dirs/fpn_casvit_m/iter_40000.pth --backend openvino
  python tools/deployment/export_onnx.py configs/detection/retinanet_casvit_m.py \\
      --checkpoint CKPT --shape 800 1344 --wrappers
  python tools/deployment/export_onnx.py --arch m --checkpoint checkpoints/cas-vit-m.pth
"""
import argparse
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction

from casvit_mm import CASViT
from casvit_mm.cli import build_model, codebase, relative_error
from casvit_mm.deploy.dispatch import exact_graph, export_backbone
from casvit_mm.deploy.onnx_export import (export_onnx, matched_pairs, onnxruntime_session,
                                          run_onnxruntime)


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
                        'deprecated TorchScript exporter, batch dynamic (the backbone file)')
    parser.add_argument('--wrappers', action='store_true',
                        help='detectors through the hand-written graph kept for mmdet\'s '
                        'exact candidate selection instead of mmdeploy (RetinaNet, Mask '
                        'R-CNN; images as loaded, fixed H, W)')
    parser.add_argument('--backend', choices=['onnxruntime', 'openvino'],
                        default='onnxruntime', help='mmdeploy backend (default onnxruntime)')
    parser.add_argument('--shape-mode', choices=['dynamic', 'static'], default='dynamic',
                        help='mmdeploy: batch, H and W dynamic (default), or fixed to '
                        '--shape (static)')
    parser.add_argument('--image', help='mmdeploy: the export image (default: a seeded '
                        'random --shape image)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='mmdeploy check: detections compared from this score on')
    parser.add_argument('--eval', action='store_true',
                        help='also score PyTorch and the file written on the config\'s test '
                        'split with its evaluator')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings (key=value), as tools/train.py')
    args = parser.parse_args()
    if bool(args.config) == bool(args.arch):
        parser.error('give either a config or --arch')
    for what, path in (('config', args.config), ('--checkpoint', args.checkpoint)):
        if path and not osp.isfile(path):
            parser.error(f'{what} {path!r} does not exist')
    if args.eval and not args.config:
        parser.error('--eval scores a config\'s model on its test split: give a config')
    if min(args.shape) < 32 or args.batch < 1:
        parser.error('--shape needs H, W >= 32 (the backbone has stride 32), --batch >= 1')
    return args


def check_backbone(name, backbone, example, out_dir, args):
    """Export the deployed ``backbone`` (the dispatch's export_backbone), run it in
    onnxruntime, compare with the eval-mode ``backbone``."""
    path = osp.join(out_dir, f'{name}.onnx')
    export_backbone(backbone, example, path, dynamo=args.exporter == 'dynamo')
    outputs = run_onnxruntime(onnxruntime_session(path), example)
    with torch.no_grad():
        reference = backbone(example)
    error = relative_error(reference, outputs)
    ok = error <= args.tol
    shapes = ', '.join('x'.join(map(str, o.shape)) for o in outputs)
    print(f'{"OK  " if ok else "FAIL"} {path}: outputs {shapes}; max |onnxruntime - '
          f'PyTorch eval| / max |PyTorch eval| = {error:.2e} (tolerance {args.tol:g})',
          flush=True)
    return ok


def check_detector(name, model, image, out_dir):
    """The hand-written graph: image -> detections after NMS, and masks for Mask
    R-CNN (TorchScript exporter: the NMS needs it)."""
    from mmdet.structures import DetDataSample
    path = osp.join(out_dir, f'{name}.onnx')
    with_mask = getattr(model, 'with_rpn', False)
    try:
        deployed = exact_graph(model)
    except ValueError as e:
        raise SystemExit(str(e))
    export_onnx(deployed, image, path, dynamo=False, dynamic_batch=True,
                output_names=['boxes', 'scores', 'labels'] + ['masks'] * with_mask)
    outputs = run_onnxruntime(onnxruntime_session(path), image)
    boxes, scores, labels = outputs[:3]
    h, w = image.shape[2:]
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                           scale_factor=(1., 1.))) for _ in image]
    with torch.no_grad():
        results = model.test_step(dict(inputs=list(image), data_samples=samples))
    found, total, mask_equal, mask_total = 0, 0, 0, 0
    for b, result in enumerate(results):
        ref, keep = result.pred_instances, scores[b] > 0
        pairs = matched_pairs((ref.bboxes, ref.scores, ref.labels),
                              (boxes[b][keep], scores[b][keep], labels[b][keep]))
        found, total = found + len(pairs), total + len(ref)
        if with_mask and pairs:
            masks = torch.from_numpy(outputs[3][b][keep][[j for _, j in pairs]])
            mask_equal += int((ref.masks[[i for i, _ in pairs]] == masks).sum())
            mask_total += masks.numel()
    ok = found >= 0.99 * total and mask_equal >= 0.99 * mask_total
    masks = ('' if not with_mask else '; no masks to compare' if not mask_total else
             f'; {mask_equal / mask_total:.2%} of their mask pixels equal (needed: 99 %)')
    names = ', '.join(('boxes', 'scores', 'labels', 'masks')[:len(outputs)])
    print(f'{"OK  " if ok else "FAIL"} {path}: {names} ({boxes.shape[1]} per image, score 0 = '
          f'padding); {found} of the {total} detections of PyTorch eval found (same label, '
          f'IoU >= 0.99, score within 1e-3){masks}', flush=True)
    return ok, GraphModel(path)


class GraphModel:
    """``test_step`` of a hand-written detector graph in onnxruntime, for --eval:
    images as the test pipeline loads them (not resized: the graph's boxes and
    masks are in input pixels), of the graph's H and W."""

    def __init__(self, path):
        self.session = onnxruntime_session(path)

    def test_step(self, data):
        from mmengine.structures import InstanceData
        outputs = run_onnxruntime(self.session, torch.stack(data['inputs']).float())
        for b, sample in enumerate(data['data_samples']):
            if tuple(sample.scale_factor) != (1., 1.):
                raise SystemExit('--wrappers --eval: the test pipeline resizes the images; '
                                 'the graph\'s outputs are in input pixels')
            keep = outputs[1][b] > 0  # the rest is padding
            inst = InstanceData(bboxes=torch.from_numpy(outputs[0][b][keep]),
                                scores=torch.from_numpy(outputs[1][b][keep]),
                                labels=torch.from_numpy(outputs[2][b][keep]).long())
            if len(outputs) > 3:
                inst.masks = torch.from_numpy(outputs[3][b][keep])
            sample.pred_instances = inst
        return data['data_samples']


def check_mmdeploy(config, model, args):
    """Whole model through mmdeploy, checked against the PyTorch model's test_step
    at the export image's size and at two other aspect ratios."""
    import numpy as np
    from mmengine.fileio import get
    import mmcv
    from casvit_mm.deploy.dispatch import backend_model, export, pipeline_data
    from casvit_mm.deploy.parity import (classification_agreement, detection_agreement,
                                         segmentation_agreement)
    h, w = args.shape
    rng = np.random.default_rng(0)
    image = (mmcv.imfrombytes(get(args.image)) if args.image
             else rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    name = osp.splitext(osp.basename(args.config))[0]
    work_dir = osp.join(args.out_dir, f'{name}_{args.backend}_{args.shape_mode}')
    static = args.shape_mode == 'static'
    checkpoint = args.checkpoint
    if checkpoint is None:  # random weights: export the very model compared below
        os.makedirs(work_dir, exist_ok=True)
        checkpoint = osp.join(work_dir, 'random_weights.pth')
        torch.save({'state_dict': model.state_dict()}, checkpoint)
    exported = export(config, checkpoint, args.backend, args.shape_mode, work_dir, image,
                      input_shape=(w, h) if static else None)
    deployed = backend_model(exported)
    H, W = image.shape[:2]
    images = [image, mmcv.imresize(image, (W, H * 3 // 4)), mmcv.imresize(image, (W * 3 // 4, H))]
    pairs = []
    for img in images:
        data = pipeline_data(exported, [img])
        if exported.task == 'segmentation':
            # compared at the network's size: the last resize to the original image
            # differs by design (mmdeploy: label map, nearest; mmseg: logits, bilinear)
            for sample in data['data_samples']:
                sample.set_metainfo(dict(ori_shape=sample.img_shape))
        with torch.no_grad():
            pairs.append((model.test_step(data)[0], deployed.test_step(data)[0]))
    ref, out = [p[0] for p in pairs], [p[1] for p in pairs]
    sizes = ', '.join(f'{i.shape[0]}x{i.shape[1]}' for i in images)
    if exported.task in ('detection', 'instance-seg'):
        found, total, back, total_back = detection_agreement(ref, out, args.score_thr)
        ok = found >= 0.98 * total and back >= 0.98 * total_back
        what = (f'{found} of {total} PyTorch detections with score >= {args.score_thr} found, '
                f'{back} of {total_back} back (same label, IoU >= 0.99, score within 1e-3; '
                f'needed: 98 % both ways)')
    elif exported.task == 'segmentation':
        equal = segmentation_agreement(ref, out)
        ok, what = equal >= 0.999, f'{equal:.4%} of pixels equal (needed: 99.9 %)'
    else:
        same, diff = classification_agreement(ref, out)
        ok, what = same and diff < 1e-4, f'labels equal: {same}, max score diff {diff:.1e}'
    print(f'{"OK  " if ok else "FAIL"} {", ".join(exported.files)}: {exported.task}, '
          f'{args.shape_mode}, images {sizes}: {what}', flush=True)
    return ok, backend_model(exported)


def evaluate(cfg, model, deployed, what):
    """PyTorch and the deployed model on the config's test split, with its evaluator:
    each headline metric, and whether they are within 0.005 (on the 0-1 scale)."""
    from casvit_mm.deploy.accuracy import evaluate_models, metric_drop
    reference, other = evaluate_models([model, deployed], cfg)
    scale = 1. if codebase(cfg) == 'mmdet' else 100.  # mmseg and mmpretrain report percent
    ok, _ = metric_drop(reference, other, scale, names=('PyTorch', what), max_drop=0.005,
                        both_ways=True)
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
        cfg = Config.fromfile(args.config)
        cfg.merge_from_dict(args.cfg_options)
        model = build_model(cfg, checkpoint=args.checkpoint)
        backbone = getattr(model, 'backbone', None)
        if not isinstance(backbone, CASViT):
            raise SystemExit(f'{args.config} has no CASViT backbone: nothing to deploy')
        if backbone.deploy:
            raise SystemExit(f'{args.config} builds a fused (deploy=True) backbone: give the '
                             f'training config and checkpoint, the check needs eval mode')
        name = osp.splitext(osp.basename(args.config))[0]
    backbone.eval()
    ok = check_backbone(f'{name}_backbone', backbone, example, args.out_dir, args)
    if model is not None and args.wrappers:
        image = (torch.rand(args.batch, 3, *args.shape) * 255).round()  # as loaded: 0-255
        checked, deployed = check_detector(name, model, image, args.out_dir)
        ok = checked and ok
    elif model is not None:
        checked, deployed = check_mmdeploy(cfg, model, args)
        ok = checked and ok
    if model is not None and args.eval:
        what = 'graph' if args.wrappers else 'mmdeploy'
        ok = evaluate(cfg, model, deployed, what) and ok
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
