"""mmdeploy 1.3.1 on torch >= 2.9: the compatibility patches, and the CAS-ViT export hook.

mmdeploy's last release (1.3.1) predates torch 2.9. Two things it calls changed:

1. ``torch.onnx.export`` defaults to the dynamo (``torch.export``) exporter since
   torch 2.9. mmdeploy's rewriters and symbolics work only in the TorchScript
   exporter; without ``dynamo=False`` ``mmdeploy.apis.torch2onnx`` fails inside
   ``torch.export`` (``torch._dynamo.exc.Unsupported`` / "Failed to export the
   model with torch.export" on mmdeploy's patched ``forward``). The patch gives
   calls *made from mmdeploy's modules* the old default; every other caller of
   ``torch.onnx.export`` keeps torch's.
2. ``torch.onnx.symbolic_opset9._cast_Long`` was removed; mmdeploy's RoIAlign
   symbolic imports it (``ImportError: cannot import name '_cast_Long' from
   'torch.onnx.symbolic_opset9'``), so every two-stage detector failed to export.
   The patch puts back what it was: a ``Cast`` to int64.
3. mmdeploy's OpenVINO backend is written for OpenVINO 2022: its wrapper imports
   ``openvino.inference_engine`` (``ModuleNotFoundError: No module named
   'openvino.inference_engine'``, removed in OpenVINO 2023.1) and its converter
   runs the Model Optimizer ``mo`` (``RuntimeError: OpenVINO Model Optimizer is
   not found or configured improperly``; removed in 2025.0). The patch replaces
   both with today's API: ``openvino.convert_model`` + ``save_model`` (the file's
   own shapes, static or dynamic as exported, instead of mo's fixed
   ``--input_shape``) and an ``openvino.Core`` wrapper (float32 inference).

4. Not a torch change but an mmseg one mmdeploy does not rewrite: mmseg's ``Upsample``
   (the scale heads of Semantic FPN's ``FPNHead``) computes its output size as
   ``int(t * scale_factor)`` from the input's shape, which tracing freezes to the
   export image's size (``TracerWarning: Converting a tensor to a Python integer
   might cause the trace to be incorrect``). A file exported with dynamic H/W then
   upsamples with the export size's sizes: 94-99.5 % of the label-map pixels
   equal at other sizes on the tests' models. A rewriter (active only while
   mmdeploy exports) passes the scale factor instead: the same sizes, traced.

5. Not a torch change either: mmdeploy's rewriter of RTMDet's ``predict_by_feat``
   decodes boxes without clipping them to the image, where mmdet's
   ``DistancePointBBoxCoder`` clips at ``img_shape`` before NMS and then drops boxes
   no wider or higher than ``min_bbox_size`` (0: the boxes clipping flattened).
   Unclipped boxes overlap differently, so NMS keeps other boxes: on a toy-trained
   RTMDet the file scored bbox mAP 0.007 below mmdet on the toy val set
   (docs/deploy.md). A rewriter for the onnxruntime and OpenVINO backends (which
   take precedence over mmdeploy's default one) does what mmdeploy's does, plus
   mmdet's clip (to the network input, as mmdeploy's rewriter of every other dense
   head does) and its ``min_bbox_size`` filter.

And one hook, not a fix: mmdeploy's ``BaseTask.build_pytorch_model`` already calls
``model.backbone.switch_to_deploy()`` (it does so for RepVGG / MobileOne); the hook
then runs :func:`casvit_mm.switch_model_to_deploy` with ``form='export'`` on models
with a CAS-ViT, so the exported graph also has the backbone's output norms folded
into an FPN where that is exact, and every CAS-ViT in its export form: NCHW
weights (the channels-last fused oneDNN kernels never run while tracing; NCHW
keeps the traced graph free of layout conversions), plain 4-D ops (q, k and the
channel gates as separate 1x1 convolutions: no 5-D reshapes, no channel-gate
MatMul), which OpenVINO ran 1.01-1.16x faster than the fused form's graph, with the
same outputs to float rounding (docs/quantization.md).

When it applies: ``import casvit_mm`` (what the docs and ``custom_imports`` do)
calls :func:`install`, which patches at once if mmdeploy is imported already and
otherwise waits, at no cost, for mmdeploy's first import
(:func:`casvit_mm.import_hooks.when_imported`). So
``import casvit_mm`` never imports mmdeploy or onnx, and patches only what a
process that uses mmdeploy needs. Nothing in site-packages is edited.
"""
import sys

