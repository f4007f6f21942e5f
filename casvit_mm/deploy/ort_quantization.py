"""Post-training INT8 quantization of exported CAS-ViT models (onnxruntime).

What ``tools/deployment/quantize.py`` and the benchmark's ``int8`` variant
run, as importable pieces (the tests run exactly these):

* :func:`export_for_quantization` exports a model with the wrappers of
  :mod:`casvit_mm.deploy.onnx_export` (whole RetinaNet, Mask R-CNN, Semantic FPN, a
  classifier's scores; the deployed backbone otherwise) and records in the
  file what it is, so that a later run knows which nodes are the network.
* :class:`DataloaderCalibration` feeds onnxruntime's calibrator with images
  drawn from the config's own dataset through its test pipeline (real
  preprocessing, not random tensors).
* :func:`quantize_onnx` runs onnxruntime's ``quantize_static`` (QDQ,
  per-channel int8 weights, uint8 activations) on the *network* nodes only:
  everything the wrappers add around the network (the data preprocessor's
  normalisation, box decoding, NMS, RoIAlign, resizing, argmax, softmax)
  stays float, since those ops are cheap and their results (coordinates,
  scores compared with thresholds) are what int8 would spoil first.
* :func:`evaluate_onnx` runs a file over the config's val dataloader and
  scores it with the config's own evaluator (CocoMetric, IoUMetric,
  Accuracy), so fp32 and int8 are compared with the metric MM reports.
"""
import copy
import os
import os.path as osp
from collections import Counter
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .onnx_export import (DetectorEnd2End, MaskRCNNEnd2End, SegmentorLabelMap, _normalise,
                          export_onnx, onnxruntime_session, run_onnxruntime,
                          swaps_channels)

__all__ = ['ClassifierScores', 'DataloaderCalibration', 'QuantizationError', 'deploy_wrapper',
           'evaluate_onnx', 'evaluate_runners', 'export_for_quantization', 'network_nodes',
           'quantize_onnx', 'quantized_ops', 'read_kind', 'random_calibration']

# The key under which the exporter records the kind of graph in the ONNX file.
KIND_KEY = 'casvit_mm.kind'
# Per kind: the modules of the model that are the network (their nodes are
# quantized; the rest stays float). The TorchScript exporter names each node
# after the innermost module *called* while tracing, so the wrapper's own ops
# (normalisation, decoding, NMS, resizing) have top-level names ('/TopK') and
# the network's start with the name of the module called ('/backbone/...',
# '/bbox_head/...'): the first segment of a name says where a node belongs.
NETWORK_SCOPES = {
    'retinanet': ['backbone', 'neck', 'bbox_head'],
    'mask_rcnn': ['backbone', 'neck', 'rpn_head', 'bbox_head', 'mask_head'],
    'segmentor': ['backbone', 'neck', 'decode_head'],
    'classifier': ['backbone', 'neck', 'head'],
    'backbone': None,  # the whole graph is the network
}
OUTPUT_NAMES = {
    'retinanet': ['boxes', 'scores', 'labels'],
    'mask_rcnn': ['boxes', 'scores', 'labels', 'masks'],
    'segmentor': ['labels', 'logits'],
    'classifier': ['scores'],
}
# What is quantized inside the network: by default every op onnxruntime can
# quantize (convolutions, matrix products, and the element-wise ops between
# them: CAS-ViT's gate products, sigmoids and residual adds). Quantizing only
# convolutions and matrix products was slower than fp32 (every element-wise op
# between two convolutions then dequantizes and requantizes; the measurements
# are in docs/quantization.md).
DEFAULT_OP_TYPES = None
# The TorchScript exporter's opset: from 20 on GELU is one node, which
# onnxruntime keeps whole between quantized convolutions (at 17 it is five
# element-wise ops, each wrapped in quantize / dequantize).
OPSET = 20


class QuantizationError(ValueError):
    """A model or file that this module cannot quantize, with what to do."""


