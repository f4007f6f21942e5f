"""Deploy mode: folded models compute what the eval-mode models compute.

BatchNorm statistics and affine parameters are randomised first, so a fold
that ignored any of them (or mixed up q and k) would show; the tolerance is
1e-4 of the output scale, as issue 5 asks.
"""
import copy
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from casvit_mm import CASViT
from casvit_mm.deployment import build_model, relative_error
from casvit_mm.models.deploy import (DeployAdditiveBlock, switch_model_to_deploy,
                                     use_fused_kernels)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOL = 1e-4


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
def test_every_size_matches_eval_mode(arch):
    x = torch.randn(1, 3, 64, 96)
    err, deployed = compare(CASViT(arch), lambda m: m(x))
    assert err < TOL, f'{arch}: deployed differs from eval mode by {err:.2e}'
    # every BN is folded except the four output norms (nothing to fold them into)
    assert bn_names(deployed) == ['norm0', 'norm1', 'norm2', 'norm3']
    assert all(isinstance(b, DeployAdditiveBlock) for s in deployed.stages for b in s)
    assert deployed.deployed
    with pytest.raises(RuntimeError, match='deploy mode'):
        deployed.train()
    assert not any(p.requires_grad for p in deployed.parameters())


@pytest.mark.parametrize('batch, channels_last, kwargs', [
    (2, False, {}),
    (3, True, dict(out_indices=(1, 3))),
    (2, True, dict(out_indices=-1, global_pool=True)),
])
def test_batches_layouts_and_options(batch, channels_last, kwargs):
    x = torch.randn(batch, 3, 64, 64)
    err, deployed = compare(CASViT('xs', **kwargs), lambda m: m(x),
                            channels_last=channels_last)
    assert err < TOL
    assert deployed.patch_embed[0].weight.is_contiguous(
        memory_format=torch.channels_last) == channels_last
    # channels-last runs oneDNN's fused conv + activation / addition kernels,
    # NCHW the plain ops: both paths are compared with eval mode above
    stem_out = deployed.patch_embed(x)
    assert use_fused_kernels(stem_out) == channels_last


def test_method_and_function_agree_and_repeat_safely():
    model = randomize_bn(CASViT('xs')).eval()
    x = torch.randn(1, 3, 64, 64)
    a = copy.deepcopy(model)
    a.switch_to_deploy()
    b = switch_model_to_deploy(switch_model_to_deploy(copy.deepcopy(model)))
    with torch.no_grad():
        assert relative_error(model(x), a(x)) < TOL
        assert relative_error(a(x), b(x)) < TOL
    a.eval()  # eval stays allowed


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
    with pytest.raises(RuntimeError, match='deploy mode'):
        deployed.train()


def test_inferencer():
    """The documented way for inferencers: ``switch_model_to_deploy(inferencer.model)``."""
    from mmseg.apis import MMSegInferencer
    model = build_model(osp.join(REPO, 'configs/segmentation/fpn_casvit_xs.py'))
    inferencer = MMSegInferencer(model=model.cfg, weights=None, device='cpu')
    inferencer.model.load_state_dict(randomize_bn(model).state_dict())
    image = np.random.default_rng(0).integers(0, 255, (80, 112, 3), dtype=np.uint8)

    def logits():
        return inferencer(image, return_datasamples=True).seg_logits.data

    reference = logits()
    switch_model_to_deploy(inferencer.model)
    assert inferencer.model.backbone.deployed
    assert relative_error(reference, logits()) < TOL
