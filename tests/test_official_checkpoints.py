"""Official whole-model checkpoints (mmdet 2.24 RetinaNet / Mask R-CNN, mmseg 0.24
Semantic FPN) through every OpenMMLab loading path, the converter, and the
refusal of checkpoints that run code, on every tool that reads one.

The files are built here in the official layout (``state_dict`` with
``backbone.`` + the official dense backbone, the neck's and heads' keys,
``meta`` as mmcv 1.5 writes it, an AdamW ``optimizer``) with random weights;
features are compared with the independent functional reference.
"""
import os
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner, load_checkpoint

import casvit_mm  # noqa: F401  (registers CASViT and the safe loader)
from casvit_mm.checkpoint import CheckpointError, UnsafeCheckpointError, safe_loader_is_registered
from casvit_mm.cli import build_model
from casvit_mm.toy_data.coco import cfg_options, make_toy_coco
from helpers import REPO, loader_options
from reference_casvit import official_forward, official_state_dict

CONFIGS = {
    'retinanet': 'configs/detection/retinanet_casvit_{arch}.py',
    'mask_rcnn': 'configs/detection/mask_rcnn_casvit_{arch}.py',
    'fpn': 'configs/segmentation/fpn_casvit_{arch}.py',
}
RETINA_TOY = 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py'
ENV = dict(os.environ, OMP_NUM_THREADS='1')


def config_path(kind, arch):
    return osp.join(REPO, CONFIGS[kind].format(arch=arch))


def official_file(config, arch, path, seed=0, extra_meta=None):
    """Write an official mmdet 2.24 / mmseg 0.24 checkpoint of ``config``'s model.

    Returns the official backbone state dict and the whole state dict.
    """
    torch.manual_seed(seed)
    model = build_model(config)
    backbone = official_state_dict(arch, seed=seed)
    state_dict = OrderedDict((f'backbone.{k}', v) for k, v in backbone.items())
    state_dict.update((k, v.clone()) for k, v in model.state_dict().items()
                      if not k.startswith('backbone.'))
    seg = model.cfg.default_scope == 'mmseg'
    meta = dict(mmcv_version='1.5.0', time='Mon Jun  3 10:00:00 2024', epoch=12, iter=88000,
                config='model = dict(type="RetinaNet", backbone=dict(type="rcvit_xs"))',
                CLASSES=('person', 'bicycle', 'car'), seed=0, exp_name='official.py',
                hook_msgs=dict(last_ckpt='work_dirs/official/latest.pth'))
    meta['mmseg_version' if seg else 'mmdet_version'] = '0.24.0' if seg else '2.24.0'
    if seg:
        meta['PALETTE'] = [[120, 120, 120], [180, 120, 120], [6, 230, 230]]
    meta.update(extra_meta or {})
    first = next(iter(state_dict.values()))
    optimizer = dict(state={0: dict(step=torch.tensor(88000.), exp_avg=torch.zeros_like(first),
                                    exp_avg_sq=torch.zeros_like(first))},
                     param_groups=[dict(lr=2e-4, betas=(0.9, 0.999), eps=1e-8,
                                        weight_decay=1e-4, amsgrad=False, params=[0])])
    torch.save(dict(meta=meta, state_dict=state_dict, optimizer=optimizer), path)
    return backbone, state_dict


def assert_backbone_is_official(model, official, arch, size=64):
    backbone = model.backbone.eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ours = backbone(x)
    ref = official_forward(official, x, arch)
    assert len(ours) == len(ref) == 4
    for a, b in zip(ours, ref):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-5


def assert_heads_loaded(model, state_dict):
    own = model.state_dict()
    heads = [k for k in state_dict if not k.startswith('backbone.')]
    assert heads and all(torch.equal(own[k], state_dict[k]) for k in heads)