class ClassifierScores(nn.Module):
    """An mmpretrain ``ImageClassifier`` as image -> class scores, for export.

    ``forward(images)``: ``(B, 3, H, W)`` float images as loaded (0-255, BGR),
    already resized and cropped by the test pipeline -> ``(B, num_classes)``
    softmax scores, what the head's ``predict`` puts in ``pred_score``. The
    data preprocessor's BGR -> RGB and normalisation are in the graph.
    """

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images):
        model = self.classifier
        logits = model.head(model.extract_feat(_normalise(model.data_preprocessor, images)))
        return F.softmax(logits, dim=1)


def model_kind(model, backbone_only=False):
    """'retinanet', 'mask_rcnn', 'segmentor', 'classifier' or 'backbone': what
    :func:`deploy_wrapper` exports for ``model``."""
    if backbone_only:
        return 'backbone'
    if hasattr(model, 'decode_head'):
        return 'segmentor'
    if getattr(model, 'with_rpn', False):
        return 'mask_rcnn'
    if hasattr(model, 'bbox_head'):
        return 'retinanet'
    if hasattr(model, 'head') and hasattr(model, 'extract_feat'):
        return 'classifier'
    return 'backbone'


def deploy_wrapper(model, kind):
    """The deployed (``switch_model_to_deploy``, NCHW) copy of ``model`` in
    the tensor-in / tensor-out wrapper that exports ``kind``."""
    from ..models.fusion import switch_model_to_deploy
    if kind == 'backbone':
        return switch_model_to_deploy(copy.deepcopy(model.backbone), channels_last=False)
    deployed = switch_model_to_deploy(copy.deepcopy(model), channels_last=False)
    return {'retinanet': DetectorEnd2End, 'mask_rcnn': MaskRCNNEnd2End,
            'segmentor': partial(SegmentorLabelMap, with_logits=True),
            'classifier': ClassifierScores}[kind](deployed)


def export_for_quantization(module, example, path, kind, output_names=None):
    """Export ``module`` at ``example``'s image size, batch dynamic, and record
    ``kind`` in the file's metadata.

    Always the TorchScript exporter: it names every node after the module
    that made it (``/detector/backbone/stages.0/...``), which is how
    :func:`network_nodes` tells the network from the pre- and post-processing,
    and the detectors' NMS needs it anyway.
    """
    import onnx
    export_onnx(module, example, path, dynamo=False,
                output_names=output_names or OUTPUT_NAMES.get(kind), dynamic_batch=True,
                opset=OPSET)
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = KIND_KEY, kind
    onnx.save(proto, path)
    return path


def read_kind(path, allow_quantized=False):
    """The kind recorded by :func:`export_for_quantization`; a clear error for
    any other file (not ONNX, exported otherwise, already quantized unless
    ``allow_quantized``: the int8 files this module writes keep the record)."""
    import onnx
    if not osp.isfile(path):
        raise QuantizationError(f'{path!r} does not exist')
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / its own errors on bad files
        raise QuantizationError(f'{path!r} is not an ONNX file ({e})') from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if KIND_KEY not in meta or meta[KIND_KEY] not in NETWORK_SCOPES:
        raise QuantizationError(
            f'{path!r} was not exported for quantization by casvit_mm (no {KIND_KEY!r} '
            f'in its metadata), so which of its nodes are the network is unknown: give '
            f'tools/deployment/quantize.py the config and checkpoint instead')
    if not allow_quantized and quantized_ops(proto):
        raise QuantizationError(f'{path!r} is already quantized')
    return meta[KIND_KEY]


def network_nodes(proto, kind, op_types=DEFAULT_OP_TYPES, float_op_types=()):
    """Names of the nodes of ``proto`` (an exported ``kind``) to quantize: those
    made by the network's modules (``NETWORK_SCOPES``), of ``op_types`` (None:
    any) and not of ``float_op_types``."""
    scopes = NETWORK_SCOPES[kind]
    return [n.name for n in proto.graph.node
            if (op_types is None or n.op_type in op_types)
            and n.op_type not in float_op_types
            and (scopes is None or n.name.lstrip('/').split('/')[0] in scopes)]


