# Semantic segmentation on a data set of your own: Semantic FPN-CAS-ViT-XS, your
# classes, your data root, from the ImageNet weights of the backbone. Copy this
# file anywhere and edit the first lines (docs/own_project.md).
#
# mmseg's ADE20KDataset only accepts class names that are ADE20K's, so a data
# set of your own is read by mmseg's BaseSegDataset: images and label maps
# (PNG, one class index per pixel) with the same file stem. With
# reduce_zero_label=True, as in ADE20K, pixel value 0 means "ignore" and
# values 1..N are your N classes in the order of `classes`; with
# reduce_zero_label=False values 0..N-1 are the classes and 255 is ignored
# (then also set LoadAnnotations' reduce_zero_label in both pipelines).
_base_ = ['casvit_mm::segmentation/fpn_casvit_xs.py']

classes = ('rust', 'paint', 'weld', 'bolt', 'gap')
data_root = 'data/my_seg/'  # absolute, or relative to where you run
# images/{train,val}/*.jpg and annotations/{train,val}/*.png
my_dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=dict(classes=classes),
                  img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True)

model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained',
                                checkpoint='checkpoints/casvit-xs_3rdparty_in1k.pth')),
    decode_head=dict(num_classes=len(classes)))

train_dataloader = dict(dataset=dict(
    _delete_=True, **my_dataset, pipeline=_base_.train_pipeline,
    data_prefix=dict(img_path='images/train', seg_map_path='annotations/train')))
val_dataloader = dict(dataset=dict(
    _delete_=True, **my_dataset, pipeline=_base_.test_pipeline,
    data_prefix=dict(img_path='images/val', seg_map_path='annotations/val')))
test_dataloader = val_dataloader
