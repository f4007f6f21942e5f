"""Official CAS-ViT key names -> this backbone's: pure renaming, idempotent.

The official code keeps the blocks in one flat list (``network.{i}``: even
``i`` a stage, odd ``i`` a downsampling) and names the dense output norms by
that flat index (``norm0/2/4/6``). Like timm's ``checkpoint_filter_fn``, every
function here returns its input unchanged when it is already converted, so it is
safe to run twice and is shared by the load hook of ``CASViT``, the
``init_cfg`` loader and ``tools/model_converters/casvit_to_mm.py``. Nothing here
imports the model, so the model can import this module.
"""
import re
from collections import OrderedDict

import torch

from .safe_load import CheckpointError

CLASSIFIER_KEYS = ('norm.', 'head.', 'dist_head.')
# Top-level modules of the official mmdet 2.24 / mmseg 0.24 models, whose names
# mmdet 3.x / mmseg 1.x kept.
DOWNSTREAM_MODULES = ('neck.', 'bbox_head.', 'rpn_head.', 'roi_head.', 'decode_head.',
                      'auxiliary_head.')


def extract_state_dict(obj, path='checkpoint'):
    """The tensors of a checkpoint: under ``state_dict``, ``model`` or at the top level."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f'{path} holds no state dict (expected a dict with '
                              f"'state_dict', 'model' or tensors at the top level).")
    tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise CheckpointError(f'{path} holds no tensors; its top-level keys are '
                              f'{list(obj)[:10]}.')
    return tensors


def strip_prefix(state_dict, prefix):
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                       if k.startswith(prefix))


def is_official_layout(state_dict):
    return any(k.startswith('network.') for k in state_dict)


def convert_official(state_dict, classifier=False):
    """Rename official backbone keys (layouts 1 and 2) to this backbone's; idempotent.

    ``network.{2i}.{j}.*`` -> ``stages.{i}.{j}.*``; ``network.{2i+1}.proj|norm``
    -> ``downsamples.{i}.0|1``; output norms ``norm{2i}`` -> ``norm{i}``. With
    ``classifier=True`` the classifier norm becomes ``norm3`` (the official
    classifier is BN -> pool -> heads) and ``head`` / ``dist_head`` become
    ``head.head`` / ``head.dist_head`` (mmpretrain's EfficientFormerClsHead);
    otherwise they are passed through unchanged for the caller to drop.
    """
    if not is_official_layout(state_dict):
        return state_dict
    converted = OrderedDict()
    for key, value in state_dict.items():
        new = key
        m = re.match(r'network\.(\d+)\.(.*)', key)
        if m:
            index, rest = int(m.group(1)), m.group(2)
            if index % 2 == 0:
                new = f'stages.{index // 2}.{rest}'
            else:
                rest = re.sub(r'^proj\.', '0.', rest)
                rest = re.sub(r'^norm\.', '1.', rest)
                new = f'downsamples.{index // 2}.{rest}'
        elif re.match(r'norm(\d+)\.', key):
            index = int(re.match(r'norm(\d+)\.', key).group(1))
            new = re.sub(r'^norm\d+\.', f'norm{index // 2}.', key)
        elif classifier and key.startswith('norm.'):
            new = 'norm3.' + key[len('norm.'):]
        elif classifier and key.startswith(('head.', 'dist_head.')):
            new = 'head.' + key
        converted[new] = value
    return converted


def to_mmpretrain(state_dict):
    """An ImageClassifier state dict (``backbone.*``, ``head.head``, ``head.dist_head``)."""
    if any(k.startswith('backbone.') for k in state_dict):
        return state_dict
    converted = convert_official(state_dict, classifier=True)
    return OrderedDict((k if k.startswith('head.') else f'backbone.{k}', v)
                       for k, v in converted.items())


def to_backbone(state_dict):
    """A bare dense-backbone state dict (classifier dropped); idempotent."""
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = strip_prefix(state_dict, 'backbone.')
    converted = convert_official(state_dict)
    return OrderedDict((k, v) for k, v in converted.items()
                       if not k.startswith(CLASSIFIER_KEYS))


def is_whole_model(state_dict):
    return (any(k.startswith('backbone.') for k in state_dict)
            and any(k.startswith(DOWNSTREAM_MODULES) for k in state_dict))


def to_mm_model(state_dict):
    """An official mmdet 2.x / mmseg 0.x model -> mmdet 3.x / mmseg 1.x; idempotent.

    Only the backbone's keys change; the neck's and heads' names are the same in
    both generations. Returns the new dict and a list of ``(old, new)`` renames
    summarised per module.
    """
    backbone = strip_prefix(state_dict, 'backbone.')
    converted = convert_official(backbone)
    renames = OrderedDict()
    for old, new in zip(backbone, converted):
        if old != new:
            renames.setdefault(old.rsplit('.', 1)[0], new.rsplit('.', 1)[0])
    out = OrderedDict((f'backbone.{k}', v) for k, v in converted.items())
    out.update((k, v) for k, v in state_dict.items() if not k.startswith('backbone.'))
    return out, [(f'backbone.{a}', f'backbone.{b}') for a, b in renames.items()]


def infer_arch(state_dict):
    """Guess (depths, widths) of a converted backbone state dict, for messages."""
    widths, depths = [], []
    for i in range(4):
        blocks = {int(m.group(1)) for k in state_dict
                  for m in [re.match(rf'stages\.{i}\.(\d+)\.', k)] if m}
        depths.append(len(blocks))
        w = state_dict.get(f'stages.{i}.0.norm1.weight')
        widths.append(int(w.shape[0]) if w is not None else None)
    return depths, widths


def describe_arch(depths, widths, arch_settings):
    """``arch 'm' (depths ..., widths ...)`` when the numbers name a known size."""
    for name, arch in arch_settings.items():
        if list(arch['depths']) == depths and list(arch['widths']) == widths:
            return f"arch '{name}' (depths {depths}, widths {widths})"
    return f'depths {depths}, widths {widths}'


def group_keys(keys):
    """Summarise keys by module for one-line messages: norm0.* -> 'norm0'."""
    groups = OrderedDict()
    for key in keys:
        groups.setdefault(key.rsplit('.', 1)[0], None)
    return ', '.join(groups)
