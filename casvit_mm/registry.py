"""Put casvit-mm's modules into the registries of every OpenMMLab codebase present.

One class, several registries (the mmaction2 shared-heads pattern): ``type='CASViT'``
then builds under the default scope of mmpretrain, mmdet and mmseg alike, and
``custom_imports=dict(imports=['casvit_mm'])`` makes it available to any config.
A codebase that is not installed is skipped; the registries that were filled are
listed in ``REGISTERED_SCOPES``.
"""
import importlib

MODEL_SCOPES = ('mmpretrain', 'mmdet', 'mmseg')
REGISTERED_SCOPES = []


def registry_of(scope, name):
    """The registry ``name`` (e.g. ``'MODELS'``) of codebase ``scope``, or None
    when that codebase is not installed."""
    try:
        return getattr(importlib.import_module(f'{scope}.registry'), name)
    except ImportError:
        return None


def register_all(models=()):
    """Register ``models`` (classes) in the MODELS registry of every codebase."""
    for scope in MODEL_SCOPES:
        registry = registry_of(scope, 'MODELS')
        if registry is None:
            continue
        for cls in models:
            registry.register_module(module=cls, force=True)
        if scope not in REGISTERED_SCOPES:
            REGISTERED_SCOPES.append(scope)
