"""Safe loading and conversion of CAS-ViT checkpoints.

Users bring four layouts (see README, "Official weights"):

1. official ImageNet classifiers: ``model`` (or a bare dict) with ``patch_embed``,
   a flat ``network`` list, ``norm``, ``head``, ``dist_head``;
2. official dense backbones: the same plus ``norm0/2/4/6``, no classifier;
3. official mmdet 2.x / mmseg 0.x models: ``state_dict`` with ``backbone.`` + 2;
4. this plugin's own checkpoints (mmengine ``state_dict`` with ``stages``).

Conversion is a pure renaming (timm's ``checkpoint_filter_fn`` idea): it returns
its input untouched when the dict is already converted, so it is safe to run
twice and is shared by ``init_weights`` and ``tools/model_converters``.

Loading never executes pickled code: files are read with ``torch.load(...,
weights_only=True)`` and only plain containers, tensors and the few harmless
types those files hold (an argparse ``Namespace``, numpy scalars, mmengine's
``HistoryBuffer``) are allowed.
"""
import argparse
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch
from mmengine.logging import print_log

CLASSIFIER_KEYS = ('norm.', 'head.', 'dist_head.')


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt or of another model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose unpickling would run code outside the allowed types."""


def _history_buffer_getattr(obj, name):
    """The one ``getattr`` mmengine checkpoints need: ``HistoryBuffer.min`` and the like
    (its statistics methods are pickled by reference). Anything else is refused."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in ('min', 'max', 'current', 'mean'):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'Unsupported global: getattr({obj!r}, {name!r}) refused')


def _safe_globals():
    """What official and mmengine checkpoints hold besides tensors and containers."""
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = [argparse.Namespace, np.dtype, np.ndarray, HistoryBuffer,
               (_history_buffer_getattr, '__builtin__.getattr'),
               (_history_buffer_getattr, 'builtins.getattr')]
    allowed += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
    for mod in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            module = __import__(mod, fromlist=['scalar', '_reconstruct'])
            allowed += [module.scalar, module._reconstruct]
            break
        except (ImportError, AttributeError):
            continue
    return allowed


def safe_load(path):
    """Load a checkpoint file with ``weights_only=True``; explain every failure."""
    path = os.fspath(path)
    if not osp.isfile(path):
        raise CheckpointError(
            f'Checkpoint {path!r} does not exist. Give the path of a downloaded official '
            f'CAS-ViT .pth (see README, "Official weights"), or set init_cfg=None to '
            f'train from scratch.')
    if osp.getsize(path) == 0:
        raise CheckpointError(f'Checkpoint {path!r} is empty (0 bytes): download it again.')
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r'(?:Unsupported global|GLOBAL|unsupported)[^\n]*', text)
        if 'weights_only' in text or 'Unsupported' in text:
            raise UnsafeCheckpointError(
                f'Refused to load {path!r}: unpickling it would have to import and call '
                f'{found.group(0) if found else "code outside the allowed types"}, and a '
                f'checkpoint may hide arbitrary code there. Nothing was executed. If you '
                f'trust the file, re-save only its tensors (torch.save(state_dict)) '
                f'and load that.') from None
        raise CheckpointError(f'{path!r} is not a readable PyTorch checkpoint ({text[:200]}); '
                              f'it may be truncated: download it again.') from None
    except Exception as e:  # noqa: BLE001 - any parse failure means a damaged file
        raise CheckpointError(
            f'{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: '
            f'{str(e)[:200]}); it may be truncated or not a .pth at all: download it '
            f'again.') from None


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


def _strip(state_dict, prefix):
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                       if k.startswith(prefix))


def is_official_layout(state_dict):
    return any(k.startswith('network.') for k in state_dict)