def quantized_ops(proto_or_path):
    """Counts of the quantized ops in a file: QuantizeLinear, DequantizeLinear
    and the QLinear* / *Integer ops (empty for a float model)."""
    import onnx
    proto = onnx.load(proto_or_path) if isinstance(proto_or_path, str) else proto_or_path
    return Counter(n.op_type for n in proto.graph.node
                   if n.op_type in ('QuantizeLinear', 'DequantizeLinear')
                   or n.op_type.startswith('QLinear') or n.op_type.endswith('Integer'))


class DataloaderCalibration:
    """Calibration batches over ``num_images`` images of a config's dataset,
    as the exported graph takes them (``get_next()`` as onnxruntime's
    ``CalibrationDataReader``; iterable, which is what ``quantize_onnx`` takes).

    ``split='train'``: the training images through the *test* pipeline (the
    preprocessing the deployed model sees, without training augmentation,
    and images the evaluation does not score); ``'val'``: the val loader as
    it is. Whole-model graphs take the images as loaded (float 0-255, padded
    bottom-right to ``shape``); a backbone graph takes the output of the
    model's own ``data_preprocessor``.
    """

    def __init__(self, cfg, model, kind, shape, num_images=32, batch_size=8, split='train',
                 seed=0):
        self.loader = calibration_loader(cfg, split, batch_size, seed)
        self.model, self.kind, self.shape = model, kind, tuple(shape)
        self.num_images, self.seen = num_images, 0
        self._iter = iter(self.loader)

    def get_next(self):
        if self.seen >= self.num_images:
            return None
        try:
            data = next(self._iter)
        except StopIteration:
            return None
        images = batch_images(data, self.model, self.kind, self.shape)
        images = images[:self.num_images - self.seen]
        self.seen += len(images)
        return {'images': images.numpy()}

    def __iter__(self):
        while (batch := self.get_next()) is not None:
            yield batch


