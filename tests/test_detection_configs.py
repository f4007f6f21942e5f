"""Detection configs: they load, follow the official recipe, and build detectors
that train (losses) and predict on a small image; CAS-ViT also drops into a
stock mmdet config and the configs can be inherited as ``casvit_mm::``."""
import glob
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch.nn.modules.batchnorm import _BatchNorm

from casvit_mm.checkpoint import CheckpointError
from casvit_mm import CASViT
from helpers import REPO

DET = osp.join(REPO, 'configs', 'detection')
SIZES = ('xs', 's', 'm', 't')
REAL = [f'{det}_casvit_{size}.py' for det in ('retinanet', 'mask_rcnn') for size in SIZES]
TOY = [osp.relpath(p, DET) for p in sorted(glob.glob(osp.join(DET, 'toy', '*.py')))]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny inputs gain nothing from a second thread, and on a busy machine
    spinning OpenMP threads make these tests many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(name):
    return Config.fromfile(osp.join(DET, name))


def build_detector(model_cfg):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    return MODELS.build(model_cfg)


def test_every_config_is_listed():
    found = sorted(osp.basename(p) for p in glob.glob(osp.join(DET, '*.py')))
    assert found == sorted(REAL)
    assert len(TOY) == 2


@pytest.mark.parametrize('name', REAL)
def test_official_recipe(name):
    cfg = load(name)
    size = re.search(r'casvit_(\w+)\.py', name).group(1)
    backbone = cfg.model.backbone
    assert cfg.custom_imports.imports == ['casvit_mm']
    assert cfg.default_scope == 'mmdet'
    assert backbone.type == 'CASViT' and backbone.arch == size
    assert set(backbone) <= {'type', 'arch', 'out_indices', 'norm_eval', 'drop_path_rate',
                             'init_cfg'}, 'ResNet keys leaked from the mmdet base'
    assert backbone.norm_eval is True
    assert backbone.drop_path_rate == (0.1 if size in ('m', 't') else 0.)
    assert backbone.init_cfg == dict(type='Pretrained',
                                     checkpoint=f'checkpoints/casvit-{size}_3rdparty_in1k.pth')
    assert cfg.model.neck.in_channels == CASViT.arch_settings[size]['widths']
    assert cfg.model.neck.out_channels == 256 and cfg.model.neck.num_outs == 5
    if name.startswith('retinanet'):
        assert cfg.model.neck.start_level == 1
        assert cfg.model.neck.add_extra_convs == 'on_input'
    else:
        assert cfg.model.neck.get('start_level', 0) == 0
        assert cfg.test_evaluator.metric == ['bbox', 'segm']
    optimizer = cfg.optim_wrapper.optimizer
    assert dict(optimizer) == dict(type='AdamW', lr=2e-4, weight_decay=1e-4)
    assert cfg.train_dataloader.batch_size == 4 and cfg.auto_scale_lr.base_batch_size == 32
    assert cfg.train_cfg.max_epochs == 12
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == 500 and not warmup.by_epoch
    assert steps.type == 'MultiStepLR' and steps.milestones == [8, 11]
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'


@pytest.mark.slow
@pytest.mark.parametrize('name', REAL + TOY)
def test_builds_trains_and_predicts(name):
    from mmdet.testing import demo_mm_inputs
    cfg = load(name)
    cfg.model.backbone.init_cfg = None  # no checkpoint file in the tests
    model = build_detector(cfg.model)
    model.init_weights()
    with_mask = 'mask_rcnn' in name
    num_classes = 3 if name in TOY else 80
    packed = demo_mm_inputs(2, [[3, 64, 80], [3, 64, 64]], num_items=[2, 1],
                            num_classes=num_classes, with_mask=with_mask)

    model.train()
    bn = [m for m in model.backbone.modules() if isinstance(m, _BatchNorm)]
    # The recipe keeps backbone BN in eval mode; the from-scratch toys train it.
    assert bn and all(m.training != cfg.model.backbone.norm_eval for m in bn)
    losses = model(**model.data_preprocessor(packed, True), mode='loss')
    expected = {'loss_cls', 'loss_bbox'} if not with_mask else {
        'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'}
    assert expected <= set(losses)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v)
                for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.patch_embed[0].weight.grad is not None

    model.eval()
    with torch.no_grad():
        preds = model(**model.data_preprocessor(packed, False), mode='predict')
    assert len(preds) == 2
    for pred, (h, w) in zip(preds, [(64, 80), (64, 64)]):
        boxes = pred.pred_instances.bboxes
        assert boxes.shape[1] == 4 and len(pred.pred_instances.scores) == len(boxes)
        if len(boxes):
            assert (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()
        if with_mask:
            assert pred.pred_instances.masks.shape[1:] == (h, w)


def test_drop_path_per_size():
    for size in SIZES:
        cfg = load(f'retinanet_casvit_{size}.py')
        cfg.model.backbone.init_cfg = None
        backbone = build_detector(cfg.model).backbone
        last = backbone.stages[-1][-1].drop_path
        if size in ('m', 't'):
            assert last.drop_prob == pytest.approx(0.1)
        else:
            assert isinstance(last, torch.nn.Identity)


def test_missing_imagenet_checkpoint_says_what_to_do(tmp_path):
    cfg = load('retinanet_casvit_xs.py')
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'casvit-xs_in1k.pth')
    model = build_detector(cfg.model)
    with pytest.raises(CheckpointError, match="does not exist"):
        model.init_weights()


