# Image classification on a data set of your own: CAS-ViT-XS fine-tuned from its
# ImageNet weights to your classes, read from one folder per class. Copy this
# file anywhere and edit the first lines (docs/own_project.md).
_base_ = ['casvit_mm::classification/casvit_xs_in1k.py']

classes = ('clean', 'crack', 'dent', 'scratch')  # = the class folder names, sorted
data_root = 'data/my_images/'  # train/<class>/*.jpg and val/<class>/*.jpg
checkpoint = 'checkpoints/casvit-xs_3rdparty_in1k.pth'

data_preprocessor = dict(num_classes=len(classes))
model = dict(
    # The backbone only, from the ImageNet classifier: its 1000-class head does
    # not fit (and would be refused); prefix='backbone.' also takes a converted
    # mmpretrain checkpoint.
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    # One head: mmpretrain cannot train the distillation head.
    head=dict(num_classes=len(classes), distillation=False))

my_dataset = dict(type='CustomDataset', data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(dataset=dict(_delete_=True, **my_dataset, data_prefix='train',
                                     pipeline=_base_.train_pipeline))
val_dataloader = dict(dataset=dict(_delete_=True, **my_dataset, data_prefix='val',
                                   pipeline=_base_.test_pipeline))
test_dataloader = val_dataloader
# top-5 needs at least 5 classes
val_evaluator = dict(type='Accuracy', topk=(1, ) if len(classes) < 5 else (1, 5))
test_evaluator = val_evaluator
