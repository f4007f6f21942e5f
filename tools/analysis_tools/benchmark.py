"""Inference speed of CAS-ViT: eval mode vs deploy mode vs the ResNets.

One process, one stated number of threads. For every input it builds the
variants, warms each up, then times them round-robin (the order rotates every
round, so a burst of load elsewhere on the machine hits all variants alike)
and reports the median latency, images per second and speed-ups against the
eval-mode CAS-ViT of the same input measured in the same run (and against
ResNet-50 when it is in the run).

Rows:
  backbones at each --inputs: CAS-ViT eval, deploy (BN folded, channels
  last), optionally deploy + torch.compile and the deployed backbone in
  onnxruntime; mmdet's ResNet-18 and ResNet-50 (the same output stages, eval).
  whole models (--models) built from configs/ with random weights: RetinaNet
  and Mask R-CNN run ``test_step`` on one 800x1344 image (data preprocessor,
  network, post-processing with NMS: what tools/test.py runs per image);
  Semantic FPN runs the network to its logits on 512x512 (also in
  onnxruntime with --variants onnx). Eval and deploy differ only in the
  backbone (and the FPN lateral convs that absorb its output norms).

Examples:
  # the full table of the README (about 15 minutes on 2 cores)
  python tools/analysis_tools/benchmark.py --json work_dirs/benchmark.json
  # a quick look
  python tools/analysis_tools/benchmark.py --arch xs --inputs 1x3x512x512 \
      --models none --repeats 3
"""
import argparse
import copy
import json
import os
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))
from casvit_mm import CASViT  # noqa: E402
from casvit_mm.deployment import (SegmentorLogits, build_model, export_onnx,  # noqa: E402
                                  onnxruntime_session, relative_error, run_onnxruntime)
from casvit_mm.models.deploy import switch_model_to_deploy  # noqa: E402

MODEL_CONFIGS = {
    'retinanet': 'configs/detection/retinanet_casvit_{arch}.py',
    'mask_rcnn': 'configs/detection/mask_rcnn_casvit_{arch}.py',
    'fpn': 'configs/segmentation/fpn_casvit_{arch}.py',
}
REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', nargs='+', default=['m'],
                        help='CAS-ViT sizes (xs s m t l); default: m')
    parser.add_argument('--inputs', nargs='+',
                        default=['8x3x224x224', '1x3x512x512', '1x3x800x1344'],
                        help='backbone inputs as BxCxHxW; "none" for no backbone rows')
    parser.add_argument('--baselines', nargs='*', default=['resnet18', 'resnet50'],
                        choices=['resnet18', 'resnet50'])
    parser.add_argument('--models', nargs='+', default=list(MODEL_CONFIGS),
                        choices=list(MODEL_CONFIGS) + ['none'],
                        help='whole models built from the configs; "none" to skip')
    parser.add_argument('--variants', nargs='+', default=['eval', 'deploy', 'onnx'],
                        choices=['eval', 'deploy', 'deploy-nchw', 'compile', 'onnx'],
                        help='eval: the model as trained, in eval mode; deploy: '
                        'switch_model_to_deploy (channels last); deploy-nchw: without '
                        'channels last; compile: deploy + torch.compile; onnx: the '
                        'deployed network in onnxruntime (backbones, Semantic FPN)')
    parser.add_argument('--threads', type=int, default=2, help='torch and onnxruntime '
                        'intra-op threads (default 2)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs per variant')
    parser.add_argument('--repeats', type=int, default=10, help='timed runs per variant')
    parser.add_argument('--det-input', default='800x1344', help='HxW for the detectors')
    parser.add_argument('--seg-input', default='512x512', help='HxW for Semantic FPN')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='after timing, profile one run of each PyTorch variant and '
                        'print its N most expensive op types (self CPU time)')
    parser.add_argument('--json', help='also write the results to this JSON file')
    return parser.parse_args()