@pytest.mark.slow
def test_converted_imagenet_weights_reach_the_backbone(tmp_path, monkeypatch):
    """The README's path: official ImageNet weights, converted, at checkpoints/."""
    sys.path.insert(0, osp.dirname(__file__))
    try:
        from reference_casvit import official_state_dict
    finally:
        sys.path.pop(0)
    converter = osp.join(REPO, 'tools', 'model_converters', 'casvit_to_mm.py')
    official = tmp_path / 'cas-vit-xs.pth'
    torch.save({'model': official_state_dict('xs', classifier=True, dense_norms=False)},
               official)
    monkeypatch.chdir(tmp_path)  # the config's path is relative: checkpoints/...
    subprocess.run([sys.executable, converter, str(official),
                    'checkpoints/casvit-xs_3rdparty_in1k.pth'], check=True, capture_output=True)
    model = build_detector(load('mask_rcnn_casvit_xs.py').model)
    model.init_weights()
    expected = official_state_dict('xs', classifier=True, dense_norms=False)
    got = model.backbone.state_dict()
    assert torch.equal(got['stages.2.3.attn.qkv.weight'], expected['network.4.3.attn.qkv.weight'])
    assert torch.equal(got['downsamples.2.0.weight'], expected['network.5.proj.weight'])


def readme_config(title):
    """The python block of the README that starts with ``# <title>``."""
    text = open(osp.join(REPO, 'README.md'), encoding='utf-8').read()
    blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
    found = [b for b in blocks if b.startswith(f'# {title}')]
    assert found, f'README lost its "{title}" example'
    return found[0]


def test_stock_mmdet_config_switched_to_casvit(tmp_path):
    """The README's example: mmdet's own Faster R-CNN with a CAS-ViT backbone."""
    path = tmp_path / 'faster-rcnn_casvit-xs_fpn_1x_coco.py'
    path.write_text(readme_config('faster-rcnn_casvit-xs_fpn_1x_coco.py'))
    cfg = Config.fromfile(str(path))
    assert cfg.model.type == 'FasterRCNN' and cfg.model.backbone.type == 'CASViT'
    assert 'depth' not in cfg.model.backbone
    assert cfg.model.neck.in_channels == CASViT.arch_settings['xs']['widths']
    from mmdet.testing import demo_mm_inputs
    cfg.model.backbone.init_cfg = None  # the README's path holds no file here
    model = build_detector(cfg.model)
    model.init_weights()
    packed = demo_mm_inputs(1, [[3, 64, 64]], num_classes=80)
    losses = model(**model.data_preprocessor(packed, True), mode='loss')
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox'} <= set(losses)


def test_configs_inherit_as_casvit_mm_package(tmp_path):
    """A user's project inherits ``casvit_mm::detection/...`` like ``mmdet::``."""
    from mmengine.config.utils import MODULE2PACKAGE
    assert MODULE2PACKAGE.get('casvit_mm') == 'casvit_mm', (
        "importing casvit_mm must register it in mmengine's MODULE2PACKAGE, or mmengine "
        "refuses 'casvit_mm::' config paths")
    path = tmp_path / 'my_retinanet.py'
    path.write_text(readme_config('my_retinanet.py'))
    cfg = Config.fromfile(str(path))
    assert cfg.model.backbone.type == 'CASViT' and cfg.model.backbone.arch == 'xs'
    assert cfg.model.bbox_head.num_classes == 3
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    cfg.model.backbone.init_cfg = None
    model = build_detector(cfg.model)
    assert type(model).__name__ == 'RetinaNet' and isinstance(model.backbone, CASViT)
