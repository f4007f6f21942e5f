"""The ONNX export call, the hand-written whole-detector graphs kept, and running files.

Whole models export through mmdeploy (:mod:`casvit_mm.deploy.dispatch`). What is
here: :func:`export_onnx` (``torch.onnx.export`` with the exporter choice, for the
bare backbone and the graphs below), the two hand-written graphs kept for what
mmdeploy's files do not do (``DetectorEnd2End``, ``MaskRCNNEnd2End``: mmdet's
exact candidate selection, the data preprocessor in the graph; docs/deploy.md
says why, ``dispatch.exact_graph`` picks them), running files in onnxruntime or
OpenVINO, and matching detections.
"""
import os.path as osp
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:  # optional runtimes, imported where they are used
    import onnxruntime
    import openvino

__all__ = ['DetectorEnd2End', 'MaskRCNNEnd2End', 'export_onnx',
           'onnxruntime_session', 'run_onnxruntime', 'compile_openvino', 'run_openvino',
           'match_detections', 'matched_pairs', 'box_iou']


def swaps_channels(data_preprocessor):
    """Whether a data preprocessor turns BGR into RGB: mmengine's
    ImgDataPreprocessor (mmdet), mmseg's and mmpretrain's own name the flag
    differently."""
    pre = data_preprocessor
    return bool(getattr(pre, '_channel_conversion', getattr(
        pre, 'channel_conversion', getattr(pre, 'to_rgb', False))))


def _normalise(data_preprocessor, images):
    """What an mmdet / mmseg ``data_preprocessor`` does to a test batch, in the
    graph: BGR -> RGB if configured, ``(x - mean) / std``, and (mmdet) zero
    padding to ``pad_size_divisor``, bottom and right. Images come as loaded
    (float, 0-255, BGR)."""
    pre = data_preprocessor
    if swaps_channels(pre):
        images = images[:, [2, 1, 0]]
    if getattr(pre, '_enable_normalize', False):
        images = (images - pre.mean) / pre.std
    if getattr(pre, 'test_cfg', None):  # mmseg pads at test time only when told to
        raise ValueError(f'data_preprocessor.test_cfg={pre.test_cfg}: test-time padding '
                         f'is not part of the exported graph')
    divisor = getattr(pre, 'pad_size_divisor', 1) or 1
    pad_h, pad_w = -images.shape[2] % divisor, -images.shape[3] % divisor
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), value=float(pre.pad_value))
    return images


