"""Inference speed of CAS-ViT in every mode, runtime and precision, against the ResNets.

One process, one stated number of threads. It first prints the CPU model and
the instruction-set extensions that decide low-precision speed (avx2,
avx512_vnni, avx512_bf16, amx_bf16, amx_int8...): ratios only compare across
machines with that line. For every input it builds the variants, warms each
up, then times them round-robin (the order rotates every round, so a burst of
load elsewhere on the machine hits all variants alike) and reports the median
latency, images per second and speed-ups against the same model's eval mode
and fp32 OpenVINO file, and against ResNet-50 in the same variant (same
runtime and precision) when it is in the run.

Variants (--variants), each from the same random weights:
  eval               the model as trained, in eval mode
  switch_to_deploy   ``backbone.switch_to_deploy()`` (what the converter does)
  deploy=True        built with ``backbone=dict(deploy=True)`` (the configs/*/deploy/
                     variants), the fused state dict loaded strictly
  test.py--deploy    ``switch_model_to_deploy(model)`` (tools/test.py --deploy,
                     inferencers): switch_to_deploy + output norms folded into
                     the FPN; whole models only (on a bare backbone it is
                     switch_to_deploy)
  nchw               switch_to_deploy with the weights back in NCHW (ablation:
                     no fused kernels)
  compile            switch_model_to_deploy(compile=True)
  freezing           switch_model_to_deploy(compile='freezing') (Inductor freezing)
  onnx               the file the export dispatch writes (casvit_mm.deploy.dispatch), run in
                     onnxruntime: backbones their deployed export form; whole models
                     mmdeploy's file (dynamic H/W, the CAS-ViT in its export form;
                     detectors: preprocessed image -> boxes after NMS; Semantic FPN:
                     preprocessed image -> label map)
  onnx-exact         detectors (RetinaNet, Mask R-CNN): the hand-written graph kept for
                     mmdet's exact candidate selection (dispatch.exact_graph, images as
                     loaded -> boxes after NMS, the data preprocessor inside), onnxruntime
  bf16               switch_model_to_deploy(bf16=True): the fused network in bf16 in
                     PyTorch (casvit_mm.deploy.bf16); refused, and skipped, on CPUs
                     without native bf16 unless --allow-emulated-bf16
  openvino           the same ONNX file run by OpenVINO (pip install openvino),
                     INFERENCE_PRECISION_HINT f32 (set explicitly: OpenVINO picks
                     bf16 by itself on CPUs that have it)
  openvino-bf16      the same ONNX file, INFERENCE_PRECISION_HINT bf16 (the precision
                     OpenVINO reports it ran is printed: f32 where the CPU lacks bf16)
  int8               the deployed network statically quantized by onnxruntime (what
                     tools/deployment/quantize.py writes: QDQ, int8 weights per channel,
                     uint8 activations, the network's ops only; NMS, decoding, argmax
                     float), calibrated on --int8-calib random inputs (timing only: the
                     accuracy cost is measured by quantize.py --eval on real data)
  int8-openvino      the same int8 file run by OpenVINO (pip install openvino)
  mmdeploy           whole detectors only: the onnx variant's file run by mmdeploy's backend
                     model's test_step (data preprocessor in PyTorch, network + NMS in
                     onnxruntime with --threads, rescaling): the same call as eval's
  executorch         the deployed backbone in its export-friendly form, lowered to
                     ExecuTorch's XNNPACK delegate (casvit_mm.deploy.mobile, the .pte
                     tools/deployment/export_mobile.py writes), run in ExecuTorch's
                     Python runtime; the ResNets lowered the same way in the same run
  executorch-int8    the same, PT2E int8 (XNNPACKQuantizer, symmetric, per-channel),
                     calibrated on --int8-calib random batches (timing only); backbone
                     rows only. CAS-ViT's last stage stays fp32, as export_mobile.py
                     leaves a classifier's for accuracy (casvit_mm.deploy.mobile.float_modules)
  executorch-int8-all  the same with every layer int8 (export_mobile.py --int8-float):
                     the speed cost of the fp32 last stage is the difference
  litert             the same export-form backbone converted by litert-torch to a
                     LiteRT .tflite (export_mobile.py --formats litert; the optional
                     extra `litert`), run in LiteRT's interpreter with its default
                     XNNPACK delegate and --threads; the ResNets the same way
  litert-int8        the same through litert-torch's PT2E int8 (every layer; fully
                     integer file), calibrated on --int8-calib random batches (timing
                     only); LiteRT files have a static batch, the input's
  int8-nncf          the fp32 ONNX file quantized by NNCF for OpenVINO
                     (casvit_mm.deploy.nncf_int8, what quantize.py --backend openvino
                     writes), calibrated on --int8-calib random inputs, run with the
                     f32 hint
  openvino-fused-form, int8-nncf-fused-form
                     CAS-ViT backbone rows: the same as openvino / int8-nncf on a file
                     exported from the fused deploy form instead (switch_to_deploy(), what
                     the files held before they took the export form: q/k fused, 5-D
                     views, the channel gate a matrix product); same weights, outputs
                     equal to float rounding: the export form's gain, in one run
  precision          shorthand for: eval switch_to_deploy bf16 onnx openvino
                     openvino-bf16 int8 int8-openvino int8-nncf
Every ONNX variant of a model runs the same file (the dispatch's: TorchScript
exporter, opset 20, batch dynamic, CAS-ViT in its export form), so fp32, bf16 and
int8 differ only by precision (the *-fused-form variants: by the form too).
Rows:
  backbones at each --inputs, with mmdet's ResNet-18 and ResNet-50 (the same
  output stages) in the same variants where they apply (eval for the PyTorch
  fp32 ones, bf16, and every ONNX / OpenVINO one). Whole models (--models)
  built from configs/ with random weights: RetinaNet and Mask R-CNN run
  ``test_step`` on one 800x1344 image (data preprocessor, network,
  post-processing with NMS: what tools/test.py runs per image), and with
  RetinaNet mmdet's own ResNet-18 and ResNet-50 RetinaNets (its config files
  retinanet_r18_fpn_1x_coco / retinanet_r50_fpn_1x_coco, random weights, the
  --baselines) in the same round-robin and variants (eval, bf16, every file
  variant, mmdeploy); Semantic FPN
  maps a normalised 512x512 image to its label map (mmseg's ``encode_decode``:
  network, resize to the input; argmax). Eval and deploy differ only in the backbone (and,
  with test.py--deploy, the FPN lateral convs that absorb its output norms).

Examples:
  # the README table (about 6 minutes on an idle 2-core machine)
  python tools/analysis_tools/benchmark.py --json work_dirs/benchmark.json
  # Inductor at 8x224 (a minute or two of compiling)
  python tools/analysis_tools/benchmark.py --inputs 8x3x224x224 --models none \
      --variants eval switch_to_deploy compile freezing --baselines resnet18
  # a quick look
  python tools/analysis_tools/benchmark.py --arch xs --inputs 1x3x512x512 \
      --models none --repeats 3
  # INT8 (docs/quantization.md): fp32 and int8 onnxruntime against ResNet-18/50
  python tools/analysis_tools/benchmark.py --variants eval onnx int8 --models retinanet
  # whole RetinaNet: the hand-written graph against mmdeploy's file (docs/deploy.md)
  python tools/analysis_tools/benchmark.py --inputs none --models retinanet \
      --variants eval test.py--deploy onnx-exact onnx mmdeploy --model-repeats 5
  # every precision in every runtime, CAS-ViT-M against ResNet-18/50 (docs/quantization.md)
  python tools/analysis_tools/benchmark.py --variants precision --models retinanet \
      --json work_dirs/benchmark_precision.json
  # whole RetinaNet only: CAS-ViT-M against mmdeploy-exported ResNet-18/50 RetinaNets
  python tools/analysis_tools/benchmark.py --inputs none --models retinanet \
      --variants precision --model-repeats 3 --warmup 1
"""
import argparse
import copy
import json
import os
import os.path as osp
import platform
import statistics
import tempfile
import time

