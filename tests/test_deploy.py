"""Deploy mode: the fused CAS-ViT computes what the eval-mode model computes,
builds directly with ``deploy=True``, saves and reloads strictly, and every
entry point (``switch_to_deploy()``, ``deploy=True``, ``switch_model_to_deploy``,
the converter, the deploy configs) gives the same fast structure.

BatchNorm statistics and affine parameters are randomised first, so a fold
that ignored any of them (or mixed up q and k) would show; the tolerance is
1e-4 of the output scale.
"""
import copy
import glob
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.runner import load_checkpoint
from torch.nn.modules.batchnorm import _BatchNorm

from casvit_mm import CASViT
from casvit_mm.cli import build_model, deploy_config, relative_error, reparameterize
from casvit_mm.models.casvit import AdditiveBlock
from casvit_mm.deploy.switch import switch_model_to_deploy
from casvit_mm.models.fusion import use_fused_kernels
from helpers import REPO

TOL = 1e-4
DEPLOY_CONFIGS = sorted(osp.relpath(p, REPO)
                        for p in glob.glob(osp.join(REPO, 'configs', '*', 'deploy', '*.py')))


def randomize_bn(module, seed=0):
    """Non-trivial BN statistics and affine parameters (fresh BNs are identity-like)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return module


def bn_names(module):
    return [name for name, m in module.named_modules() if isinstance(m, _BatchNorm)]


def assert_fast_structure(backbone):
    """What the fast path is made of: fused blocks without BN, frozen
    channels-last weights, and activations on which the fused kernels run."""
    assert backbone.deploy
    assert all(b.deploy for s in backbone.stages for b in s)
    assert all(not n.startswith(('stages', 'patch_embed', 'downsamples'))
               for n in bn_names(backbone))
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.training
    with torch.no_grad():
        x = backbone.patch_embed(torch.randn(1, 3, 64, 64).contiguous(
            memory_format=torch.channels_last))
    assert use_fused_kernels(x)
    with pytest.raises(RuntimeError, match='deploy mode'):
        backbone.train()


def compare(model, fn, **deploy_kwargs):
    """``fn(model)`` before and after deploy; returns (relative error, deployed)."""
    model = randomize_bn(model).eval()
    with torch.no_grad():
        reference = fn(model)
    deployed = switch_model_to_deploy(copy.deepcopy(model), **deploy_kwargs)
    with torch.no_grad():
        outputs = fn(deployed)
    return relative_error(reference, outputs), deployed


@pytest.mark.parametrize('arch', ['xs', 's', 'm', 't', 'l'])
def test_switch_to_deploy_is_the_fast_path(arch):
    """The MobileOne convention on a bare backbone gives the whole fast path."""
    model = randomize_bn(CASViT(arch)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference = model(x)
        model.switch_to_deploy()
        model.switch_to_deploy()  # repeating is harmless
        err = relative_error(reference, model(x))
    assert err < TOL, f'{arch}: deployed differs from eval mode by {err:.2e}'
    assert bn_names(model) == ['norm0', 'norm1', 'norm2', 'norm3']
    assert_fast_structure(model)


def test_each_block_fuses_itself():
    block = randomize_bn(AdditiveBlock(16, drop_path_rate=0.1)).eval()
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        reference = block(x)
        block.switch_to_deploy()
        assert block.attn.deploy and block.mlp.deploy and block.local_perception.deploy
        assert not hasattr(block, 'norm1') and not hasattr(block.attn, 'oper_q')
        assert relative_error(reference, block(x)) < TOL  # NCHW: plain ops
        cl = x.contiguous(memory_format=torch.channels_last)
        assert relative_error(reference, block.to(memory_format=torch.channels_last)(cl)) < TOL


@pytest.mark.parametrize('kwargs', [dict(), dict(out_indices=(1, 3)),
                                    dict(out_indices=-1, global_pool=True)])
def test_deploy_true_loads_fused_checkpoint_strictly(tmp_path, kwargs):
    trained = randomize_bn(CASViT('xs', **kwargs)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = trained(x)
    trained.switch_to_deploy()
    path = tmp_path / 'fused.pth'
    torch.save(dict(state_dict=trained.state_dict()), path)

    built = CASViT('xs', deploy=True, **kwargs)
    assert_fast_structure(built)
    load_checkpoint(built, str(path), strict=True)  # mmengine's loader, strict
    assert set(built.state_dict()) == set(trained.state_dict())
    with torch.no_grad():
        assert relative_error(reference, built(x)) < TOL
        assert relative_error(trained(x), built(x)) < 1e-6  # same weights, same code


def test_layout_mismatch_is_an_error_not_a_warning(tmp_path):
    """mmengine's non-strict loaders only warn on wrong keys: the backbone says what to do."""
    train_path, fused_path = tmp_path / 'train.pth', tmp_path / 'fused.pth'
    torch.save(dict(state_dict=CASViT('xs').state_dict()), train_path)
    fused = CASViT('xs')
    fused.switch_to_deploy()
    torch.save(dict(state_dict=fused.state_dict()), fused_path)
    with pytest.raises(RuntimeError, match='casvit_reparameterize'):
        load_checkpoint(CASViT('xs', deploy=True), str(train_path), strict=False)
    with pytest.raises(RuntimeError, match='deploy config'):
        load_checkpoint(CASViT('xs'), str(fused_path), strict=False)


