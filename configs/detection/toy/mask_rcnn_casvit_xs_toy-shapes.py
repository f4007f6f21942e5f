# Mask R-CNN-CAS-ViT-XS trained from scratch on the generated toy shapes
# (casvit_mm.toy_data.coco, 3 classes, COCO format with polygon masks), for the
# tests, the image demo and the INT8 accuracy cost (docs/quantization.md) on a
# CPU. It is the real config below with only data, image scale and schedule
# changed, plus the deviations marked "DEVIATION" (here, and in
# _base_/toy_shapes.py, shared with the toy RetinaNet), each with its reason.
# Generate the data first:
#   python tools/dataset_converters/make_toy_coco.py data/toy_coco
_base_ = ['../mask_rcnn_casvit_xs.py', '_base_/toy_shapes.py']

# DEVIATION: FPN, RPN and RoI heads 128 channels wide instead of 256, 128 RoIs
# sampled per image instead of 512, and batch 4 instead of 8. With the real
# widths an iteration took 40 s on one CPU thread, most of it in the mask
# head's four 3x3 convolutions over up to 128 positive RoIs per image; this
# makes an iteration about 10x cheaper, so the model trains in minutes. The
# toy images hold a few objects each, so 128 RoIs still sample every object.
width = 128
model = dict(
    backbone=_base_.toy_backbone,  # from scratch: see _base_/toy_shapes.py
    neck=dict(out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=512, num_classes=3),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=3)),
    train_cfg=dict(rcnn=dict(sampler=dict(num=128))))

# Data, schedule and validation: the shared toy settings (_base_/toy_shapes.py).
data_root = _base_.toy_data_root  # the real config's data/coco/ would be misleading
train_dataloader = _base_.toy_train_dataloader
train_dataloader.batch_size = 4
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
