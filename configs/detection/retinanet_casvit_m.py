# RetinaNet with CAS-ViT-M on COCO, 1x schedule (official: 40.9 box AP).
_base_ = ['./_base_/retinanet_casvit_fpn_1x_coco.py']

# The official ImageNet-1k weights of CAS-ViT-M, converted as the
# README explains (section "Detection", "ImageNet weights").
checkpoint = 'checkpoints/casvit-m_3rdparty_in1k.pth'

model = dict(
    backbone=dict(
        arch='m',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 96, 192, 384]))
