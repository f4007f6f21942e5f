# RetinaNet with CAS-ViT-XS on COCO, 1x schedule (official: 36.5 box AP).
_base_ = ['./_base_/retinanet_casvit_fpn_1x_coco.py']

# The official ImageNet-1k weights of CAS-ViT-XS, converted as the
# README explains (section "Detection", "ImageNet weights").
checkpoint = 'checkpoints/casvit-xs_3rdparty_in1k.pth'

model = dict(
    backbone=dict(
        arch='xs',
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[48, 56, 112, 220]))
