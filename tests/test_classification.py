"""ImageNet classification with mmpretrain: the four recipe configs, official
weights giving the official logits, the toy image-folder set, train -> test
through tools/, the inferencer and the demo."""
import glob
import os.path as osp
import pickle
import runpy
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from PIL import Image

from casvit_mm import CASViT
from casvit_mm.checkpoint import to_mmpretrain
from casvit_mm.toy_data.imagenet import TOY_IMAGENET_CLASSES, make_toy_imagenet
from helpers import REPO, loader_options, read_metrics, run_tool
from reference_casvit import official_forward, official_state_dict

TOY = 'configs/classification/casvit_xs_toy.py'
ARCHS = ('xs', 's', 'm', 't')
WIDTHS = {a: CASViT.arch_settings[a]['widths'] for a in ARCHS}


def load(path):
    return Config.fromfile(osp.join(REPO, path))


def build(cfg):
    """The classifier as mmpretrain's runner and inferencer build it."""
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    cfg.model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    return MODELS.build(cfg.model)


def images(batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
            for _ in range(batch)]


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize('arch', ARCHS)
def test_recipe_config_is_the_official_one(arch):
    cfg = load(f'configs/classification/casvit_{arch}_in1k.py')
    assert cfg.default_scope == 'mmpretrain' and 'casvit_mm' in cfg.custom_imports.imports
    backbone, head = cfg.model.backbone, cfg.model.head
    assert cfg.model.type == 'ImageClassifier' and cfg.model.neck is None
    assert (backbone.type, backbone.arch, backbone.out_indices) == ('CASViT', arch, (3,))
    assert backbone.global_pool is True and backbone.drop_path_rate == 0.1
    assert (head.type, head.distillation) == ('EfficientFormerClsHead', True)
    assert (head.in_channels, head.num_classes) == (WIDTHS[arch][-1], 1000)
    assert head.loss.label_smooth_val == 0.1
    assert cfg.train_dataloader.batch_size == 128  # x 8 GPUs
    assert cfg.auto_scale_lr.base_batch_size == 1024
    for loader, split in ((cfg.train_dataloader, 'train'), (cfg.val_dataloader, 'val')):
        dataset = loader.dataset
        assert (dataset.type, dataset.data_root, dataset.split) == ('ImageNet', 'data/imagenet',
                                                                     split)
    train_steps = [t['type'] for t in cfg.train_dataloader.dataset.pipeline]
    assert 'RandAugment' in train_steps and 'RandomErasing' not in train_steps
    test_steps = cfg.val_dataloader.dataset.pipeline
    assert (test_steps[1].scale, test_steps[2].crop_size) == (256, 224)
    optim = cfg.optim_wrapper
    assert (optim.optimizer.type, optim.optimizer.lr, optim.optimizer.weight_decay) == (
        'AdamW', 6e-3, 0.05)
    assert optim.accumulative_counts == 2  # the official --update_freq 2
    assert optim.paramwise_cfg.norm_decay_mult == optim.paramwise_cfg.bias_decay_mult == 0
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.end, cosine.type, cosine.end) == (
        'LinearLR', 20, 'CosineAnnealingLR', 300)
    assert cfg.train_cfg.max_epochs == 300
    [ema] = cfg.custom_hooks
    assert (ema.type, ema.momentum, ema.interval) == ('EMAHook', 5e-4, 2)


@pytest.mark.parametrize('arch', ARCHS)
def test_converted_official_weights_give_the_official_logits(arch):
    """Random weights in the official layout (both heads, non-trivial BN
    statistics), converted, loaded strictly into the config's classifier: the
    logits equal the independent functional reference's, and mmpretrain's
    prediction path ranks the classes the same way."""
    official = official_state_dict(arch, classifier=True, num_classes=1000, seed=1)
    model = build(load(f'configs/classification/casvit_{arch}_in1k.py'))
    assert isinstance(model.backbone, CASViT) and model.backbone.widths == WIDTHS[arch]
    model.load_state_dict(to_mmpretrain(official), strict=True)
    model.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x, mode='tensor')
        preds = model(x, mode='predict')
    reference = official_forward(official, x, arch, classifier=True)
    assert ours.shape == reference.shape == (2, 1000)
    assert (ours - reference).abs().max() <= 1e-5
    assert reference.std() > 1e-2  # the comparison is not between two near-zero outputs
    assert preds[0].pred_score.shape == (1000,)
    assert [int(p.pred_label) for p in preds] == reference.argmax(1).tolist()


