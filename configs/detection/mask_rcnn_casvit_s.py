# Mask R-CNN with CAS-ViT-S on COCO, 1x schedule (official: 39.8 / 36.7 box / mask AP).
_base_ = ['./_base_/mask_rcnn_casvit_fpn_1x_coco.py']

# The official ImageNet-1k weights of CAS-ViT-S, converted as the
# README explains (section "Detection", "ImageNet weights").
checkpoint = 'checkpoints/casvit-s_3rdparty_in1k.pth'

model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[48, 64, 128, 256]))
