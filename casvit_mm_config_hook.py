"""Let mmengine read ``casvit_mm::`` config paths in every process, at no start-up cost.

Why: mmengine resolves ``_base_ = ['pkg::path']`` only for the packages listed in
``mmengine.config.utils.MODULE2PACKAGE`` (a dict in its source; no entry point),
and it resolves ``_base_`` before a config's ``custom_imports`` run. A process that
had not imported casvit_mm -- mmdet's, mmseg's or mmpretrain's own
``tools/train.py``, ``DetInferencer(model=CONFIG)`` -- stopped on
``_base_ = ['casvit_mm::detection/...']`` with
``AssertionError: mmengine does not support to load casvit_mm config.``

How: installing casvit-mm puts ``casvit_mm_config_hook.pth`` into site-packages;
Python's ``site`` runs its one ``import`` line at start-up. This module imports
nothing and only puts a finder at the front of ``sys.meta_path``; the finder
answers no import but ``mmengine.config.utils``, lets that module load as usual,
then adds ``casvit_mm`` to its ``MODULE2PACKAGE`` (what ``import casvit_mm``
does too) and removes itself. Processes that never import mmengine pay the
import of this file only (measured in docs/own_project.md). Nothing of
casvit_mm, mmengine or torch is imported here: mmengine imports
``casvit_mm.registry`` by itself when a config of ours is built.
"""
import sys

TARGET = 'mmengine.config.utils'


class MMEngineConfigFinder:
    """A ``sys.meta_path`` finder that registers ``casvit_mm`` in mmengine's
    ``MODULE2PACKAGE`` right after ``mmengine.config.utils`` is executed."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != TARGET:
            return None
        uninstall()
        for finder in sys.meta_path:
            find = getattr(finder, 'find_spec', None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        loader = getattr(spec, 'loader', None)
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        exec_module = loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            module.MODULE2PACKAGE.setdefault('casvit_mm', 'casvit_mm')

        loader.exec_module = exec_and_register
        return spec


def install():
    """Put the finder first in ``sys.meta_path`` unless mmengine's config is loaded."""
    if TARGET in sys.modules:
        sys.modules[TARGET].MODULE2PACKAGE.setdefault('casvit_mm', 'casvit_mm')
    elif MMEngineConfigFinder not in sys.meta_path:
        sys.meta_path.insert(0, MMEngineConfigFinder)


def uninstall():
    while MMEngineConfigFinder in sys.meta_path:
        sys.meta_path.remove(MMEngineConfigFinder)


install()
