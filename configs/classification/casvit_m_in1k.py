# CAS-ViT-M on ImageNet-1K with mmpretrain: the official recipe, as in
# casvit_xs_in1k.py (read its notes); only the size differs.
_base_ = ['./casvit_xs_in1k.py']

model = dict(backbone=dict(arch='m'), head=dict(in_channels=384))
