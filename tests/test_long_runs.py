"""Long runs that go wrong: a diverging learning rate, pre-emption (SIGTERM) in
one process and in two (gloo), and bad samples -- found before the run by
tools/misc/check_dataset.py, and named by the error when training meets one.

Every run is a real tools/train.py (or torchrun) process on generated toy data.
"""
import glob
import json
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import time
from functools import partial

import pytest
import torch

from casvit_mm.checkpoint import safe_load
from casvit_mm.engine import EXIT_DIVERGED, EXIT_PREEMPTED
from casvit_mm.toy_data.coco import cfg_options, make_toy_coco
from helpers import ONE_THREAD, REPO, RETINA, loader_options, logged_steps, toy_train_options

# Deterministic CPU training (as the SIGKILL test of test_reliability.py).
ENV = ONE_THREAD
train_options = partial(toy_train_options, deterministic=True)


def train(work, opts, *flags, check=None):
    proc = subprocess.run([sys.executable, 'tools/train.py', RETINA, '--work-dir', str(work),
                           *flags, '--cfg-options', *opts],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    if check is not None:
        assert proc.returncode == check, f'exit {proc.returncode}, expected {check}:\n' \
                                         f'{out[-5000:]}'
    return proc.returncode, out


def tensors(obj, prefix=''):
    """Every tensor in a (nested) checkpoint, with its key path."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f'{prefix}.{k}')
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f'{prefix}.{i}')


def non_finite(path):
    return [k for k, v in tensors(safe_load(path))
            if v.is_floating_point() and not torch.isfinite(v).all()]


def latest(work):
    return (work / 'last_checkpoint').read_text().strip()



def test_tools_train_adds_the_guards_once_and_a_resumable_epoch_loop():
    from mmengine.config import Config

    from casvit_mm.engine import PreemptionHook, use_long_run_guards
    cfg = Config(dict(custom_hooks=[dict(type='EMAHook')],
                      train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=12)))
    use_long_run_guards(use_long_run_guards(cfg))
    assert [h['type'] for h in cfg.custom_hooks] == ['EMAHook', 'NonFiniteLossHook',
                                                     'PreemptionHook']
    assert cfg.train_cfg.type == 'ResumableEpochBasedTrainLoop'
    cfg = use_long_run_guards(Config(dict(train_cfg=dict(by_epoch=True, max_epochs=1))))
    assert cfg.train_cfg == dict(type='ResumableEpochBasedTrainLoop', max_epochs=1)
    cfg = use_long_run_guards(Config(dict(train_cfg=dict(type='IterBasedTrainLoop',
                                                          max_iters=9))))
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    with pytest.raises(ValueError, match='SIGTERM'):
        PreemptionHook(signals=('SIGTREM',))


# ------------------------------------------------------------ divergence
@pytest.mark.slow
def test_diverging_run_stops_loudly_and_keeps_the_last_finite_checkpoint(toy, tmp_path):
    work = tmp_path / 'lr1000'
    opts = train_options(toy, **{'optim_wrapper.optimizer.lr': 1000, 'train_cfg.max_iters': 20,
                                 'default_hooks.checkpoint.interval': 1,
                                 'default_hooks.checkpoint.max_keep_ckpts': 2})
    code, out = train(work, opts, check=EXIT_DIVERGED)
    stopped = int(out.split('Training stopped at iteration ')[1].split()[0])
    assert 1 < stopped < 20, out[-3000:]
    for part in ('non-finite', 'learning rate too high for the total batch',
                 'lr is ', '1 process(es) x 2 images = 2', '--auto-scale-lr',
                 'float16 without loss scaling', 'tools/misc/check_dataset.py'):
        assert part in out, part
    # Nothing non-finite on disk; the last finite checkpoints were not rotated away.
    saved = sorted(glob.glob(str(work / '*.pth')), key=osp.getmtime)
    assert saved, 'no checkpoint was written before the divergence'
    for path in saved:
        assert not non_finite(path), f'{path} holds non-finite tensors: {non_finite(path)[:5]}'
    assert not glob.glob(str(work / '*.partial'))
    assert len(saved) == 2 and latest(work) == saved[-1]
    assert safe_load(latest(work))['meta']['iter'] == stopped - 1
    assert f'The last checkpoint, {saved[-1]}, holds finite weights' in out


@pytest.mark.slow
@pytest.mark.parametrize('task', ['segmentation', 'classification'])
def test_segmentation_and_classification_runs_stop_the_same_way(task, tmp_path):
    """The guards are the same for mmseg and mmpretrain configs: lr 1e6 stops the
    toy run with exit 3 and no non-finite checkpoint."""
    from casvit_mm.toy_data.ade import make_toy_ade
    from casvit_mm.toy_data.imagenet import make_toy_imagenet
    if task == 'segmentation':
        config = 'configs/segmentation/fpn_casvit_xs_toy.py'
        root = make_toy_ade(str(tmp_path / 'data'), num_train=4, num_val=1, size=(64, 64))['root']
        opts = ['train_cfg.max_iters=6', 'train_cfg.val_interval=100']
    else:
        config = 'configs/classification/casvit_xs_toy.py'
        root = make_toy_imagenet(str(tmp_path / 'data'), num_train=2, num_val=1, size=64)['root']
        opts = ['train_cfg.max_epochs=2', 'train_cfg.val_interval=100']
    opts += ['optim_wrapper.optimizer.lr=1e6', 'default_hooks.checkpoint.interval=1',
             'default_hooks.checkpoint.by_epoch=False', 'train_dataloader.batch_size=2',
             'default_hooks.logger.interval=1']
    opts += loader_options(root)
    work = tmp_path / 'work'
    proc = subprocess.run([sys.executable, 'tools/train.py', config, '--work-dir', str(work),
                           '--cfg-options', *opts],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_DIVERGED, out[-4000:]
    assert 'Training stopped at iteration ' in out and 'non-finite' in out
    saved = glob.glob(str(work / '*.pth'))
    assert saved and f'The last checkpoint, {latest(work)}, holds finite weights' in out
    for path in saved:
        assert not non_finite(path), path


# A real mmengine Runner training a linear model, checkpoint every iteration,
# max_keep_ckpts=1, in one of two ways to diverge at iteration 3:
# - overflow: the loss stays finite while the update overflows the weights (SGD
#   at lr 1e38 from iteration 3, inputs of 4): only the check before each save
#   can catch it;
# - nan_sample: the 5th sample is nan, so the loss of iteration 3 is.
TINY_RUN = r'''
import sys
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
import casvit_mm.engine  # registers the hooks

work_dir, how = sys.argv[1:]


class Model(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.fc(torch.stack(inputs))
        return dict(loss=out.mean()) if mode == 'loss' else out


samples = [torch.full((4,), 4.0) for _ in range(8)]
if how == 'nan_sample':
    samples[4][0] = float('nan')
data = torch.utils.data.DataLoader(samples, batch_size=2,
                                   collate_fn=lambda batch: dict(inputs=batch))
Runner(model=Model(), work_dir=work_dir, train_dataloader=data,
       train_cfg=dict(by_epoch=False, max_iters=4),
       optim_wrapper=dict(optimizer=dict(type='SGD', lr=1e-3)),
       param_scheduler=dict(type='MultiStepLR', by_epoch=False, milestones=[2],
                            gamma=1e41 if how == 'overflow' else 1),
       custom_hooks=[dict(type='NonFiniteLossHook')],
       default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False,
                                          interval=1, max_keep_ckpts=1))).train()
'''


def tiny_run(work, *args):
    proc = subprocess.run([sys.executable, '-c', TINY_RUN, str(work), *map(str, args)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    return proc, proc.stdout + proc.stderr


def test_weights_that_overflow_after_a_finite_loss_are_never_saved(tmp_path):
    work = tmp_path / 'overflow'
    proc, out = tiny_run(work, 'overflow')
    assert proc.returncode == EXIT_DIVERGED, out[-3000:]
    # Iteration 3 runs at lr 1e38: its loss is finite; the weight update (lr x 4) overflows.
    assert 'Training stopped at iteration 3' in out and 'non-finite values in' in out
    assert 'state_dict.fc.weight' in out
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_2.pth']  # kept, not rotated
    assert latest(work) == str(work / 'iter_2.pth')
    assert not non_finite(work / 'iter_2.pth')


def test_a_nan_loss_stops_the_run_before_the_checkpoint_hook(tmp_path):
    """The loss hook (not the save check) stops it: the 5th sample is nan, so the
    loss of iteration 3 is, and iteration 3 is not saved."""
    work = tmp_path / 'nan'
    proc, out = tiny_run(work, 'nan_sample')
    assert proc.returncode == EXIT_DIVERGED, out[-3000:]
    assert 'Training stopped at iteration 3 (epoch 1): non-finite loss: loss=nan' in out
    assert f'The last checkpoint, {work}/iter_2.pth, holds finite weights' in out
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_2.pth']


# ------------------------------------------------------------ pre-emption
def start(cmd, work, env=ENV):
    """A training command in the background, its output in work/out.log."""
    work.mkdir(parents=True)
    with open(work / 'out.log', 'w') as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def wait_for_steps(proc, work, n, timeout=600):
    """Until the running job has logged ``n`` training iterations."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        steps = logged_steps(work)
        if steps and len(steps[-1]) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f'job ended or stalled before logging {n} iterations:\n'
                         f'{(work / "out.log").read_text()[-4000:]}')


