"""Export a CAS-ViT model for phones: ExecuTorch (XNNPACK, fp32 and int8), Core ML, LiteRT.

From a config and a checkpoint (training layout):
  1. build the deployed network in the export-friendly form
     (casvit_mm.deploy.mobile): preprocessed images (B, 3, H, W) -> raw
     outputs (class logits; RetinaNet's per-level class and box maps;
     Semantic FPN's logits; with --backbone-only the feature maps); batch
     dynamic up to --max-batch, H x W fixed (--shape);
  2. write OUT_DIR/NAME_fp32.pte (XNNPACK), OUT_DIR/NAME_int8.pte (PT2E
     int8: XNNPACKQuantizer, symmetric, per-channel weights, calibrated on
     --calib-images images of the config's own data; a classifier's last
     CAS-ViT stage left in fp32 unless --int8-float says otherwise) and
     OUT_DIR/NAME.mlpackage (Core ML ML program, fp16), OUT_DIR/NAME_fp32.tflite
     and OUT_DIR/NAME_int8.tflite (LiteRT, through litert-torch: the optional
     extra `pip install -e .[litert]`; batch 1; int8 by litert-torch's PT2E
     quantizer, every layer), as --formats says;
  3. for each .pte / .tflite: how many ops XNNPACK runs (ExecuTorch's
     delegation info; LiteRT's interpreter after its XNNPACK delegate is
     applied; the tool fails unless all of them, but for the FPN's upsampling
     of detectors and segmentors and LiteRT's int8 GELU), its outputs in
     ExecuTorch's Python runtime / LiteRT's interpreter against the eval-mode
     PyTorch model on a val batch (fp32: max|diff| / max|reference| <= --tol),
     and its latency; for Core ML the MIL op inventory (running the package
     needs macOS or iOS);
  4. with --eval, score PyTorch and every file on the config's test split
     with its own evaluator, the post-processing done by mmdet / mmseg /
     mmpretrain on the host; each file against PyTorch through
     casvit_mm.deploy.accuracy.metric_drop (as quantize.py): fail if int8
     loses more than --max-drop, or an fp32 file differs by more than 0.005
     (the parity criterion of docs/deploy.md) on a headline metric.

Examples:
  python tools/deployment/export_mobile.py configs/classification/casvit_xs_toy.py \\
      --checkpoint work_dirs/demo_cls/epoch_30.pth --eval
  python tools/deployment/export_mobile.py \\
      configs/detection/toy/retinanet_casvit_xs_toy-shapes.py \\
      --checkpoint work_dirs/demo/iter_300.pth --eval --formats executorch executorch-int8 coreml
  python tools/deployment/export_mobile.py configs/segmentation/fpn_casvit_m.py \\
      --checkpoint CKPT --shape 512 512 --formats coreml
"""
import argparse
import contextlib
import io
import os
import os.path as osp
import statistics
import sys
import time

import torch

from casvit_mm.cli import codebase, relative_error
from casvit_mm.deploy.accuracy import metric_drop
from casvit_mm.deploy.mobile import (DEFAULT_MAX_BATCH, FORMATS, LITERT_CPU_OK, PORTABLE_OK,
                                     ExecuTorchModel, LiteRTModel, MobileExportError,
                                     MobileNetwork, calibration_batches, evaluate_mobile,
                                     float_modules, mobile_kind, mobile_network, to_coreml,
                                     to_executorch, to_litert)
from casvit_mm.deploy.ort_quantization import batch_images, calibration_loader, input_shape
from casvit_mm.deploy.tool_args import add_calibration_args, check_calibration_args, load_model

