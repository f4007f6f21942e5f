"""The accuracy cost of bf16 deploy mode: fp32 and bf16, scored with the config's evaluator.

From a config and a trained checkpoint: the model deployed in float32
(``switch_model_to_deploy(model)``, what ``tools/test.py --deploy`` runs) and
in bf16 (``switch_model_to_deploy(model, bf16=True)``: the network's weights
and activations bf16, pre- and post-processing float32), both scored on the
config's test split with its own evaluator (COCO mAP, mIoU, top-1) on the
same batches; prints both metrics, their difference, and the latency of one
test batch in each. Exits 1 when bf16 loses more than --max-drop.

bf16 is refused on CPUs that only emulate it (no AVX512-BF16 / AMX-BF16);
--allow-emulated-bf16 runs it anyway (slowly: for the accuracy, not the speed).

Example:
  python tools/deployment/bf16_eval.py configs/detection/toy/retinanet_casvit_xs_toy-shapes.py \\
      work_dirs/demo/iter_300.pth --allow-emulated-bf16
"""
import argparse
import contextlib
import copy
import io
import os
import os.path as osp
import statistics
import sys
import time

import torch

from casvit_mm.cli import build_model, check_data, codebase, load_config
from casvit_mm.deploy.accuracy import evaluate_models, metric_drop
from casvit_mm.deploy.bf16 import Bf16Unsupported, check_bf16
from casvit_mm.deploy.cpu_isa import isa_line
from casvit_mm.deploy.switch import switch_model_to_deploy


def parse_args():
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the model\'s config (its test split is scored)')
    parser.add_argument('checkpoint', help='trained weights of the whole model')
    parser.add_argument('--allow-emulated-bf16', action='store_true',
                        help='run bf16 on a CPU without native bf16 (slow)')
    parser.add_argument('--max-drop', type=float, default=0.01,
                        help='exit 1 if bf16 loses more on a headline metric (0-1 scale)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per precision')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs')
    args = parser.parse_args()
    for what, path in (('config', args.config), ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            parser.error(f'{what} {path!r} does not exist')
    return args


def latency(model, data, repeats):
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        with torch.no_grad():
            model.test_step(copy.deepcopy(data))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    args = parse_args()
    try:
        check_bf16(args.allow_emulated_bf16)
    except Bf16Unsupported as e:
        raise SystemExit(str(e))
    cfg = load_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    check_data(cfg, ['test'])
    model = build_model(cfg, checkpoint=args.checkpoint)
    fp32 = switch_model_to_deploy(copy.deepcopy(model))
    bf16 = switch_model_to_deploy(model, bf16=True,
                                  allow_emulated_bf16=args.allow_emulated_bf16)
    print(isa_line())
    from casvit_mm.deploy.ort_quantization import calibration_loader
    data = next(iter(calibration_loader(cfg, 'val', cfg.test_dataloader.get('batch_size', 8))))
    t32, t16 = latency(fp32, data, args.repeats), latency(bf16, data, args.repeats)
    print(f'latency of one test batch ({len(data["inputs"])} images), PyTorch deploy mode, '
          f'{torch.get_num_threads()} threads: fp32 {t32 * 1e3:.1f} ms, bf16 {t16 * 1e3:.1f} ms '
          f'({t32 / t16:.2f}x); load average {os.getloadavg()[0]:.2f}', flush=True)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        metrics32, metrics16 = evaluate_models([fp32, bf16], cfg)
    scale = 1. if codebase(cfg) == 'mmdet' else 100.  # mmseg and mmpretrain report percent
    ok, _ = metric_drop(metrics32, metrics16, scale, names=('fp32', 'bf16'),
                        max_drop=args.max_drop)
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
