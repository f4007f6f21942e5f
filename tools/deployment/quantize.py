"""Quantize a deployed CAS-ViT model to INT8 (onnxruntime QDQ, or NNCF for OpenVINO).

From a config and a checkpoint (or an fp32 file this tool exported before):
  1. export the deployed model as tools/deployment/export_onnx.py does, whole
     where a wrapper exists (RetinaNet, Mask R-CNN, Semantic FPN: images as
     loaded -> detections / label map; a classifier: images -> class scores),
     the backbone alone otherwise or with --backbone-only
     -> OUT_DIR/NAME_fp32.onnx (batch dynamic, image size --shape);
  2. calibrate on --calib-images images drawn from the config's own dataset
     (--calib-split train: the training images through the test pipeline;
     val: the val loader), quantize the network's convolutions and matrix
     products (int8 weights per channel, uint8 activations); the data
     preprocessor, box decoding, NMS, RoIAlign, resizing, argmax and softmax
     stay float -> OUT_DIR/NAME_int8.onnx;
  3. print both files' sizes, fp32 and int8 latency in onnxruntime (and with
     --openvino in OpenVINO) on one val batch, and how far the int8 outputs
     are from fp32;
  4. with --eval, score both files on the config's test split with its own
     evaluator (COCO bbox mAP, mIoU, top-1) and print the difference.
With --backend openvino, step 2 is NNCF's post-training quantization of the
OpenVINO model (-> OUT_DIR/NAME_int8.xml + .bin, OpenVINO IR), and steps 3-4
run both files in OpenVINO with INFERENCE_PRECISION_HINT f32.

Examples:
  python tools/deployment/quantize.py configs/detection/toy/retinanet_casvit_xs_toy-shapes.py \\
      --checkpoint work_dirs/demo/iter_300.pth --eval
  python tools/deployment/quantize.py configs/classification/casvit_xs_toy.py \\
      --checkpoint work_dirs/demo_cls/epoch_30.pth --eval
  python tools/deployment/quantize.py configs/detection/toy/retinanet_casvit_xs_toy-shapes.py \\
      --checkpoint work_dirs/demo/iter_300.pth --eval --backend openvino
  python tools/deployment/quantize.py configs/detection/retinanet_casvit_m.py \\
      --checkpoint CKPT --shape 800 1344 --backbone-only
"""
import argparse
import contextlib
import io
import os
import os.path as osp
import statistics
import sys
import time

from casvit_mm import CASViT
from casvit_mm.apis import build_model, check_data, codebase, load_config, relative_error
from casvit_mm.deploy.accuracy import metric_drop
from casvit_mm.onnx_export import (match_detections, onnxruntime_session, openvino_model,
                                   run_onnxruntime, run_openvino)
from casvit_mm.quantization import (DEFAULT_OP_TYPES, DataloaderCalibration, QuantizationError,
                                    batch_images, calibration_loader, deploy_wrapper,
                                    evaluate_onnx, export_for_quantization, input_shape,
                                    model_kind, quantize_onnx, quantized_ops, read_kind)


def parse_args():
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the model\'s config (its data calibrates and evaluates)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', help='trained weights of the whole model')
    source.add_argument('--onnx', help='an fp32 file this tool exported before (NAME_fp32.onnx)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='quantize the deployed backbone alone (image -> feature maps)')
    parser.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                        help='exported image size (default: that of a val image after the '
                        'test pipeline); smaller images are padded bottom-right')
    parser.add_argument('--calib-images', type=int,
                        help='images to calibrate on (default: 32 for onnxruntime; 300, '
                        'NNCF\'s own default, for --backend openvino)')
    parser.add_argument('--calib-split', choices=['train', 'val'], default='train')
    parser.add_argument('--calib-batch', type=int, default=8)
    parser.add_argument('--op-types', nargs='+', default=DEFAULT_OP_TYPES,
                        help='op types of the network to quantize (default: every op '
                        'onnxruntime quantizes)')
    parser.add_argument('--float-op-types', nargs='*', default=[], metavar='OP',
                        help='op types of the network to keep float (e.g. Sigmoid)')
    parser.add_argument('--exclude', nargs='*', default=[], metavar='NODE',
                        help='node names to keep float (see the fp32 file in Netron)')
    parser.add_argument('--backend', choices=['onnxruntime', 'openvino'], default='onnxruntime',
                        help='onnxruntime: its static QDQ quantizer, an .onnx that onnxruntime '
                        'and OpenVINO run; openvino: NNCF, an OpenVINO IR (.xml), faster on '
                        'x86 CPUs (docs/quantization.md)')
    parser.add_argument('--accuracy-control', action='store_true',
                        help='with --backend openvino: NNCF\'s accuracy-aware quantization '
                        '(nncf.quantize_with_accuracy_control), which scores int8 with the '
                        'config\'s evaluator on its test split and puts the costliest layers '
                        'back to float until int8 loses at most --max-drop; slow (a model '
                        'compile and evaluation per layer group ranked)')
    parser.add_argument('--out-dir', default='work_dirs/quantize')
    parser.add_argument('--threads', type=int, default=2, help='onnxruntime threads')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per file')
    parser.add_argument('--openvino', action='store_true',
                        help='also time both files in OpenVINO (pip install openvino), '
                        'which runs the int8 file faster than onnxruntime on x86 CPUs')
    parser.add_argument('--eval', action='store_true',
                        help='score fp32 and int8 with the config\'s test evaluator')
    parser.add_argument('--max-drop', type=float,
                        help='with --eval, exit 1 if int8 loses more on a metric (on the 0-1 '
                        'scale; default 0.02 for onnxruntime, 0.01 for --backend openvino)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs')
    args = parser.parse_args()
    for what, path in (('config', args.config), ('--checkpoint', args.checkpoint),
                       ('--onnx', args.onnx)):
        if path and not osp.isfile(path):
            parser.error(f'{what} {path!r} does not exist')
    if args.max_drop is None:
        args.max_drop = 0.01 if args.backend == 'openvino' else 0.02
    if args.calib_images is None:  # NNCF's default subset_size; fewer lost images on the demos
        args.calib_images = 300 if args.backend == 'openvino' else 32
    if args.calib_images < 1 or args.calib_batch < 1 or args.repeats < 1:
        parser.error('--calib-images, --calib-batch and --repeats must be >= 1')
    if args.accuracy_control and args.backend != 'openvino':
        parser.error('--accuracy-control is NNCF\'s: use it with --backend openvino')
    if args.backend == 'openvino' and args.op_types != DEFAULT_OP_TYPES:
        parser.error('--op-types is onnxruntime\'s; with --backend openvino NNCF picks the '
                     'ops, --float-op-types (OpenVINO op types) and --exclude keep some float')
    return args


