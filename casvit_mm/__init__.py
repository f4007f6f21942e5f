"""casvit-mm: the CAS-ViT backbone (Zhang et al., 2024) for OpenMMLab.

Importing the package registers ``CASViT`` in the MODELS registries of
mmpretrain, mmdet and mmsegmentation (whichever are installed).
"""
from .models import CASViT
from .registry import REGISTERED_SCOPES, register_all
from .version import __version__

register_all(models=[CASViT])

__all__ = ['CASViT', 'REGISTERED_SCOPES', '__version__']
