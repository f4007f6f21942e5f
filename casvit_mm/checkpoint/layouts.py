"""Every fact about CAS-ViT checkpoint layouts, in one place: pure functions of key names.

The layouts users bring (docs/checkpoints.md):

1. official ImageNet classifiers: ``model`` (or a bare dict) with ``patch_embed``,
   a flat ``network`` list, ``norm`` (the classifier's BN), ``head``, ``dist_head``;
2. official dense backbones: the same without the classifier, plus the output
   norms ``norm0/2/4/6``;
3. official mmdet 2.x / mmseg 0.x models: ``state_dict`` with ``backbone.`` +
   layout 2, the neck's and heads' keys (whose names mmdet 3 / mmseg 1 kept);
4. this plugin's own checkpoints (``stages``, ``downsamples``, ``norm0..3``),
   bare or under ``backbone.``, an mmpretrain classifier with ``head.head`` /
   ``head.dist_head``; any of them under ``module.`` when saved from a
   (Distributed)DataParallel wrapper.

The official code keeps the blocks in one flat list (``network.{i}``: even ``i``
a stage, odd ``i`` a downsampling) and names the dense output norms by that flat
index. Like timm's ``checkpoint_filter_fn``, every conversion here returns its
input unchanged when it is already converted, so it is safe to run twice; the
loaders (:mod:`.backbone`, :mod:`.mmengine_loader`, :mod:`.whole_model`), the
converter ``tools/model_converters/casvit_to_mm.py`` and the hooks all use these
functions and nothing else to read a layout. Nothing here imports the model (the
size table ``arch_settings`` is passed in).
"""
import re
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch

from .safe_load import CheckpointError

StateDict = Mapping[str, torch.Tensor]

WRAPPER_PREFIX = 'module.'  # a (Distributed)DataParallel wrapper's state dict
BACKBONE_PREFIX = 'backbone.'  # the backbone inside a whole model
CLASSIFIER_HEADS = ('head.', 'dist_head.')  # the official classifier's linear heads
# The official classifier's BN (BN -> pool -> heads) is the last stage's output norm of
# a global_pool backbone (``norm3``); for a dense backbone it is unused (``norm``).
OFFICIAL_CLASSIFIER_NORM = 'norm.'
MM_CLASSIFIER_NORM = 'norm3.'
CLASSIFIER_KEYS = (OFFICIAL_CLASSIFIER_NORM, ) + CLASSIFIER_HEADS
MMPRETRAIN_HEAD = 'head.'  # an ImageClassifier's head module: head.head, head.dist_head
OUTPUT_NORM = re.compile(r'norm\d\.')  # a backbone's output norm, norm{stage}.
# Top-level modules of the official mmdet 2.24 / mmseg 0.24 models, whose names
# mmdet 3.x / mmseg 1.x kept.
DOWNSTREAM_MODULES = ('neck.', 'bbox_head.', 'rpn_head.', 'roi_head.', 'decode_head.',
                      'auxiliary_head.')


# ------------------------------------------------------------------ reading
def extract_state_dict(obj: Any, path: str = 'checkpoint') -> 'OrderedDict[str, torch.Tensor]':
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


def strip_prefix(state_dict: StateDict, prefix: str) -> 'OrderedDict':
    """The keys under ``prefix``, without it (the others are dropped)."""
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                       if k.startswith(prefix))


def part_under_prefix(state_dict: StateDict, prefix: str, path: str) -> 'OrderedDict':
    """The keys under ``prefix`` (a dot added when missing, as mmengine does), without
    it; a prefix no key has is a :class:`CheckpointError` listing the file's key roots."""
    prefix = prefix if prefix.endswith('.') else prefix + '.'
    part = strip_prefix(state_dict, prefix)
    if not part:
        raise CheckpointError(
            f'{str(path)!r} has no keys under prefix {prefix!r} (its keys start with '
            f'{sorted({k.split(".")[0] for k in state_dict})[:8]}); fix init_cfg.prefix.')
    return part


def has_prefix(state_dict: StateDict, prefix: Union[str, Tuple[str, ...]]) -> bool:
    return any(k.startswith(prefix) for k in state_dict)


