# Instance segmentation on a data set of your own: Mask R-CNN-CAS-ViT-XS, your
# classes (COCO json with polygon or RLE masks), your data root, from the ImageNet
# weights of the backbone. Copy this file anywhere and edit the first lines
# (docs/own_project.md).
_base_ = ['casvit_mm::detection/mask_rcnn_casvit_xs.py']

classes = ('bolt', 'nut', 'washer')  # the category names of your COCO json, any order
data_root = 'data/my_coco/'          # absolute, or relative to where you run
# COCO format: annotations/train.json + train/*.jpg, annotations/val.json + val/*.jpg
train_ann, train_img = 'annotations/train.json', 'train/'
val_ann, val_img = 'annotations/val.json', 'val/'
metainfo = dict(classes=classes)

model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained',
                                checkpoint='checkpoints/casvit-xs_3rdparty_in1k.pth')),
    # both heads of the second stage classify
    roi_head=dict(bbox_head=dict(num_classes=len(classes)),
                  mask_head=dict(num_classes=len(classes))))

train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=train_ann,
                                     data_prefix=dict(img=train_img)))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo, ann_file=val_ann,
                                   data_prefix=dict(img=val_img)))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + val_ann)  # bbox and segm AP (the base)
test_evaluator = val_evaluator
