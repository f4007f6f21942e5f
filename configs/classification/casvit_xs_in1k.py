# CAS-ViT-XS on ImageNet-1K with mmpretrain: the official recipe
# (github.com/Tianfang-Zhang/CAS-ViT, classification/main.py and the README's
# training command: 8 GPUs, --batch_size 128 --lr 6e-3 --drop_path 0.1
# --model_ema True --use_amp True) on mmpretrain 1.x.
# The s / m / t configs inherit this one and change only the size.
#
# Recipe: 300 epochs; AdamW lr 6e-3, weight decay 0.05 (none on norms and
# biases), 20 warm-up epochs then cosine to 1e-6, both per iteration; 8 GPUs x
# 128 images per iteration with gradients accumulated over 2 iterations (the
# official script's default --update_freq 2: 2048 images per optimizer step);
# drop path 0.1; model EMA with decay 0.9995 per optimizer step; label
# smoothing 0.1; RandomResizedCrop 224 + flip + RandAugment rand-m9-mstd0.5-inc1
# (no random erasing, mixup or cutmix: the official defaults are 0); evaluation
# resizes the short side to 256 (bicubic) and center-crops 224.
#
# Deviations, all deliberate:
# - the head is mmpretrain's EfficientFormerClsHead with distillation=True, so
#   the published weights (which carry `head` and `dist_head`) load as
#   converted and are evaluated like the official model: mean of both heads.
#   mmpretrain cannot train that head (its loss raises NotImplementedError).
#   The official script trains with distillation=False (one head, no teacher),
#   so to train from scratch add
#     --cfg-options model.head.distillation=False
# - mixed precision is the `--amp` switch of tools/train.py, not set here, so
#   the config also builds and runs on a CPU.
# - the official multi-scale sampler (random 160-320 crops) has no mmpretrain
#   counterpart: training uses fixed 224 crops.
# - the warm-up starts from lr x 1e-3 instead of 0 (mmengine's LinearLR needs a
#   non-zero start factor).
# - EMA weights are the ones validated and saved (mmengine's EMAHook); the
#   official script evaluated both the raw and the EMA model.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['casvit_mm'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    # out_indices=(3,) + global_pool: the official classifier's BN -> average
    # pool, returned as one (B, C) vector; no neck needed.
    backbone=dict(
        type='CASViT', arch='xs', out_indices=(3,), global_pool=True,
        drop_path_rate=0.1),
    neck=None,
    head=dict(
        type='EfficientFormerClsHead',
        in_channels=220,
        num_classes=1000,
        distillation=True,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.)))

# ImageNet in mmpretrain's default layout: data/imagenet/{train,val} with
# meta/{train,val}.txt (from the base). RGB mean / std of ImageNet (the base).
bgr_mean = [103.53, 116.28, 123.675]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='PackInputs'),
]
# 8 GPUs x 128 images per iteration.
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=6e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        _delete_=True, norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.),
    accumulative_counts=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)

# timm's ModelEma(decay=0.9995) updates once per optimizer step; mmengine's
# EMAHook runs every iteration, so interval=2 matches the accumulation.
custom_hooks = [
    dict(type='EMAHook', momentum=5e-4, interval=2, priority='ABOVE_NORMAL')
]
# lr 6e-3 is for 8 x 128 images per iteration; `--auto-scale-lr` rescales it.
auto_scale_lr = dict(base_batch_size=1024)