def timed(session, images, repeats, run=run_onnxruntime):
    run(session, images)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = run(session, images)
        times.append(time.perf_counter() - start)
    return statistics.median(times), outputs


def output_error(kind, reference, outputs):
    """How far int8 is from fp32, in the terms of the outputs."""
    if kind in ('retinanet', 'mask_rcnn'):
        found = []
        for b in range(len(reference[0])):
            keep_r, keep_o = reference[1][b] > 0.3, outputs[1][b] > 0.3
            found.append(match_detections(
                [t[b][keep_r] for t in reference[:3]], [t[b][keep_o] for t in outputs[:3]],
                iou=0.9, score_tol=0.05))
        return (f'{sum(found) / len(found):.1%} of the fp32 detections with score > 0.3 '
                f'found in int8 (same label, IoU >= 0.9, score within 0.05)')
    if kind == 'segmentor':
        equal = float((reference[0] == outputs[0]).mean())
        return f'{equal:.2%} of the label-map pixels equal to fp32'
    return (f'max |int8 - fp32| / max |fp32| = {relative_error(reference, outputs):.3f} '
            f'over the {"class scores" if kind == "classifier" else "feature maps"}')


def main():
    args = parse_args()
    cfg = load_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    splits = ['test'] + (['train'] if args.calib_split == 'train' else ['val'])
    check_data(cfg, splits)
    model = build_model(cfg, checkpoint=args.checkpoint)
    name = osp.splitext(osp.basename(args.config))[0]
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        if args.onnx:
            kind, fp32 = read_kind(args.onnx), args.onnx
            name = osp.basename(fp32)[:-len('.onnx')].replace('_fp32', '')
        else:
            kind = model_kind(model, args.backbone_only)
            if not isinstance(getattr(model, 'backbone', None), CASViT):
                raise SystemExit(f'{args.config} has no CASViT backbone')
            if model.backbone.deploy:
                raise SystemExit(f'{args.config} builds a fused (deploy=True) backbone: give '
                                 f'the training config and checkpoint')
            name += '_backbone' if kind == 'backbone' else ''
        shape = tuple(args.shape) if args.shape else input_shape(cfg)
        sample = batch_images(next(iter(calibration_loader(cfg, 'val', args.calib_batch))),
                              model, kind, shape)
        if not args.onnx:
            fp32 = osp.join(args.out_dir, f'{name}_fp32.onnx')
            export_for_quantization(deploy_wrapper(model, kind), sample[:1], fp32, kind)
        start = time.perf_counter()
        calibration = DataloaderCalibration(cfg, model, kind, shape, args.calib_images,
                                            args.calib_batch, args.calib_split)
        if args.backend == 'openvino':
            return openvino_backend(args, cfg, model, kind, shape, sample, fp32, name,
                                    calibration, start)
        int8 = osp.join(args.out_dir, f'{name}_int8.onnx')
        quantize_onnx(fp32, int8, calibration, kind, op_types=args.op_types,
                      float_op_types=args.float_op_types, exclude=args.exclude)
    except QuantizationError as e:
        raise SystemExit(str(e))
    ops = quantized_ops(int8)
    print(f'{kind}, {shape[0]}x{shape[1]}, calibrated on {calibration.seen} {args.calib_split} '
          f'images in {time.perf_counter() - start:.0f} s')
    print(f'fp32 {fp32}: {osp.getsize(fp32) / 1e6:.1f} MB')
    print(f'int8 {int8}: {osp.getsize(int8) / 1e6:.1f} MB, '
          + ', '.join(f'{n} {k}' for k, n in sorted(ops.items())))
    t32, out32 = timed(onnxruntime_session(fp32, args.threads, spinning=False), sample,
                       args.repeats)
    t8, out8 = timed(onnxruntime_session(int8, args.threads, spinning=False), sample,
                     args.repeats)
    print(f'latency, onnxruntime, {args.threads} threads, batch {len(sample)}: fp32 '
          f'{t32 * 1e3:.1f} ms, int8 {t8 * 1e3:.1f} ms ({t32 / t8:.2f}x); load average '
          f'{os.getloadavg()[0]:.2f}')
    print(f'output error on that batch: {output_error(kind, out32, out8)}', flush=True)
    if args.openvino:  # the same two files, run by OpenVINO
        t32, _ = timed(openvino_model(fp32, args.threads), sample, args.repeats, run_openvino)
        t8, _ = timed(openvino_model(int8, args.threads), sample, args.repeats, run_openvino)
        print(f'latency, OpenVINO, {args.threads} threads, batch {len(sample)}: fp32 '
              f'{t32 * 1e3:.1f} ms, int8 {t8 * 1e3:.1f} ms ({t32 / t8:.2f}x)', flush=True)
    if not args.eval:
        return
    if kind == 'backbone':
        raise SystemExit('--eval needs a whole model (the backbone alone has no metric)')
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        metrics32, metrics8 = evaluate_onnx([fp32, int8], cfg, model, shape, args.threads)
    report_metrics(cfg, metrics32, metrics8, args.max_drop)


