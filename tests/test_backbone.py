"""CASViT backbone: arguments, outputs, freezing, drop path, checkpointing, registries."""
import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
from mmcv.cnn.bricks import DropPath
from torch.nn.modules.batchnorm import _BatchNorm

from casvit_mm import CASViT
from casvit_mm.models.casvit import AdditiveBlock

TINY = dict(depths=[1, 1, 2, 1], widths=[8, 16, 24, 32])


def check_norm_state(modules, train_state):
    """True when every BN among ``modules`` is in the given training state (mmdet's helper)."""
    return all(m.training == train_state for mod in modules for m in mod.modules()
               if isinstance(m, _BatchNorm))


# ---------------------------------------------------------------- arguments
def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown CAS-ViT arch 'huge'.*'l', 'm', 's', 't', 'xs'"):
        CASViT(arch='huge')


@pytest.mark.parametrize('arch, message', [
    (dict(depths=[1, 1, 1, 1]), r"lacks the keys \['widths'\]"),
    (dict(depths=[1, 1, 1], widths=[8, 8, 8, 8]), r"arch\['depths'\] must be 4 positive ints"),
    (dict(depths=[1, 1, 1, 1], widths=[8, 8, 8, 8], heads=2), r"unknown keys \['heads'\]"),
    (dict(depths=[1, 1, 1, 1], widths=[7, 8, 8, 8]), r'must be even'),
])
def test_malformed_arch_dict(arch, message):
    with pytest.raises(ValueError, match=message):
        CASViT(arch=arch)


def test_arch_names_are_case_insensitive_and_match_the_paper():
    for name, (depths, widths) in {
            'xs': ([2, 2, 4, 2], [48, 56, 112, 220]), 's': ([3, 3, 6, 3], [48, 64, 128, 256]),
            'M': ([3, 3, 6, 3], [64, 96, 192, 384]), 't': ([3, 3, 6, 3], [96, 128, 256, 512]),
            'l': ([4, 4, 8, 4], [96, 128, 256, 512])}.items():
        model = CASViT(arch=name)
        assert (model.depths, model.widths) == (depths, widths)
        assert [len(s) for s in model.stages] == depths


@pytest.mark.parametrize('out_indices, message', [
    ((0, 4), r'has 4: CAS-ViT has 4 stages'),
    ((-5,), r'has -5'),
    ((1, -3), r'names a stage twice'),
    ((), r'non-empty'),
    ((0.5,), r'has 0.5'),
])
def test_bad_out_indices(out_indices, message):
    with pytest.raises(ValueError, match=message):
        CASViT(arch=TINY, out_indices=out_indices)


@pytest.mark.parametrize('frozen_stages', [-2, 5, 1.0])
def test_bad_frozen_stages(frozen_stages):
    with pytest.raises(ValueError, match=r'frozen_stages must be an int in \[-1, 4\]'):
        CASViT(arch=TINY, frozen_stages=frozen_stages)


def test_out_indices_do_not_mutate_the_callers_list():
    indices = [-1, 0]
    model = CASViT(arch=TINY, out_indices=indices)
    assert indices == [-1, 0]
    assert model.out_indices == (0, 3)


@pytest.mark.parametrize('bad, message', [
    (torch.rand(3, 64, 64), r'shaped \(B, 3, H, W\), got \(3, 64, 64\); add the batch dimension'),
    (torch.rand(1, 1, 64, 64), r'got 1 channels .*set in_channels=1 or convert the images'),
])
def test_bad_input_shape_says_what_to_do(bad, message):
    with pytest.raises(ValueError, match=message):
        CASViT(arch=TINY)(bad)


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize('out_indices', [
    c for r in range(1, 5) for c in itertools.combinations(range(4), r)])
