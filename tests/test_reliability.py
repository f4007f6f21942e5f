"""Reliability: a missing data root, odd image sizes in all three
tasks, atomic checkpoints under a kill during a save, SIGKILL + --resume giving
the weights of an uninterrupted run, --amp on the CPU and mmengine's compile.

The backbone and checkpoint rows of the bad-input catalogue are tested where
that code lives (tests/test_backbone.py, tests/test_checkpoint.py); the README
section "Reliability" maps every row to its test.
"""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from casvit_mm.checkpoint import safe_load
from casvit_mm.engine import CPUAmpOptimWrapper, atomic_write, use_atomic_checkpoints
from casvit_mm.toy_data.coco import cfg_options, make_toy_coco
from casvit_mm.utils import DataRootError, check_data_paths, missing_data_paths
from helpers import (MASK, ONE_THREAD, REPO, RETINA, loader_options, logged_steps, run_tool,
                     run_tool_in_process, toy_train_options)

SEG = 'configs/segmentation/fpn_casvit_xs_toy.py'
CLS = 'configs/classification/casvit_xs_toy.py'
# Deterministic CPU training: fixed seed, deterministic algorithms, one thread
# (set in the environment of every subprocess below).
ENV = ONE_THREAD
train_options = partial(toy_train_options, deterministic=True)


def load(path):
    return Config.fromfile(osp.join(REPO, path))


def tool(*args):
    """The command line of a tool, run from the repository root."""
    return [sys.executable, *map(str, args)]


def run(*args):
    return run_tool(*args, env=ENV)


def start_training(config, work, opts):
    """tools/train.py in the background, its output in work/out.log."""
    work.mkdir(parents=True)
    with open(work / 'out.log', 'w') as log:  # the child keeps its own handle
        return subprocess.Popen(tool('tools/train.py', config, '--work-dir', work,
                                     '--cfg-options', *opts),
                                cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)


# ------------------------------------------------------------ missing data root
MISSING_ROOT = [
    # config, the option that moves its data, what the message must show
    (RETINA, ['train_dataloader.dataset.data_root={root}/'],
     ['annotations/instances_train2017.json', 'train2017/', 'make_toy_coco.py']),
    # every split moved: the message lists each missing split's layout, whether or not
    # the toy set was generated in this checkout (make demo-seg)
    (SEG, [f'{split}_dataloader.dataset.data_root={{root}}' for split in ('train', 'val', 'test')],
     ["'images/training'", "'annotations/validation'", 'make_toy_ade.py']),
    (CLS, ['train_dataloader.dataset.data_root={root}'],
     ["data_prefix='train'", 'make_toy_imagenet.py']),
]


@pytest.mark.parametrize('config,options,layout', MISSING_ROOT,
                         ids=['coco', 'ade20k', 'imagenet'])
def test_train_with_missing_data_root_shows_the_layout(config, options, layout, tmp_path,
                                                       monkeypatch):
    root = tmp_path / 'nowhere'
    work = tmp_path / 'work'
    argv = [config, '--work-dir', work, '--cfg-options',
            *[o.format(root=root) for o in options]]
    with pytest.raises(SystemExit) as err:
        run_tool_in_process('train', argv, monkeypatch)
    message = str(err.value)
    assert f'train_dataloader.dataset: {root}' in message
    for part in layout:
        assert part in message, message
    # a data root of one's own is not told to symlink the standard data/ layout
    assert 'symlink' not in message and 'data/coco/' not in message, message
    # It stopped before the runner was built (the runner creates the work dir).
    assert not work.exists()


def test_test_tool_with_missing_data_root(toy, tmp_path, monkeypatch):
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'not used: the data check comes first')
    ann = tmp_path / 'instances_val2017.json'
    argv = [RETINA, ckpt, '--work-dir', tmp_path / 'work', '--cfg-options',
            *cfg_options(toy['root']), f'test_evaluator.ann_file={ann}']
    with pytest.raises(SystemExit, match=f'test_evaluator.ann_file: {ann}'):
        run_tool_in_process('test', argv, monkeypatch)