def parse_shape(text, dims):
    try:
        shape = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        shape = ()
    if len(shape) != dims or min(shape) <= 0:
        raise SystemExit(f'bad shape {text!r}: expected {dims} positive integers joined by '
                         f'"x", e.g. {"1x3x512x512" if dims == 4 else "800x1344"}')
    return shape


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg():
    return os.getloadavg()[0] if hasattr(os, 'getloadavg') else None


class Variant:
    """One thing to time: ``fn()`` on ``batch`` images, named (model, variant)."""

    def __init__(self, model, variant, fn, batch, baseline, compare=True):
        self.model, self.variant, self.fn, self.batch = model, variant, fn, batch
        self.baseline = baseline  # the (model, variant) its speed-up is against
        self.compare = compare  # compare its outputs with the baseline's
        self.times = []

    @property
    def key(self):
        return (self.model, self.variant)

    def __call__(self):
        with torch.inference_mode():
            return self.fn()


def time_round_robin(variants, warmup, repeats):
    """Warm every variant up, then time one run of each per round, rotating
    the order every round. Returns the last warm-up outputs by key."""
    outputs = {}
    for v in variants:
        for _ in range(warmup):
            outputs[v.key] = v()
    for r in range(repeats):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            start = time.perf_counter()
            v()
            v.times.append(time.perf_counter() - start)
    return outputs


def casvit_variants(name, base, example, variants, tmpdir, threads, fn=None, batch=1):
    """The requested variants of one CAS-ViT model (a backbone or a whole model).

    ``fn(model)`` is what is timed, ``model(example)`` by default; the
    onnxruntime variant runs the deployed ``base`` exported at ``example``.
    """
    fn = fn or (lambda m: m(example))
    baseline = (name, 'eval')
    out = []
    for variant in variants:
        if variant == 'onnx':
            deployed = switch_model_to_deploy(copy.deepcopy(base), channels_last=False)
            path = export_onnx(deployed, example,
                               osp.join(tmpdir, f'{name}_{len(os.listdir(tmpdir))}.onnx'))
            session = onnxruntime_session(path, threads, spinning=False)
            out.append(Variant(name, variant, lambda s=session: run_onnxruntime(s, example),
                               batch, baseline))
            continue
        if variant == 'eval':
            model = base
        else:
            model = switch_model_to_deploy(
                copy.deepcopy(base), channels_last=variant != 'deploy-nchw',
                compile=variant == 'compile')
        out.append(Variant(name, variant, lambda m=model: fn(m), batch, baseline))
    return out


def resnet(depth):
    from mmdet.models.backbones import ResNet
    model = ResNet(depth, out_indices=(0, 1, 2, 3))
    model.eval()  # mmdet's ResNet.train() returns None: no chaining
    return model


def detector_data(hw):
    """One packed image as tools/test.py would feed it (no ground truth)."""
    from mmdet.testing import demo_mm_inputs
    data = demo_mm_inputs(batch_size=1, image_shapes=[(3, *hw)], num_items=[0])
    for sample in data['data_samples']:
        sample.set_metainfo(dict(scale_factor=(1., 1.)))
    return data


# ------------------------------------------------------------------ report
def summarise(group, variants, outputs):
    medians = {v.key: statistics.median(v.times) for v in variants}
    resnet50 = medians.get(('resnet50', 'eval'))
    rows = []
    for v in variants:
        med = medians[v.key]
        row = dict(input=group, model=v.model, variant=v.variant,
                   median_ms=round(med * 1e3, 2), images_per_s=round(v.batch / med, 3),
                   latencies_ms=[round(t * 1e3, 2) for t in v.times])
        if v.baseline in medians:
            row['speedup_vs_eval'] = round(medians[v.baseline] / med, 3)
        if resnet50 is not None:
            row['speedup_vs_resnet50'] = round(resnet50 / med, 3)
        if v.compare and v.key != v.baseline and v.baseline in outputs:
            row['max_rel_error_vs_eval'] = float(
                f'{relative_error(outputs[v.baseline], outputs[v.key]):.3g}')
        rows.append(row)
    return rows


