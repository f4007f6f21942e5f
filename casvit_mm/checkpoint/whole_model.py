"""Which model of this repository a whole-model checkpoint belongs to.

Shared by ``tools/model_converters/casvit_to_mm.py`` and
:class:`casvit_mm.engine.StrictCheckpointHook`: the official downstream files are
whole mmdet 2.24 / mmseg 0.24 models, and the question a user has is "which
config do I use this with?". The answer is read from the keys (the heads name
the task, the backbone's shapes name the size, :mod:`.layouts`) and looked up in
the model index (``configs/*/metafile.yml``: every model's name and config).
The converter then proves it by loading the converted state dict into that
config's model with ``strict=True``. Nothing here imports the model: the size
table (``CASViT.arch_settings``) is passed in.
"""
import os.path as osp
import re
from typing import Dict, Mapping, Optional, Tuple

from .layouts import arch_name, has_prefix, infer_arch, unwrap

CONFIG_ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim', 'configs')

# A key only that kind of model has -> (what to call it, how its model names start in
# the metafiles: retinanet_casvit-xs_fpn_1x_coco, casvit-xs_3rdparty_in1k, ...).
KINDS = (
    ('bbox_head.retina_cls.', 'RetinaNet', 'retinanet_'),
    ('roi_head.mask_head.', 'Mask R-CNN', 'mask-rcnn_'),
    ('decode_head.', 'Semantic FPN', 'fpn_'),
    ('head.head.', 'classifier', 'casvit-'),
)
MODEL_ARCH = re.compile(r'casvit-([a-z]+)_')  # the size in a model name


def _model_of(kind_prefix: str, arch: str) -> Optional[str]:
    from ..model_index import model_names
    for name in model_names():
        found = MODEL_ARCH.search(name)
        if name.startswith(kind_prefix) and found and found.group(1) == arch:
            return name
    return None


def matching_config(state_dict: Mapping,
                    arch_settings: Mapping[str, Dict]) -> Tuple[Optional[str], str]:
    """``(config path relative to configs/, model name)`` for a converted state dict.

    Returns ``(None, reason)`` when no config of this repository fits.
    """
    state_dict = unwrap(state_dict)
    arch = arch_name(state_dict, arch_settings)
    if arch is None:
        depths, widths = infer_arch(state_dict)
        return None, (f'its backbone (depths {depths}, widths {widths}) is none of the '
                      f'sizes {sorted(arch_settings)}')
    for key, kind, name_prefix in KINDS:
        if has_prefix(state_dict, key):
            name = _model_of(name_prefix, arch)
            if name is None:
                return None, (f'the model index has no {kind} with CAS-ViT-{arch.upper()}')
            from ..model_index import config_of
            return osp.relpath(config_of(name), CONFIG_ROOT), name
    return None, 'its heads are none of RetinaNet, Mask R-CNN, Semantic FPN or a classifier'
