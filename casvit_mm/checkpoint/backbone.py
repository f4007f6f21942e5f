"""Fit any CAS-ViT state dict to a ``CASViT``, on every path that loads one.

``CASViT`` registers a load-state-dict pre-hook (as mmpretrain's ViT adapts
position embeddings) that calls :func:`convert_for_backbone`, the one function
of this package the model knows, so the same conversion and the same checks run
whether weights come through ``init_cfg`` (mmengine's ``PretrainedInit``),
mmengine's ``load_checkpoint``, ``Runner.load_from`` / ``--resume``, MM's own
``tools/test.py`` or a plain ``model.load_state_dict``: official keys are
renamed, and anything that still does not fit the backbone raises
:class:`CheckpointError` naming the file, the backbone and the first offending
keys, instead of mmengine's warning followed by a randomly initialised model.
:func:`load_backbone_checkpoint` reads a file into a bare backbone outside
mmengine (scripts, tests).

What is allowed to differ, because the official code loads it that way too:
an ImageNet classifier has no dense output norms (they stay at init) and its
classifier (``norm``, ``head``, ``dist_head``) is unused; output norms of
stages not in ``out_indices`` are unused. Everything is logged.
"""
from collections import OrderedDict
from typing import Mapping, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

from .layouts import (BACKBONE_PREFIX, CLASSIFIER_KEYS, MM_CLASSIFIER_NORM, OUTPUT_NORM,
                      backbone_part, classifier_norm_unused, convert_official, describe_arch,
                      extract_state_dict, format_mismatched, group_keys, has_prefix,
                      is_classifier, is_official_layout, key_diff, output_norms,
                      part_under_prefix)
from .safe_load import (FROM_CLASSIFIER_KEY, READ_FROM_KEY, SOURCE_KEY, CheckpointError,
                        safe_load)

def _describe_model(model, prefix=''):
    where = f" (module {prefix.rstrip('.')!r} of the model)" if prefix else ''
    arch = f'arch={model.arch_name!r}' if model.arch_name else 'a custom arch'
    return f'CASViT({arch}) (depths {model.depths}, widths {model.widths}){where}'


def fit_backbone_state_dict(model: nn.Module,
                            state_dict: dict,
                            source: Optional[str] = None,
                            prefix: str = '',
                            from_classifier: bool = False,
                            what: Optional[str] = None) -> Tuple[OrderedDict, str]:
    """Convert ``state_dict`` (keys relative to the backbone) and check it fits ``model``.

    Args:
        model (CASViT): The backbone.
        state_dict (dict): Backbone keys in any supported layout.
        source (str, optional): The file it came from, for messages.
        prefix (str): Where the backbone sits in the whole model, for messages.
        from_classifier (bool): The file is a classifier whose ``norm3`` is
            the classifier's BN, not an output norm.
        what (str, optional): How messages name the input, when not a file.

    Returns:
        tuple[OrderedDict, str]: the tensors to load (output norms absent from
        the checkpoint filled with the model's current ones) and the log line
        saying what was loaded, kept at init and left unused.

    Raises:
        CheckpointError: shapes differ, blocks are missing or left over.
    """
    what = f'Checkpoint {source!r}' if source else (what or 'The state dict being loaded')
    layout = 'official' if is_official_layout(state_dict) else 'casvit-mm'
    sd = convert_official(state_dict, classifier=model.global_pool)
    if from_classifier and not model.global_pool:
        sd = classifier_norm_unused(sd)
    own = model.state_dict()
    diff = key_diff(own, sd)
    if diff.mismatched:
        raise CheckpointError(
            f'{what} does not fit {_describe_model(model, prefix)}: {len(diff.mismatched)} '
            f'tensors differ in shape, first {format_mismatched(diff.mismatched)}. The '
            f'checkpoint looks like {describe_arch(sd, model.arch_settings)}: set arch to '
            f'match it.')

    own_norms, given_norms = output_norms(own), output_norms(sd)
    if (not model.global_pool and given_norms == output_norms([MM_CLASSIFIER_NORM])
            and own_norms - given_norms and not has_prefix(sd, CLASSIFIER_KEYS)):
        # A converted classifier (mmpretrain layout) whose only norm is the
        # classifier's BN: like the official dense model, keep output norms at init.
        sd = classifier_norm_unused(sd)
        given_norms = set()
    unused_norms = [k for k in sd if OUTPUT_NORM.match(k) and k not in own]
    unused_cls = [k for k in sd if k.startswith(CLASSIFIER_KEYS) and k not in own]
    kept = []
    if not given_norms & own_norms:  # an ImageNet file: no dense output norms at all
        kept = [k for k in own if OUTPUT_NORM.match(k)]
    diff = key_diff(own, sd)
    missing = [k for k in diff.missing if k not in kept]
    unexpected = [k for k in diff.unexpected if k not in unused_norms + unused_cls]
    if missing or unexpected:
        hint = (' Did you give the right prefix (init_cfg prefix="backbone." for a whole '
                'detector or segmentor file)?' if not prefix else '')
        raise CheckpointError(
            f'{what} does not fit {_describe_model(model, prefix)}: {len(missing)} tensors '
            f'missing (first: {missing[:3]}), {len(unexpected)} left over (first: '
            f'{unexpected[:3]}). The checkpoint looks like '
            f'{describe_arch(sd, model.arch_settings)}.{hint}')

    fitted = OrderedDict((k, v) for k, v in sd.items() if k in own)
    for k in own:  # kept at init, and BN counters the checkpoint does not have
        if k not in fitted:
            fitted[k] = own[k]
    notes = []
    if kept:
        notes.append(f'kept at init (not in this {layout} checkpoint): output norms '
                     f'{group_keys(kept)}')
    if unused_cls:
        notes.append(f'unused: classifier {group_keys(unused_cls)}')
    if unused_norms:
        notes.append(f'unused: output norms of stages not in out_indices '
                     f'{group_keys(unused_norms)}')
    loaded = len(sd) - len(unused_cls) - len(unused_norms)
    message = (f'CASViT{" " + repr(prefix.rstrip(".")) if prefix else ""}: loaded {loaded} '
               f'tensors from {source or "a state dict"} ({layout} layout)'
               + ('; ' + '; '.join(notes) if notes else ''))
    return fitted, message


