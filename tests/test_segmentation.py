"""Semantic FPN: the four recipe configs, the evaluation's resize to multiples
of 32, the toy ADE20K set, train -> test through tools/, the inferencer and
demo, and CAS-ViT dropped into a stock mmseg config (UPerNet) from the README."""
import glob
import os.path as osp
import re
import runpy
import sys

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from PIL import Image

from casvit_mm import CASViT
from casvit_mm.checkpoint import CheckpointError
from casvit_mm.toy_data.ade import TOY_ADE_CLASSES, make_toy_ade
from helpers import REPO, loader_options, read_metrics, run_tool

TOY = 'configs/segmentation/fpn_casvit_xs_toy.py'
ARCHS = ('xs', 's', 'm', 't')
WIDTHS = {a: CASViT.arch_settings[a]['widths'] for a in ARCHS}


def load(path):
    return Config.fromfile(osp.join(REPO, path))


def build(model_cfg):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    # One process, no GPU: the recipe's SyncBN head becomes BN, as mmseg's
    # runner and inferencer do.
    return revert_sync_batchnorm(MODELS.build(model_cfg))


def seg_batch(size=64, num_classes=150, batch=2, seed=0):
    """A data_preprocessor input: uint8 images and ground-truth label maps."""
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, size, size), generator=g))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.fixture(scope='session')
def toy_ade(tmp_path_factory):
    """8 training and 4 validation images of 96 x 72, generated once."""
    root = str(tmp_path_factory.mktemp('toy_ade'))
    return make_toy_ade(root, num_train=8, num_val=4, size=(96, 72), seed=0)


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize('arch', ARCHS)
def test_recipe_config_is_the_official_one(arch):
    cfg = load(f'configs/segmentation/fpn_casvit_{arch}.py')
    model = cfg.model
    assert cfg.default_scope == 'mmseg' and 'casvit_mm' in cfg.custom_imports.imports
    assert model.pretrained is None  # the ResNet base would download
    assert model.backbone.type == 'CASViT' and model.backbone.arch == arch
    assert model.backbone.norm_eval is True
    assert model.backbone.drop_path_rate == (0.1 if arch in ('m', 't') else 0.)
    assert model.backbone.init_cfg == dict(type='Pretrained',
                                           checkpoint=f'checkpoints/casvit-{arch}_3rdparty_in1k.pth')
    assert model.neck.in_channels == WIDTHS[arch]
    assert (model.neck.out_channels, model.neck.num_outs) == (256, 4)
    assert model.decode_head.type == 'FPNHead'
    assert (model.decode_head.channels, model.decode_head.num_classes) == (128, 150)
    assert model.data_preprocessor.size == (512, 512)
    assert cfg.crop_size == (512, 512)
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    assert cfg.train_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 2e-4, 1e-4)
    assert 'momentum' not in optimizer  # nothing left over from the SGD base
    [poly] = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.end) == ('PolyLR', 0.9, 0., 40000)
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval) == (40000, 4000)
    assert cfg.auto_scale_lr.base_batch_size == 32  # 8 GPUs x 4 images
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        types = [t['type'] for t in loader.dataset.pipeline]
        assert types[:3] == ['LoadImageFromFile', 'Resize', 'ResizeToMultiple']
        assert loader.dataset.pipeline[1].scale == (2048, 512)
        assert loader.dataset.pipeline[2].size_divisor == 32


@pytest.mark.parametrize('arch', ARCHS)
def test_recipe_model_losses_and_predictions(arch):
    cfg = load(f'configs/segmentation/fpn_casvit_{arch}.py')
    cfg.model.data_preprocessor.size = (64, 64)  # pad to 64, not to the 512 crop
    model = build(cfg.model)
    assert isinstance(model.backbone, CASViT) and model.backbone.widths == WIDTHS[arch]

    model.train()
    assert not any(m.training for m in model.backbone.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))  # norm_eval
    data = model.data_preprocessor(seg_batch(), True)
    losses = model(**data, mode='loss')
    assert torch.isfinite(losses['decode.loss_ce'])
    losses['decode.loss_ce'].backward()
    assert model.backbone.patch_embed[0].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        preds = model.test_step(seg_batch(size=80, batch=1))
    assert preds[0].pred_sem_seg.data.shape == (1, 80, 80)
    assert preds[0].seg_logits.data.shape == (150, 80, 80)


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path):
    cfg = load('configs/segmentation/fpn_casvit_xs.py')
    # (a path that surely does not exist, whatever lies in checkpoints/)
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'cas-vit-xs.pth')
    model = build(cfg.model)
    with pytest.raises(CheckpointError, match=r"cas-vit-xs.pth' does not exist.*download"):
        model.init_weights()