import torch

from casvit_mm import CASViT
from casvit_mm.cli import build_model, deploy_config, relative_error
from casvit_mm.deploy.bf16 import Bf16Unsupported, check_bf16, to_bf16
from casvit_mm.deploy.cpu_isa import isa, isa_line
from casvit_mm.deploy.switch import switch_model_to_deploy
from casvit_mm.deploy.dispatch import export_backbone
from casvit_mm.deploy.onnx_export import onnxruntime_session, run_onnxruntime

VARIANTS = ['eval', 'switch_to_deploy', 'deploy=True', 'test.py--deploy', 'nchw', 'compile',
            'freezing', 'bf16', 'onnx', 'openvino', 'openvino-bf16', 'int8', 'int8-openvino',
            'int8-nncf', 'mmdeploy', 'onnx-exact', 'executorch', 'executorch-int8',
            'executorch-int8-all', 'openvino-fused-form', 'int8-nncf-fused-form']
PRECISION = ['eval', 'switch_to_deploy', 'bf16', 'onnx', 'openvino', 'openvino-bf16', 'int8',
             'int8-openvino', 'int8-nncf']
# Variants that run an exported file, and the ones that need OpenVINO.
FILE_VARIANTS = ('onnx', 'openvino', 'openvino-bf16', 'int8', 'int8-openvino', 'int8-nncf')
OPENVINO_VARIANTS = ('openvino', 'openvino-bf16', 'int8-openvino', 'int8-nncf',
                     'openvino-fused-form', 'int8-nncf-fused-form')