def test_pretrained_backbone_into_deploy_model(tmp_path):
    """init_cfg=Pretrained with an ordinary (unfused) backbone checkpoint:
    loaded into a training twin, fused, copied."""
    trained = randomize_bn(CASViT('xs')).eval()
    path = tmp_path / 'backbone.pth'
    torch.save(dict(state_dict=trained.state_dict()), path)
    model = CASViT('xs', deploy=True, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(trained(x), model(x)) < TOL


@pytest.mark.parametrize('batch, channels_last', [(2, False), (3, True)])
def test_layouts(batch, channels_last):
    x = torch.randn(batch, 3, 64, 64)
    err, deployed = compare(CASViT('xs'), lambda m: m(x), channels_last=channels_last)
    assert err < TOL
    # channels-last runs oneDNN's fused conv + activation / addition kernels,
    # NCHW the plain ops: both paths are compared with eval mode above
    assert deployed.patch_embed[0].weight.is_contiguous(
        memory_format=torch.channels_last) == channels_last


def test_input_gradients_still_work():
    """Deployed weights need no gradients, but saliency-style input gradients
    must survive the in-place ops of the deployed blocks."""
    model = randomize_bn(CASViT('xs')).eval()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    sum(o.sum() for o in model(x)).backward()
    reference, x.grad = x.grad.clone(), None
    deployed = switch_model_to_deploy(copy.deepcopy(model))
    sum(o.sum() for o in deployed(x)).backward()
    assert relative_error(reference, x.grad) < TOL


def test_deploy_needs_a_casvit():
    with pytest.raises(ValueError, match='no CASViT'):
        switch_model_to_deploy(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    with pytest.raises(ValueError, match='compile must be'):
        switch_model_to_deploy(CASViT('xs'), compile='fast')


def _det_forward(model, x):
    # backbone + FPN; RetinaNet adds its raw head outputs (no thresholds/NMS,
    # so tiny float differences cannot change the comparison)
    feats = model.extract_feat(x)
    if hasattr(model, 'bbox_head'):
        return feats, model.bbox_head(feats)
    return feats


@pytest.mark.parametrize('config, kept_norms', [
    ('configs/detection/retinanet_casvit_xs.py', ['norm3']),
    ('configs/detection/mask_rcnn_casvit_xs.py', []),
    ('configs/segmentation/fpn_casvit_xs.py', []),
])
def test_models_from_configs(config, kept_norms):
    model = build_model(osp.join(REPO, config))
    x = torch.randn(1, 3, 96, 128)
    if 'segmentation' in config:
        fn = lambda m: m._forward(x)  # noqa: E731  (decode-head logits)
    else:
        fn = lambda m: _det_forward(m, x)  # noqa: E731
    err, deployed = compare(model, fn)
    assert err < TOL, f'{config}: deployed differs by {err:.2e}'
    # output norms are folded into the FPN's 1x1 lateral convs, except where the
    # FPN also reads that output with a padded 3x3 conv (RetinaNet's on_input)
    assert bn_names(deployed.backbone) == kept_norms
    assert_fast_structure(deployed.backbone)
    with pytest.raises(RuntimeError, match='deploy mode'):
        deployed.train()


def _base_of(deploy):
    """The config a deploy variant inherits: configs/TASK/[toy/]NAME."""
    task_dir = osp.dirname(osp.dirname(osp.join(REPO, deploy)))
    for sub in ('', 'toy'):
        path = osp.join(task_dir, sub, osp.basename(deploy))
        if osp.isfile(path):
            return path
    raise AssertionError(f'{deploy} has no base config')


@pytest.mark.parametrize('config', DEPLOY_CONFIGS)
def test_every_deploy_config_builds(config):
    """One deploy variant per detection / segmentation / classification config:
    the config it inherits with backbone.deploy=True, building the fused backbone."""
    expected = Config.fromfile(_base_of(config)).model
    expected.backbone.deploy = True
    assert Config.fromfile(osp.join(REPO, config)).model == expected
    model = build_model(osp.join(REPO, config))
    assert_fast_structure(model.backbone)


def test_every_config_has_a_deploy_variant():
    # the model configs of the three tasks; configs/own_project holds examples to copy
    # and configs/mmdeploy mmdeploy's deploy configs, neither a model of this repository
    configs = [p for task in ('detection', 'segmentation', 'classification')
               for p in glob.glob(osp.join(REPO, 'configs', task, '**', '*.py'), recursive=True)
               if '_base_' not in p and '/deploy/' not in p]
    assert len(configs) == len(DEPLOY_CONFIGS) > 0
    for path in configs:
        task = osp.relpath(path, REPO).split(osp.sep)[1]
        assert osp.isfile(osp.join(REPO, 'configs', task, 'deploy', osp.basename(path))), path


@pytest.mark.slow
def test_converter_writes_a_checkpoint_the_deploy_config_loads(tmp_path):
    """tools/model_converters/casvit_reparameterize.py: trained checkpoint in,
    fused checkpoint out, loaded strictly by the deploy config (RetinaNet here;
    the reparameterize() it calls is config-agnostic)."""
    config = osp.join(REPO, 'configs/detection/retinanet_casvit_xs.py')
    trained = randomize_bn(build_model(config))
    ckpt, out = tmp_path / 'trained.pth', tmp_path / 'fused.pth'
    torch.save(dict(meta={}, state_dict=trained.state_dict()), ckpt)
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools/model_converters/casvit_reparameterize.py'),
         config, str(ckpt), str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    fused = build_model(osp.join(REPO, 'configs/detection/deploy/retinanet_casvit_xs.py'))
    load_checkpoint(fused, str(out), strict=True)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        err = relative_error(_det_forward(trained, x), _det_forward(fused, x))
    assert err < TOL
    # a fused model cannot be fused again from its own config
    with pytest.raises(ValueError, match='already fused'):
        reparameterize(deploy_config(config), str(out))


def test_inferencer():
    """Inferencers: ``switch_model_to_deploy(inferencer.model)``, or the deploy
    config with a fused checkpoint: the same outputs as eval mode."""
    from mmseg.apis import MMSegInferencer
    model = randomize_bn(build_model(osp.join(REPO, 'configs/segmentation/fpn_casvit_xs.py')))
    inferencer = MMSegInferencer(model=model.cfg, weights=None, device='cpu')
    inferencer.model.load_state_dict(model.state_dict())
    image = np.random.default_rng(0).integers(0, 255, (80, 112, 3), dtype=np.uint8)

    def logits(inf):
        return inf(image, return_datasamples=True).seg_logits.data

    reference = logits(inferencer)
    model.backbone.switch_to_deploy()
    fused = MMSegInferencer(model=deploy_config(model.cfg), weights=None, device='cpu')
    fused.model.load_state_dict(model.state_dict(), strict=True)
    assert fused.model.backbone.deploy
    assert relative_error(reference, logits(fused)) < TOL
    switch_model_to_deploy(inferencer.model)
    assert_fast_structure(inferencer.model.backbone)
    assert relative_error(reference, logits(inferencer)) < TOL


def test_prepacked_weights_follow_new_weights():
    """The fused kernels use weights pre-packed once; loading other weights
    into a deployed model that already ran must not leave the old ones in use."""
    x = torch.randn(2, 3, 64, 64)
    first, second = (randomize_bn(CASViT('xs'), seed).eval() for seed in (0, 1))
    eval_second = copy.deepcopy(second)
    with torch.no_grad():
        reference = second(x)
    first.switch_to_deploy()
    second.switch_to_deploy()
    with torch.no_grad():
        first(x)  # packs first's weights
        first.load_state_dict(second.state_dict())
        assert relative_error(reference, first(x)) < TOL
    clone = copy.deepcopy(first)  # a copy packs its own
    with torch.no_grad():
        assert relative_error(reference, clone(x)) < TOL
        y = torch.randn(1, 3, 96, 64)  # another input shape: packed for it
        assert relative_error(eval_second(y), first(y)) < TOL
        assert relative_error(reference, first(x)) < TOL


@pytest.mark.slow
def test_mmpretrain_reparameterize_tool_as_is(tmp_path):
    """mmpretrain's own tools/model_converters/reparameterize_model.py (shipped
    in its wheel) fuses a CAS-ViT classifier; the deploy config loads the result
    strictly."""
    import mmpretrain
    tool = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'model_converters',
                    'reparameterize_model.py')
    if not osp.isfile(tool):
        pytest.skip('this mmpretrain wheel ships no tools/')
    config = osp.join(REPO, 'configs/classification/casvit_xs_toy.py')
    trained = randomize_bn(build_model(config))
    ckpt, out = tmp_path / 'cls.pth', tmp_path / 'cls_fused.pth'
    torch.save(dict(meta={}, state_dict=trained.state_dict()), ckpt)
    result = subprocess.run([sys.executable, tool, config, str(ckpt), str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    fused = build_model(osp.join(REPO, 'configs/classification/deploy/casvit_xs_toy.py'))
    load_checkpoint(fused, str(out), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(trained.extract_feat(x), fused.extract_feat(x)) < TOL