def random_calibration(example, num_batches=4, seed=0):
    """Calibration batches like ``example`` (uniform in its range): for timing
    only, where no data set is at hand (the benchmark)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = float(example.min()), float(example.max())
    return [{'images': (torch.rand(example.shape, generator=g) * (hi - lo) + lo).numpy()}
            for _ in range(num_batches)]


def calibration_loader(cfg, split, batch_size, seed=0):
    """A dataloader over the ``split`` images of ``cfg`` through its test pipeline,
    shuffled with ``seed`` (a random draw of the images), no workers."""
    from mmengine.runner import Runner
    test = cfg.get('test_dataloader') or cfg.get('val_dataloader')
    if split == 'val':
        loader = copy.deepcopy(cfg.get('val_dataloader') or test)
    elif split == 'train':
        loader = copy.deepcopy(cfg.train_dataloader)
        dataset = loader.dataset
        while 'dataset' in dataset and 'pipeline' not in dataset:  # wrappers (RepeatDataset)
            dataset = dataset.dataset
        dataset.pipeline = copy.deepcopy(test.dataset.pipeline)
        dataset.test_mode = True
    else:
        raise QuantizationError(f'calibration split {split!r}: use train or val')
    # the sampler's own seed: without one, mmengine's DefaultSampler draws a random
    # seed, and every run would calibrate on other images
    loader.update(batch_size=batch_size, num_workers=0, persistent_workers=False,
                  sampler=dict(type='DefaultSampler', shuffle=True, seed=seed))
    loader.pop('batch_sampler', None)
    return Runner.build_dataloader(loader, seed=seed)


def pad_to(images, shape, value):
    """Pad ``(B, 3, h, w)`` images bottom-right to ``shape``; larger raises."""
    h, w = images.shape[2:]
    if h > shape[0] or w > shape[1]:
        raise QuantizationError(f'an image of {h}x{w} after the test pipeline does not fit '
                                f'the exported {shape[0]}x{shape[1]}: export with a larger '
                                f'--shape')
    if (h, w) == tuple(shape):
        return images
    out = value.reshape(1, -1, 1, 1).expand(len(images), -1, *shape).clone()
    out[:, :, :h, :w] = images
    return out


def batch_images(data, model, kind, shape):
    """A dataloader batch -> the tensor the exported graph takes."""
    if kind == 'backbone':
        with torch.no_grad():
            inputs = model.data_preprocessor(data, False)['inputs']
        return pad_to(inputs.float(), shape, torch.zeros(inputs.shape[1]))
    pre = model.data_preprocessor
    # pad with the mean: 0 after normalisation, what the data preprocessors pad with
    value = (pre.mean.flatten() if getattr(pre, '_enable_normalize', False)
             else torch.zeros(3))
    if swaps_channels(pre):  # the mean is in the model's (RGB) order, the images are BGR
        value = value.flip(0)
    return torch.cat([pad_to(img[None].float(), shape, value) for img in data['inputs']])


def input_shape(cfg, split='val'):
    """(H, W) of an image of ``split`` (the seeded draw's first) after the test
    pipeline: the export size when the user gives none."""
    loader = calibration_loader(cfg, split, 1)
    return tuple(next(iter(loader))['inputs'][0].shape[1:])


def quantize_onnx(fp32_path, int8_path, calibration, kind=None, op_types=DEFAULT_OP_TYPES,
                  float_op_types=(), exclude=(), per_channel=True, preprocess=True,
                  reduce_range=None):
    """Quantize an exported fp32 file statically with onnxruntime.

    QDQ format, int8 weights per output channel, uint8 activations (asymmetric,
    MinMax ranges from ``calibration``: an iterable of ``{'images': array}``
    or a ``CalibrationDataReader``). Only ``network_nodes`` of ``op_types``
    (None: all that onnxruntime quantizes) are quantized, less those of
    ``float_op_types`` and the node names in ``exclude`` (the file's recorded
    kind, or ``kind``, says which nodes are the network).
    ``preprocess`` runs onnxruntime's ``quant_pre_process`` (shape inference
    and graph optimisation, which folds the constants that tracing leaves).
    ``reduce_range``: 7-bit weights, which x86 CPUs without VNNI need (their
    u8 x s8 products saturate in int16 otherwise: measured on an AVX2 CPU, a
    toy classifier's int8 scores moved by 0.69 of their scale with 8 bits);
    None: on when the CPU that quantizes has no VNNI / AMX-INT8 (the file is
    meant for CPUs like it).

    Returns:
        str: ``int8_path``.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)
    kind = kind or read_kind(fp32_path)
    if reduce_range is None:
        from .cpu_isa import native_int8
        reduce_range = not native_int8()
    source = fp32_path
    if preprocess:
        source = int8_path + '.pre.onnx'
        quant_pre_process(fp32_path, source, skip_symbolic_shape=True)
    proto = onnx.load(source)
    nodes = [n for n in network_nodes(proto, kind, op_types, float_op_types)
             if n not in set(exclude)]
    if not nodes:
        raise QuantizationError(f'no node of the network to quantize found in {fp32_path} '
                                f'(op types {op_types or "all"}, kept float '
                                f'{list(float_op_types)})')

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            return next(self.it, None)

    try:
        quantize_static(source, int8_path, Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                        reduce_range=reduce_range,
                        extra_options=dict(ActivationSymmetric=False))
    finally:
        if source != fp32_path and osp.isfile(source):
            os.remove(source)
    quantized = onnx.load(int8_path)
    quantized.metadata_props.extend(
        p for p in onnx.load(fp32_path, load_external_data=False).metadata_props
        if p.key not in {q.key for q in quantized.metadata_props})
    onnx.save(quantized, int8_path)
    return int8_path