def unwrap(state_dict: StateDict) -> StateDict:
    """Keys without a (Distributed)DataParallel ``module.`` prefix; idempotent (the
    input itself when no key has it)."""
    if not has_prefix(state_dict, WRAPPER_PREFIX):
        return state_dict
    return OrderedDict((k[len(WRAPPER_PREFIX):] if k.startswith(WRAPPER_PREFIX) else k, v)
                       for k, v in state_dict.items())


def backbone_part(state_dict: StateDict) -> StateDict:
    """The backbone's keys of any layout: unwrapped, and those under ``backbone.``
    when a whole model is given; idempotent (a bare backbone comes back as is)."""
    state_dict = unwrap(state_dict)
    if has_prefix(state_dict, BACKBONE_PREFIX):
        return strip_prefix(state_dict, BACKBONE_PREFIX)
    return state_dict


def is_official_layout(state_dict: StateDict) -> bool:
    return has_prefix(state_dict, 'network.')


def is_classifier(state_dict: StateDict) -> bool:
    """Official (``head.``) or mmpretrain (``head.head.``) classifier heads present."""
    return has_prefix(unwrap(state_dict), CLASSIFIER_HEADS)


def is_whole_model(state_dict: StateDict) -> bool:
    """A detector / segmentor: a ``backbone.`` and a neck or heads."""
    state_dict = unwrap(state_dict)
    return (has_prefix(state_dict, BACKBONE_PREFIX)
            and has_prefix(state_dict, DOWNSTREAM_MODULES))


# --------------------------------------------------------------- converting
def _rename_prefix(state_dict: StateDict, old: str, new: str) -> 'OrderedDict':
    return OrderedDict((new + k[len(old):] if k.startswith(old) else k, v)
                       for k, v in state_dict.items())


def convert_official(state_dict: StateDict, classifier: bool = False) -> StateDict:
    """Rename official backbone keys (layouts 1 and 2) to this backbone's; idempotent.

    ``network.{2i}.{j}.*`` -> ``stages.{i}.{j}.*``; ``network.{2i+1}.proj|norm``
    -> ``downsamples.{i}.0|1``; output norms ``norm{2i}`` -> ``norm{i}``. With
    ``classifier=True`` the classifier norm becomes ``norm3`` (the official
    classifier is BN -> pool -> heads) and ``head`` / ``dist_head`` become
    ``head.head`` / ``head.dist_head`` (mmpretrain's EfficientFormerClsHead);
    otherwise they are passed through unchanged for the caller to drop.
    """
    if not is_official_layout(state_dict):
        return state_dict  # already converted
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
        elif classifier and key.startswith(OFFICIAL_CLASSIFIER_NORM):
            new = MM_CLASSIFIER_NORM + key[len(OFFICIAL_CLASSIFIER_NORM):]
        elif classifier and key.startswith(CLASSIFIER_HEADS):
            new = MMPRETRAIN_HEAD + key
        converted[new] = value
    return converted


def classifier_norm_unused(state_dict: StateDict) -> 'OrderedDict':
    """A converted classifier's BN (``norm3``) back under its classifier name
    (``norm``), for a dense backbone that does not use it; idempotent."""
    return _rename_prefix(state_dict, MM_CLASSIFIER_NORM, OFFICIAL_CLASSIFIER_NORM)


def to_mmpretrain(state_dict: StateDict) -> StateDict:
    """An ImageClassifier state dict (``backbone.*``, ``head.head``, ``head.dist_head``)."""
    state_dict = unwrap(state_dict)
    if has_prefix(state_dict, BACKBONE_PREFIX):
        return state_dict  # already converted
    converted = convert_official(state_dict, classifier=True)
    return OrderedDict((k if k.startswith(MMPRETRAIN_HEAD) else BACKBONE_PREFIX + k, v)
                       for k, v in converted.items())


def to_backbone(state_dict: StateDict) -> 'OrderedDict':
    """A bare dense-backbone state dict (classifier dropped); idempotent."""
    converted = convert_official(backbone_part(state_dict))
    return OrderedDict((k, v) for k, v in converted.items()
                       if not k.startswith(CLASSIFIER_KEYS))


def to_mm_model(state_dict: StateDict) -> 'OrderedDict':
    """An official mmdet 2.x / mmseg 0.x model -> mmdet 3.x / mmseg 1.x; idempotent.

    Only the backbone's keys change; the neck's and heads' names are the same in
    both generations.
    """
    state_dict = unwrap(state_dict)
    out = OrderedDict((BACKBONE_PREFIX + k, v)
                      for k, v in convert_official(backbone_part(state_dict)).items())
    out.update((k, v) for k, v in state_dict.items() if not k.startswith(BACKBONE_PREFIX))
    return out