# CAS-ViT backbone rows only: the file exported from the fused deploy form (what the
# files held before the export form; same weights, outputs within float rounding),
# run as the variant named before '-fused-form' is (docs/quantization.md, "The export
# form in OpenVINO")
FUSED_FORM = ('openvino-fused-form', 'int8-nncf-fused-form')
# mobile runtimes: backbone rows only
EXECUTORCH = ('executorch', 'executorch-int8', 'executorch-int8-all')
LITERT = ('litert', 'litert-int8')
VARIANTS += list(LITERT)

# mmdet's own RetinaNets with the baselines' backbones (its config files, random weights)
RESNET_RETINANETS = {'resnet18': 'retinanet/retinanet_r18_fpn_1x_coco.py',
                     'resnet50': 'retinanet/retinanet_r50_fpn_1x_coco.py'}
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
    parser.add_argument('--inputs', nargs='+', default=['8x3x224x224', '1x3x800x1344'],
                        help='backbone inputs as BxCxHxW; "none" for no backbone rows')
    parser.add_argument('--baselines', nargs='*', default=['resnet18', 'resnet50'],
                        choices=['resnet18', 'resnet50'])
    parser.add_argument('--models', nargs='+', default=['retinanet', 'fpn'],
                        choices=list(MODEL_CONFIGS) + ['none'],
                        help='whole models built from the configs; "none" to skip '
                        '(default: retinanet fpn)')
    parser.add_argument('--variants', nargs='+', choices=VARIANTS + ['precision'],
                        default=['eval', 'switch_to_deploy', 'deploy=True', 'test.py--deploy',
                                 'onnx'], help='see the module doc')
    parser.add_argument('--threads', type=int, default=2, help='torch and onnxruntime '
                        'intra-op threads (default 2)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs per variant')
    parser.add_argument('--repeats', type=int, default=10, help='timed runs per variant')
    parser.add_argument('--model-repeats', type=int, default=5,
                        help='timed runs per variant of the whole models (default 5)')
    parser.add_argument('--det-input', default='800x1344', help='HxW for the detectors')
    parser.add_argument('--seg-input', default='512x512', help='HxW for Semantic FPN')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='after timing, profile one run of each PyTorch variant and '
                        'print its N most expensive op types (self CPU time)')
    parser.add_argument('--int8-calib', type=int, default=2, metavar='N',
                        help='random calibration batches of the int8 variant (default 2)')
    parser.add_argument('--allow-emulated-bf16', action='store_true',
                        help='time the PyTorch bf16 variant on a CPU without native bf16 '
                        '(emulated: slow); without it the variant is skipped there')
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args()
    if 'precision' in args.variants:
        i = args.variants.index('precision')
        args.variants[i:i + 1] = [v for v in PRECISION if v not in args.variants]
    return args


def parse_shape(text, dims):
    try:
        shape = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        shape = ()
    if len(shape) != dims or min(shape) <= 0:
        raise SystemExit(f'bad shape {text!r}: expected {dims} positive integers joined by '
                         f'"x", e.g. {"1x3x512x512" if dims == 4 else "800x1344"}')
    return shape


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


def fused_copy(base, variant, allow_emulated_bf16=False):
    """A deployed copy of ``base`` (a backbone or a whole model) as ``variant`` makes it."""
    model = copy.deepcopy(base)
    backbone = model if isinstance(model, CASViT) else model.backbone
    if variant in ('switch_to_deploy', 'nchw', 'deploy=True'):
        backbone.switch_to_deploy()
        if variant == 'nchw':
            backbone.to(memory_format=torch.contiguous_format)
        if variant == 'deploy=True':  # what configs/*/deploy/ + a fused checkpoint build
            if isinstance(model, CASViT):
                built = CASViT(base.arch, out_indices=base.out_indices, deploy=True)
            else:
                built = build_model(deploy_config(base.cfg))
            built.load_state_dict(model.state_dict(), strict=True)
            model = built
        return model.eval()
    if variant == 'bf16':
        return switch_model_to_deploy(model, bf16=True, allow_emulated_bf16=allow_emulated_bf16)
    compile = {'compile': True, 'freezing': 'freezing'}.get(variant, False)
    return switch_model_to_deploy(model, compile=compile)


