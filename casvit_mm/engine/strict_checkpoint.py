"""Stop ``tools/test.py`` when the checkpoint does not fit the whole model.

Why: mmengine loads ``load_from`` with ``strict=False`` and only warns, so a
RetinaNet file given to a Mask R-CNN config is evaluated with random heads.
Testing a checkpoint needs every tensor.
"""
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS

from ..checkpoint.head_check import describe_mismatch, self_checking_prefixes
from ..checkpoint.layouts import KeyDiff, format_mismatched, key_diff, unwrap
from ..checkpoint.safe_load import CheckpointError
from ..checkpoint.whole_model import matching_config
from ..models import CASViT


def misfit(model: nn.Module, state_dict: dict) -> KeyDiff:
    """Keys of ``state_dict`` that do not fit ``model``, outside its CAS-ViT backbones.

    The backbones check themselves (their load hook, with the allowed gaps of
    an ImageNet file); everything else must match exactly.
    """
    return key_diff(model.state_dict(), unwrap(state_dict), self_checking_prefixes(model))


@HOOKS.register_module()
class StrictCheckpointHook(Hook):
    """Refuse a checkpoint that does not fit the whole model, naming the config that fits.

    Runs in ``after_load_checkpoint``, before mmengine copies the weights.
    Tensors of another shape (a head trained for other classes) are refused on
    every path by :mod:`casvit_mm.checkpoint.head_check`; this hook reports them
    the same way and adds missing and left-over keys, which training with
    ``load_from`` keeps as mmengine's warning. ``tools/test.py`` registers it;
    with MM's own ``test.py``: ``custom_hooks = [dict(type='StrictCheckpointHook')]``.
    """
    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
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
            raise CheckpointError(describe_mismatch(model, mismatched, source,
                                                    getattr(metadata, 'classes', None)))
        match, why = matching_config({k: v for k, v in state_dict.items()
                                      if hasattr(v, 'shape')}, CASViT.arch_settings)
        hint = (f'Its keys are those of configs/{match} (model {why}).' if match else
                f'No config of this repository fits it: {why}.')
        shapes = [format_mismatched([m], 1) for m in mismatched[:2]]
        raise CheckpointError(
            f'Checkpoint {source!r} does not fit the {type(model).__name__} of this config: '
            f'{len(missing)} tensors missing (first: {missing[:3]}), {len(unexpected)} left '
            f'over (first: {unexpected[:3]}), {len(mismatched)} of another shape (first: '
            f'{shapes}). {hint}')