from ..import_hooks import when_imported

__all__ = ['apply', 'install', 'applied']

_state = {'applied': False}


def applied() -> bool:
    """Whether :func:`apply` has run in this process."""
    return _state['applied']


def _patch_onnx_export_default():
    import torch.onnx
    original = torch.onnx.export
    if getattr(original, '_casvit_mmdeploy_patch', False):
        return

    def export(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get('__name__', '')
        if caller.split('.')[0] == 'mmdeploy':
            kwargs.setdefault('dynamo', False)
        return original(*args, **kwargs)

    export.__doc__ = original.__doc__
    export.__wrapped__ = original
    export._casvit_mmdeploy_patch = True
    torch.onnx.export = export


def _patch_cast_long():
    from torch.onnx import symbolic_opset9
    if hasattr(symbolic_opset9, '_cast_Long'):
        return

    def _cast_Long(g, input, non_blocking):  # noqa: N802 (torch's name)
        return g.op('Cast', input, to_i=7)  # 7: TensorProto.INT64

    symbolic_opset9._cast_Long = _cast_Long


def _patch_openvino_backend():
    from mmdeploy.backend.openvino import onnx2openvino, wrapper
    if getattr(wrapper.OpenVINOWrapper, '_casvit_mmdeploy_patch', False):
        return
    import torch
    from mmdeploy.backend.base import BaseWrapper

    def from_onnx(onnx_model, output_file_prefix, input_info=None, output_names=None,
                  mo_options=None):
        """mmdeploy's ``from_onnx`` through ``openvino.convert_model``: the IR next
        to ``output_file_prefix`` (a directory), named as mmdeploy names it."""
        import openvino as ov
        xml = onnx2openvino.get_output_model_file(onnx_model, output_file_prefix)
        ov.save_model(ov.convert_model(onnx_model), xml)
        return xml

    class OpenVINOWrapper(BaseWrapper):
        """mmdeploy's OpenVINO wrapper on ``openvino.Core`` (CPU, float32:
        OpenVINO would pick bf16 by itself on CPUs that have it), the model
        compiled at each input shape it meets (reshaped to it, kept per shape).

        Why per shape: OpenVINO 2026.4 runs int8 models (NNCF's IR, onnxruntime's
        QDQ files) with dynamic H and W wrongly on an AVX2 CPU: the toy
        classifier's int8 class scores 0.32 away from fp32 with dynamic axes,
        0.04 reshaped to the batch's shape (fp32 files agree either way)."""
        _casvit_mmdeploy_patch = True

        def __init__(self, ir_model_file, output_names=None, threads=None, **kwargs):
            import openvino as ov
            self.config = {'INFERENCE_PRECISION_HINT': 'f32'}
            if threads:
                self.config['INFERENCE_NUM_THREADS'] = threads
            self.core = ov.Core()
            self.source = self.core.read_model(ir_model_file)
            self.compiled = {}
            names = [next(iter(o.get_names())) for o in self.source.outputs]
            super().__init__(output_names or names)
            self._names = names

        def forward(self, inputs):
            arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in inputs.items()}
            key = tuple((k, a.shape) for k, a in sorted(arrays.items()))
            if key not in self.compiled:
                model = self.source.clone()
                model.reshape({k: list(a.shape) for k, a in arrays.items()})
                self.compiled[key] = self.core.compile_model(model, 'CPU', self.config)
            compiled = self.compiled[key]
            results = compiled(arrays)
            return {name: torch.from_numpy(results[out].copy())
                    for name, out in zip(self._names, compiled.outputs)}

    onnx2openvino.from_onnx = from_onnx
    wrapper.OpenVINOWrapper = OpenVINOWrapper


