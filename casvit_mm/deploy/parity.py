"""How far a deployed model's predictions are from the PyTorch model's: the checks
the export tool and the tests apply to files written through mmdeploy.

Both sides are lists of data samples, as ``test_step`` returns them (mmdet's, mmseg's
or mmpretrain's model, and mmdeploy's backend model on the same batch).
"""
from typing import Sequence, Tuple

import torch

__all__ = ['clip_boxes_to_image', 'detection_agreement', 'segmentation_agreement',
           'classification_agreement']


def clip_boxes_to_image(samples):
    """Clip ``pred_instances.bboxes`` to each sample's ``ori_shape``, in place.

    mmdet clips decoded boxes to the resized image (``img_shape``) before
    rescaling; mmdeploy's graphs clip to the network input, which the data
    preprocessor has padded to ``pad_size_divisor`` (and, with a dynamic
    shape, mmdeploy never sees ``img_shape``): a box reaching into the padding
    ends up to 31 px beyond the image. Clipping the rescaled box to the
    original image gives mmdet's box again.
    """
    for sample in samples:
        inst = sample.get('pred_instances')
        if inst is None or len(inst) == 0:
            continue
        h, w = sample.ori_shape[:2]
        inst.bboxes[:, 0::2] = inst.bboxes[:, 0::2].clamp(0, w)
        inst.bboxes[:, 1::2] = inst.bboxes[:, 1::2].clamp(0, h)
    return samples


def _detections(instances, score_thr):
    keep = instances.scores >= score_thr
    return instances.bboxes[keep], instances.scores[keep], instances.labels[keep]


def detection_agreement(reference: Sequence, deployed: Sequence, score_thr: float = 0.,
                        iou: float = 0.99, score_tol: float = 1e-3) -> Tuple[int, int, int, int]:
    """``(found, total, found_back, total_back)`` over a batch: how many of the
    reference's detections with score >= ``score_thr`` the deployed model has (same
    label, IoU >= ``iou``, score within ``score_tol``), and the other way round."""
    from casvit_mm.deploy.onnx_export import matched_pairs
    found = total = found_back = total_back = 0
    for ref, out in zip(reference, deployed):
        a = _detections(ref.pred_instances, score_thr)
        b = _detections(out.pred_instances, score_thr)
        found += len(matched_pairs(a, b, iou, score_tol))
        found_back += len(matched_pairs(b, a, iou, score_tol))
        total, total_back = total + len(a[0]), total_back + len(b[0])
    return found, total, found_back, total_back


def segmentation_agreement(reference: Sequence, deployed: Sequence) -> float:
    """The fraction of label-map pixels equal over a batch."""
    equal = total = 0
    for ref, out in zip(reference, deployed):
        x, y = ref.pred_sem_seg.data, out.pred_sem_seg.data.to(ref.pred_sem_seg.data.device)
        assert x.shape == y.shape, (x.shape, y.shape)
        equal, total = equal + int((x == y).sum()), total + x.numel()
    return equal / max(total, 1)


def classification_agreement(reference: Sequence, deployed: Sequence) -> Tuple[bool, float]:
    """Whether every predicted label is equal, and the largest score difference."""
    same, diff = True, 0.
    for ref, out in zip(reference, deployed):
        same = same and int(ref.pred_label) == int(out.pred_label)
        diff = max(diff, float((torch.as_tensor(ref.pred_score)
                                - torch.as_tensor(out.pred_score)).abs().max()))
    return same, diff