def module_renames(old: Iterable[str], new: Iterable[str]) -> List[Tuple[str, str]]:
    """``(old module, new module)`` of the keys renamed between two state dicts
    converted key by key in order (dropped classifier keys skipped)."""
    old, new = list(old), list(new)
    if len(old) != len(new):  # to_backbone dropped the classifier
        old = [k for k in old if not k.startswith(CLASSIFIER_KEYS)]
    renames = OrderedDict()
    for a, b in zip(old, new):
        if a != b:
            renames.setdefault(a.rsplit('.', 1)[0], b.rsplit('.', 1)[0])
    return list(renames.items())


# ------------------------------------------------------------ arch detection
def infer_arch(state_dict: StateDict) -> Tuple[List[int], List[Optional[int]]]:
    """``(depths, widths)`` of the backbone of a state dict of any layout."""
    state_dict = convert_official(backbone_part(state_dict))
    widths, depths = [], []
    for i in range(4):
        blocks = {int(m.group(1)) for k in state_dict
                  for m in [re.match(rf'stages\.{i}\.(\d+)\.', k)] if m}
        depths.append(len(blocks))
        w = state_dict.get(f'stages.{i}.0.norm1.weight')
        widths.append(int(w.shape[0]) if w is not None else None)
    return depths, widths


def arch_name(state_dict: StateDict, arch_settings: Mapping[str, Dict]) -> Optional[str]:
    """The size (a key of ``arch_settings``, e.g. ``'m'``) of the backbone of a state
    dict of any layout, or None when it is none of them."""
    depths, widths = infer_arch(state_dict)
    for name, arch in arch_settings.items():
        if list(arch['depths']) == depths and list(arch['widths']) == widths:
            return name
    return None


def describe_arch(state_dict: StateDict, arch_settings: Mapping[str, Dict]) -> str:
    """``arch 'm' (depths ..., widths ...)`` when the numbers name a known size."""
    depths, widths = infer_arch(state_dict)
    name = arch_name(state_dict, arch_settings)
    if name is not None:
        return f"arch '{name}' (depths {depths}, widths {widths})"
    return f'depths {depths}, widths {widths}'


# ------------------------------------------------------------------ fitting
class KeyDiff(NamedTuple):
    """How a state dict differs from a model's: ``missing`` (BN counters aside),
    ``unexpected`` and ``mismatched`` ``(key, checkpoint shape, model shape)``."""
    missing: List[str]
    unexpected: List[str]
    mismatched: List[Tuple[str, tuple, tuple]]


def key_diff(own: StateDict, given: StateDict, skip: Tuple[str, ...] = ()) -> KeyDiff:
    """Compare ``given`` with the model's own state dict ``own``, ignoring keys
    under the prefixes ``skip`` (parts that check themselves)."""
    own = {k: v for k, v in own.items() if not k.startswith(skip)} if skip else own
    given = {k: v for k, v in given.items() if not k.startswith(skip)} if skip else given
    return KeyDiff(
        missing=[k for k in own if k not in given and not k.endswith('num_batches_tracked')],
        unexpected=[k for k in given if k not in own],
        mismatched=[(k, tuple(v.shape), tuple(own[k].shape)) for k, v in given.items()
                    if k in own and hasattr(v, 'shape')
                    and tuple(v.shape) != tuple(own[k].shape)])


def output_norms(keys: Iterable[str]) -> set:
    """The output-norm modules (``norm0``..``norm3``) among ``keys``."""
    return {k.split('.', 1)[0] for k in keys if OUTPUT_NORM.match(k)}


def format_mismatched(mismatched: List[Tuple[str, tuple, tuple]], first: int = 3) -> str:
    """``'key: checkpoint (a,) vs model (b,); ...'`` of the first tensors of another shape."""
    return '; '.join(f'{k}: checkpoint {a} vs model {b}' for k, a, b in mismatched[:first])


def group_keys(keys: Iterable[str]) -> str:
    """Summarise keys by module for one-line messages: norm0.* -> 'norm0'."""
    groups = OrderedDict()
    for key in keys:
        groups.setdefault(key.rsplit('.', 1)[0], None)
    return ', '.join(groups)
