"""Quantize a deployed CAS-ViT model to INT8 (onnxruntime QDQ, or NNCF for OpenVINO).

From a config and a checkpoint (or an fp32 file this tool exported before):
  1. export the model through the one export dispatch (casvit_mm.deploy.dispatch:
     mmdeploy's torch2onnx with the shipped deploy config, dynamic batch, H and
     W; any mmdet / mmseg / mmpretrain head; the file takes the data
     preprocessor's output, as mmdeploy's backend model feeds it), or with
     --backbone-only the deployed backbone alone (fixed --shape); the CAS-ViT
     in its export form (switch_model_to_deploy(form='export'): plain 4-D
     convolutions, faster in OpenVINO; docs/quantization.md)
     -> OUT_DIR/NAME_fp32.onnx;
  2. calibrate on --calib-images images drawn from the config's own dataset
     (--calib-split train: the training images through the test pipeline;
     val: the val loader) through the model's data preprocessor, quantize the
     network's ops (int8 weights per channel, uint8 activations); mmdeploy's
     post-processing (box decoding, top-k, NMS, resizing, argmax, softmax)
     stays float -> OUT_DIR/NAME_int8.onnx (dynamic H and W kept);
  3. print both files' sizes, fp32 and int8 latency in onnxruntime (and with
     --openvino in OpenVINO) on one val batch, and how far the int8 outputs
     are from fp32;
  4. with --eval, score both files on the config's test split with its own
     evaluator (COCO bbox mAP, mIoU, top-1), each run by mmdeploy's backend
     model (the same test_step as tools/test.py), and print the difference.
With --backend openvino, the file is exported with the OpenVINO deploy config,
step 2 is NNCF's post-training quantization (-> OUT_DIR/NAME_int8.xml + .bin,
OpenVINO IR), and steps 3-4 run both files in OpenVINO with
INFERENCE_PRECISION_HINT f32.

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

from casvit_mm.cli import codebase, relative_error
from casvit_mm.deploy.accuracy import evaluate_models, metric_drop
from casvit_mm.deploy.dispatch import backend_model, export, export_backbone, exported_file
from casvit_mm.deploy.onnx_export import (compile_openvino, match_detections,
                                          onnxruntime_session, run_onnxruntime, run_openvino)
from casvit_mm.deploy.ort_quantization import (DEFAULT_OP_TYPES, DataloaderCalibration,
                                               QuantizationError, batch_images,
                                               calibration_loader, input_shape, quantize_onnx,
                                               quantized_ops, read_kind)
from casvit_mm.deploy.tool_args import add_calibration_args, check_calibration_args, load_model


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the model\'s config (its data calibrates and evaluates)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', help='trained weights of the whole model')
    source.add_argument('--onnx', help='an fp32 file this tool exported before (NAME_fp32.onnx)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='quantize the deployed backbone alone (image -> feature maps)')
    add_calibration_args(parser, shape_help='--backbone-only: the exported image size '
                         '(default: that of a val image after the test pipeline; smaller '
                         'images are padded bottom-right). Whole models export with dynamic '
                         'H and W and take every image at its own size',
                         calib_images=None, calib_images_help='images to calibrate on '
                         '(default: 32 for onnxruntime; 300, NNCF\'s own default, for '
                         '--backend openvino)')
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
    args = parser.parse_args()
    if args.onnx and not osp.isfile(args.onnx):
        parser.error(f'--onnx {args.onnx!r} does not exist')
    if args.max_drop is None:
        args.max_drop = 0.01 if args.backend == 'openvino' else 0.02
    if args.calib_images is None:  # NNCF's default subset_size; fewer lost images on the demos
        args.calib_images = 300 if args.backend == 'openvino' else 32
    check_calibration_args(parser, args, ('calib_images', 'calib_batch', 'repeats'))
    if args.backend == 'openvino' and args.op_types != DEFAULT_OP_TYPES:
        parser.error('--op-types is onnxruntime\'s; with --backend openvino NNCF picks the '
                     'ops, --float-op-types (OpenVINO op types) and --exclude keep some float')
    if args.shape and not args.backbone_only:
        parser.error('--shape fixes the backbone\'s export size (--backbone-only); whole '
                     'models export with dynamic H and W')
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
    """How far int8 is from fp32, in the terms of mmdeploy's outputs (detection:
    ``dets (B, N, 5)`` boxes and score, ``labels``; segmentation: the label map;
    classification: the class scores) or the backbone's feature maps."""
    if kind in ('detection', 'instance-seg'):
        found = []
        for b in range(len(reference[0])):
            dets_r, dets_o = reference[0][b], outputs[0][b]
            keep_r, keep_o = dets_r[:, 4] > 0.3, dets_o[:, 4] > 0.3
            found.append(match_detections(
                (dets_r[keep_r, :4], dets_r[keep_r, 4], reference[1][b][keep_r]),
                (dets_o[keep_o, :4], dets_o[keep_o, 4], outputs[1][b][keep_o]),
                iou=0.9, score_tol=0.05))
        return (f'{sum(found) / len(found):.1%} of the fp32 detections with score > 0.3 '
                f'found in int8 (same label, IoU >= 0.9, score within 0.05)')
    if kind == 'segmentation':
        equal = float((reference[0] == outputs[0]).mean())
        return f'{equal:.2%} of the label-map pixels equal to fp32'
    return (f'max |int8 - fp32| / max |fp32| = {relative_error(reference, outputs):.3f} '
            f'over the {"class scores" if kind == "classification" else "feature maps"}')