def test_data_check_names_exactly_what_is_missing(toy, tmp_path):
    cfg = load(RETINA)
    cfg.merge_from_dict(dict(arg.split('=', 1) for arg in cfg_options(toy['root'])))
    assert missing_data_paths(cfg, ['train', 'test']) == []
    check_data_paths(cfg, ['train', 'test'])  # complete: no error

    os.rename(toy['val_ann'], toy['val_ann'] + '.away')
    try:
        missing = missing_data_paths(cfg, ['train', 'test'])
    finally:
        os.rename(toy['val_ann'] + '.away', toy['val_ann'])
    assert missing == [('test_dataloader.dataset', toy['val_ann']),
                       ('test_evaluator.ann_file', toy['val_ann'])]

    # A missing root is named once, not once per file under it.
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'gone')
    assert missing_data_paths(cfg, ['train']) == [
        ('train_dataloader.dataset', str(tmp_path / 'gone'))]
    # ... and the files the config reads inside it (its own root: no standard layout)
    with pytest.raises(DataRootError, match='instances_train2017.json') as err:
        check_data_paths(cfg, ['train'])
    assert 'symlink' not in str(err.value)


# ------------------------------------------------------------ odd image sizes
ODD = (333, 517)  # H, W: neither a multiple of 32 nor square


def odd_image():
    return np.random.default_rng(0).integers(0, 256, (*ODD, 3), dtype=np.uint8)


def test_odd_size_detector_maps_boxes_and_masks_back():
    from mmdet.apis import inference_detector, init_detector
    cfg = load(MASK)
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # random weights: keep every detection
    model = init_detector(cfg, checkpoint=None, device='cpu')
    result = inference_detector(model, odd_image())
    assert tuple(result.ori_shape) == ODD
    assert tuple(result.batch_input_shape) == (352, 544)  # padded to multiples of 32
    pred = result.pred_instances
    assert len(pred) > 0
    assert tuple(pred.masks.shape[1:]) == ODD
    boxes = pred.bboxes
    assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= ODD[1]
    assert boxes[:, 1::2].min() >= 0 and boxes[:, 1::2].max() <= ODD[0]


def test_odd_size_segmentor_maps_labels_back():
    from mmseg.apis import inference_model, init_model
    cfg = load(SEG)
    model = init_model(cfg, checkpoint=None, device='cpu')
    result = inference_model(model, odd_image())
    # The evaluation resizes to a multiple of 32 and the prediction comes back
    # at the image's own size.
    assert tuple(result.img_shape) != ODD and tuple(result.img_shape)[0] % 32 == 0
    assert tuple(result.pred_sem_seg.data.shape) == (1, *ODD)
    assert tuple(result.seg_logits.data.shape) == (5, *ODD)


def test_odd_size_classifier_without_resizing():
    from mmpretrain.registry import MODELS
    cfg = load(CLS)
    init_default_scope('mmpretrain')
    cfg.model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    model = MODELS.build(cfg.model).eval()
    image = torch.from_numpy(odd_image()).permute(2, 0, 1)
    # Straight into test_step: the backbone sees 333 x 517 itself.
    feats = model.extract_feat(model.data_preprocessor(dict(inputs=[image]))['inputs'])
    assert feats[-1].shape == (1, 220)
    with torch.no_grad():
        pred = model.test_step(dict(inputs=[image]))[0]
    assert pred.pred_score.shape == (4,)
    assert torch.isfinite(pred.pred_score).all()
    assert abs(float(pred.pred_score.sum()) - 1) < 1e-5


# ------------------------------------------------------------ atomic checkpoints
def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / 'last_checkpoint'
    atomic_write(str(path), 'iter_2.pth')

    def fail(*args):
        raise OSError('disk full')

    monkeypatch.setattr('casvit_mm.engine.atomic_checkpoint.os.replace', fail)
    with pytest.raises(OSError, match='disk full'):
        atomic_write(str(path), 'iter_4.pth')
    assert path.read_text() == 'iter_2.pth'
    assert os.listdir(tmp_path) == ['last_checkpoint']  # no temporary file left


def test_tools_train_switches_to_the_atomic_hook():
    cfg = use_atomic_checkpoints(load(RETINA))
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    cfg.default_hooks.checkpoint.type = 'MyHook'  # a user's own hook is left alone
    assert use_atomic_checkpoints(cfg).default_hooks.checkpoint.type == 'MyHook'


