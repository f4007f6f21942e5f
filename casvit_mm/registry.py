"""Put casvit-mm's modules into the registries of every OpenMMLab codebase present,
and give the scope ``casvit_mm`` registries that build with the right codebase.

One class, several registries (the mmaction2 shared-heads pattern): ``type='CASViT'``
then builds under the default scope of mmpretrain, mmdet and mmseg alike, and
``custom_imports=dict(imports=['casvit_mm'])`` makes it available to any config.
A codebase that is not installed is skipped; the installed ones are listed in
``REGISTERED_SCOPES``. A codebase's registry is filled when its ``registry``
module is first imported, or at once if it already is (:mod:`casvit_mm.import_hooks`):
a registry exists only from then on, and ``import casvit_mm`` does not import
three codebases (mmpretrain's ``__init__`` imports every inferencer) for a
process that uses one.

Why the ``casvit_mm`` scope: mmengine marks every dict a config inherits through
``_base_ = ['casvit_mm::...']`` with ``_scope_='casvit_mm'`` (the text before
``::``), and every builder then looks for a registry of that scope. Without one,
mmengine falls back to the registry it was called on, which works in a Runner
but not in builders that start from mmengine's root registries: mmdeploy's
``create_input`` builds the test pipeline with mmcv's ``Compose`` and stopped
with ``KeyError: 'PackDetInputs is not in the mmengine::transform registry'``.
mmengine imports ``casvit_mm.registry`` (this module) when it meets the scope;
the registries below are then found, and each gets a name from the codebase
that has it; a name two codebases define differently (``LoadAnnotations``,
``Resize``) from the codebase the config runs under: the default scope that was
current before ``casvit_mm`` was switched in (``mmdet`` for a detection config,
set from the config's ``default_scope`` by the Runner, mmdet's and mmseg's
inferencers and mmdeploy).
"""
import importlib
import importlib.util
import sys

from .import_hooks import when_imported

MODEL_SCOPES = ('mmpretrain', 'mmdet', 'mmseg')
SCOPE = 'casvit_mm'
REGISTERED_SCOPES = []


def registry_of(scope, name):
    """The registry ``name`` (e.g. ``'MODELS'``) of codebase ``scope``, or None
    when that codebase is not installed."""
    try:
        return getattr(importlib.import_module(f'{scope}.registry'), name)
    except ImportError:
        return None


def installed(scope: str) -> bool:
    """Whether codebase ``scope`` is installed (found, not imported)."""
    return importlib.util.find_spec(scope) is not None


def register_all(models=()):
    """Register ``models`` (classes) in the MODELS registry of every installed
    codebase: now where ``<codebase>.registry`` is imported, else on its first import."""
    for scope in MODEL_SCOPES:
        if not installed(scope):
            continue
        when_imported(f'{scope}.registry', lambda scope=scope: _register(scope, models))
        if scope not in REGISTERED_SCOPES:
            REGISTERED_SCOPES.append(scope)


def _register(scope, models):
    registry = sys.modules[f'{scope}.registry'].MODELS
    for cls in models:
        registry.register_module(module=cls, force=True)


def outer_scope():
    """The default scope that was current before ``casvit_mm`` was switched in, or None.

    mmengine's ``DefaultScope.overwrite_default_scope`` appends a new instance
    and restores the old ones afterwards, so the instances are ordered from the
    oldest to the current one.
    """
    from mmengine.registry import DefaultScope
    for instance in reversed(list(DefaultScope._instance_dict.values())):
        if instance.scope_name != SCOPE:
            return instance.scope_name
    return None


def _codebase_registries(root):
    """``(scope, registry)`` of each installed codebase under mmengine root ``root``."""
    for scope in MODEL_SCOPES:
        if registry_of(scope, 'MODELS') is None:  # imports the codebase's registries
            continue
        child = root._search_child(scope)
        if child is not None:
            yield scope, child


def _make_scope_registry_class():
    from mmengine.registry import Registry

    class CodebaseRegistry(Registry):
        """The ``casvit_mm`` child of one mmengine root registry: gets every
        name from the registry of the codebase the config runs under."""

        def get(self, key):
            scope, name = self.split_scope_key(key)
            if scope not in (None, SCOPE):  # 'mmdet.PackDetInputs': mmengine's rule
                return super().get(key)
            root = self.parent
            found = {s: r.get(name) for s, r in _codebase_registries(root)}
            found = {s: c for s, c in found.items() if c is not None}
            if len(set(found.values())) == 1:  # one class, wherever it is found
                return next(iter(found.values()))
            outer = outer_scope()
            if outer in found:  # the same name in two codebases: the config's
                return found[outer]
            if found:
                raise KeyError(
                    f'{name!r} (in a dict a config inherited through casvit_mm::, so '
                    f'_scope_={SCOPE!r}) is a different class in {sorted(found)}, and the '
                    f'default scope ({outer!r}) does not say which: call '
                    f'mmengine.registry.init_default_scope(cfg.default_scope) first.')
            return root.get(name)

    return CodebaseRegistry


def register_scope():
    """Create the ``casvit_mm`` child of every mmengine root registry (once)."""
    from mmengine.registry import Registry
    from mmengine.registry import root as roots
    cls = _make_scope_registry_class()
    made = []
    for name in dir(roots):
        root = getattr(roots, name)
        if not isinstance(root, Registry) or root.parent is not None:
            continue
        if SCOPE in root._children:
            continue
        made.append(cls(root.name, parent=root, scope=SCOPE, locations=[__name__]))
    return made


register_scope()
