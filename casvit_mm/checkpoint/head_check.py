"""Refuse a checkpoint whose tensors do not fit the model, on every loading path.

Why: mmengine's ``load_state_dict`` -- what ``Runner`` ``load_from`` and
``--resume``, ``tools/test.py``, ``load_checkpoint``, ``init_cfg=dict(type=
'Pretrained')``, ``DetInferencer``, ``MMSegInferencer`` and mmpretrain's
``get_model`` / ``ImageClassificationInferencer`` all end in -- loads with
``strict=False`` and only logs ``size mismatch for bbox_head.retina_cls.weight``;
the tensor keeps its random initialisation. A 3-class checkpoint given to a
2-class config then predicts with a random classifier under the checkpoint's
three class names. (``torch.nn.Module.load_state_dict`` refuses a size
mismatch even with ``strict=False``; mmengine turns it into a warning.)

How: :func:`patch_mmengine_load_state_dict` (called by ``import casvit_mm``,
which every config of this repository does through ``custom_imports``)
replaces ``mmengine.runner.checkpoint.load_state_dict`` -- the one function all
those paths call, looked up at call time -- with :func:`checked_load_state_dict`:
the same function after :func:`check_shapes`, which raises
:class:`~.safe_load.CheckpointError` before anything is copied. A mismatch in
a head is reported as what it is: "the checkpoint's head has 3 classes
(bolt, nut, washer), this config 2". Missing and left-over keys keep mmengine's
behaviour (a warning when training; ``StrictCheckpointHook`` refuses them in
``tools/test.py``). Keys of a ``CASViT`` backbone are left to its own load
hook (:mod:`.backbone`), which converts official layouts and checks them.
"""
from collections import Counter
from typing import List, Optional, Sequence, Tuple

import torch.nn as nn

from .layouts import format_mismatched, key_diff
from .safe_load import CheckpointError

_ORIGINAL = {}


def _unwrap(model):
    from mmengine.model import BaseTTAModel, is_model_wrapper
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def self_checking_prefixes(model: nn.Module) -> Tuple[str, ...]:
    """Prefixes of the CAS-ViT backbones, which convert and check their own keys
    (found by class name: this package never imports the model)."""
    return tuple(f'{name}.' for name, m in model.named_modules()
                 if name and type(m).__name__ == 'CASViT')


def shape_mismatches(model: nn.Module, state_dict: dict) -> List[Tuple[str, tuple, tuple]]:
    """``[(key, checkpoint shape, model shape)]`` of tensors present in both."""
    model = _unwrap(model)
    if type(model).__name__ == 'CASViT':  # a backbone loaded on its own checks itself
        return []
    return key_diff(model.state_dict(), state_dict, self_checking_prefixes(model)).mismatched


def _owning_head(model, key):
    """``(path, module)`` of the nearest module above ``key`` with ``num_classes``."""
    parts = key.split('.')[:-1]
    while parts:
        path = '.'.join(parts)
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
        if isinstance(getattr(module, 'num_classes', None), int):
            return path, module
        parts.pop()
    return None, None


def _implied_classes(own, given, num_classes):
    """Classes a tensor of ``given`` rows implies, where ``own`` rows are
    ``num_classes`` (+1 for a background column) times a fixed factor."""
    for extra in (0, 1):
        if own % (num_classes + extra) == 0:
            per_class = own // (num_classes + extra)
            if given % per_class == 0 and given // per_class - extra >= 1:
                return given // per_class - extra
    return None


def describe_mismatch(model: nn.Module,
                      mismatched: List[Tuple[str, tuple, tuple]],
                      source: Optional[str] = None,
                      classes: Optional[Sequence[str]] = None) -> str:
    """The message for tensors of another shape: a class-count mismatch when heads
    explain it, with what to do; otherwise the tensors and their shapes."""
    model = _unwrap(model)
    what = f'Checkpoint {source!r}' if source else 'The state dict being loaded'
    shapes = format_mismatched(mismatched)
    heads, votes = {}, Counter()
    for key, given, own in mismatched:
        path, head = _owning_head(model, key)
        if head is None or len(given) != len(own):
            continue
        heads[path] = head.num_classes
        differing = [i for i, (a, b) in enumerate(zip(given, own)) if a != b]
        if len(differing) == 1:
            implied = _implied_classes(own[differing[0]], given[differing[0]],
                                       head.num_classes)
            if implied is not None:
                votes[implied] += 1
    if not heads:
        return (f'{what} does not fit this {type(model).__name__}: {len(mismatched)} tensors '
                f'have another shape (first: {shapes}). It was trained with another config '
                f'(other widths or layers); mmengine would have left them randomly '
                f'initialised. Use the config the checkpoint was trained with.')
    ours = sorted(set(heads.values()))
    ours_text = ' / '.join(map(str, ours))
    if classes:
        theirs = f'{len(classes)} classes ({", ".join(map(str, classes[:10]))}' \
                 f'{", ..." if len(classes) > 10 else ""})'
    elif votes and (len(votes) == 1 or votes.most_common(2)[0][1] > votes.most_common(2)[1][1]):
        theirs = f'{votes.most_common(1)[0][0]} classes'  # from the shapes alone
    else:
        theirs = 'another number of classes'
    settings = ', '.join(f'model.{p}.num_classes' for p in sorted(heads))
    return (f"{what} does not fit this {type(model).__name__}: the checkpoint's head has "
            f'{theirs}, this config {ours_text} ({settings}). Set num_classes and '
            f'metainfo.classes to the checkpoint\'s to use it as it is, or load the backbone '
            f'only to train new heads: model.backbone.init_cfg=dict(type=\'Pretrained\', '
            f"checkpoint=FILE, prefix='backbone.') instead of load_from "
            f'(docs/own_project.md). Tensors of another shape: {len(mismatched)}, first: '
            f'{shapes}.')


def _check_backbones_first(model, state_dict, source):
    """Let each CAS-ViT backbone raise its own error (a checkpoint of another size:
    "looks like arch 'm'"), which explains a neck of other widths too."""
    from .backbone import fit_backbone_state_dict
    for name, module in model.named_modules():
        if name and type(module).__name__ == 'CASViT' and not module.deploy:
            prefix = name + '.'
            local = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if local:
                fit_backbone_state_dict(module, local, source, prefix)


def check_shapes(model: nn.Module, state_dict: dict) -> None:
    """Raise :class:`CheckpointError` when a tensor of ``state_dict`` has another
    shape than the model's tensor of the same name."""
    mismatched = shape_mismatches(model, state_dict)
    if not mismatched:
        return
    metadata = getattr(state_dict, '_metadata', None)
    _check_backbones_first(_unwrap(model), state_dict, getattr(metadata, 'source', None))
    raise CheckpointError(describe_mismatch(model, mismatched,
                                            getattr(metadata, 'source', None),
                                            getattr(metadata, 'classes', None)))


def checked_load_state_dict(module: nn.Module, state_dict: dict, strict: bool = False,
                            logger: Optional[str] = None) -> None:
    """mmengine's ``load_state_dict``, refusing tensors of another shape first."""
    check_shapes(module, state_dict)
    return _ORIGINAL['load_state_dict'](module, state_dict, strict=strict, logger=logger)


def patch_mmengine_load_state_dict() -> None:
    """Route ``mmengine.runner.checkpoint.load_state_dict`` through :func:`check_shapes`
    (idempotent)."""
    from mmengine.runner import checkpoint
    if checkpoint.load_state_dict is not checked_load_state_dict:
        _ORIGINAL.setdefault('load_state_dict', checkpoint.load_state_dict)
        checkpoint.load_state_dict = checked_load_state_dict