# ------------------------------------------------------ every loader converts
@pytest.mark.parametrize('arch', ['xs', 's', 'm', 't'])
@pytest.mark.parametrize('kind', ['retinanet', 'mask_rcnn', 'fpn'])
def test_official_file_through_mmengine_load_checkpoint(kind, arch, tmp_path):
    path = tmp_path / f'{kind}_rcvit_{arch}.pth'
    official, state_dict = official_file(config_path(kind, arch), arch, path)
    torch.manual_seed(1)  # another random init, overwritten by the file
    model = build_model(config_path(kind, arch))
    load_checkpoint(model, str(path), map_location='cpu')  # mmengine's default: strict=False
    assert_backbone_is_official(model, official, arch)
    assert_heads_loaded(model, state_dict)


def test_official_file_through_runner_load_from(tmp_path):
    """What tools/test.py, tools/train.py and MM's own tools do with a checkpoint."""
    cfg = Config.fromfile(osp.join(REPO, RETINA_TOY))
    path = tmp_path / 'retinanet_rcvit_xs.pth'
    official, state_dict = official_file(cfg, 'xs', path)
    cfg.work_dir, cfg.load_from = str(tmp_path / 'work'), str(path)
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    assert_backbone_is_official(runner.model, official, 'xs')
    assert_heads_loaded(runner.model, state_dict)


def test_official_file_through_a_list_init_cfg(tmp_path):
    """mmengine's PretrainedInit (init_cfg given as a list) goes through the hook too."""
    path = tmp_path / 'fpn_rcvit_xs.pth'
    official, _ = official_file(config_path('fpn', 'xs'), 'xs', path)
    cfg = Config.fromfile(config_path('fpn', 'xs'))
    cfg.model.backbone.init_cfg = [dict(type='Pretrained', checkpoint=str(path),
                                        prefix='backbone.')]
    from mmseg.registry import MODELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert_backbone_is_official(model, official, 'xs')


def test_backbone_of_another_size_is_an_error_naming_file_model_and_keys(tmp_path):
    path = tmp_path / 'retinanet_rcvit_m.pth'
    official_file(config_path('retinanet', 'm'), 'm', path)
    model = build_model(config_path('retinanet', 'xs'))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, str(path), map_location='cpu')
    message = str(info.value)
    assert str(path) in message
    assert "CASViT(arch='xs')" in message and "module 'backbone'" in message
    assert 'patch_embed.0.weight: checkpoint (32, 3, 3, 3) vs model (24, 3, 3, 3)' in message
    assert "looks like arch 'm'" in message


def test_a_resnet_detector_file_is_an_error_not_a_random_backbone(tmp_path):
    path = tmp_path / 'retinanet_r18.pth'
    sd = build_model(config_path('retinanet', 'xs')).state_dict()
    sd = OrderedDict((k, v) for k, v in sd.items() if not k.startswith('backbone.'))
    sd['backbone.conv1.weight'] = torch.zeros(64, 3, 7, 7)
    sd['backbone.layer1.0.conv1.weight'] = torch.zeros(64, 64, 3, 3)
    torch.save(dict(state_dict=sd, meta=dict(mmdet_version='2.24.0')), path)
    model = build_model(config_path('retinanet', 'xs'))
    with pytest.raises(CheckpointError, match=r"retinanet_r18.pth' does not fit CASViT"
                                              r".*missing \(first: \['patch_embed.0.weight'"
                                              r".*left over \(first: \['conv1.weight'"):
        load_checkpoint(model, str(path), map_location='cpu')


# ------------------------------------------------------------------ converter
def run(*args, ok=True, env=None):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, (f'{args[0]} failed:\n{proc.stdout[-3000:]}\n'
                                      f'{proc.stderr[-3000:]}')
    return proc


