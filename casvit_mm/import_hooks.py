"""Run a function once a module is imported: now if it already is, else right after
its first import.

Why: ``import casvit_mm`` puts ``CASViT`` into the MODELS registries of mmpretrain,
mmdet and mmseg and its model names into mmpretrain's model index. Importing those
codebases only to register costs time every user pays, and more than the registering
itself: any ``import mmpretrain...`` runs mmpretrain's ``__init__``, which imports
``mmpretrain.apis`` (every inferencer), also in a detection or segmentation process.
A registry can be used only after its module is imported, so filling it when that
module is first imported gives every user the same registries, and a process that
never imports mmpretrain never pays for it.

How: a finder first on ``sys.meta_path`` that finds nothing itself; for a watched
module it takes the spec the other finders return and wraps its loader, so the
callbacks run right after the module's own code. The module keeps its own loader
(``__loader__``, ``__spec__.loader``) afterwards.
"""
import importlib.abc
import sys
from typing import Callable, Dict, List

__all__ = ['when_imported']

_waiting: Dict[str, List[Callable[[], None]]] = {}


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` now if module ``name`` is imported, else just after its
    first import (an exception from ``callback`` then fails that import)."""
    if name in sys.modules:
        callback()
        return
    _waiting.setdefault(name, []).append(callback)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


class _LoaderThenCall(importlib.abc.Loader):
    """The module's own loader, then the callbacks waiting for the module."""

    def __init__(self, loader, name):
        self.loader = loader
        self.name = name

    def __getattr__(self, attr):  # get_source, is_package, ...: the real loader's
        return getattr(self.loader, attr)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        for callback in _waiting.pop(self.name, []):
            callback()


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the modules waited for."""

    def find_spec(self, name, path=None, target=None):
        if name not in _waiting:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, 'find_spec', None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and not isinstance(spec.loader, _LoaderThenCall):
            spec.loader = _LoaderThenCall(spec.loader, name)
        return spec