def weights(path):
    return safe_load(path)['state_dict']


def assert_same_weights(final, reference, trained_from):
    assert final.keys() == reference.keys()
    assert any(not torch.equal(trained_from[k], reference[k]) for k in reference)  # it trained
    different = [k for k in reference if not torch.equal(final[k], reference[k])]
    assert not different, f'resumed run differs from the uninterrupted one in {different[:5]}'


@pytest.mark.slow
def test_sigterm_saves_the_iteration_and_resume_matches_an_uninterrupted_run(toy, tmp_path):
    # Periodic checkpoints far apart: what is saved at SIGTERM is the hook's own.
    opts = train_options(toy, **{'train_cfg.max_iters': 8,
                                 'default_hooks.checkpoint.interval': 100})
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    cmd = [sys.executable, 'tools/train.py', RETINA, '--cfg-options', *opts, '--work-dir']
    runs = [start(cmd + [str(work)], work) for work in (straight, stopped)]
    proc = runs[1]
    wait_for_steps(proc, stopped, 2)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=600)
    out = (stopped / 'out.log').read_text()
    assert code == EXIT_PREEMPTED, out[-4000:]
    assert runs[0].wait(timeout=600) == 0, (straight / 'out.log').read_text()[-4000:]

    # It finished the iteration it was in and saved exactly that one.
    done = logged_steps(stopped)[-1][-1]
    assert 2 <= done < 8
    assert latest(stopped) == str(stopped / f'iter_{done}.pth')
    assert safe_load(latest(stopped))['meta']['iter'] == done
    assert f'Pre-empted (SIGTERM received): stopped after iteration {done}' in out
    assert (stopped / 'preempted').read_text().strip() == latest(stopped)

    _, out = train(stopped, opts, '--resume', check=0)
    assert logged_steps(stopped)[-1] == list(range(done + 1, 9))
    assert_same_weights(weights(stopped / 'iter_8.pth'), weights(straight / 'iter_8.pth'),
                        weights(stopped / f'iter_{done}.pth'))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def ranks(torchrun_pid):
    """{rank: pid} of the worker processes torchrun started."""
    out = subprocess.run(['ps', '-o', 'pid=', '--ppid', str(torchrun_pid)],
                         capture_output=True, text=True).stdout
    found = {}
    for pid in map(int, out.split()):
        with open(f'/proc/{pid}/environ', 'rb') as f:
            env = dict(v.split(b'=', 1) for v in f.read().split(b'\0') if b'=' in v)
        found[int(env[b'RANK'])] = pid
    return found


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_iteration(toy, tmp_path):
    """2 CPU processes (torchrun + gloo). Only rank 1 gets SIGTERM: the all-reduced
    flag stops rank 0 too, at the same iteration, and rank 0 saves it."""
    opts = train_options(toy, **{'train_cfg.max_iters': 6,
                                 'default_hooks.checkpoint.interval': 100})
    env = dict(ENV, PORT=str(free_port()))
    stopped, straight = tmp_path / 'stopped', tmp_path / 'straight'
    cmd = ['bash', 'tools/dist_train.sh', RETINA, '2', '--cfg-options', *opts, '--work-dir']
    proc = start(cmd + [str(stopped)], stopped, env)
    wait_for_steps(proc, stopped, 2)
    workers = ranks(proc.pid)  # dist_train.sh execs torchrun; its children are the ranks
    assert sorted(workers) == [0, 1], workers
    os.kill(workers[1], signal.SIGTERM)  # rank 1 only
    code = proc.wait(timeout=600)
    out = (stopped / 'out.log').read_text()
    # torchrun exits 1 and names the workers' status; the marker names the checkpoint.
    assert code != 0 and f'exitcode  : {EXIT_PREEMPTED}' in out, out[-5000:]
    # Rank 0 (which logs) never got the signal: the all-reduced flag stopped it.
    assert 'Pre-empted (a stop signal reached another process): stopped after iteration' in out
    done = safe_load(latest(stopped))['meta']['iter']
    assert 2 <= done < 6 and latest(stopped) == str(stopped / f'iter_{done}.pth')
    assert (stopped / 'preempted').read_text().strip() == latest(stopped)

    env = dict(ENV, PORT=str(free_port()))
    for work, flags in ((stopped, ['--resume']), (straight, [])):
        run = subprocess.run(['bash', 'tools/dist_train.sh', RETINA, '2', '--work-dir',
                              str(work), *flags, '--cfg-options', *opts],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    assert_same_weights(weights(stopped / 'iter_6.pth'), weights(straight / 'iter_6.pth'),
                        weights(stopped / f'iter_{done}.pth'))



# A scheduler's signal at a known iteration, from inside the process (a tiny
# classifier trains too fast to be signalled from outside at a chosen point).
SIGNAL_AT = """
import os, signal
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SignalAt(Hook):
    def __init__(self, at, sig):
        self.at, self.sig = at, getattr(signal, sig)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at:
            os.kill(os.getpid(), self.sig)
"""


@pytest.mark.slow
def test_sigusr1_inside_an_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Epoch-based (the classification recipe): SIGUSR1 (Slurm's --signal) during
    the 2nd iteration of epoch 2 saves iter_6.pth; --resume skips the 2 batches of
    epoch 2 already trained and ends equal to an uninterrupted run."""
    from casvit_mm.toy_data.imagenet import make_toy_imagenet
    data = make_toy_imagenet(str(tmp_path / 'data'), num_train=2, num_val=1, size=64)
    (tmp_path / 'signal_at.py').write_text(SIGNAL_AT)
    tiny, signalled = tmp_path / 'tiny_cls.py', tmp_path / 'tiny_cls_signalled.py'
    tiny.write_text(
        f'_base_ = [{osp.join(REPO, "configs/classification/casvit_xs_toy.py")!r}]\n'
        'model = dict(backbone=dict(arch=dict(_delete_=True, depths=[1, 1, 1, 1],\n'
        '                                     widths=[16, 16, 32, 32])),\n'
        '             head=dict(in_channels=32))\n')
    signalled.write_text(
        "_base_ = ['./tiny_cls.py']\n"
        "custom_imports = dict(imports=['casvit_mm', 'signal_at'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='EMAHook', momentum=0.05, interval=1,\n"
        "                     priority='ABOVE_NORMAL'),\n"
        "                dict(type='SignalAt', at=6, sig='SIGUSR1')]\n")
    # 8 images, batch 2: 4 iterations per epoch. One data worker, restarted every
    # epoch: the random crops of an epoch do not depend on the epochs before it.
    opts = ['train_cfg.max_epochs=2', 'train_cfg.val_interval=10', 'train_dataloader.batch_size=2',
            'default_hooks.logger.interval=1', 'randomness.deterministic=True',
            'train_dataloader.num_workers=1', 'train_dataloader.persistent_workers=False']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts.append(f'{loader}.dataset.data_root={data["root"]}')
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(tmp_path), ENV.get('PYTHONPATH', '')]))

    def train_cls(config, work, *flags):
        proc = subprocess.run([sys.executable, 'tools/train.py', str(config), '--work-dir',
                               str(work), *flags, '--cfg-options', *opts],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        return proc.returncode, proc.stdout + proc.stderr

    stopped, straight = tmp_path / 'stopped', tmp_path / 'straight'
    code, out = train_cls(signalled, stopped)
    assert code == EXIT_PREEMPTED, out[-4000:]
    assert 'Pre-empted (SIGUSR1 received): stopped after iteration 6' in out
    assert latest(stopped) == str(stopped / 'iter_6.pth')
    meta = safe_load(stopped / 'iter_6.pth')['meta']
    assert (meta['epoch'], meta['iter']) == (1, 6)  # 1 epoch done, epoch 2 unfinished

    code, out = train_cls(tiny, stopped, '--resume')
    assert code == 0, out[-4000:]
    assert 'reading and skipping its first 2 batches' in out
    assert logged_steps(stopped)[-1] == [7, 8]
    code, out = train_cls(tiny, straight)
    assert code == 0, out[-4000:]
    assert_same_weights(weights(stopped / 'epoch_2.pth'), weights(straight / 'epoch_2.pth'),
                        weights(stopped / 'iter_6.pth'))


# ------------------------------------------------------------ bad samples
@pytest.fixture(scope='module')
def damaged(tmp_path_factory):
    """A toy set with three planted faults: a file that is not an image (id 2), a
    JPEG cut in half (id 3) and a box reaching past its 64 px image (id 5)."""
    root = tmp_path_factory.mktemp('damaged_coco')
    data = make_toy_coco(str(root), num_train=8, num_val=4, image_size=64, seed=0)
    img = osp.join(data['train_img_dir'], '{:012d}.jpg')
    with open(img.format(2), 'wb') as f:
        f.write(b'not an image')
    whole = open(img.format(3), 'rb').read()
    with open(img.format(3), 'wb') as f:
        f.write(whole[:len(whole) // 2])
    with open(data['train_ann']) as f:
        coco = json.load(f)
    ann = next(a for a in coco['annotations'] if a['image_id'] == 5)
    ann['bbox'] = [40.0, 40.0, 40.0, 40.0]  # x2 = y2 = 80 in a 64 x 64 image
    with open(data['train_ann'], 'w') as f:
        json.dump(coco, f)
    return dict(data, garbage=img.format(2), truncated=img.format(3), box=img.format(5))


def check_dataset(root):
    proc = subprocess.run([sys.executable, 'tools/misc/check_dataset.py', RETINA, '--workers',
                           '0', '--cfg-options', *cfg_options(root)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.slow
def test_check_dataset_passes_a_clean_set(toy):
    code, out, err = check_dataset(toy['root'])
    assert code == 0, out + err
    # The toy config validates on the test split, so val is checked as well.
    assert out == '' and 'All samples of train, val, test read and consistent' in err


@pytest.mark.slow
def test_check_dataset_lists_every_planted_fault(damaged):
    code, out, err = check_dataset(damaged['root'])
    assert code == 1, out + err
    rows = [line.split('\t') for line in out.splitlines()]
    assert all(len(row) == 5 for row in rows), out
    by_file = {}
    for split, dataset, index, file, reason in rows:
        assert split == 'train' and dataset.startswith('CocoDataset (') and index.startswith(
            'index ')
        by_file.setdefault(file, []).append(reason)
    assert sorted(by_file) == sorted([damaged['garbage'], damaged['truncated'], damaged['box']])
    assert any('failed to load image' in r for r in by_file[damaged['garbage']])
    assert any('does not decode completely' in r for r in by_file[damaged['truncated']])
    assert by_file[damaged['box']] == [
        'box 0 [40, 40, 80, 80] (x1, y1, x2, y2) lies outside the 64x64 (WxH) image']
    assert f'{len(rows)} problem(s) in 3 sample(s)' in err


@pytest.mark.slow
def test_a_sample_that_fails_in_training_names_file_dataset_and_check(damaged, tmp_path):
    opts = train_options(damaged, **{'train_cfg.max_iters': 8,
                                     'train_dataloader.num_workers': 1})
    code, out = train(tmp_path / 'work', opts)
    assert code != 0
    assert 'BadSampleError' in out and 'in DataLoader worker process 0' in out
    # Whichever unreadable file the shuffled order meets first.
    named = [f'of CocoDataset ({damaged["root"]}/ annotations/instances_train2017.json): '
             f'{damaged[k]}: AssertionError: failed to load image' for k in ('garbage',
                                                                              'truncated')]
    assert any(n in out for n in named), out[-4000:]
    assert f'List every such sample of this config before training: ' \
           f'python tools/misc/check_dataset.py {RETINA}' in out