def profile(variants, top):
    """Print the ``top`` op types by self CPU time of one run of each variant."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    for v in variants:
        if v.variant == 'onnx':
            continue
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            v()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        print(f'profile of {v.model} {v.variant} (self CPU time, one run):')
        for e in events[:top]:
            print(f'  {e.key:<42}{e.self_cpu_time_total / 1e3:>10.1f} ms'
                  f'{100 * e.self_cpu_time_total / total:>7.1f} %{e.count:>6} calls')
    print(flush=True)


def print_rows(rows):
    header = (f'{"input":<14}{"model":<22}{"variant":<12}{"median ms":>10}{"img/s":>9}'
              f'{"x eval":>8}{"x R-50":>8}{"rel err":>10}')
    print(header)
    print('-' * len(header))
    for r in rows:
        err = r.get('max_rel_error_vs_eval')
        print(f'{r["input"]:<14}{r["model"]:<22}{r["variant"]:<12}{r["median_ms"]:>10.1f}'
              f'{r["images_per_s"]:>9.2f}'
              f'{r.get("speedup_vs_eval", float("nan")):>8.2f}'
              f'{r.get("speedup_vs_resnet50", float("nan")):>8.2f}'
              f'{"" if err is None else f"{err:.1e}":>10}')
    print(flush=True)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    inputs = [] if args.inputs == ['none'] else [parse_shape(s, 4) for s in args.inputs]
    models = [] if 'none' in args.models else args.models
    det_hw, seg_hw = parse_shape(args.det_input, 2), parse_shape(args.seg_input, 2)
    meta = dict(cpu=cpu_name(), logical_cpus=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version(),
                loadavg_start=loadavg(), args=vars(args))
    try:
        import onnxruntime
        meta['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        if 'onnx' in args.variants:
            raise SystemExit('--variants onnx needs onnxruntime: pip install onnxruntime')
    print(f'CPU: {meta["cpu"]} ({meta["logical_cpus"]} logical), threads: '
          f'{meta["threads"]}, torch {meta["torch"]}, load average (1 min) at start: '
          f'{meta["loadavg_start"]}', flush=True)
    torch.manual_seed(0)
    results = []

    def run(group, variants):
        outputs = time_round_robin(variants, args.warmup, args.repeats)
        rows = summarise(group, variants, outputs)
        print_rows(rows)
        results.extend(rows)
        if args.profile:
            profile(variants, args.profile)

    with tempfile.TemporaryDirectory() as tmpdir:
        for shape in inputs:
            example = torch.randn(shape)
            variants = []
            for arch in args.arch:
                variants += casvit_variants(f'casvit-{arch}', CASViT(arch).eval(), example,
                                            args.variants, tmpdir, args.threads,
                                            batch=shape[0])
            for name in args.baselines:
                model = resnet(int(name[len('resnet'):]))
                variants.append(Variant(name, 'eval', lambda m=model: m(example), shape[0],
                                        baseline=(f'casvit-{args.arch[0]}', 'eval'),
                                        compare=False))
            run('x'.join(map(str, shape)), variants)

        for kind in models:
            for arch in args.arch:
                name = f'{kind}-casvit-{arch}'
                base = build_model(osp.join(REPO, MODEL_CONFIGS[kind].format(arch=arch)))
                if kind == 'fpn':  # the network up to its logits (1/4 of the input)
                    example = torch.randn(1, 3, *seg_hw)
                    variants = casvit_variants(name, SegmentorLogits(base).eval(), example,
                                               args.variants, tmpdir, args.threads)
                    run('x'.join(map(str, example.shape)), variants)
                else:  # test_step: preprocessing, network, post-processing
                    data = detector_data(det_hw)
                    variants = casvit_variants(
                        name, base, None, [v for v in args.variants if v != 'onnx'], tmpdir,
                        args.threads, fn=lambda m: m.test_step(data))
                    for v in variants:
                        v.compare = False  # detections: thresholds make a diff meaningless
                    run('1x3x' + 'x'.join(map(str, det_hw)), variants)
    meta['loadavg_end'] = loadavg()
    print(f'load average (1 min) at end: {meta["loadavg_end"]}')
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