# ------------------------------------------------------ resize to multiple
def test_resize_to_multiple_resizes_image_and_keeps_labels_nearest():
    """The recipe's test-time ResizeToMultiple: sizes divisible by 32 by
    *resizing* (the content is stretched, not padded), label maps by nearest
    neighbour (no value that was not there before)."""
    from mmseg.registry import TRANSFORMS
    init_default_scope('mmseg')
    step = load('configs/segmentation/fpn_casvit_xs.py').test_pipeline[2]
    transform = TRANSFORMS.build(step)

    rng = np.random.RandomState(0)
    h, w = 171, 250
    img = np.zeros((h, w, 3), np.uint8)
    img[:, -1] = 255  # a bright last column: padding would put zeros after it
    labels = rng.choice(np.array([0, 7, 200], np.uint8), size=(h, w))
    out = transform(dict(img=img, img_shape=(h, w), gt_seg_map=labels,
                         seg_fields=['gt_seg_map']))

    assert out['img'].shape[:2] == (192, 256) == out['img_shape']
    assert out['img'].shape[0] % 32 == 0 and out['img'].shape[1] % 32 == 0
    assert out['img'][:, -1].min() > 100  # stretched to the new border, not padded
    np.testing.assert_array_equal(
        out['img'], mmcv.imresize(img, (256, 192), interpolation='bilinear'))
    assert out['gt_seg_map'].shape == (192, 256)
    assert set(np.unique(out['gt_seg_map'])) <= {0, 7, 200}
    np.testing.assert_array_equal(
        out['gt_seg_map'], mmcv.imresize(labels, (256, 192), interpolation='nearest'))


def test_recipe_test_pipeline_on_an_ade_image(toy_ade):
    """Short side 512 then multiples of 32; the label map stays at its original
    size (mmseg compares the prediction resized back to the original)."""
    from mmcv.transforms import Compose
    from mmseg.registry import TRANSFORMS
    init_default_scope('mmseg')
    pipeline = Compose([TRANSFORMS.build(t) for t in
                        load('configs/segmentation/fpn_casvit_xs.py').test_pipeline])
    root = toy_ade['root']
    out = pipeline(dict(
        img_path=osp.join(root, 'images/validation/ADE_val_00000001.jpg'),
        seg_map_path=osp.join(root, 'annotations/validation/ADE_val_00000001.png'),
        reduce_zero_label=True, seg_fields=[]))
    # 96 x 72 -> short side 512: 683 x 512 -> multiples of 32: 704 x 512
    assert out['data_samples'].img_shape == (512, 704)
    assert tuple(out['inputs'].shape) == (3, 512, 704)
    assert out['data_samples'].ori_shape == (72, 96)
    assert out['data_samples'].gt_sem_seg.data.shape == (1, 72, 96)


# ------------------------------------------------------------------ toy set
def test_toy_ade_is_deterministic_and_in_ade_format(tmp_path, toy_ade):
    again = make_toy_ade(str(tmp_path / 'again'), num_train=8, num_val=4, size=(96, 72), seed=0)
    other = make_toy_ade(str(tmp_path / 'other'), num_train=1, num_val=1, size=(96, 72), seed=1)
    name = 'annotations/training/ADE_train_00000001.png'
    first = np.array(Image.open(osp.join(toy_ade['root'], name)))
    np.testing.assert_array_equal(first, np.array(Image.open(osp.join(again['root'], name))))
    assert not np.array_equal(first, np.array(Image.open(osp.join(other['root'], name))))

    for split, prefix, n in (('training', 'ADE_train', 8), ('validation', 'ADE_val', 4)):
        images = sorted(glob.glob(osp.join(toy_ade['root'], 'images', split, '*.jpg')))
        labels = sorted(glob.glob(osp.join(toy_ade['root'], 'annotations', split, '*.png')))
        assert [osp.basename(p) for p in images] == [f'{prefix}_{i:08d}.jpg'
                                                     for i in range(1, n + 1)]
        assert len(labels) == n
    values = np.unique(np.concatenate([np.array(Image.open(p)).ravel() for p in glob.glob(
        osp.join(toy_ade['root'], 'annotations', '*', '*.png'))]))
    assert set(values) <= set(range(len(TOY_ADE_CLASSES) + 1))
    assert {0, 1, 2, 3, 4, 5} <= set(values)  # every class and some "unlabelled"
    with pytest.raises(ValueError, match='at least 32 x 32'):
        make_toy_ade(str(tmp_path / 'bad'), size=(16, 16))


def test_toy_config_reads_the_toy_set_with_ade20k_dataset(toy_ade):
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    cfg = load(TOY)
    assert tuple(cfg.classes) == TOY_ADE_CLASSES
    assert cfg.model.decode_head.num_classes == len(TOY_ADE_CLASSES)
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.update(data_root=toy_ade['root'],
                       pipeline=[dict(type='LoadAnnotations', reduce_zero_label=True)])
    dataset = DATASETS.build(dataset_cfg)
    assert type(dataset).__name__ == 'ADE20KDataset' and len(dataset) == 8
    assert dataset.metainfo['classes'] == TOY_ADE_CLASSES
    gt = dataset[0]['gt_seg_map']
    raw = np.array(Image.open(dataset[0]['seg_map_path']))
    # ADE's zero label: 0 ("other") is ignored (255), k becomes class k - 1.
    np.testing.assert_array_equal(gt[raw == 0], 255)
    np.testing.assert_array_equal(gt[raw > 0], raw[raw > 0] - 1)