def _rewrite_mmseg_upsample():
    from mmdeploy.core import FUNCTION_REWRITER

    @FUNCTION_REWRITER.register_rewriter('mmseg.models.utils.wrappers.Upsample.forward')
    def upsample__forward(self, x):
        if self.size:
            return FUNCTION_REWRITER.get_context().origin_func(self, x)
        import torch.nn.functional as F
        return F.interpolate(x, None, self.scale_factor, self.mode, self.align_corners)


def _rewrite_rtmdet_clip():
    import torch
    from mmdeploy.codebase.mmdet import get_post_processing_params
    from mmdeploy.codebase.mmdet.deploy import clip_bboxes
    from mmdeploy.core import FUNCTION_REWRITER
    from mmdeploy.mmcv.ops import multiclass_nms

    def rtmdet_head__predict_by_feat(self, cls_scores, bbox_preds, batch_img_metas=None,
                                     cfg=None, rescale=False, with_nms=True):
        cfg = self.test_cfg if cfg is None else cfg
        batch = bbox_preds[0].shape[0]
        priors = torch.cat(self.prior_generator.grid_priors(
            [s.shape[2:] for s in cls_scores], device=cls_scores[0].device))
        scores = torch.cat([s.permute(0, 2, 3, 1).reshape(batch, -1, self.cls_out_channels)
                            for s in cls_scores], dim=1).sigmoid()
        dist = torch.cat([d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in bbox_preds],
                         dim=1)
        x1, y1 = priors[..., 0] - dist[..., 0], priors[..., 1] - dist[..., 1]
        x2, y2 = priors[..., 0] + dist[..., 2], priors[..., 1] + dist[..., 3]
        if self.bbox_coder.clip_border:  # mmdet's decode(..., max_shape=img_shape)
            x1, y1, x2, y2 = clip_bboxes(x1, y1, x2, y2, batch_img_metas[0]['img_shape'])
        bboxes = torch.stack([x1, y1, x2, y2], -1)
        if cfg.get('min_bbox_size', -1) >= 0:  # mmdet's _bbox_post_process filter
            valid = ((x2 - x1) > cfg.min_bbox_size) & ((y2 - y1) > cfg.min_bbox_size)
            scores = scores * valid.unsqueeze(-1).to(scores.dtype)
        if not with_nms:
            return bboxes, scores
        params = get_post_processing_params(FUNCTION_REWRITER.get_context().cfg)
        return multiclass_nms(
            bboxes, scores, params.max_output_boxes_per_class,
            nms_type=cfg.nms.get('type'),
            iou_threshold=cfg.nms.get('iou_threshold', params.iou_threshold),
            score_threshold=cfg.get('score_thr', params.score_threshold),
            pre_top_k=params.pre_top_k, keep_top_k=cfg.get('max_per_img', params.keep_top_k))

    for backend in ('onnxruntime', 'openvino'):
        FUNCTION_REWRITER.register_rewriter(
            'mmdet.models.dense_heads.rtmdet_head.RTMDetHead.predict_by_feat',
            backend=backend)(rtmdet_head__predict_by_feat)


def _deploy_hook():
    """After mmdeploy builds the PyTorch model: the whole-model CAS-ViT deploy switch,
    to the export form."""
    from mmdeploy.codebase.base.task import BaseTask
    original = BaseTask.build_pytorch_model
    if getattr(original, '_casvit_mmdeploy_patch', False):
        return

    def build_pytorch_model(self, *args, **kwargs):
        model = original(self, *args, **kwargs)
        from ..models import CASViT
        from .switch import switch_model_to_deploy
        if any(isinstance(m, CASViT) for m in model.modules()):
            switch_model_to_deploy(model, channels_last=False, form='export')
        return model

    build_pytorch_model.__doc__ = original.__doc__
    build_pytorch_model._casvit_mmdeploy_patch = True
    BaseTask.build_pytorch_model = build_pytorch_model


def apply():
    """Apply the patches and the hook now (imports mmdeploy); idempotent."""
    if _state['applied']:
        return
    _patch_onnx_export_default()
    _patch_cast_long()
    _patch_openvino_backend()
    _rewrite_mmseg_upsample()
    _rewrite_rtmdet_clip()
    _deploy_hook()
    _state['applied'] = True


def install():
    """Patch when mmdeploy is (or gets) imported; called by ``import casvit_mm``."""
    when_imported('mmdeploy', apply)
