# Mask R-CNN-CAS-ViT-XS trained from scratch on the generated toy shapes
# (casvit_mm.toy_data.coco, 3 classes, COCO format with polygon masks), for the
# tests and the image demo on a CPU. It is the real config below with only
# data, image scale and schedule changed, plus the deviations marked
# "DEVIATION" (in _base_/toy_shapes.py, shared with the toy RetinaNet), each
# with its reason. Generate the data first:
#   python tools/dataset_converters/make_toy_coco.py data/toy_coco
_base_ = ['../mask_rcnn_casvit_xs.py', '_base_/toy_shapes.py']

model = dict(
    backbone=_base_.toy_backbone,  # from scratch: see _base_/toy_shapes.py
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)))

# Data, schedule and validation: the shared toy settings (_base_/toy_shapes.py).
data_root = _base_.toy_data_root  # the real config's data/coco/ would be misleading
train_dataloader = _base_.toy_train_dataloader
test_dataloader = val_dataloader = _base_.toy_test_dataloader
test_evaluator = val_evaluator = _base_.toy_test_evaluator
val_cfg = dict(type='ValLoop')
train_cfg = dict(_delete_=True, **_base_.toy_train_cfg)
optim_wrapper = _base_.toy_optim_wrapper
param_scheduler = _base_.toy_param_scheduler
default_hooks = _base_.toy_default_hooks
log_processor = dict(by_epoch=False)
# Masks: the shared pipelines load boxes only. LoadAnnotations is step 1 of the
# training pipeline and step 2 of the test pipeline.
train_dataloader.dataset.pipeline[1].with_mask = True
test_dataloader.dataset.pipeline[2].with_mask = True
train_pipeline, test_pipeline = train_dataloader.dataset.pipeline, test_dataloader.dataset.pipeline
