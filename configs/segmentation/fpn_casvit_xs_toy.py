# Semantic FPN + CAS-ViT-XS trained FROM SCRATCH on the generated toy ADE20K set
# (`python tools/dataset_converters/make_toy_ade.py data/toy_ade`), so that the
# whole train -> test -> inference path runs on a 2-core CPU in a few minutes.
# It inherits the official recipe (fpn_casvit_xs.py) and changes only what a
# tiny from-scratch run needs:
# - no ImageNet weights (init_cfg=None) and backbone BN in train mode
#   (norm_eval=False): frozen BN statistics only make sense for pretrained weights;
# - plain BN in the head instead of SyncBN (one process, no GPU);
# - images 4x smaller (short side 128 instead of 512, 128x128 crops) and the
#   neck / head 4x narrower (FPN 64 channels, FPNHead 32): at full width they
#   cost 3x the backbone on a CPU;
# - batch 8, a higher learning rate for training from scratch, and a short
#   poly schedule;
# - the toy classes are ADE20K's first five, read by mmseg's own ADE20KDataset.
# The evaluation keeps the official Resize + ResizeToMultiple(32) (the toy
# images are 160x120, so the second resize really happens: 171x128 -> 192x128).
_base_ = ['./fpn_casvit_xs.py']

data_root = 'data/toy_ade'
classes = ('wall', 'building', 'sky', 'floor', 'tree')  # = casvit_mm.toy_data.ade.TOY_ADE_CLASSES
crop_size = (128, 128)
max_iters = 300
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(norm_eval=False, init_cfg=None),
    neck=dict(out_channels=64),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=32,
                     num_classes=len(classes), norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes),
                 pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, save_best=None, max_keep_ckpts=1))
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=8)