def casvit_variants(name, base, variants, fn, batch, onnx=None, mmdeploy=None,
                    executorch=None, allow_emulated_bf16=False, exact=None, fused_form=None):
    """The requested variants of one CAS-ViT model (a backbone or a whole model).

    ``fn(model)`` is what is timed; ``onnx(runtime)``, if given, returns the
    callable running the exported network in onnxruntime or OpenVINO;
    ``executorch(variant)`` the one running the ExecuTorch .pte; ``mmdeploy`` and
    ``exact()`` the whole-detector runners; ``fused_form(runtime)`` as ``onnx`` on
    the fused form's file.
    """
    baseline = (name, 'eval')
    out = []
    for variant in variants:
        if variant == 'mmdeploy':
            if mmdeploy is not None:
                out.append(Variant(name, variant, mmdeploy, batch, baseline))
            continue
        if variant == 'onnx-exact':
            if exact is not None:
                out.append(Variant(name, variant, exact(), batch, baseline))
            continue
        if variant in EXECUTORCH + LITERT:
            if executorch is not None:
                out.append(Variant(name, variant, executorch(variant), batch, baseline))
            continue
        if variant in FILE_VARIANTS:
            if onnx is not None:
                out.append(Variant(name, variant, onnx(variant), batch, baseline))
            continue
        if variant in FUSED_FORM:
            if fused_form is not None:
                out.append(Variant(name, variant, fused_form(variant[:-len('-fused-form')]),
                                   batch, baseline))
            continue
        if variant == 'test.py--deploy' and isinstance(base, CASViT):
            continue  # the same as switch_to_deploy on a bare backbone
        model = base if variant == 'eval' else fused_copy(base, variant, allow_emulated_bf16)
        out.append(Variant(name, variant, lambda m=model: fn(m), batch, baseline))
    return out


def resnet_variants(name, model, variants, example, onnx, allow_emulated_bf16=False):
    """ResNet in the variants that apply to it: eval (its PyTorch fp32), bf16
    (weights and activations, as for CAS-ViT) and every exported file."""
    baseline = (name, 'eval')
    out = [Variant(name, 'eval', lambda: model(example), len(example), baseline)]
    for variant in variants:
        if variant == 'bf16':
            m = to_bf16(copy.deepcopy(model), allow_emulated_bf16)
            out.append(Variant(name, variant, lambda: m(example), len(example), baseline))
        elif variant in FILE_VARIANTS:
            out.append(Variant(name, variant, onnx(variant), len(example), baseline))
    return out


def onnx_runner(export_fp32, example, path, threads, kind='backbone', int8_calib=2):
    """``make(variant)``: write the fp32 file once (``export_fp32(path)``: the
    dispatch's export, which records ``kind``), quantize it when a variant asks
    for int8 (onnxruntime's QDQ file, or NNCF's OpenVINO IR, each once), and
    return a callable running the file on ``example`` in the variant's runtime
    and precision. The callable's ``profile(top)`` prints OpenVINO's per-layer
    counters (OpenVINO variants)."""
    from casvit_mm.deploy.ort_quantization import quantize_onnx, random_calibration

    def fp32():
        if not osp.isfile(path):
            export_fp32(path)
        return path

    def make(variant):
        file, precision = fp32(), 'f32'
        if variant in ('int8', 'int8-openvino'):
            file = path[:-5] + '_int8.onnx'
            if not osp.isfile(file):  # one file for both runtimes
                quantize_onnx(fp32(), file, random_calibration(example, int8_calib))
        elif variant == 'int8-nncf':
            from casvit_mm.deploy.nncf_int8 import quantize_openvino
            file = path[:-5] + '_nncf.xml'
            if not osp.isfile(file):
                quantize_openvino(fp32(), file, random_calibration(example, int8_calib), kind)
        elif variant == 'openvino-bf16':
            precision = 'bf16'
        if variant in ('onnx', 'int8'):
            session = onnxruntime_session(file, threads, spinning=False, mmdeploy_ops=True)
            return lambda: run_onnxruntime(session, example)
        from casvit_mm.deploy.nncf_int8 import (compile_openvino, effective_precision,
                                                perf_counters, run_openvino)
        compiled = compile_openvino(file, threads, precision, input_shape=example.shape)
        EFFECTIVE_PRECISION[variant] = effective_precision(compiled)

        def run():
            return run_openvino(compiled, example)

        def profile(top):
            rows = perf_counters(compile_openvino(file, threads, precision, perf_count=True,
                                                  input_shape=example.shape), example)
            total = sum(r[2] for r in rows) or 1
            for layer, kernel, ms, count in rows[:top]:
                print(f'  {layer:<24}{kernel:<28}{ms:>10.1f} ms{100 * ms / total:>7.1f} %'
                      f'{count:>6} layers')
        run.profile = profile
        return run
    return make


def fused_form_backbone(backbone, example, path):
    """A CAS-ViT backbone exported as :func:`casvit_mm.deploy.dispatch.export_backbone`
    does, but from the fused deploy form (``switch_model_to_deploy(form='fused')``,
    NCHW weights): the file every export wrote before the export form, for comparison."""
    from casvit_mm.deploy.dispatch import OPSET, record_kind
    from casvit_mm.deploy.onnx_export import export_onnx
    model = switch_model_to_deploy(copy.deepcopy(backbone), channels_last=False)
    export_onnx(model, example, path, dynamo=False, dynamic_batch=True, opset=OPSET)
    return record_kind(path, 'backbone')


