"""Post-training INT8 quantization of the files the export dispatch writes (onnxruntime).

What ``tools/deployment/quantize.py`` and the benchmark's ``int8`` variant
run, as importable pieces (the tests run exactly these). The fp32 file is
mmdeploy's (:func:`casvit_mm.deploy.dispatch.export`: the network and
mmdeploy's post-processing, the data preprocessor in PyTorch) or the bare
backbone (:func:`casvit_mm.deploy.dispatch.export_backbone`); each records
its kind (the task) in its metadata.

* :class:`DataloaderCalibration` feeds onnxruntime's calibrator with images
  drawn from the config's own dataset through its test pipeline and the
  model's data preprocessor (what the file takes; not random tensors).
* :func:`quantize_onnx` runs onnxruntime's ``quantize_static`` (QDQ,
  per-channel int8 weights, uint8 activations) on the *network* nodes only:
  mmdeploy's post-processing (box decoding, top-k, NMS, RoIAlign's
  selection, resizing, argmax, softmax) stays float, since those ops are
  cheap and their results (coordinates, scores compared with thresholds)
  are what int8 would spoil first.
* Scoring fp32 and int8 files with the config's evaluator is
  :func:`casvit_mm.deploy.accuracy.evaluate_models` on mmdeploy's backend
  models (:func:`casvit_mm.deploy.dispatch.backend_model`).
"""
import copy
import os
import os.path as osp
from collections import Counter

import torch

from ..utils.dataset_configs import leaf_datasets
from .dispatch import KIND_KEY

__all__ = ['DataloaderCalibration', 'FLOAT_SCOPES', 'NETWORK_SCOPES', 'QuantizationError',
           'batch_images', 'calibration_loader', 'input_shape', 'network_nodes',
           'quantize_onnx', 'quantized_ops', 'quantized_scopes', 'read_kind',
           'random_calibration']

# Per kind: the modules of the model that are the network (their nodes are
# quantized; the rest stays float). The TorchScript exporter (mmdeploy's)
# names each node after the innermost module *called* while tracing, so
# mmdeploy's post-processing, which its rewriters run in the detector's or
# head's predict functions rather than in a module's forward, has top-level
# names ('/TopK') and the network's start with the name of the module called
# ('/backbone/...', '/bbox_head/...'): the first segment of a name says where a
# node belongs.
NETWORK_SCOPES = {
    'detection': ['backbone', 'neck', 'bbox_head'],
    'instance-seg': ['backbone', 'neck', 'rpn_head', 'bbox_head', 'mask_head'],
    'segmentation': ['backbone', 'neck', 'decode_head'],
    'classification': ['backbone', 'neck', 'head'],
    'backbone': None,  # the whole graph is the network
}
# Parts of the network both quantizers keep float, per kind. Mask R-CNN's RoI heads
# (the box and mask heads): quantized by NNCF, they took the toy Mask R-CNN from
# bbox / segm mAP 0.466 / 0.572 to 0.001 / 0.002 (RetinaNet's dense head loses
# 0.004); float, 0.494 / 0.593 (docs/quantization.md).
FLOAT_SCOPES = {'instance-seg': ('bbox_head', 'mask_head')}


def quantized_scopes(kind):
    """The top-level scopes of an exported ``kind`` whose nodes are quantized:
    the network's (``NETWORK_SCOPES``) but those kept float (``FLOAT_SCOPES``);
    None: the whole graph."""
    scopes = NETWORK_SCOPES[kind]
    return None if scopes is None else [s for s in scopes
                                        if s not in FLOAT_SCOPES.get(kind, ())]
# What is quantized inside the network: by default every op onnxruntime can
# quantize (convolutions, matrix products, and the element-wise ops between
# them: CAS-ViT's gate products, sigmoids and residual adds). Quantizing only
# convolutions and matrix products was slower than fp32 (every element-wise op
# between two convolutions then dequantizes and requantizes; the measurements
# are in docs/quantization.md).
DEFAULT_OP_TYPES = None


class QuantizationError(ValueError):
    """A model or file that this module cannot quantize, with what to do."""


def read_kind(path, allow_quantized=False):
    """The kind recorded by the export dispatch (a task, or ``'backbone'``); a
    clear error for any other file (not ONNX, exported otherwise, already
    quantized unless ``allow_quantized``: the int8 files keep the record)."""
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
            f'in its metadata: not written by casvit_mm.deploy.dispatch), so which of its '
            f'nodes are the network is unknown: give tools/deployment/quantize.py the '
            f'config and checkpoint instead')
    if not allow_quantized and quantized_ops(proto):
        raise QuantizationError(f'{path!r} is already quantized')
    return meta[KIND_KEY]


def network_nodes(proto, kind, op_types=DEFAULT_OP_TYPES, float_op_types=()):
    """Names of the nodes of ``proto`` (an exported ``kind``) to quantize: those
    made by the network's modules (:func:`quantized_scopes`), of ``op_types``
    (None: any) and not of ``float_op_types``."""
    scopes = quantized_scopes(kind)
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
    as the exported file takes them (``get_next()`` as onnxruntime's
    ``CalibrationDataReader``; iterable, which is what ``quantize_onnx`` takes):
    ``{'images': array}``, the images through the test pipeline and the model's
    data preprocessor (:func:`batch_images`).

    ``split='train'``: the training images through the *test* pipeline (the
    preprocessing the deployed model sees, without training augmentation,
    and images the evaluation does not score); ``'val'``: the val loader as
    it is. ``shape``: pad every batch to this (H, W) (a file of fixed size, the
    backbone's); None for mmdeploy's dynamic files.
    """

    def __init__(self, cfg, model, kind=None, shape=None, num_images=32, batch_size=8,
                 split='train', seed=0):
        self.loader = calibration_loader(cfg, split, batch_size, seed)
        self.model, self.kind = model, kind
        self.shape = tuple(shape) if shape else None
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
        for dataset in leaf_datasets(loader.dataset):  # under RepeatDataset, ConcatDataset
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


def batch_images(data, model, kind=None, shape=None):
    """A dataloader batch -> the tensor the exported file takes: the model's own
    data preprocessor (normalisation, BGR -> RGB, padding to its divisor: what
    mmdeploy's backend model feeds the file), padded with zeros bottom-right to
    ``shape`` if given (a fixed-size file). ``kind`` is not needed (every file
    of the dispatch takes the preprocessed images); kept for callers that name it."""
    with torch.no_grad():
        inputs = model.data_preprocessor(copy.deepcopy(data), False)['inputs'].float()
    if shape is None:
        return inputs
    return pad_to(inputs, shape, torch.zeros(inputs.shape[1]))


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
    Calibration batches may name the input ``'images'``: it is renamed to the
    file's own input name (``'input'`` in mmdeploy's files).
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

    input_name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            batch = next(self.it, None)
            if batch is not None and 'images' in batch and input_name not in batch:
                batch = {input_name: batch['images']}
            return batch

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
