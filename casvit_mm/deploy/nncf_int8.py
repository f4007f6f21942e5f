"""INT8 for OpenVINO through NNCF, and running OpenVINO at a stated precision.

Why a second INT8 path next to onnxruntime's (:mod:`casvit_mm.deploy.ort_quantization`):
onnxruntime has no int8 GELU, so its QDQ file runs CAS-ViT's 30 GELUs in
float between a dequantize and a quantize, and gains little on the backbone.
NNCF quantizes the OpenVINO model instead: OpenVINO fuses GELU (and the
gates' element-wise ops) into the int8 convolution before it, so the
conversions around them disappear. The file is OpenVINO's IR
(``.xml`` + ``.bin``), which only OpenVINO runs; the onnxruntime path stays
for onnxruntime users (docs/quantization.md says when to use which).

The pieces (what ``tools/deployment/quantize.py --backend openvino`` and the
benchmark's ``int8-nncf`` variant run):

* :func:`quantize_openvino`: the fp32 ONNX file that
  :func:`casvit_mm.deploy.dispatch.export` wrote, read by
  OpenVINO, quantized by ``nncf.quantize`` on calibration images (the
  config's own, as for onnxruntime), saved as IR with the kind recorded.
  Only the network is quantized: every node outside ``NETWORK_SCOPES`` (the
  data preprocessor's normalisation, box decoding, NMS, RoIAlign, resizing,
  argmax, softmax) is in NNCF's ignored scope.
* :func:`compile_openvino` and :func:`run_openvino` (defined in :mod:`.onnx_export`,
  with the other runners): an ONNX or IR file compiled for the CPU with an
  explicit ``INFERENCE_PRECISION_HINT`` (OpenVINO picks bf16 by itself on
  CPUs with native bf16: an unstated "fp32" figure may be bf16), and run.
* :func:`evaluate_openvino`: files scored with the config's evaluator.
* :func:`perf_counters`: OpenVINO's per-layer counters, summed by layer type
  and kernel, for the profile in docs/quantization.md.
"""
import os.path as osp
from collections import Counter, defaultdict

import numpy as np

from .onnx_export import compile_openvino, run_openvino
from .ort_quantization import (KIND_KEY, NETWORK_SCOPES, QuantizationError, quantized_scopes,
                               read_kind)

__all__ = ['quantize_openvino', 'read_ir_kind', 'fake_quantize_count', 'compile_openvino',
           'run_openvino', 'float_layers', 'effective_precision', 'evaluate_openvino',
           'perf_counters', 'ir_size']


def _openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError('OpenVINO is needed: pip install openvino') from e
    return ov


def calibration_images(calibration):
    """The single images ``(1, 3, H, W)`` of calibration batches
    (``{'images': array}`` dicts: :class:`DataloaderCalibration`,
    :func:`random_calibration`), kept in a list: NNCF reads the data set
    more than once (statistics, then bias correction)."""
    images = []
    for batch in calibration:
        array = np.asarray(batch['images'] if isinstance(batch, dict) else batch)
        images += [array[i:i + 1].astype(np.float32) for i in range(len(array))]
    if not images:
        raise QuantizationError('no calibration images')
    return images


def _outside_network(model, kind):
    """Friendly names of the OpenVINO ops that are not the network's (the
    ONNX importer keeps the exporter's node names, ``/backbone/...``), or in
    the parts of it that ``FLOAT_SCOPES`` keeps float."""
    scopes = quantized_scopes(kind)
    if scopes is None:
        return []
    names = []
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if name.lstrip('/').split('/')[0] not in scopes:
            names.append(name)
    return names