def mmdeploy_export(base, hw, work_dir):
    """``base`` (random weights) exported through the dispatch (mmdeploy, dynamic
    H/W, onnxruntime) from an ``hw`` image."""
    import numpy as np
    from casvit_mm.deploy.dispatch import export
    os.makedirs(work_dir, exist_ok=True)
    checkpoint = osp.join(work_dir, 'weights.pth')
    torch.save({'state_dict': base.state_dict()}, checkpoint)
    image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    return export(base.cfg, checkpoint, 'onnxruntime', 'dynamic', work_dir, image)


def mmdeploy_runner(exported, data, threads):
    """mmdeploy's backend model of an export, as a callable running ``test_step(data)``."""
    from casvit_mm.deploy.dispatch import backend_model
    model = backend_model(exported, threads=threads)
    return lambda: model.test_step(data)


def exact_runner(base, image, path, threads):
    """``make()``: the hand-written whole-detector graph (``dispatch.exact_graph``)
    exported once and run in onnxruntime on ``image`` (as loaded)."""
    def make():
        from casvit_mm.deploy.dispatch import exact_graph
        from casvit_mm.deploy.onnx_export import export_onnx
        outputs = ['boxes', 'scores', 'labels'] + ['masks'] * bool(getattr(base, 'with_rpn',
                                                                           False))
        export_onnx(exact_graph(base), image, path, dynamo=False, output_names=outputs,
                    dynamic_batch=True, opset=20)
        session = onnxruntime_session(path, threads, spinning=False)
        return lambda: run_onnxruntime(session, image)
    return make


def executorch_runner(network, example, path, threads, int8_calib=2):
    """``make(variant)``: lower ``network`` (a ``casvit_mm.deploy.mobile.
    MobileNetwork``) to an ExecuTorch .pte for XNNPACK, fp32 or int8, batch
    dynamic up to ``example``'s, and return a callable running it."""
    def make(variant):
        from casvit_mm.deploy.mobile import ExecuTorchModel, to_executorch
        from casvit_mm.deploy.ort_quantization import random_calibration
        int8 = variant.startswith('executorch-int8')
        # CAS-ViT's last stage in fp32, as export_mobile.py leaves a classifier's
        keep_float = [f'stages.{len(m.stages) - 1}' for m in [network.model]
                      if isinstance(m, CASViT)]
        calibration = ([torch.from_numpy(b['images'])
                        for b in random_calibration(example, int8_calib)] if int8 else None)
        info = to_executorch(network, example, f'{path}_{variant}.pte', quantize=int8,
                             calibration=calibration, max_batch=max(2, example.shape[0]),
                             keep_float=keep_float if variant == 'executorch-int8' else ())
        if info['non_delegated']:
            print(f'note: {variant} leaves ops to ExecuTorch\'s portable kernels: '
                  f'{info["non_delegated_ops"]}')
        model = ExecuTorchModel(info['path'], threads)
        return lambda: model(example)
    return make


def litert_runner(network, example, path, threads, int8_calib=2):
    """``make(variant)``: convert ``network`` (a ``MobileNetwork``) with
    litert-torch to a .tflite at ``example``'s shape (batch static), fp32 or
    int8, and return a callable running it in LiteRT's interpreter (its
    default XNNPACK delegate)."""
    def make(variant):
        from casvit_mm.deploy.mobile import LiteRTModel, to_litert
        from casvit_mm.deploy.ort_quantization import random_calibration
        int8 = variant == 'litert-int8'
        calibration = ([torch.from_numpy(b['images'])
                        for b in random_calibration(example, int8_calib)] if int8 else None)
        info = to_litert(network, example, f'{path}_{variant}.tflite', quantize=int8,
                         calibration=calibration)
        if info['non_delegated']:
            print(f'note: {variant} leaves ops to LiteRT\'s own kernels: '
                  f'{info["non_delegated_ops"]}')
        model = LiteRTModel(info['path'], threads)
        return lambda: model(example)
    return make


# variant -> the precision OpenVINO reported it ran the float ops in
EFFECTIVE_PRECISION = {}


def resnet(depth):
    from mmdet.models.backbones import ResNet
    model = ResNet(depth, out_indices=(0, 1, 2, 3))
    model.eval()  # mmdet's ResNet.train() returns None: no chaining
    return model


def mmdet_config(path):
    """A config file shipped inside the installed mmdet (``retinanet/...``)."""
    import mmdet
    full = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', path)
    if not osp.isfile(full):
        raise SystemExit(f'{path} not found in the installed mmdet ({full}): the whole '
                         f'ResNet RetinaNet rows need mmdet >= 3.0 installed with its configs')
    return full


