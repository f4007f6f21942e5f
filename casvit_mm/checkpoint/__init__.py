"""Safe loading and conversion of CAS-ViT checkpoints.

Official CAS-ViT files (ImageNet classifiers, dense backbones, mmdet 2.x /
mmseg 0.x models) and this plugin's own, in every loader (docs/checkpoints.md):

- :mod:`.layouts`: the one description of those layouts (prefixes, renames,
  classifier keys, arch detection, key diff): pure, idempotent functions;
- :mod:`.safe_load`: read a file with ``weights_only=True`` and an allowlist;
- :mod:`.mmengine_loader`: route mmengine's local loader through it;
- :mod:`.backbone`: the ``CASViT`` load hook and ``init_cfg`` loader that
  convert and check, on every loading path;
- :mod:`.head_check`: refuse tensors of another shape (a head trained for
  other classes) on every mmengine loading path;
- :mod:`.whole_model`: which config of the model index a whole-model file
  belongs to;
- :mod:`.locate`: where a relative checkpoint path is found.

Nothing in this package imports :mod:`casvit_mm.models` (a test walks the
imports): the model calls into :mod:`.backbone`, and what needs the model (the
size table) is passed in. The hooks that use these checks live in
:mod:`casvit_mm.engine`.
"""
from .backbone import load_backbone_checkpoint
from .head_check import patch_mmengine_load_state_dict
from .layouts import (convert_official, extract_state_dict, is_whole_model, to_backbone,
                      to_mm_model, to_mmpretrain)
from .mmengine_loader import check_resumable, register_safe_loader, safe_loader_is_registered
from .safe_load import (TRUSTED_ENV, CheckpointError, MissingCheckpointError,
                        UnsafeCheckpointError, safe_load)

__all__ = [
    'TRUSTED_ENV', 'CheckpointError', 'MissingCheckpointError', 'UnsafeCheckpointError',
    'check_resumable', 'convert_official', 'extract_state_dict', 'is_whole_model',
    'load_backbone_checkpoint', 'patch_mmengine_load_state_dict', 'register_safe_loader',
    'safe_load', 'safe_loader_is_registered', 'to_backbone', 'to_mm_model', 'to_mmpretrain'
]
