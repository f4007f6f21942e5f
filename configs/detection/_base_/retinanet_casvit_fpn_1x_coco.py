# RetinaNet with a CAS-ViT backbone on COCO, 1x schedule: the official CAS-ViT
# detection recipe (https://github.com/Tianfang-Zhang/CAS-ViT) on top of mmdet's
# packaged RetinaNet config, which already brings the FPN head, the COCO 2017
# data from `data/coco/`, the 12-epoch schedule with steps at 8 and 11 and the
# 500-iteration linear warm-up. Only what differs from ResNet-50 is written here.
# The per-size files (retinanet_casvit_{xs,s,m,t}.py) set arch, drop path,
# the FPN input widths and the ImageNet checkpoint.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['casvit_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CASViT',
        arch='xs',
        out_indices=(0, 1, 2, 3),
        # Official recipe: every BatchNorm of the backbone stays in eval mode
        # (running statistics frozen, affine parameters still trained).
        norm_eval=True,
        drop_path_rate=0.),
    # FPN as in the base: start_level=1, add_extra_convs='on_input', num_outs=5;
    # only in_channels follow the backbone (set per size).
    neck=dict(in_channels=[48, 56, 112, 220]))

# AdamW lr 2e-4, weight decay 1e-4 (the base uses SGD 0.01).
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))

# Total batch 32: 8 GPUs x 4 images. On another number of GPUs, pass
# --auto-scale-lr to scale the learning rate linearly from this batch.
train_dataloader = dict(batch_size=4)
auto_scale_lr = dict(enable=False, base_batch_size=32)

# As in the official config: the FPN starts at stage 1, so the backbone's
# output norm of stage 0 (norm0) receives no gradient, and DistributedDataParallel
# (several GPUs, or tools/dist_train.sh on CPUs) stops with "parameters that
# were not used in producing loss" unless it looks for unused parameters.
find_unused_parameters = True