def detector_variants(name, base, kind, args, det_hw, onnx_path, resnet=False,
                      allow_emulated_bf16=False):
    """The requested variants of a whole detector (random weights) on one
    ``det_hw`` image: ``test_step`` in PyTorch, the dispatch's file (mmdeploy's,
    image -> boxes after NMS) in every runtime and precision. ``resnet``: one of
    mmdet's ResNet detectors, in the variants that apply to it (eval, bf16, the file
    variants, mmdeploy)."""
    data = detector_data(det_hw)
    loaded = data['inputs'][0][None].float()  # as loaded: the exact graph's input
    with torch.no_grad():
        preprocessed = base.data_preprocessor(copy.deepcopy(data))['inputs']
    work, exported = onnx_path(name)[:-5], {}

    def det_export():
        if not exported:  # one file for the onnx, int8 and mmdeploy variants
            exported['file'] = mmdeploy_export(base, det_hw, work)
        return exported['file']

    task = 'instance-seg' if kind == 'mask_rcnn' else 'detection'
    onnx = onnx_runner(lambda p: det_export().onnx, preprocessed,
                       osp.join(work, 'end2end.onnx'), args.threads, kind=task,
                       int8_calib=args.int8_calib)
    mmdeploy = mmdeploy_runner(det_export(), data, args.threads) if (
        'mmdeploy' in args.variants) else None
    if resnet:
        baseline = (name, 'eval')
        variants = [Variant(name, 'eval', lambda: base.test_step(data), 1, baseline)]
        if 'bf16' in args.variants:  # weights and activations, as for CAS-ViT
            bf16 = to_bf16(copy.deepcopy(base), allow_emulated_bf16)
            variants.append(Variant(name, 'bf16', lambda: bf16.test_step(data), 1, baseline))
        variants += [Variant(name, v, onnx(v), 1, baseline) for v in args.variants
                     if v in FILE_VARIANTS]
        if mmdeploy is not None:
            variants.append(Variant(name, 'mmdeploy', mmdeploy, 1, baseline))
    else:
        exact = exact_runner(base, loaded, onnx_path(name + '_exact'), args.threads)
        variants = casvit_variants(
            name, base, args.variants, lambda m: m.test_step(data), 1, onnx=onnx,
            mmdeploy=mmdeploy, allow_emulated_bf16=allow_emulated_bf16, exact=exact)
    for v in variants:
        v.compare = False  # detections: thresholds make a diff meaningless
    return variants


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
    rows = []
    for v in variants:
        med = medians[v.key]
        row = dict(input=group, model=v.model, variant=v.variant,
                   median_ms=round(med * 1e3, 2), images_per_s=round(v.batch / med, 3),
                   latencies_ms=[round(t * 1e3, 2) for t in v.times])
        if v.variant in EFFECTIVE_PRECISION:
            row['openvino_precision'] = EFFECTIVE_PRECISION[v.variant]
        if v.baseline in medians:
            row['speedup_vs_eval'] = round(medians[v.baseline] / med, 3)
        if (v.model, 'openvino') in medians:  # the same model's fp32 file in OpenVINO
            row['speedup_vs_openvino_f32'] = round(medians[(v.model, 'openvino')] / med, 3)
        # ResNet-50 in the same runtime and precision (eval: its PyTorch fp32, which
        # deploy mode's fp32 rows are compared with too)
        # (whole RetinaNets: mmdet's ResNet-50 RetinaNet)
        r50_name = 'retinanet-resnet50' if v.model.startswith('retinanet-') else 'resnet50'
        r50 = medians.get((r50_name, v.variant)) or (
            medians.get((r50_name, 'eval')) if v.variant in (
                'eval', 'switch_to_deploy', 'deploy=True', 'test.py--deploy', 'nchw',
                'compile', 'freezing') else None)
        if r50 is not None:
            row['speedup_vs_resnet50'] = round(r50 / med, 3)
        if v.compare and v.key != v.baseline and v.baseline in outputs:
            ref, out = outputs[v.baseline], outputs[v.key]
            if v.compare == 'labels':  # label maps: the fraction of pixels that differ
                out = torch.as_tensor(out[0] if isinstance(out, list) else out)
                row['label_mismatch_vs_eval'] = float(f'{(ref != out).double().mean():.3g}')
            else:
                row['max_rel_error_vs_eval'] = float(f'{relative_error(ref, out):.3g}')
        rows.append(row)
    return rows


