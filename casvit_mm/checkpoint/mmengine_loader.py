"""Make mmengine read local checkpoint files through :func:`safe_load`.

Why: mmengine 0.11's loader for local paths (``CheckpointLoader`` scheme ``''``)
calls ``torch.load(..., weights_only=False)``, and every OpenMMLab entry point
goes through it: ``Runner.load_from`` and ``--resume``, ``load_checkpoint``,
``init_cfg=dict(type='Pretrained')``, mmdet's / mmseg's / mmpretrain's own
``tools/test.py`` and their inferencers. ``CheckpointLoader.register_scheme``
is mmengine's documented extension point; replacing the ``''`` scheme when
``casvit_mm`` is imported (by our tools, or by ``custom_imports`` in a config)
puts all of them behind the allowlist. The loaded state dict is tagged with
its file so that the backbone's load hook can name it in errors.

An official ImageNet file (``model`` / ``model_ema`` / ``args``, backbone and
classifier keys at the top level) is handed on as an mmpretrain classifier
checkpoint (``state_dict`` with ``backbone.*`` and ``head.head`` /
``head.dist_head``), so that ``get_model(name, pretrained=cas-vit-m.pth)`` and
``tools/test.py`` work with the file as downloaded; a backbone loaded from it
drops the classifier in its load hook.

``http://`` / ``https://`` (an mmpretrain model's ``pretrained=True``, a URL in
``load_from`` or ``init_cfg``): mmengine downloads into torch's hub cache and then
unpickles with ``weights_only=False`` too, so the downloaded file is read through
:func:`safe_load` instead (:func:`load_from_url_weights_only`). Other remote
schemes (``s3://``, ``pavi://``) are left to mmengine.

``init_cfg=dict(type='Pretrained', prefix=...)`` reads the file through
mmengine's ``_load_checkpoint_with_prefix``, which returns a new plain dict of the
keys under the prefix: the file's name is lost (a backbone that does not fit
could only say "the state dict being loaded"), and so is whether the file was a
classifier; a wrong prefix is a bare ``AssertionError``.
:func:`load_checkpoint_with_prefix` is that function, reading through
``CheckpointLoader`` as it does, with the new dict tagged with its file and a
wrong prefix a :class:`CheckpointError` that lists the file's keys.
"""
import os
import os.path as osp
from typing import Any, Callable, Union
from urllib.parse import urlparse

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from .layouts import (extract_state_dict, is_classifier, is_official_layout, part_under_prefix,
                      to_mmpretrain)
from .locate import SCHEME, model_file, resolve_checkpoint
from .safe_load import CheckpointError, safe_load, tag_part, tag_source

# what mmengine's loaders take: a device, its name, a function or None
MapLocation = Union[str, torch.device, Callable, None]

def as_mmpretrain_if_official_classifier(checkpoint: Any, filename: str) -> Any:
    """An official ImageNet checkpoint -> ``dict(state_dict=<mmpretrain layout>)``."""
    if not isinstance(checkpoint, dict) or 'state_dict' in checkpoint:
        return checkpoint
    weights = checkpoint.get('model') if isinstance(checkpoint.get('model'), dict) \
        else checkpoint
    if not (is_official_layout(weights) and is_classifier(weights)):
        return checkpoint
    print_log(f'{filename}: an official CAS-ViT ImageNet checkpoint, read as an mmpretrain '
              f'classifier (backbone.*, head.head, head.dist_head)', logger='current')
    return dict(state_dict=to_mmpretrain(weights), meta=dict(converted_from=filename))


def load_from_local_weights_only(filename: str, map_location: MapLocation = None) -> dict:
    """mmengine's local loader, with ``weights_only=True`` and an allowlist.

    (mmengine logs ``Loads checkpoint by local_weights_only backend``: the name
    after ``load_from_`` is what it prints.)
    """
    filename = osp.expanduser(filename)
    checkpoint = safe_load(filename, map_location=map_location)
    return tag_source(as_mmpretrain_if_official_classifier(checkpoint, filename), filename)


