"""Build models from the plugin's configs and compare outputs.

``tools/deployment/export_onnx.py``, ``tools/analysis_tools/benchmark.py``,
``tools/analysis_tools/train_memory.py`` and
``tools/model_converters/casvit_reparameterize.py`` build models from configs
without touching the network and compare outputs; these are the pieces they
have in common.
"""
import copy
import logging
import os.path as osp

import numpy as np
import torch

from ..registry import registry_of

__all__ = ['build_model', 'deploy_config', 'load_config', 'relative_error', 'reparameterize']


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
    models = registry_of(scope, 'MODELS')
    if models is None:
        raise ImportError(f'default_scope={scope!r}: {scope} is not installed')
    model_cfg = copy.deepcopy(cfg.model)
    # mmpretrain configs give the data preprocessor at the top level, and
    # mmengine's Runner moves it into the model; without it the model would
    # see unnormalised images
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
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


def deploy_config(config):
    """The ``deploy=True`` variant of a config: the same model, fused backbone."""
    cfg = load_config(config)
    cfg.model.backbone.deploy = True
    return cfg


def reparameterize(config, checkpoint, example_shape=(1, 3, 128, 128), tol=1e-4):
    """Fuse the CAS-ViT of a trained whole-model checkpoint for deployment.

    Builds ``config`` with ``checkpoint``, calls ``model.backbone.switch_to_deploy()``
    (what mmpretrain's ``reparameterize_model.py`` does), then checks the
    result the way it will be used: a ``deploy=True`` build of the same config
    loads the fused state dict *strictly* and reproduces the unfused eval-mode
    features (``extract_feat``) on a random ``example_shape`` input within
    ``tol`` of their scale.

    Returns:
        tuple[dict, float]: The fused state dict (whole model) and the
        relative error seen.
    """
    from ..models import CASViT
    model = build_model(config, checkpoint)
    if not isinstance(getattr(model, 'backbone', None), CASViT):
        raise ValueError(f'{getattr(config, "filename", config)} has no CASViT backbone: '
                         f'nothing to reparameterize')
    if model.backbone.deploy:
        raise ValueError('The model is already fused (deploy=True config or fused '
                         'checkpoint): give the training config and checkpoint.')
    example = torch.randn(example_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.extract_feat(example)
    model.backbone.switch_to_deploy()
    state_dict = model.state_dict()
    fused = build_model(deploy_config(model.cfg))
    fused.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        error = relative_error(reference, fused.extract_feat(example))
    if error > tol:
        raise RuntimeError(f'the fused model differs from the trained one by {error:.2e} '
                           f'of the output scale (tolerance {tol:g})')
    return state_dict, error
