# Mask R-CNN with CAS-ViT-M on COCO, 1x schedule (official: 42.3 / 38.9 box / mask AP).
_base_ = ['./_base_/mask_rcnn_casvit_fpn_1x_coco.py']

# The official ImageNet-1k weights of CAS-ViT-M, converted as the
# README explains (section "Detection", "ImageNet weights").
checkpoint = 'checkpoints/casvit-m_3rdparty_in1k.pth'

model = dict(
    backbone=dict(
        arch='m',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 96, 192, 384]))