class _NonMaxSuppression(torch.autograd.Function):
    """Per-class NMS that exports as ONNX ``NonMaxSuppression`` (opset >= 10).

    ``boxes (B, N, 4)``, ``scores (B, C, N)`` -> selected ``(M, 3)`` rows of
    ``(batch, class, box)``, each class's boxes by decreasing score, those with
    ``score <= score_thr`` dropped: the ONNX operator's contract. The PyTorch
    side (run while tracing) calls mmcv's NMS, the op mmdet's ``batched_nms``
    uses, so traced and exported graphs agree.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class, iou_thr, score_thr):
        from mmcv.ops import nms
        selected = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                idx = (scores[b, c] > score_thr).nonzero()[:, 0]
                _, keep = nms(boxes[b, idx], scores[b, c, idx], iou_thr)
                keep = idx[keep[:max_per_class]]
                selected.append(torch.stack([torch.full_like(keep, b),
                                             torch.full_like(keep, c), keep], 1))
        return torch.cat(selected) if selected else boxes.new_zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_thr, score_thr):
        def const(value, dtype):
            return g.op('Constant', value_t=torch.tensor([value], dtype=dtype))
        return g.op('NonMaxSuppression', boxes, scores, const(max_per_class, torch.long),
                    const(iou_thr, torch.float), const(score_thr, torch.float))


class DetectorEnd2End(nn.Module):
    """An mmdet single-stage detector as image -> detections, for export.

    ``forward(images)``: ``(B, 3, H, W)`` float images as loaded (0-255, the
    channel order the data preprocessor expects), already resized by the test
    pipeline -> ``boxes (B, K, 4)`` (x1, y1, x2, y2 in input pixels),
    ``scores (B, K)``, ``labels (B, K)`` with ``K = test_cfg.max_per_img``;
    rows with score 0 are padding. The graph holds the data preprocessor's
    normalisation and padding, the network, and the post-processing of the
    head's ``test_cfg`` as mmdet's ``predict_by_feat`` does it: sigmoid
    scores, per level the ``nms_pre`` best (anchor, class) pairs, box decoding
    clipped to the image, ``min_bbox_size``, ``score_thr``, class-wise NMS
    (ONNX ``NonMaxSuppression``), the ``max_per_img`` best. Written for
    anchor-based heads with sigmoid classification and one box per anchor
    (RetinaNet); anything else raises.
    """

    def __init__(self, detector):
        super().__init__()
        head = getattr(detector, 'bbox_head', None)
        if head is None or not hasattr(head, 'prior_generator') or not getattr(
                head, 'use_sigmoid_cls', False) or getattr(detector, 'with_rpn', False):
            raise ValueError(f'DetectorEnd2End exports single-stage anchor heads with '
                             f'sigmoid scores (RetinaNet); got {type(detector).__name__}'
                             f' with {type(head).__name__}')
        from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
        if type(head.bbox_coder) is not DeltaXYWHBBoxCoder or head.bbox_coder.use_box_type:
            raise ValueError(f'DetectorEnd2End decodes DeltaXYWHBBoxCoder boxes, got '
                             f'{type(head.bbox_coder).__name__}')
        cfg = head.test_cfg
        if cfg.get('nms', {}).get('type', 'nms') != 'nms':
            raise ValueError(f'only plain NMS exports, got test_cfg.nms={cfg.nms}')
        self.detector = detector

    def forward(self, images):
        # mmdet's own decoder; coder.decode() would take its broken ONNX branch when exporting
        from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
        det = self.detector
        head, cfg = det.bbox_head, det.bbox_head.test_cfg
        coder = head.bbox_coder
        h, w = images.shape[2:]
        x = _normalise(det.data_preprocessor, images)
        cls_scores, bbox_preds = head(det.extract_feat(x))[:2]
        priors = head.prior_generator.grid_priors(
            [c.shape[-2:] for c in cls_scores], dtype=x.dtype, device=x.device)
        B, C = x.shape[0], head.cls_out_channels
        boxes, scores, labels = [], [], []
        for cls, reg, prior in zip(cls_scores, bbox_preds, priors):
            flat = cls.permute(0, 2, 3, 1).reshape(B, -1).sigmoid()  # (anchor, class) pairs
            reg = reg.permute(0, 2, 3, 1).reshape(B, -1, 4)
            nms_pre = cfg.get('nms_pre', -1)
            k = flat.shape[1] if nms_pre <= 0 else min(nms_pre, flat.shape[1])
            score, index = flat.topk(k, dim=1)
            anchor = torch.div(index, C, rounding_mode='floor')
            delta = reg.gather(1, anchor[..., None].expand(-1, -1, 4))
            decoded = delta2bbox(prior[anchor].reshape(-1, 4), delta.reshape(-1, 4),
                                 coder.means, coder.stds, (h, w), clip_border=coder.clip_border,
                                 add_ctr_clamp=coder.add_ctr_clamp, ctr_clamp=coder.ctr_clamp)
            boxes.append(decoded.reshape(B, k, 4))
            scores.append(score)
            labels.append(index - anchor * C)
        boxes, scores, labels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(labels, 1)
        min_size = cfg.get('min_bbox_size', -1)
        if min_size >= 0:
            wh = boxes[..., 2:] - boxes[..., :2]
            scores = scores * ((wh[..., 0] > min_size) & (wh[..., 1] > min_size))
        per_class = scores.new_zeros((B, C, scores.shape[1])).scatter(
            1, labels[:, None], scores[:, None])
        max_per_img = cfg.get('max_per_img', 100)
        selected = _NonMaxSuppression.apply(boxes, per_class, max_per_img,
                                            float(cfg.nms.iou_threshold),
                                            float(cfg.get('score_thr', 0.)))
        batch, box = selected[:, 0], selected[:, 2]
        kept = scores.new_zeros(scores.shape).index_put((batch, box), scores[batch, box])
        top, index = kept.topk(min(max_per_img, kept.shape[1]), dim=1)
        return (boxes.gather(1, index[..., None].expand(-1, -1, 4)), top,
                labels.gather(1, index))


class _RoIAlign(torch.autograd.Function):
    """mmcv's RoIAlign, exported as ONNX ``RoiAlign`` (opset >= 16).

    mmcv's own symbolic targets opset 10 (``Squeeze`` with an ``axes``
    attribute, and ``aligned`` emulated by shifting the RoIs half a pixel,
    which opset 16's default ``half_pixel`` mode would shift a second time),
    so it does not give a valid or equal graph at the opset used here. This
    one maps ``aligned`` to ``coordinate_transformation_mode``; the PyTorch
    side (run while tracing, and by the wrapped model) is mmcv's op itself.
    ``boxes (R, 4)`` and ``batch (R,)`` int64 are the columns of mmcv's
    ``(R, 5)`` RoIs, split in PyTorch so that the symbolic is one node.
    """

    @staticmethod
    def forward(ctx, feats, boxes, batch, output_size, spatial_scale, sampling_ratio,
                pool_mode, aligned):
        from mmcv.ops import roi_align
        rois = torch.cat([batch[:, None].to(boxes.dtype), boxes], 1)
        return roi_align(feats, rois, output_size, spatial_scale, sampling_ratio, pool_mode,
                         aligned)

    @staticmethod
    def symbolic(g, feats, boxes, batch, output_size, spatial_scale, sampling_ratio,
                 pool_mode, aligned):
        return g.op('RoiAlign', feats, boxes, batch,
                    coordinate_transformation_mode_s='half_pixel' if aligned
                    else 'output_half_pixel',
                    mode_s=pool_mode, output_height_i=output_size[0],
                    output_width_i=output_size[1], sampling_ratio_i=max(0, sampling_ratio),
                    spatial_scale_f=spatial_scale)


def _roi_features(extractor, feats, rois):
    """What mmdet's ``SingleRoIExtractor`` computes, in a traceable form.

    Its forward skips empty pyramid levels with a Python ``if`` on data, which
    tracing would freeze to the example image's RoIs. Here every level runs
    RoIAlign on its RoIs (possibly none) and scatters the result; the level
    of each RoI is mmdet's own ``map_roi_levels``."""
    from mmcv.ops import RoIAlign
    out = feats[0].new_zeros((rois.shape[0], extractor.out_channels,
                              *extractor.roi_layers[0].output_size))
    levels = extractor.map_roi_levels(rois, len(extractor.featmap_strides))
    for i, layer in enumerate(extractor.roi_layers):
        if type(layer) is not RoIAlign or layer.use_torchvision:
            raise ValueError(f'only mmcv RoIAlign exports, got {layer}')
        index = (levels == i).nonzero()[:, 0]
        r = rois[index]
        out = out.index_put((index, ), _RoIAlign.apply(
            feats[i], r[:, 1:], r[:, 0].long(), tuple(layer.output_size),
            float(layer.spatial_scale), int(layer.sampling_ratio), layer.pool_mode,
            bool(layer.aligned)))
    return out


