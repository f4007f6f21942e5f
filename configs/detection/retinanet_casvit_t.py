# RetinaNet with CAS-ViT-T on COCO, 1x schedule (official: 41.9 box AP).
_base_ = ['./_base_/retinanet_casvit_fpn_1x_coco.py']

# The official ImageNet-1k weights of CAS-ViT-T, converted as the
# README explains (section "Detection", "ImageNet weights").
checkpoint = 'checkpoints/casvit-t_3rdparty_in1k.pth'

model = dict(
    backbone=dict(
        arch='t',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[96, 128, 256, 512]))
