"""The one export dispatch: any OpenMMLab model with a CAS-ViT backbone -> a backend file,
through mmdeploy.

mmdeploy's division of labour: the model code stays plain PyTorch; every head's
export-time behaviour lives in mmdeploy's rewriters, selected by a deploy config.
This module only picks the deploy config (``configs/mmdeploy/<task>/``) for a model
config, backend and shape mode, and calls mmdeploy's own API:

    from casvit_mm.deploy.dispatch import export, backend_model
    exported = export('configs/detection/retinanet_casvit_m.py', 'model.pth',
                      backend='onnxruntime', shape='dynamic', work_dir='work_dirs/onnx')
    model = backend_model(exported)         # mmdeploy's End2EndModel: test_step(data)

``export`` is ``mmdeploy.apis.torch2onnx`` (plus ``mmdeploy.apis.utils.to_backend``
for OpenVINO's IR); ``casvit_mm`` patches mmdeploy for torch >= 2.9 and turns the
CAS-ViT into its deploy form for exporters at export
(``switch_model_to_deploy(form='export')``, :mod:`casvit_mm.deploy.mmdeploy_compat`).
Every file written here holds that form: the fused weights as plain 4-D ops.

The table ``TASKS`` (codebase -> deploy-config folder) and :func:`task_of` are the
whole dispatch; other exporters (mobile runtimes, other quantizers) call
:func:`task_of` / :func:`deploy_config` to agree on what a model is. Every file
written here records its kind (the task, or ``'backbone'`` for
:func:`export_backbone`) in its metadata (``KIND_KEY``): the quantizers read it
to tell the network's nodes from the post-processing.

Besides mmdeploy's files, :func:`exact_graph` gives the one hand-written graph
kind kept: whole RetinaNet / Mask R-CNN with mmdet's exact candidate selection
(docs/deploy.md says why), for ``tools/deployment/export_onnx.py --wrappers``
and the benchmark's ``onnx-exact`` variant.
"""
import os.path as osp
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ['BACKENDS', 'KIND_KEY', 'SHAPES', 'Exported', 'backend_model', 'deploy_config',
           'deploy_config_dir', 'exact_graph', 'export', 'export_backbone', 'exported_file',
           'pipeline_data', 'record_kind', 'task_of']

BACKENDS = ('onnxruntime', 'openvino')
SHAPES = ('static', 'dynamic')
# the deploy-config folder of each task (mmdeploy's own layout: configs/mmdet/detection, ...)
TASKS = ('detection', 'instance-seg', 'segmentation', 'classification')
# The metadata key under which every file written here records its kind (a task of
# TASKS, or 'backbone').
KIND_KEY = 'casvit_mm.kind'
# The opset of the files written here (as configs/mmdeploy/_base_/onnx_config.py):
# from 20 on GELU is one node, which onnxruntime keeps whole between quantized
# convolutions (at 17 it is five element-wise ops, each wrapped in quantize / dequantize).
OPSET = 20


def deploy_config_dir() -> str:
    """``configs/mmdeploy`` of this repository (or of the installed package)."""
    here = osp.dirname(osp.dirname(osp.abspath(__file__)))
    for root in (osp.join(here, '..', 'configs'), osp.join(here, '.mim', 'configs')):
        path = osp.normpath(osp.join(root, 'mmdeploy'))
        if osp.isdir(path):
            return path
    raise FileNotFoundError('configs/mmdeploy not found next to casvit_mm: reinstall casvit-mm')


def _load(cfg):
    from mmengine.config import Config
    return Config.fromfile(cfg) if isinstance(cfg, str) else cfg


def _has_key(node, key):
    if isinstance(node, dict):
        return key in node or any(_has_key(v, key) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_has_key(v, key) for v in node)
    return False


def task_of(model_cfg) -> str:
    """'detection', 'instance-seg', 'segmentation' or 'classification': what a model
    config is, from its codebase (``default_scope``) and, for mmdet, whether any
    head predicts masks (a ``mask_head``, or an RTMDet-Ins / SOLO-style head)."""
    cfg = _load(model_cfg)
    scope = cfg.get('default_scope')
    if scope == 'mmseg':
        return 'segmentation'
    if scope in ('mmpretrain', 'mmcls'):
        return 'classification'
    if scope == 'mmdet':
        model = cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model)
        head = str(model.get('bbox_head', {}).get('type', '')) if isinstance(
            model.get('bbox_head'), dict) else ''
        return 'instance-seg' if _has_key(model, 'mask_head') or 'Ins' in head else 'detection'
    raise ValueError(f'default_scope={scope!r}: mmdeploy exports mmdet, mmseg and mmpretrain '
                     f'models; set default_scope in the config to one of them')