def report_metrics(cfg, metrics32, metrics8, max_drop):
    scale = 1. if codebase(cfg) == 'mmdet' else 100.  # mmseg and mmpretrain report percent
    ok, _ = metric_drop(metrics32, metrics8, scale, max_drop=max_drop)
    sys.exit(0 if ok else 1)


def openvino_backend(args, cfg, model, kind, shape, sample, fp32, name, calibration, start):
    """Steps 2-4 with NNCF and OpenVINO (f32 hint: the float parts stay f32)."""
    from casvit_mm.deploy.nncf_int8 import (EvaluatorValidation, compile_openvino,
                                            evaluate_openvino, fake_quantize_count, float_layers,
                                            ir_size, quantize_openvino, run_compiled)
    int8 = osp.join(args.out_dir, f'{name}_int8.xml')
    validation = None
    if args.accuracy_control:
        if kind == 'backbone':
            raise SystemExit('--accuracy-control needs a whole model (the backbone alone has '
                             'no metric)')
        validation = EvaluatorValidation(cfg, model, kind, shape)
    quantize_openvino(fp32, int8, calibration, kind, float_op_types=args.float_op_types,
                      exclude=args.exclude, validation=validation, max_drop=args.max_drop)
    print(f'{kind}, {shape[0]}x{shape[1]}, calibrated on {calibration.seen} {args.calib_split} '
          f'images in {time.perf_counter() - start:.0f} s (NNCF'
          + (f', accuracy control: {validation.calls} evaluations)' if validation else ')'))
    print(f'fp32 {fp32}: {osp.getsize(fp32) / 1e6:.1f} MB')
    print(f'int8 {int8}: {ir_size(int8) / 1e6:.1f} MB with its .bin, '
          + ', '.join(f'{n} {k}' for k, n in sorted(fake_quantize_count(int8).items())))
    floats, total = float_layers(int8)
    print(f'{total - len(floats)} of the network\'s {total} convolutions / matrix products '
          f'in int8' + (f'; float (fp32 speed): {", ".join(floats)}' if floats else ''))
    run = run_compiled
    t32, out32 = timed(compile_openvino(fp32, args.threads), sample, args.repeats, run)
    t8, out8 = timed(compile_openvino(int8, args.threads), sample, args.repeats, run)
    print(f'latency, OpenVINO (f32 hint), {args.threads} threads, batch {len(sample)}: fp32 '
          f'{t32 * 1e3:.1f} ms, int8 {t8 * 1e3:.1f} ms ({t32 / t8:.2f}x); load average '
          f'{os.getloadavg()[0]:.2f}')
    print(f'output error on that batch: {output_error(kind, out32, out8)}', flush=True)
    if not args.eval:
        return
    if kind == 'backbone':
        raise SystemExit('--eval needs a whole model (the backbone alone has no metric)')
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        metrics32, metrics8 = evaluate_openvino([fp32, int8], cfg, model, shape, args.threads)
    report_metrics(cfg, metrics32, metrics8, args.max_drop)


if __name__ == '__main__':
    main()