def _check_delta_coder(coder, what):
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    if type(coder) is not DeltaXYWHBBoxCoder or coder.use_box_type:
        raise ValueError(f'{what}: only DeltaXYWHBBoxCoder boxes decode in the graph, got '
                         f'{type(coder).__name__}')


def _decode(coder, priors, deltas, shape):
    """mmdet's ``delta2bbox`` with ``coder``'s settings; ``coder.decode()``
    would take its broken ONNX branch when exporting."""
    from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
    return delta2bbox(priors, deltas, coder.means, coder.stds, shape,
                      clip_border=coder.clip_border, add_ctr_clamp=coder.add_ctr_clamp,
                      ctr_clamp=coder.ctr_clamp)


def _keep_top(boxes, scores, selected, k):
    """The ``k`` best NMS survivors per image at fixed shape: ``boxes (B, N, 4)``,
    ``scores (B, N)``, ``selected`` rows of ``(batch, class, box)`` -> indices
    ``(B, k)`` into N and their scores, 0 where fewer than ``k`` survived."""
    batch, box = selected[:, 0], selected[:, 2]
    kept = scores.new_zeros(scores.shape).index_put((batch, box), scores[batch, box])
    top, index = kept.topk(min(k, kept.shape[1]), dim=1)
    return index, top