# A real mmengine Runner training a small model with a checkpoint every
# iteration and max_keep_ckpts=1. `builtins.open` is wrapped so that the
# KILL_AT-th checkpoint write writes half its bytes, reaches the disk, and then
# the process SIGKILLs itself: a kill in the middle of a save, at a known point.
KILL_DURING_SAVE = r'''
import builtins, os, signal, sys
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
import casvit_mm.engine  # registers AtomicCheckpointHook

hook, work_dir, kill_at, max_iters, resume = sys.argv[1:]
kill_at, max_iters = int(kill_at), int(max_iters)


class Model(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 256)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.fc(torch.stack(inputs))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


class HalfThenKill:
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()
    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


real_open, writes = builtins.open, []
def open_(file, mode='r', *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if '.pth' in str(file) and 'w' in mode:
        writes.append(file)
        if len(writes) == kill_at:
            return HalfThenKill(f)
    return f
builtins.open = open_

data = torch.utils.data.DataLoader([torch.rand(256) for _ in range(8)], batch_size=2,
                                   collate_fn=lambda batch: dict(inputs=batch))
Runner(model=Model(), work_dir=work_dir, train_dataloader=data,
       train_cfg=dict(by_epoch=False, max_iters=max_iters),
       optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-2)),
       default_hooks=dict(checkpoint=dict(type=hook, by_epoch=False, interval=1,
                                          max_keep_ckpts=1)),
       resume=resume == 'resume').train()
'''


def kill_during_save(hook, work, kill_at, max_iters=4, resume=False):
    return subprocess.run(
        [sys.executable, '-c', KILL_DURING_SAVE, hook, str(work), str(kill_at),
         str(max_iters), 'resume' if resume else 'new'],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def latest(work):
    return (work / 'last_checkpoint').read_text().strip()


@pytest.mark.slow
def test_kill_during_save_leaves_a_loadable_latest_checkpoint(tmp_path):
    work = tmp_path / 'atomic'
    proc = kill_during_save('AtomicCheckpointHook', work, kill_at=3)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # The kill hit the third save half-way: its bytes are only in the .partial file.
    assert (work / 'iter_3.pth.partial').stat().st_size > 0
    assert not (work / 'iter_3.pth').exists()
    # The pointer --resume follows names the previous, complete checkpoint.
    assert latest(work) == str(work / 'iter_2.pth')
    assert safe_load(latest(work))['meta']['iter'] == 2

    proc = kill_during_save('AtomicCheckpointHook', work, kill_at=0, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'Auto resumed from the latest checkpoint {work}/iter_2.pth' in proc.stdout
    assert latest(work) == str(work / 'iter_4.pth')
    assert safe_load(latest(work))['meta']['iter'] == 4
    # max_keep_ckpts=1 honoured, the killed save's leftover cleaned up.
    assert sorted(p.name for p in work.glob('iter_*')) == ['iter_4.pth']


@pytest.mark.slow
def test_the_same_kill_breaks_mmengines_stock_hook(tmp_path):
    """The injected kill really hits the window AtomicCheckpointHook closes: with
    mmengine's CheckpointHook (max_keep_ckpts=1) nothing loadable is left."""
    work = tmp_path / 'stock'
    proc = kill_during_save('CheckpointHook', work, kill_at=3)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert latest(work) == str(work / 'iter_2.pth')
    assert not (work / 'iter_2.pth').exists(), (
        'mmengine no longer deletes the old checkpoint before writing the new one; '
        'AtomicCheckpointHook may have become unnecessary')
    with pytest.raises(Exception):
        safe_load(work / 'iter_3.pth')  # truncated


# ------------------------------------------------------------ SIGKILL + --resume
def weights(path):
    return safe_load(path)['state_dict']


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_run(toy, tmp_path):
    opts = train_options(toy, **{'train_cfg.max_iters': 8,
                                 'default_hooks.checkpoint.interval': 2})
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    # The uninterrupted run and the one to kill run side by side (one thread each).
    runs = [start_training(RETINA, work, opts) for work in (straight, killed)]
    proc = runs[1]
    # SIGKILL as soon as --resume has a checkpoint to go back to.
    pointer = killed / 'last_checkpoint'
    deadline = time.monotonic() + 600
    while not pointer.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, 'training ended before it could be killed'
    assert not (killed / 'iter_8.pth').exists()
    assert runs[0].wait(timeout=600) == 0, (straight / 'out.log').read_text()[-4000:]
    resumed_from = safe_load(pointer.read_text().strip())['meta']['iter']
    assert resumed_from in (2, 4, 6)

    out = run('tools/train.py', RETINA, '--work-dir', killed, '--resume',
              '--cfg-options', *opts)
    assert 'AtomicCheckpointHook' in out  # tools/train.py saves atomically
    assert 'local_weights_only backend' in out  # and resumes through the safe loader
    assert logged_steps(killed)[-1] == list(range(resumed_from + 1, 9))

    final, reference = weights(killed / 'iter_8.pth'), weights(straight / 'iter_8.pth')
    assert final.keys() == reference.keys()
    changed = weights(straight / 'iter_2.pth')
    assert any(not torch.equal(changed[k], reference[k]) for k in reference)  # it trained
    different = [k for k in reference if not torch.equal(final[k], reference[k])]
    assert not different, f'resumed run differs from the uninterrupted one in {different[:5]}'


# ------------------------------------------------------------ --amp on the CPU
def test_cpu_amp_wrapper_autocasts_the_forward_only():
    conv = torch.nn.Conv2d(3, 8, 3)
    wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(conv.parameters(), lr=0.1))
    with wrapper.optim_context(conv):
        out = conv(torch.rand(1, 3, 8, 8))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().mean())
    assert conv.weight.dtype == torch.float32  # weights and their update stay float32
    assert conv(torch.rand(1, 3, 8, 8)).dtype == torch.float32
    with pytest.raises(ValueError, match='bfloat16'):
        CPUAmpOptimWrapper(dtype='bfloat17', optimizer=torch.optim.SGD(conv.parameters(), lr=0.1))


