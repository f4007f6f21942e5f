from .casvit import CASViT
from .fusion import switch_model_to_deploy

__all__ = ['CASViT', 'switch_model_to_deploy']