# ------------------------------------------------------------- end to end
@pytest.fixture(scope='session')
def trained(toy_ade, tmp_path_factory):
    """tools/train.py on the toy config for 4 iterations; the checkpoint."""
    work = tmp_path_factory.mktemp('seg_work')
    out = run_tool('tools/train.py', TOY, '--work-dir', work, '--cfg-options',
                   *toy_options(toy_ade, **{'train_cfg.max_iters': 4,
                                            'train_cfg.val_interval': 4}))
    assert 'decode.loss_ce' in out and 'mIoU' in out  # trained, then validated
    ckpt = work / 'iter_4.pth'
    assert ckpt.is_file()
    return ckpt


def toy_options(toy_ade, **extra):
    opts = ['train_dataloader.batch_size=2', 'default_hooks.logger.interval=1']
    opts += loader_options(toy_ade['root'])
    return opts + [f'{k}={v}' for k, v in extra.items()]


@pytest.mark.slow
def test_train_then_test_through_tools(trained, toy_ade, tmp_path):
    work, vis, preds = tmp_path / 'test', tmp_path / 'vis', tmp_path / 'preds'
    # mmseg's visualisation hook paints every 50th image unless told otherwise.
    run_tool('tools/test.py', TOY, trained, '--work-dir', work, '--show-dir', vis,
             '--out', preds, '--cfg-options', *toy_options(toy_ade),
             'default_hooks.visualization.interval=1')
    metrics = read_metrics(work)
    for key in ('mIoU', 'aAcc', 'mAcc'):
        assert 0. <= metrics[key] <= 100.
    label_maps = sorted(glob.glob(str(preds / '*.png')))
    assert len(label_maps) == 4  # one per validation image, at its original size
    pred = np.array(Image.open(label_maps[0]))
    # written in ADE20K's own convention (class k as k + 1), like the annotations
    assert pred.shape == (72, 96)
    assert 1 <= pred.min() and pred.max() <= len(TOY_ADE_CLASSES)
    painted = glob.glob(str(vis / '**' / 'test_ADE_val_*.png'), recursive=True)
    assert len(painted) == 4


@pytest.mark.slow
def test_inferencer_and_demo_write_an_overlay(trained, toy_ade, tmp_path):
    from mmseg.apis import MMSegInferencer
    image = osp.join(toy_ade['root'], 'images/validation/ADE_val_00000002.jpg')
    inferencer = MMSegInferencer(model=osp.join(REPO, TOY), weights=str(trained),
                                 device='cpu')
    assert inferencer.model.dataset_meta['classes'] == TOY_ADE_CLASSES
    result = inferencer(image)
    assert result['predictions'].shape == (72, 96)
    assert result['predictions'].max() < len(TOY_ADE_CLASSES)

    out = tmp_path / 'overlay.png'
    argv = sys.argv
    sys.argv = ['seg_demo.py', image, osp.join(REPO, TOY), '--weights', str(trained),
                '--out', str(out)]
    try:
        runpy.run_path(osp.join(REPO, 'demo', 'seg_demo.py'), run_name='__main__')
    finally:
        sys.argv = argv
    overlay = mmcv.imread(str(out))
    assert overlay.shape == (72, 96, 3)
    assert np.abs(overlay.astype(int) - mmcv.imread(image).astype(int)).mean() > 5  # painted


# --------------------------------------------- a stock mmseg config + CAS-ViT
def readme_upernet_config():
    """The UPerNet example of the README's segmentation section, verbatim."""
    text = open(osp.join(REPO, 'README.md'), encoding='utf-8').read()
    section = re.search(r'<!-- section:segmentation -->(.*)<!-- /section:segmentation -->',
                        text, re.S).group(1)
    found = re.search(r'```python\n(# upernet_casvit_s\.py\n.*?)```', section, re.S)
    assert found, 'the README lost its UPerNet example'
    return found.group(1)


def test_readme_upernet_example_builds_and_computes_losses(tmp_path):
    path = tmp_path / 'upernet_casvit_s.py'
    path.write_text(readme_upernet_config())
    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports.imports == ['casvit_mm']
    assert cfg.model.decode_head.type == 'UPerHead'  # really mmseg's UPerNet
    cfg.model.data_preprocessor.size = (64, 64)
    model = build(cfg.model)
    assert isinstance(model.backbone, CASViT) and model.backbone.widths == WIDTHS['s']
    model.train()
    losses = model(**model.data_preprocessor(seg_batch(), True), mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    total = losses['decode.loss_ce'] + losses['aux.loss_ce']
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stages[3][0].mlp.fc2.weight.grad.abs().sum() > 0