CONVERTER = 'tools/model_converters/casvit_to_mm.py'


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['retinanet', 'mask_rcnn', 'fpn'])
def test_converter_writes_a_checkpoint_that_loads_strictly(kind, tmp_path):
    src, dst, again = tmp_path / 'official.pth', tmp_path / 'ours.pth', tmp_path / 'again.pth'
    official, state_dict = official_file(config_path(kind, 'xs'), 'xs', src)
    out = run(CONVERTER, src, dst).stdout
    assert 'backbone.network.0.1.* -> backbone.stages.0.1.*' in out
    assert 'backbone.network.3.proj -> backbone.downsamples.1.0' in out
    assert 'backbone.norm6 -> backbone.norm3' in out
    assert f'loads strictly into {CONFIGS[kind].format(arch="xs")}' in out
    model = build_model(config_path(kind, 'xs'))
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)
    assert_backbone_is_official(model, official, 'xs')
    assert_heads_loaded(model, state_dict)
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['dataset_meta']['classes'] == ('person', 'bicycle', 'car')
    assert not any(k.startswith('backbone.network.') for k in converted['state_dict'])
    if kind != 'retinanet':
        return
    # idempotent: converting its own output renames nothing and changes nothing
    assert 'no keys renamed' in run(CONVERTER, dst, again).stdout
    twice = torch.load(again, weights_only=True)['state_dict']
    assert twice.keys() == converted['state_dict'].keys()
    assert all(torch.equal(twice[k], converted['state_dict'][k]) for k in twice)


@pytest.mark.slow
def test_converter_says_which_config_fits(tmp_path):
    src = tmp_path / 'official.pth'
    official_file(config_path('retinanet', 's'), 's', src)
    proc = run(CONVERTER, src, tmp_path / 'out.pth', '--config',
               config_path('mask_rcnn', 's'), ok=False)
    assert proc.returncode != 0
    assert 'do not load strictly into' in proc.stderr
    assert ('fits configs/detection/retinanet_casvit_s.py (model '
            'retinanet_casvit-s_fpn_1x_coco)') in proc.stderr
    assert not (tmp_path / 'out.pth').exists()


# -------------------------------------------------------------- tools/test.py
@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('official_toy_coco')
    return make_toy_coco(str(root), num_train=4, num_val=2, image_size=64, seed=0)


def toy_options(toy):
    opts = cfg_options(toy['root'])
    opts += loader_options()
    return opts


@pytest.fixture(scope='module')
def toy_ade(tmp_path_factory):
    from casvit_mm.toy_data.ade import make_toy_ade
    return make_toy_ade(str(tmp_path_factory.mktemp('official_toy_ade')), num_train=2,
                        num_val=2, size=(96, 72), seed=0)


@pytest.mark.slow
@pytest.mark.parametrize('config, metric', [
    (RETINA_TOY, 'coco/bbox_mAP'),
    ('configs/detection/toy/mask_rcnn_casvit_xs_toy-shapes.py', 'coco/segm_mAP'),
    ('configs/segmentation/fpn_casvit_xs_toy.py', 'mIoU'),
], ids=['retinanet', 'mask_rcnn', 'fpn'])
def test_official_file_through_tools_test(config, metric, toy, toy_ade, tmp_path):
    path = tmp_path / 'official.pth'
    official_file(osp.join(REPO, config), 'xs', path)
    if 'segmentation' in config:
        opts = ['test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
                f'test_dataloader.dataset.data_root={toy_ade["root"]}']
    else:
        opts = toy_options(toy) + ['model.test_cfg.score_thr=0.0' if 'retina' in config
                                   else 'model.test_cfg.rcnn.score_thr=0.0']
    proc = run('tools/test.py', config, path, '--work-dir', tmp_path / 'work',
               '--cfg-options', *opts)
    log = proc.stdout + proc.stderr
    assert 'local_weights_only backend' in log
    assert "CASViT 'backbone': loaded" in log and '(official layout)' in log
    assert 'do not match exactly' not in log  # mmengine's mismatch warning
    assert metric in log