def test_distilled_head_cannot_train_but_the_single_head_can():
    cfg = load('configs/classification/casvit_xs_in1k.py')
    model = build(cfg.copy()).train()
    assert model.backbone.stages[-1][-1].drop_path.drop_prob == pytest.approx(0.1)
    from mmpretrain.structures import DataSample
    samples = [DataSample().set_gt_label(i) for i in (3, 7)]
    data = model.data_preprocessor(dict(inputs=images(), data_samples=samples), True)
    # mmpretrain cannot train the two-head (distilled) classifier...
    with pytest.raises(NotImplementedError):
        model(**data, mode='loss')
    # ... the README's switch, as the official training script does, can.
    cfg.model.head.distillation = False
    model = build(cfg).train()
    loss = model(**data, mode='loss')['loss']
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert model.backbone.patch_embed[0].weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_converter_tool_output_loads_into_the_config(tmp_path):
    """The official file layout (weights under `model`, plus training state),
    through tools/model_converters, then loaded as tools/test.py loads it."""
    official = official_state_dict('xs', classifier=True, num_classes=1000, seed=3)
    src, dst = tmp_path / 'cas-vit-xs.pth', tmp_path / 'casvit-xs_in1k.pth'
    torch.save(dict(model=official, epoch=299), src)
    run_tool('tools/model_converters/casvit_to_mm.py', src, dst)
    model = build(load('configs/classification/casvit_xs_in1k.py'))
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)
    model.eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        diff = model(x, mode='tensor') - official_forward(official, x, 'xs', classifier=True)
    assert diff.abs().max() <= 1e-5


# ------------------------------------------------------------------ toy set
@pytest.fixture(scope='session')
def toy_imagenet(tmp_path_factory):
    """4 training and 2 validation images per class, 32 px, generated once."""
    root = str(tmp_path_factory.mktemp('toy_imagenet'))
    return make_toy_imagenet(root, num_train=4, num_val=2, size=32, seed=0)


def test_toy_imagenet_is_deterministic_image_folders(tmp_path, toy_imagenet):
    again = make_toy_imagenet(str(tmp_path / 'again'), num_train=4, num_val=2, size=32, seed=0)
    other = make_toy_imagenet(str(tmp_path / 'other'), num_train=1, num_val=1, size=32, seed=1)
    name = 'train/ring/ring_0000.JPEG'
    first = np.array(Image.open(osp.join(toy_imagenet['root'], name)))
    assert first.shape == (32, 32, 3)
    np.testing.assert_array_equal(first, np.array(Image.open(osp.join(again['root'], name))))
    assert not np.array_equal(first, np.array(Image.open(osp.join(other['root'], name))))
    for split, n in (('train', 4), ('val', 2)):
        for cls in TOY_IMAGENET_CLASSES:
            assert len(glob.glob(osp.join(toy_imagenet['root'], split, cls, '*.JPEG'))) == n
    assert (toy_imagenet['train'], toy_imagenet['val']) == (16, 8)
    with pytest.raises(ValueError, match='size of at least 32'):
        make_toy_imagenet(str(tmp_path / 'bad'), size=8)


def test_toy_config_reads_the_folders_as_classes(toy_imagenet):
    from mmpretrain.registry import DATASETS
    init_default_scope('mmpretrain')
    cfg = load(TOY)
    assert cfg.model.head.num_classes == len(TOY_IMAGENET_CLASSES)
    assert cfg.model.head.distillation is False
    dataset_cfg = cfg.val_dataloader.dataset
    dataset_cfg.update(data_root=toy_imagenet['root'], pipeline=[])
    dataset = DATASETS.build(dataset_cfg)
    assert dataset.metainfo['classes'] == TOY_IMAGENET_CLASSES and len(dataset) == 8
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        assert TOY_IMAGENET_CLASSES[info['gt_label']] in info['img_path']


