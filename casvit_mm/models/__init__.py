"""The CAS-ViT backbone (:mod:`.casvit`) and its fusion arithmetic (:mod:`.fusion`).

The whole-model deploy switch lives with the deploy code:
:func:`casvit_mm.deploy.switch.switch_model_to_deploy`.
"""
from .casvit import CASViT

__all__ = ['CASViT']