# --------------------------------------------- code-running pickles: refused
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.fixture
def evil(tmp_path):
    """An official-looking whole model whose ``meta`` runs a command when unpickled."""
    marker = tmp_path / 'pwned'
    path = tmp_path / 'retinanet_rcvit_xs_evil.pth'
    official_file(osp.join(REPO, RETINA_TOY), 'xs', path,
                  extra_meta=dict(env_info=_Payload(marker)))
    return path, marker


def assert_refused(proc, path, marker):
    assert proc.returncode != 0
    assert f"Refused to load '{path}'" in proc.stderr
    assert 'posix.system' in proc.stderr and 'Nothing was executed' in proc.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_evil_file_refused_by_tools_test(evil, toy, tmp_path):
    path, marker = evil
    proc = run('tools/test.py', RETINA_TOY, path, '--work-dir', tmp_path / 'work',
               '--cfg-options', *toy_options(toy), ok=False)
    assert_refused(proc, path, marker)


@pytest.mark.slow
@pytest.mark.parametrize('how', ['resume', 'load_from'])
def test_evil_file_refused_by_tools_train(evil, toy, tmp_path, how):
    path, marker = evil
    args = ['--resume', path] if how == 'resume' else ['--cfg-options', f'load_from={path}']
    opts = toy_options(toy) + ['train_cfg.max_iters=1']
    if how == 'load_from':
        args += opts
    else:
        args += ['--cfg-options', *opts]
    proc = run('tools/train.py', RETINA_TOY, '--work-dir', tmp_path / 'work', *args, ok=False)
    assert_refused(proc, path, marker)


@pytest.mark.slow
def test_evil_file_refused_by_mmdets_own_test_tool(evil, toy, tmp_path):
    """mmdet's packaged tools/test.py, with casvit_mm only through custom_imports."""
    import mmdet
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
    if not osp.isfile(tool):
        pytest.skip('this mmdet wheel ships no .mim/tools/test.py')
    path, marker = evil
    proc = run(tool, RETINA_TOY, path, '--work-dir', tmp_path / 'work',
               '--cfg-options', *toy_options(toy), ok=False)
    assert_refused(proc, path, marker)


@pytest.mark.parametrize('tool', ['demo/image_demo.py', 'tools/deployment/export_onnx.py'])
def test_evil_file_refused_by_demo_and_export_tool(evil, tool, tmp_path):
    import cv2
    import numpy as np
    path, marker = evil
    image = tmp_path / 'image.jpg'
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    if tool.startswith('demo'):
        args = [image, RETINA_TOY, '--weights', path, '--out-dir', tmp_path / 'out']
    else:
        args = [RETINA_TOY, '--checkpoint', path, '--out-dir', tmp_path / 'out']
    proc = run(tool, *args, ok=False)
    assert_refused(proc, path, marker)


def test_evil_file_refused_by_load_checkpoint_and_inferencer(evil):
    path, marker = evil
    model = build_model(osp.join(REPO, RETINA_TOY))
    with pytest.raises(UnsafeCheckpointError, match='posix.system'):
        load_checkpoint(model, str(path), map_location='cpu')
    from mmdet.apis import DetInferencer
    with pytest.raises(UnsafeCheckpointError, match='Nothing was executed'):
        DetInferencer(model=osp.join(REPO, RETINA_TOY), weights=str(path), device='cpu')
    assert not marker.exists()


def test_importing_casvit_mm_installs_the_safe_loader():
    assert safe_loader_is_registered()


def test_a_trusted_legacy_file_loads_when_listed(tmp_path, monkeypatch):
    import datetime
    path = tmp_path / 'legacy.pth'
    torch.save(dict(state_dict={'w': torch.ones(1)}, meta=dict(when=datetime.date(2024, 1, 1))),
               path)
    from casvit_mm.checkpoint import TRUSTED_ENV, safe_load
    with pytest.raises(UnsafeCheckpointError, match='datetime.date'):
        safe_load(path)
    monkeypatch.setenv(TRUSTED_ENV, os.pathsep.join(['elsewhere.pth', str(path)]))
    assert safe_load(path)['meta']['when'] == datetime.date(2024, 1, 1)


