# mmdeploy's configs/mmdet/_base_/base_static.py. The model's own test_cfg (score_thr,
# nms.iou_threshold, max_per_img) wins over these numbers where it sets them (mmdeploy's
# head rewriters read it first); pre_top_k caps the candidates before NMS.
# input_shape=None: the file takes the size of the export image after the model's test
# pipeline (set onnx_config.input_shape=[W, H] to pick one; mmdeploy then resizes to it).
_base_ = ['./onnx_config.py']

onnx_config = dict(output_names=['dets', 'labels'], input_shape=None)
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1,
    ))
