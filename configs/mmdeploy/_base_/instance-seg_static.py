# mmdeploy's configs/mmdet/_base_/base_instance-seg_static.py: the masks leave the graph
# as the mask head's M x M probabilities of each detection's class
# (export_postprocess_mask=False); mmdeploy's backend model pastes them into the image,
# as mmdet's FCNMaskHead does.
_base_ = ['./detection_static.py']

onnx_config = dict(output_names=['dets', 'labels', 'masks'])
codebase_config = dict(task='ObjectDetection',
                       post_processing=dict(export_postprocess_mask=False))