# An fp32 file against PyTorch on a headline metric: the parity criterion of
# docs/deploy.md (export_onnx.py --eval checks the same).
FP32_PARITY = 0.005


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the model\'s config (its data calibrates and evaluates)')
    parser.add_argument('--checkpoint', required=True, help='trained weights of the whole model')
    parser.add_argument('--formats', nargs='+', choices=FORMATS,
                        default=['executorch', 'executorch-int8'],
                        help='what to write (default: executorch executorch-int8)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='export the backbone alone (image -> feature maps)')
    add_calibration_args(parser)  # --shape, --calib-*, --cfg-options: as quantize.py
    parser.add_argument('--max-batch', type=int, default=DEFAULT_MAX_BATCH,
                        help=f'largest batch the .pte files take (default {DEFAULT_MAX_BATCH})')
    parser.add_argument('--out-dir', default='work_dirs/mobile')
    parser.add_argument('--threads', type=int, default=2, help='XNNPACK threads when timing')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per file')
    parser.add_argument('--tol', type=float, default=1e-4,
                        help='largest accepted max|diff| / max|reference| of the fp32 .pte')
    parser.add_argument('--eval', action='store_true',
                        help='score PyTorch and the exported files with the config\'s '
                        'evaluator')
    parser.add_argument('--max-drop', type=float, default=0.01,
                        help='with --eval, exit 1 if an int8 file loses more than this on a '
                        'headline metric against PyTorch (default 0.01, on the 0-1 scale; '
                        f'an fp32 file may differ by {FP32_PARITY})')
    parser.add_argument('--int8-float', nargs='*', metavar='MODULE',
                        help='int8: modules left in fp32, by name in the model (e.g. '
                        'backbone.stages.3). Default: a classifier\'s last CAS-ViT stage, '
                        'the most sensitive one; the flag with no name quantizes everything')
    args = parser.parse_args()
    check_calibration_args(parser, args, ('calib_images', 'calib_batch', 'repeats',
                                          'max_batch'))
    return args


def median_latency(run, images, repeats):
    run(images)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    args = parse_args()
    cfg, model = load_model(args)
    try:
        kind = mobile_kind(model, args.backbone_only)
    except MobileExportError as e:
        raise SystemExit(str(e))
    name = osp.splitext(osp.basename(args.config))[0] + ('_backbone' if kind == 'backbone'
                                                         else '')
    shape = tuple(args.shape) if args.shape else input_shape(cfg)
    sample = batch_images(next(iter(calibration_loader(cfg, 'val', args.calib_batch))),
                          model, 'backbone', shape)[:args.max_batch]
    reference_net = MobileNetwork(model.backbone if kind == 'backbone' else model, kind).eval()
    with torch.no_grad():
        reference = reference_net(sample)
    network = mobile_network(model, kind)
    os.makedirs(args.out_dir, exist_ok=True)
    print(f'{kind}, input {shape[0]}x{shape[1]}, batch 1..{args.max_batch}; torch '
          f'{torch.__version__}, load average {os.getloadavg()[0]:.2f}', flush=True)
    failed, files = False, {}
    for fmt in args.formats:
        start = time.perf_counter()
        if fmt == 'coreml':
            path = osp.join(args.out_dir, f'{name}.mlpackage')
            _, ops = to_coreml(network, sample[:1], path)
            print(f'coreml  {path}: converted in {time.perf_counter() - start:.0f} s, '
                  f'{sum(ops.values())} MIL ops: '
                  + ', '.join(f'{k} {n}' for k, n in ops.most_common())
                  + ' (fp16; running it needs macOS / iOS)', flush=True)
            continue
        int8 = fmt.endswith('-int8')
        litert = fmt.startswith('litert')
        path = osp.join(args.out_dir, f'{name}_{"int8" if int8 else "fp32"}.'
                        + ('tflite' if litert else 'pte'))
        calibration = (calibration_batches(cfg, model, shape, args.calib_images,
                                           args.calib_batch, args.calib_split)
                       if int8 else None)
        if litert:
            if int8 and args.int8_float:
                raise SystemExit('--int8-float: litert-int8 quantizes every layer (LiteRT\'s '
                                 'PT2E quantizer leaves no module in fp32)')
            if int8:
                print('int8 (LiteRT): every layer (its quantizer leaves no module in fp32)',
                      flush=True)
            try:  # batch 1, static (to_litert says why)
                info = to_litert(network, sample[:1], path, quantize=int8,
                                 calibration=calibration)
            except ImportError as e:
                raise SystemExit(f'--formats {fmt} needs LiteRT ({e}): pip install -e .[litert] '
                                 '&& pip install --no-deps litert-torch==0.10.0')
            runner = LiteRTModel(path, args.threads)
            leftovers = LITERT_CPU_OK
        else:
            keep_float = (float_modules(network) if args.int8_float is None
                          else args.int8_float) if int8 else None
            if int8:
                print(f'int8: in fp32 {", ".join(keep_float) or "nothing"}', flush=True)
            info = to_executorch(network, sample[:1], path, quantize=int8,
                                 calibration=calibration, max_batch=args.max_batch,
                                 keep_float=keep_float)
            runner = ExecuTorchModel(path, args.threads)
            leftovers = PORTABLE_OK
        err = relative_error(reference, runner(sample))
        ms = median_latency(runner, sample, args.repeats) * 1e3
        total = info['delegated'] + info['non_delegated']
        whole = info['non_delegated'] == 0
        # what may stay off XNNPACK: the FPN's upsampling of detectors and
        # segmentors; in LiteRT int8 also its GELU
        allowed = whole or ((kind in ('detector', 'segmentor') or (litert and int8))
                            and set(info['non_delegated_ops']) <= set(leftovers))
        ok = allowed and (int8 or err <= args.tol)
        failed |= not ok
        print(f'{"OK  " if ok else "FAIL"} {fmt:<16}{path}: {osp.getsize(path) / 1e6:.1f} MB, '
              f'{"converted" if litert else "lowered"} in {time.perf_counter() - start:.0f} s; '
              f'XNNPACK runs {info["delegated"]} of {total} ops in {info["subgraphs"]} '
              f'{"partition" if litert else "subgraph"}(s)'
              + (f', left: {info["non_delegated_ops"]}' if not whole else '')
              + f'; max|diff| / max|eval-mode PyTorch| {err:.1e}'
              + ('' if int8 else f' (allowed {args.tol:g})')
              + f'; {ms:.1f} ms for {len(sample)}x3x{shape[0]}x{shape[1]}, '
              f'{args.threads} threads', flush=True)
        files[fmt] = runner
    if args.eval and files:
        if kind == 'backbone':
            raise SystemExit('--eval needs a whole model (the backbone alone has no metric)')
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
            metrics = evaluate_mobile([reference_net] + list(files.values()), cfg, model, kind,
                                      shape, args.max_batch)
        scale = 1. if codebase(cfg) == 'mmdet' else 100.  # mmseg, mmpretrain: percent
        for fmt, scores in zip(files, metrics[1:]):
            int8 = fmt.endswith('-int8')
            # int8: its loss against PyTorch; fp32: parity (a gain counts as a difference)
            ok, _ = metric_drop(metrics[0], scores, scale, names=('PyTorch', 'file'),
                                max_drop=args.max_drop if int8 else FP32_PARITY,
                                both_ways=not int8,
                                print_fn=lambda line, f=fmt: print(f'{f:<16} {line}'))
            failed |= not ok
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
