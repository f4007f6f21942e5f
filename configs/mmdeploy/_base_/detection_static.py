# mmdeploy's configs/mmdet/_base_/base_static.py. The model's own test_cfg (score_thr,
# nms.iou_threshold, max_per_img) wins over these numbers where it sets them (mmdeploy's
# head rewriters read it first). Three numbers differ from mmdeploy's, each so that the
# file keeps what mmdet keeps (docs/deploy.md):
# - score_threshold 0 (mmdeploy: 0.05): it applies where the test_cfg has no score_thr,
#   i.e. to the RPN of two-stage detectors, which mmdet does not threshold (at 0.05 the
#   toy Mask R-CNN's file lost most proposals: 125 instead of 271 of PyTorch's 346
#   detections with score >= 0.3 found);
# - pre_top_k 30000 (mmdeploy: 5000): the cap on candidates before NMS over all levels;
#   RTMDet's rewriter takes every anchor where mmdet's nms_pre is 30000 (8400 anchors at
#   640x640); heads with a per-level nms_pre of 1000 never reach 5000 on 5 levels;
# - max_output_boxes_per_class 300 (mmdeploy: 200): mmdet caps detections per image
#   (max_per_img, 300 for RTMDet), not per class; a per-class cap of at least
#   max_per_img changes nothing.
# input_shape=None: the file takes the size of the export image after the model's test
# pipeline (set onnx_config.input_shape=[W, H] to pick one; mmdeploy then resizes to it).
_base_ = ['./onnx_config.py']

onnx_config = dict(output_names=['dets', 'labels'], input_shape=None)
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    post_processing=dict(
        score_threshold=0.0,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=300,
        pre_top_k=30000,
        keep_top_k=100,
        background_label_id=-1,
    ))
