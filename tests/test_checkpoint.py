"""Every checkpoint layout loads into CASViT and reproduces the official features;
bad files fail with one clear message; the converter is idempotent."""
import argparse
import os
import subprocess
import sys

import pytest
import torch
from mmengine.logging import MessageHub

from casvit_mm import CASViT
from casvit_mm.checkpoint import (CheckpointError, UnsafeCheckpointError, convert_official,
                                  load_backbone_checkpoint, to_backbone, to_mmpretrain)
from helpers import REPO
from reference_casvit import official_forward, official_state_dict



def build(arch, path, prefix=None, **kwargs):
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    if prefix:
        init_cfg['prefix'] = prefix
    model = CASViT(arch=arch, init_cfg=init_cfg, **kwargs)
    model.init_weights()
    return model.eval()


def assert_features_equal(model, official, arch, size, atol=1e-5):
    torch.manual_seed(size)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ours = model(x)
    ref = official_forward(official, x, arch)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert (a - b).abs().max().item() <= atol


def with_output_norms_at_init(official, arch):
    """The official dense model loaded from an ImageNet file: output norms at init."""
    dense = dict(official)
    init = CASViT(arch=arch).state_dict()
    for i in range(4):
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            dense[f'norm{2 * i}.{name}'] = init[f'norm{i}.{name}']
    return dense


# ----------------------------------------------------------------- fidelity
@pytest.mark.parametrize('arch', ['xs', 's', 'm', 't', 'l'])
def test_official_dense_backbone_gives_identical_features(tmp_path, arch):
    official = official_state_dict(arch, seed=1)
    path = tmp_path / f'{arch}.pth'
    torch.save(official, path)  # layout 2: a bare dense-backbone dict
    model = build(arch, path)
    for size in (224, 512):
        assert_features_equal(model, official, arch, size)


def test_reference_comparison_catches_shared_qk_and_swapped_weights(tmp_path):
    """The fidelity check is sensitive: tying k's gates to q's changes the features."""
    official = official_state_dict('xs', seed=2)
    tied = dict(official)
    for key in official:
        if '.attn.oper_k.' in key:
            tied[key] = official[key.replace('oper_k', 'oper_q')]
    path = tmp_path / 'tied.pth'
    torch.save(tied, path)
    model = build('xs', path)
    with pytest.raises(AssertionError):
        assert_features_equal(model, official, 'xs', 64)


def test_imagenet_checkpoint_into_dense_backbone(tmp_path):
    official = official_state_dict('xs', classifier=True, seed=3)
    checkpoint = dict(model=official, model_ema=official, optimizer=dict(state={}), epoch=299,
                      args=argparse.Namespace(model='rcvit_xs', lr=6e-3, input_size=224))
    path = tmp_path / 'cas-vit-xs.pth'
    torch.save(checkpoint, path)
    model = CASViT(arch='xs')
    log = load_backbone_checkpoint(model, str(path))
    model.eval()
    assert 'official layout' in log
    assert 'output norms norm0, norm1, norm2, norm3' in log
    assert 'unused: classifier norm, head, dist_head' in log
    # the official dense model keeps its output norms at init too
    assert_features_equal(model, with_output_norms_at_init(official, 'xs'), 'xs', 224)