def test_every_out_indices_combination(out_indices):
    model = CASViT(arch=TINY, out_indices=out_indices).eval()
    outs = model(torch.rand(2, 3, 64, 64))
    assert len(outs) == len(out_indices)
    for out, i in zip(outs, out_indices):
        assert out.shape == (2, TINY['widths'][i], 64 // 2 ** (i + 2), 64 // 2 ** (i + 2))
    # output norms exist exactly for the requested stages
    norms = {name for name, _ in model.named_children() if name.startswith('norm')}
    assert norms == {f'norm{i}' for i in out_indices}


def test_negative_out_indices_pick_the_last_stages():
    model = CASViT(arch=TINY, out_indices=(-1, -2)).eval()
    outs = model(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [24, 32]


def test_global_pool_gives_vectors_of_the_normed_maps():
    dense = CASViT(arch=TINY, out_indices=(2, 3)).eval()
    pooled = CASViT(arch=TINY, out_indices=(2, 3), global_pool=True).eval()
    pooled.load_state_dict(dense.state_dict())
    x = torch.rand(2, 3, 64, 64)
    for d, p in zip(dense(x), pooled(x)):
        assert p.shape == d.shape[:2]
        torch.testing.assert_close(p, d.mean((2, 3)))


@pytest.mark.parametrize('arch', ['xs', 's', 'm', 't', 'l'])
def test_named_archs_forward(arch):
    model = CASViT(arch=arch).eval()
    outs = model(torch.rand(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == model.widths
    assert [o.shape[2:] for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_odd_image_sizes_follow_conv_arithmetic():
    outs = CASViT(arch=TINY).eval()(torch.rand(1, 3, 333, 517))
    assert [tuple(o.shape[2:]) for o in outs] == [(84, 130), (42, 65), (21, 33), (11, 17)]


def test_in_channels():
    outs = CASViT(arch=TINY, in_channels=1).eval()(torch.rand(1, 1, 64, 64))
    assert outs[0].shape == (1, 8, 16, 16)


# ----------------------------------------------------------------- training
@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3, 4])
def test_frozen_stages_really_frozen(frozen_stages):
    model = CASViT(arch=TINY, frozen_stages=frozen_stages)
    model.train()
    frozen = []
    if frozen_stages >= 0:
        frozen.append(model.patch_embed)
    for i in range(max(frozen_stages, 0)):
        frozen += [model.stages[i], getattr(model, f'norm{i}')]
        if i > 0:
            frozen.append(model.downsamples[i - 1])
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    for m in frozen:
        assert not m.training
        assert all(not p.requires_grad for p in m.parameters())
    for p in model.parameters():
        if id(p) not in frozen_ids:
            assert p.requires_grad
    trainable_bn = [m for m in model.modules() if isinstance(m, _BatchNorm)
                    and all(p.requires_grad for p in m.parameters())]
    assert all(m.training for m in trainable_bn)
    # a training step leaves frozen weights and BN statistics untouched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # a random projection: the sum of a BN output would carry no gradient upstream
    loss = sum((o * torch.randn_like(o)).sum() for o in model(torch.rand(2, 3, 64, 64)))
    if frozen_stages < 4:
        loss.backward()
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.).step()
    else:
        assert not loss.requires_grad  # everything frozen: nothing to train
    after = model.state_dict()
    prefixes = ['patch_embed.'] if frozen_stages >= 0 else []
    prefixes += [f'stages.{i}.' for i in range(max(frozen_stages, 0))]
    for key in before:
        if key.startswith(tuple(prefixes)):
            torch.testing.assert_close(after[key], before[key])
    if frozen_stages < 4:
        assert not torch.equal(after['stages.3.0.norm1.weight'], before['stages.3.0.norm1.weight'])


def test_norm_eval_keeps_bn_in_eval_but_affine_trainable():
    model = CASViT(arch=TINY, norm_eval=True)
    model.train()
    assert check_norm_state(model.modules(), False)
    assert model.stages[0][0].norm1.weight.requires_grad
    running = model.stages[0][0].norm1.running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(model.stages[0][0].norm1.running_mean, running)
    model = CASViT(arch=TINY, norm_eval=False)
    model.train()
    assert check_norm_state(model.modules(), True)


def test_drop_path_schedule_is_linear_over_all_blocks():
    model = CASViT(arch='xs', drop_path_rate=0.3)
    blocks = [b for stage in model.stages for b in stage]
    assert len(blocks) == 10
    assert isinstance(blocks[0].drop_path, torch.nn.Identity)  # rate 0 at block 0
    rates = [0.] + [b.drop_path.drop_prob for b in blocks[1:]]
    expected = [0.3 * b / 9 for b in range(10)]
    assert rates == pytest.approx(expected)
    assert all(isinstance(b.drop_path, DropPath) for b in blocks[1:])


def test_block_order_local_integration_then_mixer_then_mlp():
    """The paper's order; the reference comparison in test_checkpoint covers it too."""
    torch.manual_seed(0)
    block = AdditiveBlock(8).eval()
    x = torch.rand(1, 8, 6, 6)
    with torch.no_grad():
        x1 = x + block.local_perception(x)
        x2 = x1 + block.attn(block.norm1(x1))
        x3 = x2 + block.mlp(block.norm2(x2))
        torch.testing.assert_close(block(x), x3)


def test_q_and_k_operations_are_not_shared():
    model = CASViT(arch=TINY)
    attn = model.stages[0][0].attn
    q_params = {id(p) for p in attn.oper_q.parameters()}
    assert q_params.isdisjoint(id(p) for p in attn.oper_k.parameters())
    assert attn.qkv.bias is None and attn.qkv.out_channels == 3 * 8


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = CASViT(arch=TINY, drop_path_rate=0.)
    ckpt = CASViT(arch=TINY, drop_path_rate=0., with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    plain.train(), ckpt.train()
    x1 = torch.rand(2, 3, 64, 64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    out1, out2 = plain(x1), ckpt(x2)
    for a, b in zip(out1, out2):
        torch.testing.assert_close(a, b)
    sum(o.square().sum() for o in out1).backward()
    sum(o.square().sum() for o in out2).backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    for (name, p1), p2 in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, msg=name)


def test_get_layer_depth_for_layer_wise_lr_decay():
    model = CASViT(arch='xs')  # 10 blocks -> 12 layers
    depth = model.get_layer_depth
    assert depth('backbone.patch_embed.0.weight', 'backbone.') == (0, 12)
    assert depth('backbone.stages.0.0.norm1.weight', 'backbone.') == (1, 12)
    assert depth('backbone.stages.2.3.mlp.fc1.weight', 'backbone.') == (8, 12)
    assert depth('backbone.downsamples.0.0.weight', 'backbone.') == (3, 12)  # feeds block 2
    assert depth('backbone.norm3.weight', 'backbone.') == (11, 12)
    assert depth('head.head.weight', 'backbone.') == (11, 12)
    ids = [depth(n, '')[0] for n, _ in model.named_parameters()]
    assert min(ids) == 0 and max(ids) == 11


# ---------------------------------------------------------------- registries
@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet', 'mmseg'])
def test_registered_in_every_scope(scope):
    import importlib
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model = registry.build(dict(type='CASViT', arch='xs', out_indices=(3,)))
    assert isinstance(model, CASViT) and model.out_indices == (3,)


def test_custom_imports_in_a_foreign_config(tmp_path):
    """A config that only names casvit_mm in custom_imports builds CASViT in a fresh process."""
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(textwrap.dedent('''
        custom_imports = dict(imports=['casvit_mm'], allow_failed_imports=False)
        default_scope = 'mmdet'
        model = dict(type='CASViT', arch='s', out_indices=(1, 2, 3))
    '''))
    code = textwrap.dedent(f'''
        import sys
        from mmengine.config import Config
        from mmengine.registry import MODELS, init_default_scope
        assert 'casvit_mm' not in sys.modules
        cfg = Config.fromfile({str(cfg)!r})
        init_default_scope(cfg.default_scope)
        model = MODELS.build(cfg.model)
        print(type(model).__module__, model.widths)
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'casvit_mm.models.casvit [48, 64, 128, 256]' in out.stdout
