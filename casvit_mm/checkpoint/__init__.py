"""Safe loading and conversion of CAS-ViT checkpoints.

Users bring four layouts (see docs/checkpoints.md):

1. official ImageNet classifiers: ``model`` (or a bare dict) with ``patch_embed``,
   a flat ``network`` list, ``norm``, ``head``, ``dist_head``;
2. official dense backbones: the same plus ``norm0/2/4/6``, no classifier;
3. official mmdet 2.x / mmseg 0.x models: ``state_dict`` with ``backbone.`` + 2,
   the neck's and heads' keys, and ``meta``;
4. this plugin's own checkpoints (mmengine ``state_dict`` with ``stages``).

- :mod:`.safe_load`: read a file with ``weights_only=True`` and an allowlist;
- :mod:`.mmengine_loader`: route mmengine's local loader through it;
- :mod:`.layouts`: pure, idempotent renaming of official keys;
- :mod:`.backbone`: the ``CASViT`` load hook and ``init_cfg`` loader that
  convert and check, on every loading path;
- :mod:`.head_check`: refuse tensors of another shape (a head trained for
  other classes) on every mmengine loading path;
- :mod:`.whole_model`: which config a whole-model file belongs to, and the
  ``StrictCheckpointHook`` of ``tools/test.py``.

The model imports :mod:`.backbone`, so none of the modules this ``__init__``
imports may import the model; :mod:`.whole_model` builds models and is
imported on its own (``casvit_mm/__init__.py``, the converter).
"""
from .backbone import convert_on_load, fit_backbone_state_dict, load_backbone_checkpoint
from .layouts import (CLASSIFIER_KEYS, convert_official, extract_state_dict, infer_arch,
                      is_official_layout, is_whole_model, to_backbone, to_mm_model,
                      to_mmpretrain)
from .head_check import check_shapes, patch_mmengine_load_state_dict
from .mmengine_loader import (check_resumable, load_from_local_weights_only,
                              register_safe_loader, safe_loader_is_registered)
from .safe_load import (TRUSTED_ENV, CheckpointError, MissingCheckpointError,
                        UnsafeCheckpointError, safe_globals, safe_load, tag_source)

__all__ = [
    'CLASSIFIER_KEYS', 'TRUSTED_ENV', 'CheckpointError', 'MissingCheckpointError',
    'UnsafeCheckpointError', 'check_resumable', 'check_shapes', 'convert_official', 'convert_on_load',
    'extract_state_dict', 'fit_backbone_state_dict', 'infer_arch', 'is_official_layout',
    'is_whole_model', 'load_backbone_checkpoint', 'load_from_local_weights_only',
    'patch_mmengine_load_state_dict',
    'register_safe_loader', 'safe_globals', 'safe_load', 'safe_loader_is_registered',
    'tag_source', 'to_backbone', 'to_mm_model', 'to_mmpretrain'
]
