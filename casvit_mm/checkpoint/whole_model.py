"""Which repository config an official checkpoint belongs to, and does it fit.

Shared by ``tools/model_converters/casvit_to_mm.py`` and the tests: the
official downstream files are whole mmdet 2.24 / mmseg 0.24 models, and the
question a user has is "which config do I use this with?". The answer is read
from the keys (the heads name the task, the backbone's shapes name the size)
and then proven by building that config's model and loading the converted
state dict into it with ``strict=True``.

``StrictCheckpointHook`` applies the same question to ``tools/test.py``: a
checkpoint that does not fit the whole model stops the test, naming the config
that fits. This module imports the model (to build configs), so the model must
never import it; :mod:`casvit_mm.checkpoint` does not re-export it.
"""
import os.path as osp

from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS

from ..models import CASViT
from .layouts import convert_official, infer_arch, strip_prefix
from .head_check import describe_mismatch, shape_mismatches
from .safe_load import CheckpointError

CONFIG_ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim', 'configs')

# key that identifies the model -> (config file pattern, model name pattern)
KINDS = (
    ('bbox_head.retina_cls.', 'detection/retinanet_casvit_{arch}.py',
     'retinanet_casvit-{arch}_fpn_1x_coco'),
    ('roi_head.mask_head.', 'detection/mask_rcnn_casvit_{arch}.py',
     'mask-rcnn_casvit-{arch}_fpn_1x_coco'),
    ('decode_head.', 'segmentation/fpn_casvit_{arch}.py',
     'fpn_casvit-{arch}_8xb4-40k_ade20k-512x512'),
    ('head.head.', 'classification/casvit_{arch}_in1k.py', 'casvit-{arch}_3rdparty_in1k'),
)


def arch_name(state_dict):
    """The CAS-ViT size of a state dict (whole model or backbone), or None."""
    backbone = strip_prefix(state_dict, 'backbone.') or state_dict
    depths, widths = infer_arch(convert_official(backbone))
    for name, arch in CASViT.arch_settings.items():
        if arch['depths'] == depths and arch['widths'] == widths:
            return name
    return None


def matching_config(state_dict):
    """``(config path relative to configs/, model name)`` for a converted state dict.

    Returns ``(None, reason)`` when no config of this repository fits.
    """
    arch = arch_name(state_dict)
    if arch is None:
        depths, widths = infer_arch(convert_official(strip_prefix(state_dict, 'backbone.')
                                                     or state_dict))
        return None, (f'its backbone (depths {depths}, widths {widths}) is none of the '
                      f'sizes {sorted(CASViT.arch_settings)}')
    for key, config, name in KINDS:
        if any(k.startswith(key) for k in state_dict):
            path = config.format(arch=arch)
            if osp.isfile(osp.join(CONFIG_ROOT, path)):
                return path, name.format(arch=arch)
            return None, f'there is no config {path} for CAS-ViT-{arch.upper()}'
    return None, 'its heads are none of RetinaNet, Mask R-CNN, Semantic FPN or a classifier'


def check_fits(state_dict, config):
    """Load ``state_dict`` strictly into the model of ``config``; the error text or None."""
    from ..cli import build_model
    model = build_model(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, ValueError) as e:
        lines = str(e).strip().splitlines()
        return ' '.join(line.strip() for line in lines[:4])[:600]
    return None


def misfit(model, state_dict, backbone_types=(CASViT, )):
    """Keys of ``state_dict`` that do not fit ``model``, outside its CAS-ViT backbones.

    The backbones check themselves (their load hook, with the allowed gaps of
    an ImageNet file); everything else must match exactly. Returns
    ``(missing, unexpected, mismatched)`` lists.
    """
    skip = tuple(f'{name}.' for name, m in model.named_modules()
                 if name and isinstance(m, backbone_types))
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    given = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state_dict.items()}
    given = {k: v for k, v in given.items() if not k.startswith(skip)}
    missing = [k for k in own if k not in given and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in given if k not in own]
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in given.items() if k in own and hasattr(v, 'shape')
                  and v.shape != own[k].shape]
    return missing, unexpected, mismatched


def _shape_triples(model, state_dict):
    """``(key, checkpoint shape, model shape)`` of the tensors of another shape."""
    given = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in state_dict.items()}
    return shape_mismatches(model, given)


@HOOKS.register_module()
class StrictCheckpointHook(Hook):
    """Stop ``tools/test.py`` when the checkpoint does not fit the whole model.

    Why: mmengine loads ``load_from`` with ``strict=False`` and only warns, so a
    RetinaNet file given to a Mask R-CNN config is evaluated with random heads.
    Testing a checkpoint needs every tensor. Runs in ``after_load_checkpoint``,
    before mmengine copies the weights. Tensors of another shape (a head
    trained for other classes) are refused on every path by :mod:`.head_check`;
    this hook reports them the same way and adds missing and left-over keys,
    which training with ``load_from`` keeps as mmengine's warning.
    With MM's own ``test.py``: ``custom_hooks = [dict(type='StrictCheckpointHook')]``.
    """
    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint):
        model = runner.model
        while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
            model = model.module
        state_dict = checkpoint.get('state_dict', checkpoint)
        missing, unexpected, mismatched = misfit(model, state_dict)
        if not (missing or unexpected or mismatched):
            return
        metadata = getattr(state_dict, '_metadata', None)
        source = getattr(metadata, 'source', None) or runner._load_from
        if mismatched and not (missing or unexpected):
            # the same model with tensors of another shape: say what it means (e.g.
            # another number of classes); another model is described below
            raise CheckpointError(describe_mismatch(
                model, _shape_triples(model, state_dict), source,
                getattr(metadata, 'classes', None)))
        match, why = matching_config({k: v for k, v in state_dict.items()
                                      if hasattr(v, 'shape')})
        hint = (f'Its keys are those of configs/{match} (model {why}).' if match else
                f'No config of this repository fits it: {why}.')
        raise CheckpointError(
            f'Checkpoint {source!r} does not fit the {type(model).__name__} of this config: '
            f'{len(missing)} tensors missing (first: {missing[:3]}), {len(unexpected)} left '
            f'over (first: {unexpected[:3]}), {len(mismatched)} of another shape (first: '
            f'{mismatched[:2]}). {hint}')
