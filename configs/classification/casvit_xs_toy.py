# CAS-ViT-XS trained FROM SCRATCH on the generated toy image-folder set
# (`python tools/dataset_converters/make_toy_imagenet.py data/toy_imagenet`),
# so the whole train -> test -> inference path runs on a 2-core CPU in minutes.
# It inherits the official recipe (casvit_xs_in1k.py) and changes only what a
# tiny from-scratch run needs:
# - one head (distillation=False), as the official training script does;
# - 4 classes read from class folders by mmpretrain's CustomDataset;
# - 64x64 images: random-resized crops and flips only (no RandAugment, whose
#   strong distortions slow a run of a few hundred images too much), and the
#   evaluation's short-side resize + center crop at 64 instead of 256 / 224;
# - batch 32 without accumulation, lr 2e-3, a 1-epoch warm-up and 30 epochs,
#   no drop path, EMA with a short memory (momentum 0.05) to fit ~200 steps;
# - top-1 accuracy only (top-5 of 4 classes is meaningless).
_base_ = ['./casvit_xs_in1k.py']

data_root = 'data/toy_imagenet'
num_classes = 4  # = len(casvit_mm.toy_data.imagenet.TOY_IMAGENET_CLASSES)
max_epochs = 30

data_preprocessor = dict(num_classes=num_classes)
model = dict(
    backbone=dict(drop_path_rate=0.),
    head=dict(num_classes=num_classes, distillation=False))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.5, 1.0),
         backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=1,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=2e-3), accumulative_counts=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
custom_hooks = [dict(type='EMAHook', momentum=0.05, interval=1, priority='ABOVE_NORMAL')]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=32)