def deploy_config(model_cfg, backend: str = 'onnxruntime', shape: str = 'dynamic') -> str:
    """The shipped deploy config for ``model_cfg``: ``configs/mmdeploy/<task>/
    <task>_<backend>_<shape>.py``."""
    if backend not in BACKENDS:
        raise ValueError(f'backend {backend!r}: one of {BACKENDS}')
    if shape not in SHAPES:
        raise ValueError(f'shape {shape!r}: one of {SHAPES}')
    task = task_of(model_cfg)
    return osp.join(deploy_config_dir(), task, f'{task}_{backend}_{shape}.py')


@dataclass
class Exported:
    """What :func:`export` wrote: ``files`` for the backend (the ``.onnx``; for
    OpenVINO the ``.xml`` IR, its ``.bin`` beside it), the ONNX file, and the two
    configs (mmengine ``Config`` objects) that :func:`backend_model` needs."""
    files: List[str]
    onnx: str
    deploy_cfg: object
    model_cfg: object
    task: str
    backend: str
    shape: str
    input_hw: Optional[Tuple[int, int]] = field(default=None)


def _example_image(hw=(480, 640), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def export(model_cfg, checkpoint: Optional[str] = None, backend: str = 'onnxruntime',
           shape: str = 'dynamic', work_dir: str = 'work_dirs/mmdeploy',
           image: Union[str, np.ndarray, None] = None,
           input_shape: Optional[Sequence[int]] = None, deploy_cfg=None,
           cfg_options: Optional[dict] = None, device: str = 'cpu',
           save_file: str = 'end2end.onnx') -> Exported:
    """Export a model config (+ checkpoint) with mmdeploy.

    Args:
        model_cfg (str | Config): the model's config (a file path or a Config).
        checkpoint (str, optional): its weights (None: the config's init).
        backend (str): 'onnxruntime' or 'openvino' (the ONNX file, converted to
            OpenVINO IR by ``openvino.convert_model``).
        shape (str): 'dynamic' (batch, height and width free: the file takes any
            image size) or 'static' (the size of the export image after the
            test pipeline, or ``input_shape``).
        work_dir (str): where the files go.
        image (str | ndarray, optional): the export image (BGR, as
            ``mmcv.imread`` gives it); default a seeded random 480x640 image.
            For ``static`` its size after the test pipeline is the file's size.
        input_shape (W, H, optional): for ``static``: resize to this size
            instead (mmdeploy's ``onnx_config.input_shape``, width first).
        deploy_cfg (str | Config, optional): another deploy config; default the
            shipped one for the task, backend and shape.
        cfg_options (dict, optional): merged into the deploy config.
    """
    import mmengine
    from mmengine.config import Config

    import casvit_mm  # noqa: F401  (registers CASViT, patches mmdeploy)
    from mmdeploy.apis import torch2onnx
    from mmdeploy.apis.utils import to_backend
    from mmdeploy.utils import get_input_shape

    model_cfg = _load(model_cfg)
    deploy_cfg = _load(deploy_cfg or deploy_config(model_cfg, backend, shape))
    deploy_cfg = Config(deploy_cfg.to_dict() if hasattr(deploy_cfg, 'to_dict') else deploy_cfg)
    if input_shape is not None:
        if shape != 'static':
            raise ValueError('input_shape fixes the size: use it with shape="static"')
        deploy_cfg.merge_from_dict({'onnx_config.input_shape': list(input_shape)})
    if cfg_options:
        deploy_cfg.merge_from_dict(cfg_options)
    mmengine.mkdir_or_exist(work_dir)
    image = _example_image() if image is None else image
    torch2onnx(image, work_dir, save_file, deploy_cfg, model_cfg, checkpoint, device)
    onnx_file = record_kind(osp.join(work_dir, save_file), task_of(model_cfg))
    files = [onnx_file]
    if backend == 'openvino':
        files = to_backend('openvino', [onnx_file], work_dir=work_dir, deploy_cfg=deploy_cfg,
                           device=device)
    hw = get_input_shape(deploy_cfg)
    return Exported(files=list(files), onnx=onnx_file, deploy_cfg=deploy_cfg,
                    model_cfg=model_cfg, task=task_of(model_cfg), backend=backend,
                    shape=shape, input_hw=tuple(hw[::-1]) if hw else None)


def record_kind(path: str, kind: str) -> str:
    """Write ``kind`` into the ONNX file's metadata (``KIND_KEY``); returns ``path``."""
    import onnx
    proto = onnx.load(path)
    for entry in list(proto.metadata_props):
        if entry.key == KIND_KEY:
            proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = KIND_KEY, kind
    onnx.save(proto, path)
    return path


def exported_file(model_cfg, path: str, backend: Optional[str] = None,
                  shape: str = 'dynamic') -> Exported:
    """An :class:`Exported` for a file written before (by :func:`export`, or a file
    derived from one, e.g. its int8 copy): the model config, the shipped deploy
    config of its task and ``backend`` (default: ``openvino`` for an ``.xml``)."""
    model_cfg = _load(model_cfg)
    backend = backend or ('openvino' if path.endswith('.xml') else 'onnxruntime')
    from mmengine.config import Config
    deploy_cfg = Config.fromfile(deploy_config(model_cfg, backend, shape))
    onnx_file = path if path.endswith('.onnx') else osp.join(osp.dirname(path), 'end2end.onnx')
    return Exported(files=[path], onnx=onnx_file, deploy_cfg=deploy_cfg, model_cfg=model_cfg,
                    task=task_of(model_cfg), backend=backend, shape=shape)


def export_backbone(backbone, example, path: str, dynamo: bool = False) -> str:
    """A backbone alone (mmdeploy exports whole models only): a CAS-ViT in its
    deploy form for exporters (``switch_model_to_deploy(form='export')``, NCHW
    weights; the module given is not changed), any other backbone (the benchmark's ResNets) as it is; at
    ``example``'s image size, batch dynamic unless ``dynamo``, opset
    :data:`OPSET`, the kind ``'backbone'`` recorded. ``dynamo=True``: the
    ``torch.export``-based exporter instead of the TorchScript one (which names
    nodes after modules and gives a dynamic batch)."""
    import copy

    from ..models import CASViT
    from .switch import switch_model_to_deploy
    from .onnx_export import export_onnx
    deployed = copy.deepcopy(backbone)
    if any(isinstance(m, CASViT) for m in deployed.modules()):
        deployed = switch_model_to_deploy(deployed, channels_last=False, form='export')
    export_onnx(deployed, example, path, dynamo=dynamo, dynamic_batch=not dynamo, opset=OPSET)
    return record_kind(path, 'backbone')


def exact_graph(model):
    """The hand-written whole-model graph kept for what mmdeploy's files do not do
    (mmdet's exact candidate selection, the data preprocessor inside: images as
    loaded in; docs/deploy.md): ``DetectorEnd2End`` for single-stage anchor heads
    (RetinaNet), ``MaskRCNNEnd2End`` for Mask R-CNN, on a copy of ``model``
    deployed in the export form, as every file of this module. Anything else raises: export it with :func:`export`."""
    import copy

    from .switch import switch_model_to_deploy
    from .onnx_export import DetectorEnd2End, MaskRCNNEnd2End
    if getattr(model, 'with_rpn', False):
        wrapper = MaskRCNNEnd2End
    elif hasattr(model, 'bbox_head'):
        wrapper = DetectorEnd2End
    else:
        raise ValueError(f'{type(model).__name__}: no hand-written graph (only RetinaNet and '
                         f'Mask R-CNN keep one); mmdeploy\'s file gives the same results: '
                         f'export it without --wrappers')
    return wrapper(switch_model_to_deploy(copy.deepcopy(model), channels_last=False,
                                          form='export'))


def backend_model(exported: Exported, device: str = 'cpu', clip_boxes: bool = True,
                  threads: Optional[int] = None):
    """mmdeploy's backend model for an export (``End2EndModel``: the config's data
    preprocessor in PyTorch, the file in its runtime, mmdeploy's post-processing);
    ``test_step(data)`` gives the data samples mmdet / mmseg / mmpretrain's own
    ``test_step`` gives, rescaled to the original image.

    ``clip_boxes``: clip detections to the original image, as mmdet does
    (mmdeploy clips to the padded network input; see
    :func:`casvit_mm.deploy.parity.clip_boxes_to_image`).
    ``threads``: the runtime's threads (mmdeploy's own sessions take every core).
    """
    from mmdeploy.apis import build_task_processor

    from .onnx_export import onnxruntime_session
    processor = build_task_processor(exported.model_cfg, exported.deploy_cfg, device)
    model = processor.build_backend_model(
        exported.files, data_preprocessor_updater=processor.update_data_preprocessor)
    if threads is not None and exported.backend == 'onnxruntime':
        model.wrapper.sess = onnxruntime_session(exported.files[0], threads, spinning=False,
                                                 mmdeploy_ops=True)
        model.wrapper.io_binding = model.wrapper.sess.io_binding()
    elif threads is not None:  # casvit_mm's OpenVINO wrapper (mmdeploy_compat)
        model.wrapper = type(model.wrapper)(exported.files[0], model.wrapper.output_names,
                                            threads=threads)
    if clip_boxes and exported.task in ('detection', 'instance-seg'):
        from .parity import clip_boxes_to_image
        forward = model.forward
        model.forward = lambda *args, **kwargs: clip_boxes_to_image(forward(*args, **kwargs))
    return model


def pipeline_data(exported: Exported, images, input_shape=None):
    """Images (paths or BGR arrays) through the model's test pipeline, batched as
    ``test_step`` takes them (mmdeploy's ``create_input``). A static file needs
    ``input_shape`` (W, H): every image is resized to it."""
    from mmdeploy.apis import build_task_processor
    processor = build_task_processor(exported.model_cfg, exported.deploy_cfg, 'cpu')
    if input_shape is None and exported.shape == 'static' and exported.input_hw:
        input_shape = exported.input_hw[::-1]
    return processor.create_input(images, input_shape)[0]