def convert_official(state_dict, classifier=False):
    """Rename official keys (layouts 1 and 2) to this backbone's; idempotent.

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
        state_dict = _strip(state_dict, 'backbone.')
    converted = convert_official(state_dict)
    return OrderedDict((k, v) for k, v in converted.items()
                       if not k.startswith(CLASSIFIER_KEYS))


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


def _describe_arch(depths, widths):
    from .models.casvit import CASViT
    for name, arch in CASViT.arch_settings.items():
        if arch['depths'] == depths and arch['widths'] == widths:
            return f"arch '{name}' (depths {depths}, widths {widths})"
    return f'depths {depths}, widths {widths}'


def _group(keys):
    """Summarise keys by module for one-line messages: norm0.* -> 'norm0'."""
    groups = OrderedDict()
    for key in keys:
        groups.setdefault(key.rsplit('.', 1)[0], None)
    return ', '.join(groups)


def load_backbone_checkpoint(model, path, prefix=None, logger='current'):
    """Load any supported checkpoint into a ``CASViT`` and report what happened.

    Args:
        model (CASViT): The backbone to fill.
        path (str): A local checkpoint file (no download happens here).
        prefix (str, optional): Take only keys under this prefix, e.g.
            ``'backbone.'`` for a detector or segmentor checkpoint. When not
            given, a ``backbone.`` prefix is detected and stripped.

    Raises:
        CheckpointError: the file is missing, corrupt, unsafe, or does not fit
            the model (a shape mismatch, or blocks missing or left over).
    """
    if getattr(model, 'deployed', False):
        raise CheckpointError('Load checkpoints before switch_to_deploy(), not after.')
    state_dict = extract_state_dict(safe_load(path), repr(path))
    from_classifier = any(k.startswith(('head.', 'dist_head.')) for k in state_dict)
    if prefix:
        if not any(k.startswith(prefix) for k in state_dict):
            raise CheckpointError(
                f'{path!r} has no keys under prefix {prefix!r} (its keys start with '
                f'{sorted({k.split(".")[0] for k in state_dict})[:8]}); fix init_cfg.prefix.')
        state_dict = _strip(state_dict, prefix)
    else:
        for auto in ('module.', 'backbone.'):
            if any(k.startswith(auto) for k in state_dict):
                state_dict = _strip(state_dict, auto)
    layout = 'official' if is_official_layout(state_dict) else 'casvit-mm'
    state_dict = convert_official(state_dict, classifier=model.global_pool)
    if not model.global_pool and from_classifier:
        # An mmpretrain classifier: its norm3 is the classifier's BN, which the official
        # dense backbone does not load either (its output norms start at init).
        state_dict = OrderedDict((f'norm.{k[len("norm3."):]}' if k.startswith('norm3.') else k,
                                  v) for k, v in state_dict.items())

    own = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                  if k in own and v.shape != own[k].shape]
    if mismatched:
        first = '; '.join(f'{k}: checkpoint {a} vs model {b}' for k, a, b in mismatched[:3])
        raise CheckpointError(
            f'Checkpoint {path!r} does not fit CASViT(arch={model.arch_name}) '
            f'(depths {model.depths}, widths {model.widths}): {len(mismatched)} tensors '
            f'differ in shape, first {first}. The checkpoint looks like '
            f'{_describe_arch(*infer_arch(state_dict))}: set arch to match it.')

    missing = [k for k in own if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own]
    norm_keys = re.compile(r'norm\d\.')
    missing_norms = [k for k in missing if norm_keys.match(k)]
    unused_norms = [k for k in unexpected if norm_keys.match(k)]
    unused_cls = [k for k in unexpected if k.startswith(CLASSIFIER_KEYS)]
    other_missing = [k for k in missing if k not in missing_norms]
    other_unexpected = [k for k in unexpected if k not in unused_norms + unused_cls]
    if other_missing or other_unexpected:
        raise CheckpointError(
            f'Checkpoint {path!r} does not fit CASViT(arch={model.arch_name}) '
            f'(depths {model.depths}, widths {model.widths}): '
            f'{len(other_missing)} tensors missing (first: {other_missing[:3]}), '
            f'{len(other_unexpected)} left over (first: {other_unexpected[:3]}). The '
            f'checkpoint looks like {_describe_arch(*infer_arch(state_dict))}; if it is '
            f'a whole detector/segmentor, pass prefix="backbone.".')

    model.load_state_dict(state_dict, strict=False)
    notes = []
    if missing_norms:
        notes.append(f'kept at init (not in this {layout} checkpoint): output norms '
                     f'{_group(missing_norms)}')
    if unused_cls:
        notes.append(f'unused: classifier {_group(unused_cls)}')
    if unused_norms:
        notes.append(f'unused: output norms of stages not in out_indices {_group(unused_norms)}')
    message = (f'CASViT: loaded {len(state_dict) - len(unexpected)} tensors from {path} '
               f'({layout} layout)' + ('; ' + '; '.join(notes) if notes else ''))
    print_log(message, logger=logger)
    return dict(missing=missing, unexpected=unexpected, layout=layout, message=message)
