"""Distributed training and testing on the CPU: tools/dist_train.sh with 2
processes (torchrun + gloo) trains the toy RetinaNet, tools/dist_test.sh
evaluates it with 2 processes and gathers every image's predictions."""
import glob
import json
import os
import os.path as osp
import socket
import subprocess

import mmengine
import pytest
import torch
from mmengine.config import Config

from casvit_mm.checkpoint import safe_load
from casvit_mm.engine import closing_process_group, setup_cpu_distributed
from casvit_mm.toy_data.coco import cfg_options, make_toy_coco
from helpers import REPO, loader_options

RETINA = 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT=str(free_port()))
    proc = subprocess.run(['bash', f'tools/{script}', *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{script} failed:\n{out[-6000:]}'
    return out


@pytest.mark.slow
def test_dist_train_and_dist_test_with_two_cpu_processes(tmp_path):
    toy = make_toy_coco(str(tmp_path / 'coco'), num_train=8, num_val=4, image_size=64)
    opts = cfg_options(toy['root']) + ['train_dataloader.batch_size=2',
                                       'default_hooks.logger.interval=1']
    opts += loader_options()
    work = tmp_path / 'work'

    out = launch('dist_train.sh', RETINA, 2, '--work-dir', work,
                 '--cfg-options', *opts, 'train_cfg.max_iters=3')
    assert 'Distributed training: True' in out and 'GPU number: 2' in out  # world size 2
    assert "dist_cfg: {'backend': 'gloo'}" in out
    assert safe_load(work / 'iter_3.pth')['meta']['iter'] == 3

    preds = tmp_path / 'preds.pkl'
    launch('dist_test.sh', RETINA, work / 'iter_3.pth', 2, '--work-dir', work,
           '--out', preds, '--cfg-options', *opts, 'model.test_cfg.score_thr=0.0')
    # Each process saw 2 of the 4 validation images; rank 0 gathered all 4.
    assert sorted(p['img_id'] for p in mmengine.load(str(preds))) == [1, 2, 3, 4]
    files = [p for p in glob.glob(str(work / '*' / '*.json'))
             if osp.basename(p)[:-5] == osp.basename(osp.dirname(p))]
    metrics = json.load(open(files[0]))
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0 and 'coco/bbox_mAP_50' in metrics


def test_cpu_distributed_setup_only_changes_torchrun_jobs_without_cuda(monkeypatch):
    cfg = Config(dict(launcher='none'))
    assert 'model_wrapper_cfg' not in setup_cpu_distributed(cfg)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = Config(dict(launcher='pytorch'))
    assert 'model_wrapper_cfg' not in setup_cpu_distributed(cfg)  # GPUs: mmengine's way
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit, match='torchrun'):
        setup_cpu_distributed(Config(dict(launcher='slurm')))


def test_sync_bn_becomes_bn_for_cpu_processes():
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from casvit_mm.engine.cpu_dist import sync_bn_to_bn
    cfg = Config.fromfile(osp.join(REPO, 'configs/segmentation/fpn_casvit_xs.py'))
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'  # mmseg's Semantic FPN head
    assert sync_bn_to_bn(cfg.model) >= 1
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.decode_head.modules())


@pytest.fixture
def one_process_group(tmp_path):
    """A real gloo process group of one process; destroyed if a test leaves it open."""
    torch.distributed.init_process_group('gloo', init_method=f'file://{tmp_path}/store',
                                         rank=0, world_size=1)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_the_process_group_is_destroyed_when_a_run_ends(one_process_group):
    """Left open until Python's exit, a gloo group can abort a run that went well."""
    with closing_process_group():
        torch.distributed.all_reduce(torch.ones(1))
    assert not torch.distributed.is_initialized()


def test_a_deliberate_stop_destroys_the_group_and_keeps_its_exit_status(one_process_group):
    with pytest.raises(SystemExit) as stop:
        with closing_process_group():
            raise SystemExit(75)  # what pre-emption raises
    assert stop.value.code == 75
    assert not torch.distributed.is_initialized()


def test_a_crash_leaves_the_group_alone(one_process_group):
    """A destroy could wait on a peer that is gone: a failing process just fails."""
    with pytest.raises(RuntimeError, match='boom'):
        with closing_process_group():
            raise RuntimeError('boom')
    assert torch.distributed.is_initialized()
