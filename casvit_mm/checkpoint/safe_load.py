"""Read checkpoint files without ever running code hidden in them.

Why: a ``.pth`` file is a pickle, and ``torch.load(..., weights_only=False)``
(what mmengine 0.11 does for local files) imports and calls whatever the file
names. Users pass downloaded files to ``tools/test.py``, ``load_from`` and the
inferencers, so every read goes through :func:`safe_load`: ``weights_only=True``
plus an allowlist of exactly the few non-container types real checkpoints hold
(an argparse ``Namespace`` in the official ImageNet files, numpy scalars and
dtypes, mmengine's ``HistoryBuffer`` in the message hub of our own runs).

A file the user trusts but that needs more (an old pickle of some custom
object) can be let through by listing its path in the environment variable
``CASVIT_MM_TRUSTED_CHECKPOINTS`` (``os.pathsep``-separated); nothing else is.
"""
import argparse
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Any, Optional, Union

import numpy as np
import torch
from mmengine.logging import print_log

TRUSTED_ENV = 'CASVIT_MM_TRUSTED_CHECKPOINTS'
SOURCE_KEY = 'casvit_mm_source'  # in state_dict._metadata entries: the file they came from
# ... the file a part of it (the keys under a prefix) was read from, by mmengine's
# PretrainedInit with a prefix (mmengine_loader.load_checkpoint_with_prefix)
READ_FROM_KEY = 'casvit_mm_read_from'
# ... and that this part is the backbone of a classifier, whose ``norm3`` is the
# classifier's BN rather than an output norm (the prefix dropped the heads that said so)
FROM_CLASSIFIER_KEY = 'casvit_mm_from_classifier'


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt or of another model."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``, as mmengine raises)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose unpickling would run code outside the allowed types."""


def _history_buffer_getattr(obj, name):
    """The one ``getattr`` mmengine checkpoints need: ``HistoryBuffer.min`` and the like
    (its statistics methods are pickled by reference). Anything else is refused."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in ('min', 'max', 'current', 'mean'):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'Unsupported global: getattr({obj!r}, {name!r}) refused')


NUMPY_DTYPES = ('float16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64',
                'uint8', 'uint16', 'uint32', 'uint64', 'bool')


def safe_globals() -> list:
    """What official and mmengine checkpoints hold besides tensors and containers."""
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = [argparse.Namespace, np.dtype, np.ndarray, HistoryBuffer,
               (_history_buffer_getattr, '__builtin__.getattr'),
               (_history_buffer_getattr, 'builtins.getattr')]
    allowed += [type(np.dtype(t)) for t in NUMPY_DTYPES]
    for mod in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            module = __import__(mod, fromlist=['scalar', '_reconstruct'])
            allowed += [module.scalar, module._reconstruct]
            break
        except (ImportError, AttributeError):
            continue
    return allowed


def _trusted(path):
    listed = [p for p in os.environ.get(TRUSTED_ENV, '').split(os.pathsep) if p]
    return osp.realpath(path) in {osp.realpath(osp.expanduser(p)) for p in listed}


def _offending_global(text):
    """The global named in torch's weights-only error, e.g. ``posix.system``."""
    for pattern in (r'Unsupported global: GLOBAL ([\w.]+)', r'Unsupported global: ([^\n]+)',
                    r'GLOBAL ([\w.]+)', r'Unsupported operand[^\n]*'):
        found = re.search(pattern, text)
        if found:
            return found.group(1) if found.groups() else found.group(0)
    return 'code outside the allowed types'


GENERIC_ADVICE = ('Give the path of a downloaded official CAS-ViT .pth or of a checkpoint '
                  'written by tools/train.py (see docs/checkpoints.md). For a backbone\'s '
                  'ImageNet weights: convert the official file there (docs/checkpoints.md), or '
                  'point the backbone at your copy: model.backbone.init_cfg.checkpoint=PATH '
                  '(in the config or --cfg-options; an absolute path works from anywhere), or '
                  'set model.backbone.init_cfg=None to train from scratch.')