# ------------------------------------------------------------- end to end
def toy_options(toy_imagenet, **extra):
    opts = ['train_dataloader.batch_size=4', 'default_hooks.logger.interval=1']
    opts += loader_options(toy_imagenet['root'])
    return opts + [f'{k}={v}' for k, v in extra.items()]


@pytest.fixture(scope='session')
def trained(toy_imagenet, tmp_path_factory):
    """tools/train.py on the toy config for 2 epochs of 4 iterations; the checkpoint."""
    work = tmp_path_factory.mktemp('cls_work')
    out = run_tool('tools/train.py', TOY, '--work-dir', work, '--cfg-options',
                   *toy_options(toy_imagenet, **{'train_cfg.max_epochs': 2}))
    assert 'Epoch(train) [2][4/4]' in out and 'accuracy/top1' in out  # trained, validated
    ckpt = work / 'epoch_2.pth'
    assert ckpt.is_file()
    return ckpt


@pytest.mark.slow
def test_train_then_test_through_tools(trained, toy_imagenet, tmp_path):
    work, pkl = tmp_path / 'test', tmp_path / 'preds.pkl'
    run_tool('tools/test.py', TOY, trained, '--work-dir', work, '--out', pkl,
             '--cfg-options', *toy_options(toy_imagenet))
    top1 = read_metrics(work)['accuracy/top1']
    assert 0. <= top1 <= 100.
    preds = pickle.load(open(pkl, 'rb'))
    assert len(preds) == 8
    assert all(p['pred_score'].shape == (len(TOY_IMAGENET_CLASSES),) for p in preds)
    # the dumped predictions give the reported accuracy
    hits = [int(p['pred_label']) == int(p['gt_label']) for p in preds]
    assert 100. * sum(hits) / len(hits) == pytest.approx(top1)


@pytest.mark.slow
def test_inferencer_and_demo_classify_an_image(trained, toy_imagenet, capsys):
    from mmpretrain.apis import ImageClassificationInferencer
    image = osp.join(toy_imagenet['root'], 'val', 'disk', 'disk_0000.JPEG')
    inferencer = ImageClassificationInferencer(model=osp.join(REPO, TOY),
                                               pretrained=str(trained), device='cpu')
    [result] = inferencer(image)
    assert result['pred_class'] in TOY_IMAGENET_CLASSES
    assert TOY_IMAGENET_CLASSES[result['pred_label']] == result['pred_class']
    assert sum(result['pred_scores']) == pytest.approx(1, abs=1e-4)

    argv = sys.argv
    sys.argv = ['cls_demo.py', image, osp.join(REPO, TOY), '--weights', str(trained)]
    try:
        runpy.run_path(osp.join(REPO, 'demo', 'cls_demo.py'), run_name='__main__')
    finally:
        sys.argv = argv
    assert f"{image}: {result['pred_class']} (" in capsys.readouterr().out


@pytest.mark.slow
def test_deploy_test_of_an_ema_config_gives_the_same_predictions(trained, toy_imagenet,
                                                                  tmp_path):
    """The toy config trains with EMAHook; ``tools/test.py --deploy`` tests the fused
    model on the checkpoint's (averaged) weights, as the plain test does."""
    scores = {}
    for name, extra in (('plain', []), ('deploy', ['--deploy'])):
        pkl = tmp_path / f'{name}.pkl'
        out = run_tool('tools/test.py', TOY, trained, '--work-dir', tmp_path / name, '--out',
                       pkl, *extra, '--cfg-options', *toy_options(toy_imagenet))
        scores[name] = torch.stack([p['pred_score'] for p in pickle.load(open(pkl, 'rb'))])
    assert 'EMAHook left out' in out and 'deploy-mode model' in out
    assert torch.allclose(scores['deploy'], scores['plain'], atol=1e-4)
