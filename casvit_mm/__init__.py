"""casvit-mm: the CAS-ViT backbone (Zhang et al., 2024) for OpenMMLab.

Importing the package registers ``CASViT`` in the MODELS registries of
mmpretrain, mmdet and mmsegmentation (whichever are installed), and the
training-engine helpers of :mod:`casvit_mm.engine` in mmengine's registries.
"""
from . import engine  # noqa: F401  (registers the atomic-checkpoint hook, CPU amp, ...)
from .models import CASViT
from .registry import REGISTERED_SCOPES, register_all
from .version import __version__

register_all(models=[CASViT])

__all__ = ['CASViT', 'REGISTERED_SCOPES', '__version__']