def export_fp32(args, cfg, model, name, val_batch):
    """Step 1: ``(kind, fp32 file, shape)``; shape None for mmdeploy's dynamic files."""
    if args.onnx:
        kind = read_kind(args.onnx)
        shape = tuple(args.shape) if args.shape else (
            input_shape(cfg) if kind == 'backbone' else None)
        return kind, args.onnx, shape
    if args.backbone_only:
        shape = tuple(args.shape) if args.shape else input_shape(cfg)
        fp32 = osp.join(args.out_dir, f'{name}_backbone_fp32.onnx')
        export_backbone(model.backbone, batch_images(val_batch, model, shape=shape)[:1], fp32)
        return 'backbone', fp32, shape
    image = val_batch['data_samples'][0].img_path
    exported = export(cfg, args.checkpoint, args.backend, 'dynamic', args.out_dir, image,
                      save_file=f'{name}_fp32.onnx')
    return exported.task, exported.onnx, None


def main():
    args = parse_args()
    cfg, model = load_model(args)
    name = osp.splitext(osp.basename(args.config))[0]
    if args.onnx:
        name = osp.basename(args.onnx)[:-len('.onnx')].replace('_fp32', '')
    os.makedirs(args.out_dir, exist_ok=True)
    val_batch = next(iter(calibration_loader(cfg, 'val', args.calib_batch)))
    try:
        kind, fp32, shape = export_fp32(args, cfg, model, name, val_batch)
        sample = batch_images(val_batch, model, kind, shape)
        start = time.perf_counter()
        calibration = DataloaderCalibration(cfg, model, kind, shape, args.calib_images,
                                            args.calib_batch, args.calib_split)
        if args.backend == 'openvino':
            return openvino_backend(args, cfg, kind, shape, sample, fp32, name, calibration,
                                    start)
        int8 = osp.join(args.out_dir, f'{name}_int8.onnx')
        quantize_onnx(fp32, int8, calibration, kind, op_types=args.op_types,
                      float_op_types=args.float_op_types, exclude=args.exclude)
    except QuantizationError as e:
        raise SystemExit(str(e))
    ops = quantized_ops(int8)
    size = f'{shape[0]}x{shape[1]}' if shape else 'dynamic H and W'
    print(f'{kind}, {size}, calibrated on {calibration.seen} {args.calib_split} '
          f'images in {time.perf_counter() - start:.0f} s')
    print(f'fp32 {fp32}: {osp.getsize(fp32) / 1e6:.1f} MB')
    print(f'int8 {int8}: {osp.getsize(int8) / 1e6:.1f} MB, '
          + ', '.join(f'{n} {k}' for k, n in sorted(ops.items())))
    t32, out32 = timed(onnxruntime_session(fp32, args.threads, spinning=False,
                                           mmdeploy_ops=True), sample, args.repeats)
    t8, out8 = timed(onnxruntime_session(int8, args.threads, spinning=False, mmdeploy_ops=True),
                     sample, args.repeats)
    batch = 'x'.join(map(str, sample.shape))
    print(f'latency, onnxruntime, {args.threads} threads, {batch}: fp32 '
          f'{t32 * 1e3:.1f} ms, int8 {t8 * 1e3:.1f} ms ({t32 / t8:.2f}x); load average '
          f'{os.getloadavg()[0]:.2f}')
    print(f'output error on that batch: {output_error(kind, out32, out8)}', flush=True)
    if args.openvino:  # the same two files, run by OpenVINO
        t32, _ = timed(compile_openvino(fp32, args.threads, input_shape=sample.shape), sample,
                       args.repeats, run_openvino)
        t8, _ = timed(compile_openvino(int8, args.threads, input_shape=sample.shape), sample,
                      args.repeats, run_openvino)
        print(f'latency, OpenVINO, {args.threads} threads, {batch}: fp32 '
              f'{t32 * 1e3:.1f} ms, int8 {t8 * 1e3:.1f} ms ({t32 / t8:.2f}x)', flush=True)
    if not args.eval:
        return
    if kind == 'backbone':
        raise SystemExit('--eval needs a whole model (the backbone alone has no metric)')
    models = [backend_model(exported_file(cfg, path, 'onnxruntime'), threads=args.threads)
              for path in (fp32, int8)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        metrics32, metrics8 = evaluate_models(models, cfg)
    report_metrics(cfg, metrics32, metrics8, args.max_drop)


def report_metrics(cfg, metrics32, metrics8, max_drop):
    scale = 1. if codebase(cfg) == 'mmdet' else 100.  # mmseg and mmpretrain report percent
    ok, _ = metric_drop(metrics32, metrics8, scale, max_drop=max_drop)
    sys.exit(0 if ok else 1)


def openvino_backend(args, cfg, kind, shape, sample, fp32, name, calibration, start):
    """Steps 2-4 with NNCF and OpenVINO (f32 hint: the float parts stay f32)."""
    from casvit_mm.deploy.nncf_int8 import (evaluate_openvino, fake_quantize_count,
                                            float_layers, ir_size, quantize_openvino)
    int8 = osp.join(args.out_dir, f'{name}_int8.xml')
    quantize_openvino(fp32, int8, calibration, kind, float_op_types=args.float_op_types,
                      exclude=args.exclude)
    size = f'{shape[0]}x{shape[1]}' if shape else 'dynamic H and W'
    print(f'{kind}, {size}, calibrated on {calibration.seen} {args.calib_split} '
          f'images in {time.perf_counter() - start:.0f} s (NNCF)')
    print(f'fp32 {fp32}: {osp.getsize(fp32) / 1e6:.1f} MB')
    print(f'int8 {int8}: {ir_size(int8) / 1e6:.1f} MB with its .bin, '
          + ', '.join(f'{n} {k}' for k, n in sorted(fake_quantize_count(int8).items())))
    floats, total = float_layers(int8)
    print(f'{total - len(floats)} of the network\'s {total} convolutions / matrix products '
          f'in int8' + (f'; float (fp32 speed): {", ".join(floats)}' if floats else ''))
    if kind == 'instance-seg':  # OpenVINO's RoI feature extractor takes one image
        sample = sample[:1]
    static = sample.shape  # compiled at the batch's shape (see compile_openvino)
    t32, out32 = timed(compile_openvino(fp32, args.threads, input_shape=static), sample,
                       args.repeats, run_openvino)
    t8, out8 = timed(compile_openvino(int8, args.threads, input_shape=static), sample,
                     args.repeats, run_openvino)
    print(f'latency, OpenVINO (f32 hint), {args.threads} threads, '
          f'{"x".join(map(str, sample.shape))}: fp32 {t32 * 1e3:.1f} ms, int8 '
          f'{t8 * 1e3:.1f} ms ({t32 / t8:.2f}x); load average {os.getloadavg()[0]:.2f}')
    print(f'output error on that batch: {output_error(kind, out32, out8)}', flush=True)
    if not args.eval:
        return
    if kind == 'backbone':
        raise SystemExit('--eval needs a whole model (the backbone alone has no metric)')
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        metrics32, metrics8 = evaluate_openvino([fp32, int8], cfg, args.threads)
    report_metrics(cfg, metrics32, metrics8, args.max_drop)


if __name__ == '__main__':
    main()