def load_from_model_index(filename: str, map_location: MapLocation = None) -> dict:
    """``casvit_mm://NAME``: the weights of model NAME (``get_model(NAME, pretrained=True)``),
    ``checkpoints/NAME.pth`` where you run or in the casvit-mm checkout. No download.

    (mmengine logs ``Loads checkpoint by model_index backend``.)
    """
    name = filename[len(SCHEME):]
    path = model_file(name)
    advice = (f'get_model({name!r}, pretrained=True) reads that file: convert the official '
              f'file there (python tools/model_converters/casvit_to_mm.py OFFICIAL.pth {path}; '
              f'docs/checkpoints.md), or pass pretrained=PATH (any CAS-ViT checkpoint, the '
              f'official one as downloaded), or pretrained=False for random weights.')
    checkpoint = safe_load(path, map_location=map_location, advice=advice)
    path = resolve_checkpoint(path)
    return tag_source(as_mmpretrain_if_official_classifier(checkpoint, path), path)


def _download(url: str, path: str) -> None:
    if not osp.isfile(path):
        os.makedirs(osp.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(url, path, progress=os.isatty(0))


def load_from_url_weights_only(filename: str, map_location: MapLocation = None,
                               model_dir: Union[str, None] = None) -> dict:
    """mmengine's ``load_from_http``: the file downloaded once into torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``; rank 0 first), then read by :func:`safe_load`.

    (mmengine logs ``Loads checkpoint by url_weights_only backend``.)
    """
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    path = osp.join(model_dir, osp.basename(urlparse(filename).path))
    rank, world_size = get_dist_info()
    if rank == 0:
        _download(filename, path)
    if world_size > 1:
        barrier()  # the others wait for the whole file (or download it on their node)
        _download(filename, path)
    checkpoint = safe_load(path, map_location=map_location)
    return tag_source(as_mmpretrain_if_official_classifier(checkpoint, path), path)


def load_checkpoint_with_prefix(prefix: str, filename: str,
                               map_location: MapLocation = None) -> dict:
    """mmengine's ``_load_checkpoint_with_prefix``: the keys under ``prefix`` of the
    file, without it, tagged with ``filename`` (and whether it is a classifier)."""
    checkpoint = CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    path = osp.expanduser(filename) if '://' not in filename else filename
    state_dict = extract_state_dict(checkpoint, repr(path))
    return tag_part(part_under_prefix(state_dict, prefix, path), path,
                    from_classifier=is_classifier(state_dict))


def register_safe_loader() -> None:
    """Replace mmengine's loaders for local paths and URLs, add ``casvit_mm://`` and
    name the file of a prefixed ``Pretrained`` read (idempotent)."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_weights_only,
                                     force=True)
    CheckpointLoader.register_scheme(prefixes=SCHEME, loader=load_from_model_index, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                     loader=load_from_url_weights_only, force=True)
    if mmengine_checkpoint._load_checkpoint_with_prefix is not load_checkpoint_with_prefix:
        mmengine_checkpoint._load_checkpoint_with_prefix = load_checkpoint_with_prefix


def safe_loader_is_registered() -> bool:
    return CheckpointLoader._get_checkpoint_loader('any/local/file.pth') is \
        load_from_local_weights_only


def check_resumable(path: str) -> None:
    """Raise ``CheckpointError`` when ``path`` cannot be resumed by mmengine's Runner.

    Why: an official file (mmcv 1.x, mmdet 2.24 / mmseg 0.24) has the weights
    but not the training state mmengine resumes (``message_hub``, the
    schedulers); ``Runner.resume`` then stops with ``KeyError: 'message_hub'``
    after loading the weights. Its weights are meant for ``load_from`` (fine-tune)
    or ``tools/test.py``.
    """
    checkpoint = safe_load(path)
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if isinstance(meta, dict) and 'message_hub' in checkpoint:
        return
    made_by = ', '.join(f'{k} {meta[k]}' for k in ('mmdet_version', 'mmseg_version',
                                                   'mmcv_version')
                        if isinstance(meta, dict) and k in meta) or 'not mmengine'
    raise CheckpointError(
        f'{path!r} cannot be resumed: it holds no mmengine training state (message_hub, '
        f'schedulers; it was written by {made_by}). To start training from its weights '
        f'use --cfg-options load_from={path}; to evaluate it, tools/test.py CONFIG {path}.')
