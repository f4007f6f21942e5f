"""Helpers shared by the deployment tools and their tests.

``tools/deployment/export_onnx.py``, ``tools/analysis_tools/benchmark.py`` and
``tools/analysis_tools/train_memory.py`` build models from the plugin's
configs without touching the network, export them to ONNX and compare
outputs; these are the pieces they have in common, kept importable so the
tests exercise exactly what the tools run.
"""
import copy
import importlib
import logging
import os.path as osp

import numpy as np
import torch
import torch.nn as nn

__all__ = ['build_model', 'load_config', 'SegmentorLogits', 'relative_error',
           'export_onnx', 'onnxruntime_session', 'run_onnxruntime']


def load_config(config):
    """An mmengine ``Config`` from a path or a Config; a clear error if missing."""
    from mmengine.config import Config
    if isinstance(config, Config):
        return copy.deepcopy(config)
    if not osp.isfile(config):
        raise FileNotFoundError(f'Config file {config!r} does not exist: pass the path of '
                                f'a config, e.g. configs/detection/retinanet_casvit_m.py')
    return Config.fromfile(config)


def build_model(config, checkpoint=None, with_cp=None):
    """Build the model of a detection, segmentation or classification config.

    Nothing is downloaded: the backbone's ``init_cfg`` and the model's
    ``pretrained`` are disabled, the weights are randomly initialised (as
    ``init_weights`` does), then ``checkpoint`` is loaded if given.

    Args:
        config (str | Config): The config (its ``default_scope`` picks mmdet,
            mmseg or mmpretrain).
        checkpoint (str, optional): A checkpoint of the whole model.
        with_cp (bool, optional): Override ``model.backbone.with_cp``.

    Returns:
        nn.Module: The model in eval mode; ``model.cfg`` is the config with
        the changes above (it builds the same model, e.g. for an inferencer).
    """
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    import casvit_mm  # noqa: F401  (registers CASViT)

    cfg = load_config(config)
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    models = importlib.import_module(f'{scope}.registry').MODELS
    model_cfg = copy.deepcopy(cfg.model)
    if 'pretrained' in model_cfg:
        model_cfg.pretrained = None
    if 'backbone' in model_cfg:
        model_cfg.backbone.init_cfg = None
        if with_cp is not None:
            model_cfg.backbone.with_cp = with_cp
    model = models.build(model_cfg)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location='cpu', logger=logger)
    cfg.model = model_cfg  # what was built: no download when the cfg is reused
    model.cfg = cfg
    return model.eval()


class SegmentorLogits(nn.Module):
    """Tensor-in, tensor-out view of an mmseg segmentor for export.

    ``forward(images)`` returns the decode head's logits at 1/4 of the input
    size (``EncoderDecoder._forward``): the network itself, without mmseg's
    data samples, resizing back to the original image or argmax.
    """

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, images):
        return self.segmentor._forward(images)


def _as_list(outputs):
    if isinstance(outputs, (list, tuple)):
        return [o for out in outputs for o in _as_list(out)]
    return [outputs]


def relative_error(reference, outputs):
    """Largest ``max|ref - out| / max|ref|`` over matching (nested) outputs.

    The tolerance of deploy mode and of ONNX is stated relative to the output
    scale, since feature maps of different models differ in magnitude.
    """
    refs, outs = _as_list(reference), _as_list(outputs)
    if len(refs) != len(outs):
        raise ValueError(f'{len(refs)} reference outputs but {len(outs)} outputs')
    worst = 0.
    for ref, out in zip(refs, outs):
        ref = torch.as_tensor(np.asarray(ref) if not torch.is_tensor(ref) else ref).double()
        out = torch.as_tensor(np.asarray(out) if not torch.is_tensor(out) else out).double()
        if ref.shape != out.shape:
            raise ValueError(f'output shapes differ: {tuple(ref.shape)} vs {tuple(out.shape)}')
        scale = ref.abs().max().clamp_min(1e-12)
        worst = max(worst, float((ref - out).abs().max() / scale))
    return worst


def export_onnx(module, example, path, dynamo=True):
    """Export ``module`` called on the tensor ``example`` to ``path`` (static shapes).

    ``dynamo=True`` (torch's default since 2.9) uses the ``torch.export``
    exporter, the one PyTorch maintains; ``dynamo=False`` the deprecated
    TorchScript exporter, faster to run and kept as a fallback. Both were
    checked to give the same outputs for CAS-ViT and Semantic FPN.
    """
    import warnings
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        kwargs = dict(dynamo=dynamo, input_names=['images'])
        if dynamo:
            kwargs['verbose'] = False
        torch.onnx.export(module, (example, ), path, **kwargs)
    return path


def onnxruntime_session(path, threads=None, spinning=True):
    """An onnxruntime CPU session with ``threads`` intra-op threads (all graph
    optimisations on); ``threads=None`` keeps onnxruntime's default.

    ``spinning=False`` stops idle onnxruntime threads from busy-waiting after
    a run, which would steal the CPU from whatever runs next in the process
    (the benchmark interleaves it with PyTorch).
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def run_onnxruntime(session, images):
    """Run ``session`` on a tensor; returns the list of numpy outputs."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: images.detach().cpu().contiguous().numpy()})
