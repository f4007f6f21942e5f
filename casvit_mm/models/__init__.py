from .casvit import CASViT

__all__ = ['CASViT']
