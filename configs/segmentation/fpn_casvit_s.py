# Semantic FPN with a CAS-ViT-S backbone on ADE20K: the official recipe,
# as in fpn_casvit_xs.py; only the backbone size, its weights and drop path differ.
_base_ = ['./fpn_casvit_xs.py']

checkpoint_file = 'checkpoints/casvit-s_3rdparty_in1k.pth'

model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.0,  # official: 0 for xs and s, 0.1 for m and t
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=dict(in_channels=[48, 64, 128, 256]))