def safe_load(path: Union[str, os.PathLike],
              map_location: Union[str, torch.device, None] = 'cpu',
              advice: str = GENERIC_ADVICE) -> Any:
    """Load a checkpoint file with ``weights_only=True``; explain every failure.

    A relative ``path`` is looked for where you run, then in the casvit-mm
    checkout (:func:`~.locate.resolve_checkpoint`); ``advice`` ends the message
    of a missing file, in the caller's terms (``init_cfg``, ``pretrained=``).

    Raises:
        MissingCheckpointError: no such file.
        UnsafeCheckpointError: unpickling would import or call something not
            on the allowlist; nothing was executed.
        CheckpointError: the file is empty, truncated or not a checkpoint.
    """
    from .locate import resolve_checkpoint, where_looked
    path = resolve_checkpoint(os.fspath(path))
    if not osp.isfile(path):
        raise MissingCheckpointError(
            f'Checkpoint {path!r} does not exist (looked for: {where_looked(path)}). {advice}')
    if osp.getsize(path) == 0:
        raise CheckpointError(f'Checkpoint {path!r} is empty (0 bytes): download it again.')
    if _trusted(path):
        print_log(f'Loading {path} with weights_only=False: it is listed in {TRUSTED_ENV}, '
                  f'so any code it holds runs.', logger='current')
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if 'weights_only' in text or 'Unsupported' in text:
            raise UnsafeCheckpointError(
                f'Refused to load {path!r}: unpickling it would have to import and call '
                f'{_offending_global(text)}, and a checkpoint may hide arbitrary code '
                f'there. Nothing was executed. If you trust the file, add its path to the '
                f'environment variable {TRUSTED_ENV}, or re-save only its tensors '
                f'(torch.save(state_dict)) and load that.') from None
        raise CheckpointError(f'{path!r} is not a readable PyTorch checkpoint ({text[:200]}); '
                              f'it may be truncated: download it again.') from None
    except Exception as e:  # noqa: BLE001 - any parse failure means a damaged file
        raise CheckpointError(
            f'{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: '
            f'{str(e)[:200]}); it may be truncated or not a .pth at all: download it '
            f'again.') from None


class SourceMetadata(OrderedDict):
    """A state dict's ``_metadata`` that also tells every module the file it came from.

    ``load_state_dict`` hands each module ``metadata.get(prefix)``; adding the
    source there (under ``key``: :data:`SOURCE_KEY`, or :data:`READ_FROM_KEY`
    for a part of a file) lets the CAS-ViT load hook name the file in its errors.
    It also keeps the class names the checkpoint was trained with
    (``meta.dataset_meta``), which the head check (:mod:`.head_check`) reports
    when a head does not fit. Pickles as a plain ``OrderedDict`` so re-saved
    state dicts stay loadable.
    """

    def __init__(self, entries, source, classes=None, key=SOURCE_KEY, from_classifier=False):
        super().__init__(entries)
        self.source = source
        self.classes = classes
        self.key = key
        self.from_classifier = from_classifier

    def get(self, key: str, default: Optional[dict] = None) -> dict:
        entry = {**(super().get(key, default) or {}), self.key: self.source}
        if self.from_classifier:
            entry[FROM_CLASSIFIER_KEY] = True
        return entry

    def __reduce__(self):
        return OrderedDict, (list(self.items()), )


def _tag(state_dict, path, classes=None, key=SOURCE_KEY, from_classifier=False):
    if not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        return state_dict
    if type(state_dict) is dict:  # a plain dict takes no attributes
        state_dict = OrderedDict(state_dict)
    state_dict._metadata = SourceMetadata(getattr(state_dict, '_metadata', None) or {}, path,
                                          classes, key, from_classifier)
    return state_dict


def trained_classes(checkpoint: Any) -> Optional[tuple]:
    """The class names a checkpoint was trained with, or None (mmengine runs save
    ``meta.dataset_meta.classes``; mmdet 2 / mmseg 0 files ``meta.CLASSES``)."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict):
        return None
    classes = (meta.get('dataset_meta') or {}).get('classes') or meta.get('CLASSES')
    return tuple(classes) if isinstance(classes, (list, tuple)) and classes else None


def tag_source(checkpoint: Any, path: str) -> Any:
    """Record ``path`` (and the trained classes) in the ``_metadata`` of the
    checkpoint's state dict(s)."""
    if not isinstance(checkpoint, dict):
        return checkpoint
    classes = trained_classes(checkpoint)
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint[key] = _tag(checkpoint[key], path, classes)
    return _tag(checkpoint, path, classes)


def tag_part(state_dict: dict, path: str, from_classifier: bool = False) -> dict:
    """Record that ``state_dict`` is a part of the file ``path`` (see :data:`READ_FROM_KEY`),
    of a classifier's file when ``from_classifier`` (:data:`FROM_CLASSIFIER_KEY`)."""
    return _tag(state_dict, path, key=READ_FROM_KEY, from_classifier=from_classifier)