def profile(variants, top):
    """Print the ``top`` op types by self CPU time of one run of each PyTorch
    variant, and OpenVINO's per-layer counters (3 runs) of each OpenVINO one."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    for v in variants:
        if v.variant in OPENVINO_VARIANTS:
            print(f'profile of {v.model} {v.variant} (OpenVINO per-layer counters, ms per '
                  f'run, by layer type and kernel):')
            v.fn.profile(top)
            continue
        if v.variant in FILE_VARIANTS + EXECUTORCH + LITERT:
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
    header = (f'{"input":<14}{"model":<22}{"variant":<22}{"median ms":>10}{"img/s":>9}'
              f'{"x eval":>8}{"x ov32":>8}{"x R-50":>8}{"diff":>10}')
    print(header)
    print('-' * len(header))
    nan = float('nan')
    for r in rows:
        err = r.get('max_rel_error_vs_eval', r.get('label_mismatch_vs_eval'))
        print(f'{r["input"]:<14}{r["model"]:<22}{r["variant"]:<22}{r["median_ms"]:>10.1f}'
              f'{r["images_per_s"]:>9.2f}{r.get("speedup_vs_eval", nan):>8.2f}'
              f'{r.get("speedup_vs_openvino_f32", nan):>8.2f}'
              f'{r.get("speedup_vs_resnet50", nan):>8.2f}'
              f'{"" if err is None else f"{err:.1e}":>10}')
    print('(x eval: speed-up against the same model in eval mode; x ov32: against its fp32 '
          'file in OpenVINO (f32 hint); x R-50: against ResNet-50 in the same variant (PyTorch '
          'fp32 rows: its eval mode); diff: max |out - eval| / max |eval| of the outputs, or '
          'for label maps the fraction of pixels that differ)')
    print(flush=True)


def print_matrix(rows):
    """The same medians as a model x variant table (ms), one block per input."""
    variants = list(dict.fromkeys(r['variant'] for r in rows))
    for group in dict.fromkeys(r['input'] for r in rows):
        cells = {(r['model'], r['variant']): r['median_ms'] for r in rows if r['input'] == group}
        models = list(dict.fromkeys(m for m, _ in cells))
        used = [v for v in variants if any((m, v) in cells for m in models)]
        print(f'{group:<24}' + ''.join(f'{v:>22}' for v in used))
        for m in models:
            print(f'{m:<24}' + ''.join(f'{cells[(m, v)]:>22.1f}' if (m, v) in cells
                                       else f'{"-":>22}' for v in used))
    print(flush=True)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    inputs = [] if args.inputs == ['none'] else [parse_shape(s, 4) for s in args.inputs]
    models = [] if 'none' in args.models else args.models
    det_hw, seg_hw = parse_shape(args.det_input, 2), parse_shape(args.seg_input, 2)
    meta = dict(cpu=isa_line(), isa=isa(), logical_cpus=os.cpu_count(),
                threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), loadavg_start=loadavg(), args=vars(args))
    try:
        import onnxruntime
        meta['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        if {'onnx', 'int8'} & set(args.variants):
            raise SystemExit('--variants onnx / int8 need onnxruntime: pip install onnxruntime')
    if set(OPENVINO_VARIANTS) & set(args.variants):
        try:
            import openvino
            meta['openvino'] = openvino.__version__
        except ImportError:
            raise SystemExit('--variants openvino* / int8-nncf need OpenVINO: pip install '
                             'openvino')
    if set(EXECUTORCH) & set(args.variants):
        try:
            from executorch.version import __version__ as executorch_version
            meta['executorch'] = executorch_version
        except ImportError:
            raise SystemExit('--variants executorch needs ExecuTorch: pip install executorch')
    if set(LITERT) & set(args.variants):
        try:
            import ai_edge_litert.interpreter  # noqa: F401
            from litert_torch import __version__ as litert_torch_version
            meta['litert_torch'] = litert_torch_version
        except ImportError:
            raise SystemExit('--variants litert needs LiteRT: pip install -e .[litert] && '
                             'pip install --no-deps litert-torch==0.10.0')
    if 'int8-nncf' in args.variants:
        try:
            import nncf
            meta['nncf'] = nncf.__version__
        except ImportError:
            raise SystemExit('--variants int8-nncf needs NNCF: pip install nncf')
    if 'bf16' in args.variants:
        try:
            check_bf16(args.allow_emulated_bf16)
        except Bf16Unsupported as e:
            print(f'skipping the PyTorch bf16 variant: {e}')
            args.variants.remove('bf16')
    print(meta['cpu'])
    print(f'threads: {meta["threads"]}, torch {meta["torch"]}, onnxruntime '
          f'{meta.get("onnxruntime", "-")}, OpenVINO {meta.get("openvino", "-")}, NNCF '
          f'{meta.get("nncf", "-")}; load average (1 min) at start: {meta["loadavg_start"]}',
          flush=True)
    torch.manual_seed(0)
    results = []
    emulated = args.allow_emulated_bf16

    def run(group, variants, repeats):
        outputs = time_round_robin(variants, args.warmup, repeats)
        rows = summarise(group, variants, outputs)
        print_rows(rows)
        results.extend(rows)
        if args.profile:
            profile(variants, args.profile)

    with tempfile.TemporaryDirectory() as tmpdir:
        def onnx_path(name):
            return osp.join(tmpdir, f'{name}_{len(os.listdir(tmpdir))}.onnx')

        def mobile_runner(model, example, path):
            """ExecuTorch and LiteRT runners of a backbone: CAS-ViT deployed in its
            export form."""
            from casvit_mm.deploy.mobile import MobileNetwork, mobile_network
            network = (mobile_network(model, 'backbone') if isinstance(model, CASViT)
                       else MobileNetwork(model, 'backbone').eval())

            def make(variant):
                runner = litert_runner if variant in LITERT else executorch_runner
                return runner(network, example, path[:-5], args.threads,
                              args.int8_calib)(variant)
            return make

        for shape in inputs:
            example = torch.randn(shape)
            variants = []
            for arch in args.arch:
                base = CASViT(arch).eval()
                variants += casvit_variants(
                    f'casvit-{arch}', base, args.variants, lambda m: m(example), shape[0],
                    onnx=onnx_runner(lambda p, b=base: export_backbone(b, example, p), example,
                                     onnx_path(f'casvit-{arch}'), args.threads,
                                     kind='backbone', int8_calib=args.int8_calib),
                    allow_emulated_bf16=emulated,
                    executorch=mobile_runner(base, example, onnx_path(f'casvit-{arch}')),
                    fused_form=onnx_runner(
                        lambda p, b=base: fused_form_backbone(b, example, p), example,
                        onnx_path(f'casvit-{arch}-fused-form'), args.threads,
                        kind='backbone', int8_calib=args.int8_calib))
            for name in args.baselines:
                model = resnet(int(name[len('resnet'):]))
                variants += resnet_variants(
                    name, model, args.variants, example,
                    onnx_runner(lambda p, m=model: export_backbone(m, example, p), example,
                                onnx_path(name), args.threads, kind='backbone',
                                int8_calib=args.int8_calib),
                    allow_emulated_bf16=emulated)
                # lowered the same way (a ResNet has no fp32 stage: no int8-all row)
                for variant in [v for v in EXECUTORCH[:2] + LITERT if v in args.variants]:
                    make = mobile_runner(model, example, onnx_path(name))
                    variants.append(Variant(name, variant, make(variant), shape[0],
                                            baseline=(name, 'eval')))
            run('x'.join(map(str, shape)), variants, args.repeats)

        for kind in models:
            variants = []  # a detector's CAS-ViT sizes and ResNets: one round-robin
            for arch in args.arch:
                name = f'{kind}-casvit-{arch}'
                base = build_model(osp.join(REPO, MODEL_CONFIGS[kind].format(arch=arch)))
                if kind == 'fpn':  # normalised image -> label map (mmdeploy's output)
                    image = torch.rand(1, 3, *seg_hw, generator=torch.Generator().manual_seed(0))
                    image = image * 4 - 2
                    metas = [dict(img_shape=seg_hw, pad_shape=seg_hw, ori_shape=seg_hw)]
                    work = onnx_path(name)[:-5]
                    seg_variants = casvit_variants(
                        name, base, args.variants,
                        lambda m: m.encode_decode(image, metas).argmax(1, keepdim=True), 1,
                        onnx=onnx_runner(lambda p: mmdeploy_export(base, seg_hw, work).onnx,
                                         image, osp.join(work, 'end2end.onnx'), args.threads,
                                         kind='segmentation', int8_calib=args.int8_calib),
                        allow_emulated_bf16=emulated)
                    for v in seg_variants:  # label maps: compare the fraction of pixels
                        v.compare = 'labels'
                    run('x'.join(map(str, image.shape)), seg_variants, args.model_repeats)
                    continue
                # detectors: test_step (preprocessing, network, post-processing)
                variants += detector_variants(
                    name, base, kind, args, det_hw, onnx_path, allow_emulated_bf16=emulated)
            if kind == 'fpn':
                continue
            if kind == 'retinanet':  # mmdet's own ResNet RetinaNets, in the same round-robin
                for resnet_name in args.baselines:
                    name = f'retinanet-{resnet_name}'
                    variants += detector_variants(
                        name, build_model(mmdet_config(RESNET_RETINANETS[resnet_name])), kind,
                        args, det_hw, onnx_path, resnet=True, allow_emulated_bf16=emulated)
            run('1x3x' + 'x'.join(map(str, det_hw)), variants, args.model_repeats)
    meta['loadavg_end'] = loadavg()
    meta['openvino_effective_precision'] = EFFECTIVE_PRECISION
    if EFFECTIVE_PRECISION:
        print('precision OpenVINO ran the float ops in, per variant: '
              + ', '.join(f'{k} {v}' for k, v in EFFECTIVE_PRECISION.items()))
    print('median ms by model and variant:')
    print_matrix(results)
    print(f'load average (1 min) at end: {meta["loadavg_end"]}')
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