class MaskRCNNEnd2End(nn.Module):
    """An mmdet Mask R-CNN as image -> detections and masks, for export.

    ``forward(images)``: ``(B, 3, H, W)`` float images as loaded (0-255, the
    channel order the data preprocessor expects), already resized by the test
    pipeline -> ``boxes (B, K, 4)`` (x1, y1, x2, y2 in input pixels),
    ``scores (B, K)``, ``labels (B, K)``, and ``masks``: ``(B, K, H, W)`` bool,
    the masks pasted into the image and binarised at ``mask_thr_binary`` as
    mmdet's ``FCNMaskHead.predict_by_feat`` does (``paste_masks=True``), or
    ``(B, K, M, M)`` float, the mask head's probabilities of the predicted
    class in box coordinates, left for the caller to paste
    (``paste_masks=False``: the pasted masks are K image-sized planes).
    ``K = test_cfg.rcnn.max_per_img``; rows with score 0 are padding.

    The graph follows mmdet's ``predict`` of ``TwoStageDetector`` with a
    ``StandardRoIHead``, calling mmdet's modules for the networks:

    * RPN (``test_cfg.rpn``): sigmoid objectness, per level the ``nms_pre``
      best anchors, ``delta2bbox`` clipped to the image, ``min_bbox_size``,
      NMS within each level (mmdet's ``batched_nms`` on level ids), the
      ``max_per_img`` best. Proposals are fixed in number; missing ones are
      marked invalid and can not give detections.
    * box head (``test_cfg.rcnn``): RoIAlign over the FPN levels chosen by
      mmdet's ``map_roi_levels`` (ONNX ``RoiAlign``), softmax, per-class box
      decoding, ``score_thr``, class-wise NMS done as mmdet's ``batched_nms``
      does it, on boxes shifted apart per class, the ``max_per_img`` best.
    * mask head: RoIAlign on the detected boxes, the predicted class's mask
      logits, sigmoid, and (``paste_masks``) mmdet's ``_do_paste_mask``.

    Anything else (cascades, shared heads, other coders or NMS types) raises.
    The mmcv RoIAlign layers run through ``_RoIAlign`` (same op in PyTorch).
    """

    def __init__(self, detector, paste_masks=True):
        super().__init__()
        from mmdet.models.roi_heads import StandardRoIHead
        from mmdet.models.roi_heads.mask_heads import FCNMaskHead
        from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
        roi_head = getattr(detector, 'roi_head', None)
        rpn = getattr(detector, 'rpn_head', None)
        if (not getattr(detector, 'with_rpn', False) or type(roi_head) is not StandardRoIHead
                or not roi_head.with_mask or roi_head.with_shared_head
                or not getattr(rpn, 'use_sigmoid_cls', False) or rpn.cls_out_channels != 1):
            raise ValueError(f'MaskRCNNEnd2End exports Mask R-CNN (sigmoid RPN, '
                             f'StandardRoIHead with a mask head); got {type(detector).__name__}')
        _check_delta_coder(rpn.bbox_coder, 'rpn_head')
        _check_delta_coder(roi_head.bbox_head.bbox_coder, 'bbox_head')
        if not isinstance(roi_head.mask_head, FCNMaskHead) or getattr(
                roi_head.bbox_head, 'custom_cls_channels', False):
            raise ValueError('MaskRCNNEnd2End exports FCNMaskHead and softmax box heads')
        for extractor in (roi_head.bbox_roi_extractor, roi_head.mask_roi_extractor):
            if type(extractor) is not SingleRoIExtractor:
                raise ValueError(f'only SingleRoIExtractor exports, got {extractor}')
        for cfg in (rpn.test_cfg, roi_head.test_cfg):
            if cfg.get('nms', {}).get('type', 'nms') != 'nms':
                raise ValueError(f'only plain NMS exports, got nms={cfg.nms}')
        self.detector = detector
        self.paste_masks = paste_masks

    def forward(self, images):
        det = self.detector
        shape = tuple(images.shape[2:])
        x = _normalise(det.data_preprocessor, images)
        feats = det.extract_feat(x)
        proposals, valid = self._proposals(feats, shape)
        boxes, scores, labels = self._detect(feats, proposals, valid, shape)
        return boxes, scores, labels, self._masks(feats, boxes, labels, scores > 0, shape)

    def _proposals(self, feats, shape):
        head = self.detector.rpn_head
        cfg = head.test_cfg
        cls_scores, bbox_preds = head(feats)
        priors = head.prior_generator.grid_priors(
            [c.shape[-2:] for c in cls_scores], dtype=feats[0].dtype, device=feats[0].device)
        B = cls_scores[0].shape[0]
        boxes, scores, levels = [], [], []
        for level, (cls, reg, prior) in enumerate(zip(cls_scores, bbox_preds, priors)):
            score = cls.permute(0, 2, 3, 1).reshape(B, -1).sigmoid()
            reg = reg.permute(0, 2, 3, 1).reshape(B, -1, 4)
            nms_pre = cfg.get('nms_pre', -1)
            k = score.shape[1] if nms_pre <= 0 else min(nms_pre, score.shape[1])
            score, index = score.topk(k, dim=1)
            delta = reg.gather(1, index[..., None].expand(-1, -1, 4))
            boxes.append(_decode(head.bbox_coder, prior[index].reshape(-1, 4),
                                 delta.reshape(-1, 4), shape).reshape(B, k, 4))
            scores.append(score)
            levels.append(torch.full((k, ), level, dtype=torch.long))
        boxes, scores, levels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(levels)
        min_size = cfg.get('min_bbox_size', -1)
        if min_size >= 0:  # a zero score: NMS drops it (score_threshold 0)
            wh = boxes[..., 2:] - boxes[..., :2]
            scores = scores * ((wh[..., 0] > min_size) & (wh[..., 1] > min_size))
        per_level = scores.new_zeros((B, len(priors), scores.shape[1])).scatter(
            1, levels.expand(B, 1, -1), scores[:, None])
        max_per_img = cfg.get('max_per_img', 1000)
        selected = _NonMaxSuppression.apply(boxes, per_level, max_per_img,
                                            float(cfg.nms.iou_threshold), 0.)
        index, top = _keep_top(boxes, scores, selected, max_per_img)
        return boxes.gather(1, index[..., None].expand(-1, -1, 4)), top > 0

    @staticmethod
    def _rois(boxes):
        """``(B, N, 4)`` -> mmdet's ``(B * N, 5)`` RoIs; the batch index comes
        from a cumulative sum, so that the batch stays dynamic in the graph."""
        batch = torch.ones_like(boxes[..., 0]).cumsum(0) - 1
        return torch.cat([batch[..., None], boxes], -1).reshape(-1, 5)

    def _detect(self, feats, proposals, valid, shape):
        roi_head = self.detector.roi_head
        head, cfg = roi_head.bbox_head, roi_head.test_cfg
        B, P = proposals.shape[:2]
        C = head.num_classes
        rois = self._rois(proposals)
        cls_score, bbox_pred = head(_roi_features(
            roi_head.bbox_roi_extractor, feats[:roi_head.bbox_roi_extractor.num_inputs], rois))
        scores = F.softmax(cls_score, dim=-1)[:, :C].reshape(B, P, C) * valid[..., None]
        per_class = 1 if head.reg_class_agnostic else C
        boxes = _decode(head.bbox_coder, rois[:, 1:].repeat_interleave(per_class, 0),
                        bbox_pred.reshape(-1, 4), shape).reshape(B, P, per_class, 4)
        boxes = boxes.expand(B, P, C, 4).reshape(B, P * C, 4)
        scores = scores.reshape(B, P * C)
        labels = torch.arange(C).repeat(P)  # candidates are (proposal, class) pairs
        # mmdet's batched_nms: one NMS, the classes' boxes shifted apart
        shifted = boxes + (labels * (boxes.max() + 1))[:, None].to(boxes.dtype)
        max_per_img = cfg.get('max_per_img', 100)
        selected = _NonMaxSuppression.apply(shifted, scores[:, None], max_per_img,
                                            float(cfg.nms.iou_threshold),
                                            float(cfg.get('score_thr', 0.)))
        index, top = _keep_top(boxes, scores, selected, max_per_img)
        return (boxes.gather(1, index[..., None].expand(-1, -1, 4)), top,
                labels[index])

    def _masks(self, feats, boxes, labels, valid, shape):
        from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
        roi_head = self.detector.roi_head
        head = roi_head.mask_head
        extractor = (roi_head.bbox_roi_extractor if roi_head.share_roi_extractor
                     else roi_head.mask_roi_extractor)
        B, K = boxes.shape[:2]
        logits = head(_roi_features(extractor, feats[:extractor.num_inputs],
                                    self._rois(boxes)))
        if not head.class_agnostic:
            logits = logits.gather(1, labels.reshape(-1, 1, 1, 1).expand(
                -1, 1, *logits.shape[2:]))
        probs = logits[:, :1].sigmoid()
        if not self.paste_masks:
            return probs.reshape(B, K, *probs.shape[2:])
        pasted = _do_paste_mask(probs, boxes.reshape(-1, 4), *shape, skip_empty=False)[0]
        masks = pasted >= roi_head.test_cfg.get('mask_thr_binary', 0.5)
        return (masks.reshape(B, K, *shape)) & valid[..., None, None]