def _fits_as_is(model, local):
    own = model.state_dict()
    return (local.keys() == own.keys()
            and all(v.shape == own[k].shape for k, v in local.items()))


def convert_for_backbone(model: nn.Module,
                         state_dict: Mapping[str, torch.Tensor],
                         prefix: str = '',
                         metadata: Optional[Mapping] = None
                         ) -> Optional[Tuple['OrderedDict[str, torch.Tensor]', str]]:
    """The keys under ``prefix`` of any CAS-ViT checkpoint, converted and checked
    against ``model`` (a ``CASViT``): what its load-state-dict pre-hook loads.

    Pure, like timm's ``checkpoint_filter_fn``: reads ``state_dict`` and the model's
    own state dict, changes neither, and returns None for what needs nothing done
    (no keys under ``prefix``, a fused model whose keys are its own, keys that
    already fit), so applying its result and calling it again returns None (or,
    for the part of a classifier's file, the same tensors).

    Args:
        model (CASViT): The backbone the keys are for.
        state_dict (Mapping): The state dict being loaded (keys of the whole model).
        prefix (str): Where the backbone sits in the whole model (``'backbone.'``).
        metadata (Mapping, optional): The backbone's ``_metadata`` entry, which
            names the file (:mod:`.safe_load` tags every state dict it reads).

    Returns:
        tuple[OrderedDict, str] | None: the backbone's keys (with ``prefix``) to
        load instead of those under ``prefix``, and the log line saying what was
        loaded, kept at init and left unused.

    Raises:
        CheckpointError: what is left does not fit the backbone (another size or
            depth, not a CAS-ViT, a wrong prefix).
    """
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not keys or model.deploy:
        return None  # nothing for the backbone here, or a folded model with its own keys
    local = OrderedDict((k[len(prefix):], state_dict[k]) for k in keys)
    metadata = metadata or {}
    if _fits_as_is(model, local) and not metadata.get(FROM_CLASSIFIER_KEY):
        return None
    source = metadata.get(SOURCE_KEY)
    read_from, what = metadata.get(READ_FROM_KEY), None
    if source is None and read_from is not None:
        # mmengine's PretrainedInit with a prefix: a new dict, tagged with its file
        # by mmengine_loader.load_checkpoint_with_prefix
        what = f'The state dict read from {read_from!r}'
    from_classifier, others = bool(metadata.get(FROM_CLASSIFIER_KEY)), []
    if not prefix and has_prefix(local, BACKBONE_PREFIX):
        # A whole classifier or detector given to the bare backbone (a list
        # init_cfg without prefix): take its backbone, leave the rest unused.
        from_classifier = is_classifier(local)
        others = [k for k in local if not k.startswith(BACKBONE_PREFIX)]
        local = backbone_part(local)
    fitted, message = fit_backbone_state_dict(model, local, source, prefix,
                                              from_classifier=from_classifier, what=what)
    if others:
        message += f'; unused: the rest of the whole model {group_keys(others)}'
    return OrderedDict((prefix + k, v) for k, v in fitted.items()), message


def load_backbone_checkpoint(model: nn.Module,
                             path: str,
                             prefix: Optional[str] = None,
                             logger: str = 'current') -> str:
    """Load any supported checkpoint file into a bare ``CASViT``, outside mmengine.

    (``init_cfg`` goes through mmengine's ``PretrainedInit`` and the load hook.)

    Args:
        model (CASViT): The backbone to fill.
        path (str): A local checkpoint file (no download happens here).
        prefix (str, optional): Take only keys under this prefix, e.g.
            ``'backbone.'`` for a detector or segmentor checkpoint. When not
            given, a ``module.`` or ``backbone.`` prefix is detected and stripped.

    Returns:
        str: the log line of :func:`fit_backbone_state_dict` (what was loaded).

    Raises:
        CheckpointError: the file is missing, corrupt, unsafe, or does not fit
            the model (a shape mismatch, or blocks missing or left over).
    """
    if model.deploy:
        raise CheckpointError('Load checkpoints before switch_to_deploy(), not after.')
    state_dict = extract_state_dict(safe_load(path), repr(path))
    from_classifier = is_classifier(state_dict)
    state_dict = (part_under_prefix(state_dict, prefix, path) if prefix
                  else backbone_part(state_dict))
    fitted, message = fit_backbone_state_dict(model, state_dict, str(path),
                                              from_classifier=from_classifier)
    model.load_state_dict(fitted, strict=True)
    print_log(message, logger=logger)
    return message
