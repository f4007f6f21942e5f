# Semantic FPN with a CAS-ViT-XS backbone on ADE20K: the official recipe
# (github.com/Tianfang-Zhang/CAS-ViT, segmentation/configs/RCViT/
# fpn_rcvit_xs_512x512_40k_ade20k_bs4.py, written for mmseg 0.24) on mmseg 1.x.
# The s / m / t configs inherit this one and change only the backbone size.
#
# Recipe: FPN 256 channels / 4 outputs, FPNHead 128 channels, 150 classes,
# 512x512 crops, AdamW lr 2e-4 weight decay 1e-4, poly (power 0.9, min 0),
# 40k iterations, 8 GPUs x 4 images, evaluation every 4k iterations.
# Deviations, all deliberate:
# - the test pipeline is mmseg 1.x's Resize + ResizeToMultiple(32), which does
#   what the official AlignResize(keep_ratio=True, size_divisor=32) did: rescale
#   to short side 512 (long side <= 2048), then *resize* (bilinear; nearest for
#   label maps) so both sides are multiples of 32. No new transform is needed.
# - the ImageNet weights are read from a local file (nothing is downloaded);
#   a missing file stops training with a message that says where to put it.
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py']

custom_imports = dict(imports=['casvit_mm'], allow_failed_imports=False)

# The official ImageNet-1K weights of CAS-ViT-XS (cas-vit-xs.pth from the CAS-ViT
# model zoo), converted or as downloaded: the same file name in every task's
# configs (docs/checkpoints.md).
checkpoint_file = 'checkpoints/casvit-xs_3rdparty_in1k.pth'

model = dict(
    pretrained=None,  # the ResNet base would download open-mmlab://resnet50_v1c
    backbone=dict(
        _delete_=True,
        type='CASViT',
        arch='xs',
        out_indices=(0, 1, 2, 3),
        norm_eval=True,  # official: every BN of the backbone stays in eval mode
        drop_path_rate=0.,  # official: 0 for xs and s, 0.1 for m and t
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[48, 56, 112, 220], out_channels=256, num_outs=4),
    decode_head=dict(channels=128, num_classes=150))

# The official evaluation: single scale, short side 512, then both sides
# resized (not padded) to multiples of 32. Labels are loaded after the resizes
# and the prediction is resized back to the original image, as in mmseg.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# 8 GPUs x 4 images = 32 images per iteration.
train_dataloader = dict(batch_size=4)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000,
                    save_best='mIoU'))
# lr 2e-4 is for 32 images per iteration; `--auto-scale-lr` rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=32)