def quantize_openvino(fp32_path, int8_path, calibration, kind=None, fast_bias_correction=True,
                      float_op_types=(), exclude=(), preset='mixed', ranges='minmax',
                      bias_correction=True, overflow_fix=None):
    """Quantize an exported fp32 ONNX file for OpenVINO with NNCF.

    NNCF's CPU settings (int8 weights per output channel, int8 activations,
    bias correction: ``fast_bias_correction``) with three changes, each of
    which lowered the toy classifier's top-1 loss (docs/quantization.md):
    asymmetric activations (``preset='mixed'``; None: NNCF's symmetric
    default), MinMax activation ranges (``ranges='minmax'``; None: NNCF's
    averaged extremes, which clip), and on CPUs without VNNI / AMX-INT8 7-bit
    weights in every layer (``overflow_fix='enable'``: AVX2's u8 x s8 products
    saturate in int16 otherwise; NNCF's default fixes the first layer only,
    what ``overflow_fix=None`` keeps on CPUs with VNNI; the file is meant for
    CPUs like the one that quantizes). Nodes outside the network (see the
    module doc), of OpenVINO op types ``float_op_types`` (e.g. ``Multiply``)
    and named in ``exclude`` stay float.

    Returns:
        str: ``int8_path`` (an ``.xml``; its weights in the ``.bin`` beside it).
    """
    import logging

    import nncf
    nncf.set_log_level(logging.ERROR)  # a line per op it leaves float otherwise
    ov = _openvino()
    if not int8_path.endswith('.xml'):
        raise QuantizationError(f'{int8_path!r}: OpenVINO IR files end in .xml')
    kind = kind or read_kind(fp32_path)
    model = ov.Core().read_model(fp32_path)
    images = calibration_images(calibration)
    ignored = nncf.IgnoredScope(names=_outside_network(model, kind) + list(exclude),
                                types=list(float_op_types), validate=False)
    presets = {None: None, 'mixed': nncf.QuantizationPreset.MIXED,
               'performance': nncf.QuantizationPreset.PERFORMANCE}
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       OverflowFix)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    if overflow_fix is None:  # 7-bit weights where int8 products would saturate
        from .cpu_isa import native_int8
        overflow_fix = 'first_layer_only' if native_int8() else 'enable'
    if ranges not in ('minmax', None):
        raise QuantizationError(f"ranges={ranges!r}: 'minmax' or None (NNCF's default)")
    advanced = AdvancedQuantizationParameters(
        disable_bias_correction=not bias_correction, overflow_fix=OverflowFix(overflow_fix),
        **(dict(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
           if ranges == 'minmax' else {}))
    common = dict(preset=presets[preset], subset_size=len(images),
                  fast_bias_correction=fast_bias_correction, ignored_scope=ignored)
    quantized = nncf.quantize(model, nncf.Dataset(images), advanced_parameters=advanced,
                              **common)
    quantized.set_rt_info(kind, [KIND_KEY])
    ov.save_model(quantized, int8_path, compress_to_fp16=False)
    return int8_path


# the layers whose int8 kernels make the speed; the rest follows their precision
_COMPUTE_TYPES = ('Convolution', 'GroupConvolution', 'MatMul')
# ops that pass int8 values through unchanged (an FPN's extra level is a MaxPool)
_PASS_THROUGH = ('Reshape', 'Transpose', 'Squeeze', 'Unsqueeze', 'MaxPool')


def float_layers(path):
    """The network's convolutions and matrix products in an int8 IR whose input
    is not quantized (no FakeQuantize before them): the layers the ignored scope
    (``FLOAT_SCOPES``, ``--exclude``, ``--float-op-types``) kept float. They run
    in fp32, which is the speed cost of the accuracy.

    Returns:
        tuple[list[str], int]: their names, and the network's compute layers in all.
    """
    ov = _openvino()
    kind = read_ir_kind(path)
    scopes = NETWORK_SCOPES[kind]
    names, total = [], 0
    for op in ov.Core().read_model(path).get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() not in _COMPUTE_TYPES or (
                scopes is not None and name.lstrip('/').split('/')[0] not in scopes):
            continue
        total += 1
        source = op.input_value(0).get_node()
        while source.get_type_name() in _PASS_THROUGH:  # e.g. FakeQuantize -> Reshape -> MatMul
            source = source.input_value(0).get_node()
        if source.get_type_name() != 'FakeQuantize':
            names.append(name)
    return names, total


def read_ir_kind(path):
    """The kind :func:`quantize_openvino` recorded in an IR file; a clear error otherwise."""
    ov = _openvino()
    if not osp.isfile(path):
        raise QuantizationError(f'{path!r} does not exist')
    model = ov.Core().read_model(path)
    if not model.has_rt_info([KIND_KEY]):
        raise QuantizationError(f'{path!r} was not written by casvit_mm (no {KIND_KEY!r} in '
                                f'its rt_info): give tools/deployment/quantize.py the config '
                                f'and checkpoint instead')
    return model.get_rt_info([KIND_KEY]).astype(str)


def file_kind(path):
    """The recorded kind of an fp32 ONNX export or an int8 IR."""
    return read_ir_kind(path) if path.endswith('.xml') else read_kind(path, allow_quantized=True)


def fake_quantize_count(path):
    """Counts of OpenVINO's quantization ops in a model file (FakeQuantize,
    and int8 weights' Convert nodes)."""
    ov = _openvino()
    model = ov.Core().read_model(path)
    counts = Counter(op.get_type_name() for op in model.get_ordered_ops())
    return {k: counts[k] for k in ('FakeQuantize', 'Convert') if counts[k]}


def ir_size(path):
    """Bytes of a model file, with the IR's ``.bin``."""
    size = osp.getsize(path)
    if path.endswith('.xml') and osp.isfile(path[:-4] + '.bin'):
        size += osp.getsize(path[:-4] + '.bin')
    return size


def effective_precision(compiled):
    """The precision OpenVINO actually runs the float ops in, as it reports it."""
    value = compiled.get_property('INFERENCE_PRECISION_HINT')
    return value.get_type_name() if hasattr(value, 'get_type_name') else str(value)


def evaluate_openvino(paths, cfg, threads=None):
    """Score an fp32 ONNX / IR file and its int8 IR with the config's test
    evaluator, each run by mmdeploy's backend model in OpenVINO (f32 hint),
    through :func:`casvit_mm.deploy.accuracy.evaluate_models`. Returns the
    metrics of each file."""
    from .accuracy import evaluate_models
    from .dispatch import backend_model, exported_file
    kinds = {file_kind(p) for p in paths}
    if len(kinds) != 1 or 'backbone' in kinds:
        raise QuantizationError(f'evaluation needs whole-model files of one kind, got '
                                f'{sorted(kinds)}')
    if kinds == {'instance-seg'}:  # OpenVINO's RoI feature extractor takes one image
        import copy
        cfg = copy.deepcopy(cfg)
        cfg.get('test_dataloader', cfg.get('val_dataloader')).batch_size = 1
    return evaluate_models([backend_model(exported_file(cfg, p, 'openvino'), threads=threads)
                            for p in paths], cfg)


def perf_counters(compiled, images, runs=3):
    """OpenVINO's per-layer counters over ``runs`` inferences after a warm-up (the model
    compiled with ``perf_count=True``), summed by layer type and kernel.

    Returns:
        list[tuple]: ``(layer type, kernel, ms per run, layers)``, most
        expensive first; the kernel says e.g. ``jit_avx2_I8`` (int8),
        ``jit_avx2_FP32``, ``ref_any`` (no optimised kernel), and layers
        OpenVINO fused away are not listed.
    """
    if hasattr(images, 'detach'):
        images = images.detach().cpu().contiguous().numpy()
    request = compiled.create_infer_request()
    request.infer([images])  # warm-up: the first run also creates the kernels
    totals, layers = defaultdict(float), defaultdict(set)
    for _ in range(runs):
        request.infer([images])
        for info in request.profiling_info:
            if info.status.name != 'EXECUTED':
                continue
            key = (info.node_type, info.exec_type)
            totals[key] += info.real_time.total_seconds() * 1e3 / runs
            layers[key].add(info.node_name)
    return sorted(((t, e, ms, len(layers[(t, e)])) for (t, e), ms in totals.items()),
                  key=lambda row: -row[2])
