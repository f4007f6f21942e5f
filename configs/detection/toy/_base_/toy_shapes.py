# Settings shared by the toy detection configs (RetinaNet and Mask R-CNN on the
# generated shapes of casvit_mm.toy_data.coco). Every name but randomness starts
# with "toy_": mmengine refuses a key that two _base_ files both define, and the
# real config that each toy config also inherits already defines data_root, the
# dataloaders, the evaluators and the schedule. The toy configs assign these
# values to the real keys (`train_dataloader = _base_.toy_train_dataloader`, ...).
toy_data_root = 'data/toy_coco/'
toy_metainfo = dict(classes=('square', 'circle', 'triangle'),
                    palette=[(220, 20, 60), (0, 128, 255), (255, 200, 0)])

# DEVIATION: from scratch (no ImageNet weights are available offline), and so
# with BatchNorm in training mode (norm_eval=False): the recipe freezes ImageNet
# statistics, but frozen initial statistics (mean 0, variance 1) would leave the
# backbone unnormalised.
toy_backbone = dict(init_cfg=None, norm_eval=False)

# Image scale: the generated images are used at their own size (scale_factor=1)
# instead of being resized to 1333 x 800. Boxes only: the Mask R-CNN config
# turns on with_mask in LoadAnnotations.
toy_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
toy_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

# Data: the toy set in the COCO 2017 layout under data_root. One loading
# worker: the machine this job targets has 2 cores. InfiniteSampler, as in
# mmdet's iteration-based configs: the loader does not restart every epoch.
toy_train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler'),
    dataset=dict(data_root=toy_data_root, metainfo=toy_metainfo,
                 pipeline=toy_train_pipeline))
toy_test_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(data_root=toy_data_root, metainfo=toy_metainfo,
                 pipeline=toy_test_pipeline))
toy_test_evaluator = dict(ann_file=toy_data_root + 'annotations/instances_val2017.json')

# Schedule: 300 iterations of 8 images, validated every 100 and at the end
# (the val split is the test split here; 50 images take about 10 s, so the
# demo's curve gets 3 points for about 20 s more). Shorter runs, as in the
# tests, validate once, at their end. Keeping validation configured is what
# mmdet's own tools expect: get_flops.py, for one, reads val_dataloader; the
# run's scalars.json then has the metrics too.
toy_max_iters = 300
toy_train_cfg = dict(type='IterBasedTrainLoop', max_iters=toy_max_iters, val_interval=100)
# DEVIATION: lr 1e-3, a 50-iteration warm-up and cosine decay: from scratch, 300
# iterations are too few for the 1x step schedule. Measured on the toy set with
# RetinaNet (5x the recipe's 2e-4 at a 4x smaller batch): 1e-3 converges, 2e-3
# diverges.
toy_optim_wrapper = dict(optimizer=dict(lr=1e-3))
toy_param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=toy_max_iters,
         eta_min=1e-5),
]
# log_metric_by_epoch=False: the validation metrics are logged at their
# iteration (300) in scalars.json, not at epoch 0 of an iteration-based run.
toy_default_hooks = dict(
    logger=dict(interval=25, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=toy_max_iters))
# A fixed seed: the same data and config give (nearly) the same model. (The
# real configs set no seed, so this one key needs no "toy_" name.)
randomness = dict(seed=0)
