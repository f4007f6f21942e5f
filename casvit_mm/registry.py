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


def _registry(scope, name):
    try:
        return getattr(importlib.import_module(f'{scope}.registry'), name)
    except ImportError:
        return None


def register_all(models=(), transforms=None):
    """Register ``models`` in every MODELS registry, ``transforms`` as given.

    Args:
        models (Iterable[type]): classes for the MODELS registries.
        transforms (dict[str, Iterable[type]]): scope -> classes for that
            scope's TRANSFORMS registry.
    """
    for scope in MODEL_SCOPES:
        registry = _registry(scope, 'MODELS')
        if registry is None:
            continue
        for cls in models:
            registry.register_module(module=cls, force=True)
        if scope not in REGISTERED_SCOPES:
            REGISTERED_SCOPES.append(scope)
    for scope, classes in (transforms or {}).items():
        registry = _registry(scope, 'TRANSFORMS')
        if registry is not None:
            for cls in classes:
                registry.register_module(module=cls, force=True)