def test_resuming_an_official_file_says_to_use_load_from(toy, tmp_path):
    """mmengine can resume only its own runs: the weights of an mmcv 1.x file are for
    load_from, and tools/train.py says so instead of mmengine's KeyError."""
    path = tmp_path / 'retinanet_rcvit_xs.pth'
    official_file(osp.join(REPO, RETINA_TOY), 'xs', path)
    proc = run('tools/train.py', RETINA_TOY, '--work-dir', tmp_path / 'work', '--resume', path,
               '--cfg-options', *toy_options(toy), ok=False)
    assert proc.returncode != 0
    assert (f"--resume: '{path}' cannot be resumed: it holds no mmengine training state"
            in proc.stderr)
    assert 'mmdet_version 2.24.0' in proc.stderr and f'load_from={path}' in proc.stderr


# ------------------------------------------- official ImageNet files as downloaded
def official_imagenet_file(path, arch='xs', seed=7):
    import argparse
    official = official_state_dict(arch, classifier=True, num_classes=1000, seed=seed)
    torch.save(dict(model=official, model_ema=official, epoch=299,
                    optimizer=dict(state={}, param_groups=[]),
                    args=argparse.Namespace(model=f'rcvit_{arch}', input_size=224)), path)
    return official


def test_official_imagenet_file_as_downloaded_into_get_model(tmp_path):
    """mmengine's loader reads it as an mmpretrain classifier: no converter needed."""
    from mmpretrain import get_model
    path = tmp_path / 'cas-vit-xs.pth'
    official = official_imagenet_file(path)
    model = get_model('casvit-xs_3rdparty_in1k', pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x, mode='tensor')
    assert (logits - official_forward(official, x, 'xs', classifier=True)).abs().max() <= 1e-5


def test_official_imagenet_file_into_a_backbone_with_a_list_init_cfg(tmp_path):
    """PretrainedInit without prefix: the hook takes the backbone, output norms at init."""
    from casvit_mm import CASViT
    path = tmp_path / 'cas-vit-xs.pth'
    official = official_imagenet_file(path)
    model = CASViT(arch='xs', init_cfg=[dict(type='Pretrained', checkpoint=str(path))])
    model.init_weights()
    model.eval()
    init = CASViT(arch='xs').state_dict()
    dense = dict(official)
    for i in range(4):
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            dense[f'norm{2 * i}.{name}'] = init[f'norm{i}.{name}']
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x)
    for a, b in zip(ours, official_forward(dense, x, 'xs')):
        assert (a - b).abs().max() <= 1e-5


@pytest.mark.slow
def test_tools_test_stops_when_the_heads_do_not_fit(toy, tmp_path):
    """A RetinaNet file given to a Mask R-CNN config: mmengine would warn and evaluate
    random heads; tools/test.py stops, naming the file, the model and the keys."""
    path = tmp_path / 'retinanet_rcvit_xs.pth'
    official_file(config_path('retinanet', 'xs'), 'xs', path)
    proc = run('tools/test.py', 'configs/detection/toy/mask_rcnn_casvit_xs_toy-shapes.py', path,
               '--work-dir', tmp_path / 'work', '--cfg-options', *toy_options(toy), ok=False)
    assert proc.returncode != 0
    assert f"Checkpoint '{path}' does not fit the MaskRCNN of this config" in proc.stderr
    assert "tensors missing (first: ['neck.lateral_convs.3.conv.weight'" in proc.stderr
    assert "'bbox_head.cls_convs.0.conv.weight'" in proc.stderr  # left over
    assert 'of another shape' in proc.stderr
    assert ('Its keys are those of configs/detection/retinanet_casvit_xs.py (model '
            'retinanet_casvit-xs_fpn_1x_coco)') in proc.stderr


