"""casvit-mm: the CAS-ViT backbone (Zhang et al., 2024) for OpenMMLab.

Importing the package registers ``CASViT`` in the MODELS registries of
mmpretrain, mmdet and mmsegmentation (whichever are installed), and the
training-engine helpers of :mod:`casvit_mm.engine` in mmengine's registries,
routes mmengine's loading of local checkpoint files through the
``weights_only`` allowlist of :mod:`casvit_mm.checkpoint` (so ``load_from``,
``--resume``, MM's own ``tools/test.py`` and the inferencers never run code
from a file), makes every mmengine loader refuse a tensor of another shape (a
head trained for other classes) instead of warning, and adds this package's
models to mmpretrain's model index (``get_model('casvit-m_3rdparty_in1k',
pretrained=PATH)``).

A codebase's registry and mmpretrain's model index are filled when that codebase
is first imported (at once if it already is): importing mmpretrain, mmdet and
mmseg here would cost every process all three (mmpretrain's ``__init__`` imports
every inferencer). What remains of the import time is torch and ``mmengine.model``
(``CASViT`` is a ``BaseModule``; the hooks are mmengine hooks).
"""
from mmengine.config.utils import MODULE2PACKAGE

from . import engine  # noqa: F401  (registers every hook, CPU amp, ...)
from .checkpoint import patch_mmengine_load_state_dict, register_safe_loader
from .deploy import mmdeploy_compat
from .deploy.switch import switch_model_to_deploy
from .import_hooks import when_imported
from .model_index import register_model_index
from .models import CASViT
from .registry import REGISTERED_SCOPES, installed, register_all
from .utils import sample_errors  # noqa: F401  (registers the NameBadSample transform)
from .version import __version__

register_all(models=[CASViT])  # each codebase's MODELS, now or on its first import
register_safe_loader()
patch_mmengine_load_state_dict()  # a head of another shape stops every loader
if installed('mmpretrain'):
    when_imported('mmpretrain.apis', register_model_index)
mmdeploy_compat.install()  # patches mmdeploy for torch 2.13 when (and if) it is imported

# Let configs inherit ours as `casvit_mm::detection/...`, the way `mmdet::` works
# (mmengine resolves such paths only for packages listed here; the configs ship
# in casvit_mm/.mim/configs). An installed casvit-mm does this in every process
# before mmengine reads a config (casvit_mm_config_hook.py, docs/own_project.md);
# this line covers a checkout used through PYTHONPATH.
MODULE2PACKAGE.setdefault('casvit_mm', 'casvit_mm')

__all__ = ['CASViT', 'REGISTERED_SCOPES', 'switch_model_to_deploy', '__version__']