def box_iou(a, b):
    """IoU matrix of ``(N, 4)`` and ``(M, 4)`` x1y1x2y2 boxes."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(-1), (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-12)


def matched_pairs(reference, detections, iou=0.99, score_tol=1e-3):
    """Pairs ``(i, j)``: reference detection i found as detection j.

    Both are ``(boxes (N, 4), scores (N,), labels (N,))``. A reference box is
    found when a detection of the same label overlaps it by IoU >= ``iou``
    with a score within ``score_tol``; each detection is used once. The pairs
    let callers compare what else belongs to a detection (its mask).
    """
    ref_boxes, ref_scores, ref_labels = (torch.as_tensor(t) for t in reference)
    boxes, scores, labels = (torch.as_tensor(t) for t in detections)
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return []
    ok = ((box_iou(ref_boxes, boxes) >= iou)
          & (ref_labels.long()[:, None] == labels.long()[None])
          & ((ref_scores.double()[:, None] - scores.double()[None]).abs() <= score_tol))
    used, pairs = set(), []
    for i in range(len(ref_boxes)):
        for j in ok[i].nonzero()[:, 0].tolist():
            if j not in used:
                used.add(j)
                pairs.append((i, j))
                break
    return pairs


def match_detections(reference, detections, iou=0.99, score_tol=1e-3):
    """Fraction of ``reference`` detections found in ``detections`` (as
    ``matched_pairs`` finds them); 1 when both are empty."""
    if len(reference[0]) == 0:
        return 1.0 if len(detections[0]) == 0 else 0.0
    return len(matched_pairs(reference, detections, iou, score_tol)) / len(reference[0])


def export_onnx(module: nn.Module,
                example: torch.Tensor,
                path: str,
                dynamo: bool = True,
                output_names: Optional[Sequence[str]] = None,
                dynamic_batch: bool = False,
                opset: int = 17) -> str:
    """Export ``module`` called on the tensor ``example`` to ``path``.

    Shapes are static, except the batch with ``dynamic_batch``.
    ``dynamo=True`` (torch's default since 2.9) uses the ``torch.export``
    exporter, the one PyTorch maintains; ``dynamo=False`` the deprecated
    TorchScript exporter, faster to run and kept as a fallback. Both were
    checked to give the same outputs for CAS-ViT and Semantic FPN. Whole
    detectors need ``dynamo=False``: their NMS is a PyTorch autograd function
    with an ONNX symbolic, which only the TorchScript exporter honours.
    ``opset`` (TorchScript exporter only): 17 by default; from 20 on GELU is
    one ``Gelu`` node instead of five element-wise ops.
    """
    import warnings
    module.eval()  # not chained: some modules' train() returns None (mmdet's ResNet)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        kwargs = dict(dynamo=dynamo, input_names=['images'], output_names=output_names)
        if dynamo:
            kwargs['verbose'] = False
        if dynamic_batch:
            names = ['images'] + list(output_names or [])
            kwargs['dynamic_axes'] = {name: {0: 'batch'} for name in names}
        if not dynamo:
            kwargs['opset_version'] = opset
        torch.onnx.export(module, (example, ), path, **kwargs)
    return path


def onnxruntime_session(path: str,
                        threads: Optional[int] = None,
                        spinning: bool = True,
                        mmdeploy_ops: bool = False) -> 'onnxruntime.InferenceSession':
    """An onnxruntime CPU session with ``threads`` intra-op threads (all graph
    optimisations on); ``threads=None`` keeps onnxruntime's default.

    ``spinning=False`` stops idle onnxruntime threads from busy-waiting after
    a run, which would steal the CPU from whatever runs next in the process
    (the benchmark interleaves it with PyTorch). ``mmdeploy_ops=True``, for a
    file mmdeploy wrote: registers mmdeploy's custom-ops library
    (``libmmdeploy_onnxruntime_ops.so``, shipped in its wheel) where it exists
    (importing mmdeploy costs seconds, so only when asked).
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if mmdeploy_ops:
        import ctypes

        from mmdeploy.backend.onnxruntime.init_plugins import get_lib_path, get_ops_path
        ops = get_ops_path()
        if ops and osp.exists(ops):
            lib = get_lib_path()
            if lib and osp.exists(lib):
                ctypes.CDLL(lib)
            options.register_custom_ops_library(ops)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def run_onnxruntime(session: 'onnxruntime.InferenceSession', images: torch.Tensor) -> list:
    """Run ``session`` on a tensor; returns the list of numpy outputs."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: images.detach().cpu().contiguous().numpy()})


def compile_openvino(path: str,
                     threads: Optional[int] = None,
                     precision: Optional[str] = 'f32',
                     perf_count: bool = False,
                     input_shape: Optional[Sequence[int]] = None) -> 'openvino.CompiledModel':
    """An ONNX or IR file compiled by OpenVINO (optional: ``pip install openvino``)
    for the CPU, with ``threads`` inference threads (None: OpenVINO's default).

    Args:
        precision (str | None): ``INFERENCE_PRECISION_HINT``: ``'f32'``, or
            ``'bf16'`` (OpenVINO runs the float parts in bf16 where the CPU
            has it; elsewhere it keeps f32: see
            :func:`casvit_mm.deploy.nncf_int8.effective_precision`), or None for
            OpenVINO's choice (bf16 on CPUs with native bf16: an unstated "fp32"
            figure may be bf16).
        perf_count (bool): Collect per-layer counters
            (:func:`casvit_mm.deploy.nncf_int8.perf_counters`).
        input_shape (sequence, optional): reshape a file with dynamic axes
            (mmdeploy's) to this fixed shape before compiling. Needed for
            onnxruntime's int8 (QDQ) files: OpenVINO 2026.4 runs them correctly
            at a fixed shape only (measured on the toy classifier's dynamic int8
            file on an AVX2 CPU: class scores 0.29 away from onnxruntime's with
            dynamic H/W, 0.025 reshaped; fp32 files agree either way).
    """
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError('running ONNX files in OpenVINO needs it: pip install openvino') from e
    config = {}
    if precision is not None:
        config['INFERENCE_PRECISION_HINT'] = precision
    if threads is not None:
        config['INFERENCE_NUM_THREADS'] = threads
    if perf_count:
        config['PERF_COUNT'] = True
    core = ov.Core()
    model = core.read_model(path)
    if input_shape is not None:
        model.reshape(list(input_shape))
    return core.compile_model(model, 'CPU', config)


def run_openvino(model: 'openvino.CompiledModel', images) -> list:
    """Run a compiled OpenVINO model (an fp32 file or NNCF's int8 IR) on a tensor or
    array; returns the list of numpy outputs."""
    if hasattr(images, 'detach'):
        images = images.detach().cpu().contiguous().numpy()
    return list(model([images]).values())