@pytest.mark.slow
def test_official_file_through_mmdets_own_test_tool(toy, tmp_path):
    """mmdet's packaged tools/test.py, casvit_mm only through the config's custom_imports."""
    import mmdet
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
    if not osp.isfile(tool):
        pytest.skip('this mmdet wheel ships no .mim/tools/test.py')
    path = tmp_path / 'retinanet_rcvit_xs.pth'
    official_file(osp.join(REPO, RETINA_TOY), 'xs', path)
    proc = run(tool, RETINA_TOY, path, '--work-dir', tmp_path / 'work',
               '--cfg-options', *toy_options(toy), 'model.test_cfg.score_thr=0.0')
    log = proc.stdout + proc.stderr
    assert 'local_weights_only backend' in log and '(official layout)' in log
    assert 'do not match exactly' not in log and 'coco/bbox_mAP' in log


def test_a_checkpoint_read_through_mmengine_and_saved_again_stays_plain(tmp_path):
    """The loader tags state dicts with their file (for messages); the tag must not
    make a re-saved checkpoint need a non-allowlisted class."""
    from mmengine.runner.checkpoint import _load_checkpoint
    first, second = tmp_path / 'a.pth', tmp_path / 'b.pth'
    torch.save(dict(state_dict=OrderedDict(w=torch.ones(2)), meta={}), first)
    checkpoint = _load_checkpoint(str(first))
    assert checkpoint['state_dict']._metadata.get('w')['casvit_mm_source'] == str(first)
    torch.save(checkpoint, second)
    assert type(torch.load(second, weights_only=True)['state_dict']._metadata) is OrderedDict


def test_plain_load_state_dict_converts_and_checks_too():
    """No file at all: torch's own load_state_dict goes through the same hook."""
    from casvit_mm import CASViT
    official = official_state_dict('xs', seed=9)
    model = CASViT(arch='xs')
    model.load_state_dict(official)  # strict: every key converted and used
    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for a, b in zip(model(x), official_forward(official, x, 'xs')):
            assert (a - b).abs().max() <= 1e-5
    with pytest.raises(CheckpointError, match=r"The state dict being loaded does not fit "
                                              r"CASViT\(arch='s'\)"):
        CASViT(arch='s').load_state_dict(official)


def test_a_list_init_cfg_with_prefix_that_does_not_fit_names_the_file(tmp_path):
    """mmengine's PretrainedInit with a prefix drops the state dict's metadata: the
    message still names the file its tensors came from."""
    path = tmp_path / 'fpn_rcvit_m.pth'
    official_file(config_path('fpn', 'm'), 'm', path)
    cfg = Config.fromfile(config_path('fpn', 'xs'))
    cfg.model.backbone.init_cfg = [dict(type='Pretrained', checkpoint=str(path),
                                        prefix='backbone.')]
    from mmseg.registry import MODELS
    model = MODELS.build(cfg.model)
    with pytest.raises(CheckpointError, match=rf"The state dict read from '{path}' does not "
                                              rf"fit CASViT\(arch='xs'\)"):
        model.init_weights()


def test_official_imagenet_file_as_downloaded_through_runner_with_strict_test_hook(tmp_path):
    """What tools/test.py does with configs/classification and cas-vit-xs.pth."""
    from casvit_mm.engine import StrictCheckpointHook
    path = tmp_path / 'cas-vit-xs.pth'
    official = official_imagenet_file(path, seed=8)
    cfg = Config.fromfile(osp.join(REPO, 'configs/classification/casvit_xs_in1k.py'))
    cfg.work_dir, cfg.load_from = str(tmp_path / 'work'), str(path)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(StrictCheckpointHook())
    runner.call_hook('before_run')  # as Runner.test(): the config's EMAHook sets up here
    runner.load_or_resume()
    model = runner.model.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(x, mode='tensor')
    assert (logits - official_forward(official, x, 'xs', classifier=True)).abs().max() <= 1e-5
