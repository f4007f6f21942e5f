# Object detection on a data set of your own: RetinaNet-CAS-ViT-XS, your classes,
# your data root, starting from the ImageNet weights of the backbone. Copy this
# file anywhere and edit the first lines; it inherits the repository's config by
# package name, which works in any process once casvit-mm is installed
# (docs/own_project.md). Everything else -- the 1x schedule, AdamW, the COCO
# metric -- is the inherited recipe.
_base_ = ['casvit_mm::detection/retinanet_casvit_xs.py']

classes = ('bolt', 'nut', 'washer')  # the category names of your COCO json, any order
data_root = 'data/my_coco/'          # absolute, or relative to where you run
# COCO format: annotations/train.json + train/*.jpg, annotations/val.json + val/*.jpg
train_ann, train_img = 'annotations/train.json', 'train/'
val_ann, val_img = 'annotations/val.json', 'val/'
metainfo = dict(classes=classes)

model = dict(
    # The ImageNet-1k weights (the official cas-vit-xs.pth, converted or as
    # downloaded). A relative path is looked for where you run, then in the
    # casvit-mm checkout (docs/own_project.md#pretrained-weights).
    backbone=dict(init_cfg=dict(type='Pretrained',
                                checkpoint='checkpoints/casvit-xs_3rdparty_in1k.pth')),
    bbox_head=dict(num_classes=len(classes)))

train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=train_ann,
                                     data_prefix=dict(img=train_img)))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=val_ann,
                                   data_prefix=dict(img=val_img)))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + val_ann)
test_evaluator = val_evaluator