def test_imagenet_checkpoint_into_classification_backbone(tmp_path):
    official = official_state_dict('s', classifier=True, seed=4)
    path = tmp_path / 'cas-vit-s.pth'
    torch.save(dict(model=official), path)
    model = build('s', path, out_indices=(3,), global_pool=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pooled = model(x)[0]
        logits = (torch.nn.functional.linear(pooled, official['head.weight'], official['head.bias'])
                  + torch.nn.functional.linear(pooled, official['dist_head.weight'],
                                               official['dist_head.bias'])) / 2
    assert (logits - official_forward(official, x, 's', classifier=True)).abs().max() <= 1e-5


def _official_mmdet_checkpoint(official):
    state_dict = {f'backbone.{k}': v for k, v in official.items()}
    state_dict['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 56, 1, 1)
    state_dict['bbox_head.retina_cls.weight'] = torch.zeros(720, 256, 3, 3)
    meta = dict(mmdet_version='2.24.0', CLASSES=('person', 'car'), epoch=12, iter=88000,
                config='model = dict(...)', hook_msgs=dict(last_ckpt='work_dirs/epoch_12.pth'))
    return dict(state_dict=state_dict, meta=meta, optimizer=dict(state={}, param_groups=[]))


@pytest.mark.parametrize('prefix', ['backbone.', None])
def test_official_mmdet2_checkpoint(tmp_path, prefix):
    official = official_state_dict('xs', seed=5)
    path = tmp_path / 'retinanet_casvit_xs.pth'
    torch.save(_official_mmdet_checkpoint(official), path)
    assert_features_equal(build('xs', path, prefix=prefix), official, 'xs', 224)


def test_own_mmengine_checkpoint_with_message_hub(tmp_path):
    """casvit-mm's own training checkpoints hold mmengine HistoryBuffers: allowed."""
    official = official_state_dict('xs', seed=6)
    ours = {f'backbone.{k}': v for k, v in convert_official(official).items()}
    hub = MessageHub.get_instance('test_own_checkpoint')
    hub.update_scalar('train/loss', 1.5)
    path = tmp_path / 'epoch_1.pth'
    torch.save(dict(meta=dict(epoch=1, iter=10), state_dict=ours,
                    message_hub=hub.state_dict()), path)
    assert_features_equal(build('xs', path, prefix='backbone.'), official, 'xs', 224)


def test_out_indices_subset_uses_only_requested_norms(tmp_path):
    official = official_state_dict('xs', seed=7)
    path = tmp_path / 'xs.pth'
    torch.save(official, path)
    model = CASViT(arch='xs', out_indices=(1, 3))
    log = load_backbone_checkpoint(model, str(path))
    assert 'output norms of stages not in out_indices norm0, norm2' in log
    model.eval()
    ref = official_forward(official, torch.zeros(1, 3, 64, 64), 'xs')
    with torch.no_grad():
        ours = model(torch.zeros(1, 3, 64, 64))
    torch.testing.assert_close(ours[0], ref[1]), torch.testing.assert_close(ours[1], ref[3])


# --------------------------------------------------------------- bad inputs
def test_checkpoint_of_another_size(tmp_path):
    path = tmp_path / 'cas-vit-xs.pth'
    torch.save(dict(model=official_state_dict('xs', classifier=True)), path)
    with pytest.raises(CheckpointError) as info:
        build('m', path)
    message = str(info.value)
    assert str(path) in message and "arch='m'" in message
    assert 'patch_embed.0.weight: checkpoint (24, 3, 3, 3) vs model (32, 3, 3, 3)' in message
    assert "looks like arch 'xs'" in message


def test_checkpoint_with_other_depths(tmp_path):
    path = tmp_path / 'cas-vit-l.pth'
    torch.save(official_state_dict('l'), path)
    with pytest.raises(CheckpointError, match=r"left over .*stages\.0\.3\..*looks like arch 'l'"):
        build('t', path)


def test_missing_file():
    with pytest.raises(CheckpointError, match=r'does not exist.*init_cfg=None'):
        build('xs', 'no/such/file.pth')


@pytest.mark.parametrize('content, message', [
    (b'', r'is empty'),
    (b'this is a text file, not weights\n', r'not a readable PyTorch checkpoint'),
    ('truncated', r'not a readable PyTorch checkpoint'),
])
def test_corrupt_files(tmp_path, content, message):
    path = tmp_path / 'bad.pth'
    if content == 'truncated':
        torch.save(official_state_dict('xs'), path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        build('xs', path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict=official_state_dict('xs'), trap=_Payload(marker)), path)
    with pytest.raises(UnsafeCheckpointError, match=r'Refused to load .*Nothing was executed'):
        build('xs', path)
    assert not marker.exists()
    # the converter refuses it the same way
    out = subprocess.run([sys.executable, 'tools/model_converters/casvit_to_mm.py', str(path),
                          str(tmp_path / 'out.pth')], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and 'Refused to load' in out.stderr
    assert not marker.exists()


def test_wrong_prefix(tmp_path):
    path = tmp_path / 'xs.pth'
    torch.save(official_state_dict('xs'), path)
    with pytest.raises(CheckpointError, match=r"no keys under prefix 'model\.'"):
        build('xs', path, prefix='model.')


def test_not_a_casvit_checkpoint(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(CheckpointError, match=r'tensors missing'):
        build('xs', path)


# ---------------------------------------------------------------- converter
def test_conversion_functions_are_idempotent():
    official = official_state_dict('xs', classifier=True)
    cls = to_mmpretrain(official)
    assert 'backbone.stages.3.1.attn.qkv.weight' in cls and 'backbone.norm3.weight' in cls
    assert 'head.head.weight' in cls and 'head.dist_head.bias' in cls
    assert 'backbone.downsamples.2.0.weight' in cls and 'backbone.downsamples.2.1.running_var' in cls
    assert to_mmpretrain(cls) is cls
    dense = to_backbone(official)
    assert not any(k.startswith(('norm.', 'head', 'dist_head')) for k in dense)
    assert to_backbone(dense).keys() == dense.keys()
    assert len(cls) == len(official)


@pytest.mark.slow
@pytest.mark.parametrize('target', ['mmpretrain', 'backbone'])
def test_converter_cli_twice_changes_nothing(tmp_path, target):
    official = official_state_dict('xs', classifier=True)
    src = tmp_path / 'cas-vit-xs.pth'
    torch.save(dict(model=official, args=argparse.Namespace(model='rcvit_xs')), src)
    once, twice = tmp_path / 'once.pth', tmp_path / 'twice.pth'
    for a, b in ((src, once), (once, twice)):
        out = subprocess.run([sys.executable, 'tools/model_converters/casvit_to_mm.py', str(a),
                              str(b), '--target', target], cwd=REPO, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
    sd1 = torch.load(once, weights_only=True)['state_dict']
    sd2 = torch.load(twice, weights_only=True)['state_dict']
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    if target == 'backbone':
        model = build('xs', once)
        assert_features_equal(model, with_output_norms_at_init(official, 'xs'), 'xs', 64)


def test_mmpretrain_classifier_checkpoint_into_dense_backbone(tmp_path):
    """A converted classifier's norm3 is the classifier BN: not loaded as an output norm."""
    official = official_state_dict('xs', classifier=True, seed=8)
    path = tmp_path / 'casvit-xs_in1k.pth'
    torch.save(dict(state_dict=to_mmpretrain(official)), path)
    model = CASViT(arch='xs')
    log = load_backbone_checkpoint(model, str(path))
    assert 'output norms norm0, norm1, norm2, norm3' in log and 'unused: classifier norm' in log
    torch.testing.assert_close(model.norm3.weight, torch.ones(220))
    torch.testing.assert_close(model.stages[3][1].mlp.fc2.weight,
                               official['network.6.1.mlp.fc2.weight'])


# ------------------------------------------------- the layout table (layouts.py)
def _layouts():
    """``{name: state dict}`` of every layout a user may bring, for arch 'xs'."""
    official_cls = official_state_dict('xs', classifier=True)
    official_dense = official_state_dict('xs')
    mm_cls = to_mmpretrain(official_cls)
    mm_dense = to_backbone(official_dense)
    return {
        'official classifier': official_cls,
        'official dense backbone': official_dense,
        'official whole model': dict({f'backbone.{k}': v for k, v in official_dense.items()},
                                     **{'neck.lateral_convs.0.conv.weight': torch.zeros(1)}),
        'mmpretrain classifier': mm_cls,
        'bare backbone': mm_dense,
        'DataParallel bare backbone': {f'module.{k}': v for k, v in mm_dense.items()},
        'DataParallel whole model': dict({f'module.backbone.{k}': v for k, v in mm_dense.items()},
                                         **{'module.neck.fpn_convs.0.weight': torch.zeros(1)}),
    }


# input layout -> (keys of backbone_part + to_backbone: what a dense CASViT loads,
#                  is_classifier, is_whole_model)
LAYOUT_TABLE = [
    ('official classifier', 'dense', True, False),
    ('official dense backbone', 'dense', False, False),
    ('official whole model', 'dense', False, True),
    ('mmpretrain classifier', 'dense-no-output-norms', True, False),
    ('bare backbone', 'dense', False, False),
    ('DataParallel bare backbone', 'dense', False, False),
    ('DataParallel whole model', 'dense', False, True),
]


@pytest.mark.parametrize('layout, keys, classifier, whole', LAYOUT_TABLE,
                         ids=[row[0] for row in LAYOUT_TABLE])
def test_layout_table(layout, keys, classifier, whole):
    """Each layout -> the keys a dense backbone reads; every conversion applied twice
    equals once; the classifier / whole-model tests and the arch agree."""
    from casvit_mm.checkpoint import layouts
    sd = _layouts()[layout]
    own = CASViT('xs').state_dict()
    backbone = layouts.to_backbone(sd)
    expected = set(own)
    if layout in ('official classifier', 'mmpretrain classifier'):
        # an ImageNet file has no dense output norms (norm0-2); the classifier's BN
        # (official ``norm``) is dropped, or kept as ``norm3`` once converted
        keep = 'norm3.' if layout == 'mmpretrain classifier' else None
        expected = {k for k in expected
                    if not layouts.OUTPUT_NORM.match(k) or (keep and k.startswith(keep))}
    assert set(backbone) == expected
    assert layouts.is_classifier(sd) == classifier
    assert layouts.is_whole_model(sd) == whole
    assert layouts.arch_name(sd, CASViT.arch_settings) == 'xs'
    assert layouts.describe_arch(sd, CASViT.arch_settings).startswith("arch 'xs'")
    assert not layouts.key_diff(own, backbone).mismatched
    for convert in (layouts.to_backbone, layouts.to_mmpretrain, layouts.backbone_part,
                    layouts.unwrap, layouts.convert_official, layouts.to_mm_model,
                    layouts.classifier_norm_unused):
        once = convert(sd)
        twice = convert(once)
        assert list(twice) == list(once), convert.__name__
        assert all(twice[k] is once[k] for k in once), convert.__name__


def test_layout_key_diff_and_renames():
    from casvit_mm.checkpoint import layouts
    own = {'a.weight': torch.zeros(2), 'b.num_batches_tracked': torch.zeros(()),
           'c.weight': torch.zeros(3), 'skip.me': torch.zeros(1)}
    given = {'c.weight': torch.zeros(4), 'd.weight': torch.zeros(1), 'skip.x': torch.zeros(1)}
    diff = layouts.key_diff(own, given, skip=('skip.', ))
    assert diff.missing == ['a.weight']  # BN counters are never required
    assert diff.unexpected == ['d.weight']
    assert diff.mismatched == [('c.weight', (4, ), (3, ))]
    official = official_state_dict('xs')
    renames = dict(layouts.module_renames(official, layouts.to_backbone(official)))
    assert renames['network.0.0.mlp.fc1'] == 'stages.0.0.mlp.fc1'
    assert renames['network.1.proj'] == 'downsamples.0.0'
    assert renames['norm6'] == 'norm3'
    assert layouts.module_renames(renames, renames) == []


# ------------------------------------------- the one function the model calls
def test_the_load_hooks_conversion_is_pure_and_idempotent():
    """convert_for_backbone changes nothing it is given, and its result, applied,
    needs nothing more (what the backbone's load hook relies on)."""
    from casvit_mm.checkpoint.backbone import convert_for_backbone
    official = {f'backbone.{k}': v for k, v in official_state_dict('xs', seed=10).items()}
    official['neck.conv.weight'] = torch.zeros(1)
    given = dict(official)
    model = CASViT(arch='xs')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors, message = convert_for_backbone(model, official, 'backbone.')
    assert official.keys() == given.keys() and all(official[k] is given[k] for k in given)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert set(tensors) == {f'backbone.{k}' for k in model.state_dict()}
    assert '(official layout)' in message
    applied = {k: v for k, v in official.items() if not k.startswith('backbone.')}
    applied.update(tensors)
    assert convert_for_backbone(model, applied, 'backbone.') is None
    assert convert_for_backbone(model, applied, 'other.') is None
    with pytest.raises(CheckpointError, match=r"does not fit CASViT\(arch='s'\)"):
        convert_for_backbone(CASViT(arch='s'), official, 'backbone.')


def test_a_classifier_read_with_a_prefix_keeps_norm3_at_init(tmp_path):
    """mmengine's PretrainedInit with prefix='backbone.' drops the heads; the file is
    still known to be a classifier, whose norm3 is no output norm of a dense backbone."""
    official = official_state_dict('xs', classifier=True, seed=11)
    path = tmp_path / 'casvit-xs_in1k.pth'
    torch.save(dict(state_dict=to_mmpretrain(official)), path)
    model = build('xs', path, prefix='backbone.', out_indices=(3, ))
    torch.testing.assert_close(model.norm3.weight, torch.ones(220))
    torch.testing.assert_close(model.stages[3][1].mlp.fc2.weight,
                               official['network.6.1.mlp.fc2.weight'])


def test_a_url_is_downloaded_then_read_weights_only(tmp_path):
    """mmengine would unpickle a downloaded file with weights_only=False: the URL
    loader reads it through safe_load (a file:// URL stands for the server)."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from casvit_mm.checkpoint.mmengine_loader import load_from_url_weights_only
    assert CheckpointLoader._get_checkpoint_loader('https://host/a.pth') is \
        load_from_url_weights_only
    marker, evil = tmp_path / 'pwned', tmp_path / 'server' / 'evil.pth'
    evil.parent.mkdir()
    torch.save(dict(state_dict=official_state_dict('xs'), trap=_Payload(marker)), evil)
    with pytest.raises(UnsafeCheckpointError, match=r'Nothing was executed'):
        load_from_url_weights_only(evil.as_uri(), model_dir=str(tmp_path / 'cache'))
    assert (tmp_path / 'cache' / 'evil.pth').is_file() and not marker.exists()
    good = tmp_path / 'server' / 'xs.pth'
    torch.save(dict(state_dict=official_state_dict('xs', seed=12)), good)
    checkpoint = load_from_url_weights_only(good.as_uri(), model_dir=str(tmp_path / 'cache'))
    assert 'stages.0.0.norm1.weight' not in checkpoint['state_dict']  # as in the file
    assert checkpoint['state_dict']._metadata.get('')['casvit_mm_source'] == str(
        tmp_path / 'cache' / 'xs.pth')