# ------------------------------------------------------------------ evaluation
def _predictions(kind, outputs, data_samples, align_corners=False):
    """Fill the batch's data samples with the graph's outputs the way the
    model's ``predict`` would (rescaled to the original image, for the metric)."""
    from mmengine.structures import InstanceData, PixelData
    for b, sample in enumerate(data_samples):
        if kind in ('retinanet', 'mask_rcnn'):
            keep = outputs[1][b] > 0  # score 0: padding
            boxes = torch.from_numpy(outputs[0][b][keep]).float()
            scale = boxes.new_tensor(sample.metainfo.get('scale_factor', (1., 1.)))
            inst = InstanceData(bboxes=boxes / scale.repeat(2),
                                scores=torch.from_numpy(outputs[1][b][keep]).float(),
                                labels=torch.from_numpy(outputs[2][b][keep]).long())
            if kind == 'mask_rcnn':
                h, w = sample.metainfo['img_shape'][:2]
                masks = torch.from_numpy(outputs[3][b][keep][:, :h, :w]).float()[None]
                oh, ow = sample.metainfo['ori_shape'][:2]
                inst.masks = F.interpolate(masks, size=(oh, ow), mode='bilinear')[0] >= 0.5
            sample.pred_instances = inst
        elif kind == 'segmentor':  # mmseg's postprocess_result: logits resized, argmax
            h, w = sample.metainfo['img_shape'][:2]
            logits = torch.from_numpy(outputs[1][b][None, :, :h, :w])
            logits = F.interpolate(logits, size=sample.metainfo['ori_shape'][:2],
                                   mode='bilinear', align_corners=align_corners)
            sample.pred_sem_seg = PixelData(data=logits.argmax(1))
        elif kind == 'classifier':
            scores = torch.from_numpy(outputs[0][b])
            sample.set_pred_score(scores).set_pred_label(scores.argmax(keepdim=True))
    return data_samples


def evaluate_onnx(paths, cfg, model, shape, threads=None):
    """Score ONNX files with the config's test evaluator on its test split.

    ``paths``: files of one kind (e.g. the fp32 and the int8 file), run on the
    same batches. Each batch goes through the file as the deployed model
    would see it (images as loaded, padded to ``shape``); its outputs are put
    in the batch's data samples as the model's ``predict`` puts them (boxes
    rescaled to the original image; the logits cropped to the image, resized
    to the original size and argmaxed; class scores) and
    the config's own evaluator (mmdet's CocoMetric, mmseg's IoUMetric,
    mmpretrain's Accuracy) computes the metric.

    Returns:
        list[dict]: The metrics of each file.
    """
    kinds = {read_kind(p, allow_quantized=True) for p in paths}
    if len(kinds) != 1 or 'backbone' in kinds:
        raise QuantizationError('evaluation needs whole-model files of one kind, got '
                                f'{sorted(kinds)}')
    sessions = [onnxruntime_session(p, threads) for p in paths]
    return evaluate_runners([partial(run_onnxruntime, s) for s in sessions], kinds.pop(), cfg,
                            model, shape)


def evaluate_runners(runners, kind, cfg, model, shape):
    """What :func:`evaluate_onnx` does, for any runtime: each of ``runners``
    (``images -> list of numpy outputs``, a ``kind`` graph) on the same
    batches, scored with the config's test evaluator."""
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(cfg.get('test_dataloader') or cfg.val_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg)
    evaluator_cfg = copy.deepcopy(cfg.get('test_evaluator') or cfg.val_evaluator)
    evaluators = [Evaluator(copy.deepcopy(evaluator_cfg)) for _ in runners]
    for ev in evaluators:
        ev.dataset_meta = loader.dataset.metainfo
    align_corners = getattr(getattr(model, 'decode_head', None), 'align_corners', False)
    for data in loader:
        images = batch_images(data, model, kind, shape)
        for run, ev in zip(runners, evaluators):
            outputs = run(images)
            samples = _predictions(kind, outputs, copy.deepcopy(data['data_samples']),
                                   align_corners)
            ev.process(data_samples=samples, data_batch=data)
    return [ev.evaluate(len(loader.dataset)) for ev in evaluators]