@pytest.mark.slow
def test_amp_trains_on_the_cpu(tmp_path):
    # 128 px images, not the 64 px of `toy`: at 64 px the FPN's P6 is 1 x 1, and
    # oneDNN's bfloat16 backward of the stride-2 conv that makes P7 from it returns
    # nan weight gradients (torch 2.13, seen on an AMX CPU; fp32 is unaffected):
    # the run would stop at iteration 2 with exit status 3 (docs/reliability.md).
    data = make_toy_coco(str(tmp_path / 'coco'), num_train=4, num_val=1, image_size=128)
    work = tmp_path / 'amp'
    run('tools/train.py', RETINA, '--amp', '--work-dir', work,
        '--cfg-options', *train_options(data, **{'train_cfg.max_iters': 2}))
    dumped = Config.fromfile(work / osp.basename(RETINA))
    assert dumped.optim_wrapper.type == 'CPUAmpOptimWrapper'
    assert 'loss_scale' not in dumped.optim_wrapper
    losses = [r['loss'] for p in glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))
              for r in map(json.loads, open(p)) if 'loss' in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    state = weights(work / 'iter_2.pth')
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------ mmengine's compile
@pytest.mark.slow
def test_mmengine_compile_option_traces_a_casvit_train_step(tmp_path):
    """cfg.compile on the smallest CAS-ViT classifier, with the classification
    recipe's paramwise_cfg (the case TorchDynamo fails on without
    PlainParamGroupsHook). backend='eager' runs TorchDynamo's capture of the whole
    train step -- model, loss, backward, AdamW step -- and skips Inductor's C++
    code generation, which takes minutes on a CPU (README, "Reliability")."""
    from casvit_mm.toy_data.imagenet import make_toy_imagenet
    data = make_toy_imagenet(str(tmp_path / 'data'), num_train=2, num_val=1, size=64)
    config = tmp_path / 'tiny_cls.py'
    config.write_text(
        f'_base_ = [{osp.join(REPO, CLS)!r}]\n'
        'model = dict(backbone=dict(arch=dict(_delete_=True, depths=[1, 1, 1, 1],\n'
        '                                     widths=[16, 16, 32, 32])),\n'
        '             head=dict(in_channels=32))\n'
        'compile = dict(backend="eager")\n')
    assert load(str(config)).optim_wrapper.paramwise_cfg  # the failing case is covered
    opts = ['train_cfg.max_epochs=1', 'train_dataloader.batch_size=8',
            'default_hooks.logger.interval=1', 'train_cfg.val_interval=10']
    opts += loader_options(data['root'])
    work = tmp_path / 'work'
    out = run('tools/train.py', config, '--work-dir', work, '--cfg-options', *opts)
    assert 'Model has been "compiled"' in out and 'PlainParamGroupsHook' in out
    losses = [r['loss'] for p in glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))
              for r in map(json.loads, open(p)) if 'loss' in r]
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert safe_load(work / 'epoch_1.pth')['meta']['epoch'] == 1
