"""tools/train.py and tools/test.py end to end on the toy COCO set (RetinaNet and
Mask R-CNN, a few iterations each), --resume, the image demo, and the options
and launchers of the tools."""
import json
import os
import os.path as osp
import subprocess
from argparse import Namespace

import mmengine
import pytest
import torch
from mmengine.config import Config

from casvit_mm.cli import codebase, config_from_args, enable_visualization
from casvit_mm.checkpoint import safe_load
from helpers import (MASK, ONE_THREAD, REPO, RETINA, logged_steps, read_metrics, run_tool,
                     run_tool_in_process, toy_train_options)


def run(*args):
    return run_tool(*args, env=ONE_THREAD)


@pytest.mark.slow
def test_retinanet_train_resume_test(toy, tmp_path):
    work = tmp_path / 'work'
    run('tools/train.py', RETINA, '--work-dir', work,
        '--cfg-options', *toy_train_options(toy, **{'train_cfg.max_iters': 2}))
    assert (work / 'iter_2.pth').is_file()

    # --resume (no path): continue from the latest checkpoint at iteration 2.
    run('tools/train.py', RETINA, '--work-dir', work, '--resume',
        '--cfg-options', *toy_train_options(toy, **{'train_cfg.max_iters': 4}))
    assert safe_load(work / 'iter_4.pth')['meta']['iter'] == 4
    assert logged_steps(work) == [[1, 2], [3, 4]]

    # Score threshold 0: after 4 iterations RetinaNet's scores are still near
    # its prior (0.01), below the default 0.05, and COCO eval needs detections.
    vis, pkl = tmp_path / 'vis', tmp_path / 'preds.pkl'
    out = run('tools/test.py', RETINA, work / 'iter_4.pth', '--work-dir', work,
              '--show-dir', vis, '--out', pkl,
              '--cfg-options', *toy_train_options(toy, **{'model.test_cfg.score_thr': 0.0}))
    metrics = read_metrics(work)
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    assert 'coco/bbox_mAP_50' in out
    assert len(os.listdir(vis)) == 4
    preds = mmengine.load(str(pkl))
    assert len(preds) == 4 and all(len(p['pred_instances']['bboxes']) > 0 for p in preds)

    # --deploy: the speed work folds BN; the predictions must not change.
    pkl2 = tmp_path / 'preds_deploy.pkl'
    run('tools/test.py', RETINA, work / 'iter_4.pth', '--work-dir', tmp_path / 'deploy',
        '--deploy', '--out', pkl2,
        '--cfg-options', *toy_train_options(toy, **{'model.test_cfg.score_thr': 0.0}))
    for a, b in zip(preds, mmengine.load(str(pkl2))):
        top_a = a['pred_instances']['scores'][:10]
        top_b = b['pred_instances']['scores'][:10]
        assert (top_a - top_b).abs().max() < 1e-3

    # The fused checkpoint in the deploy config: the same predictions, no refolding.
    fused, pkl3 = tmp_path / 'fused.pth', tmp_path / 'preds_fused.pkl'
    run('tools/model_converters/casvit_reparameterize.py', RETINA, work / 'iter_4.pth', fused)
    run('tools/test.py', RETINA.replace('/toy/', '/deploy/'), fused, '--work-dir',
        tmp_path / 'fused', '--out', pkl3,
        '--cfg-options', *toy_train_options(toy, **{'model.test_cfg.score_thr': 0.0}))
    for a, b in zip(preds, mmengine.load(str(pkl3))):
        top_a = a['pred_instances']['scores'][:10]
        top_b = b['pred_instances']['scores'][:10]
        assert (top_a - top_b).abs().max() < 1e-3


@pytest.mark.slow
def test_mask_rcnn_train_test_and_image_demo(toy, tmp_path):
    work = tmp_path / 'work'
    run('tools/train.py', MASK, '--work-dir', work,
        '--cfg-options', *toy_train_options(toy, **{'train_cfg.max_iters': 2}))
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()

    run('tools/test.py', MASK, ckpt, '--work-dir', work,
        '--cfg-options', *toy_train_options(toy))
    metrics = read_metrics(work)
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)

    # mmdet's DetInferencer through demo/image_demo.py: a picture and masks.
    image = osp.join(toy['val_img_dir'], '000000000001.jpg')
    out_dir = tmp_path / 'demo'
    run('demo/image_demo.py', image, MASK, '--weights', ckpt, '--out-dir', out_dir,
        '--pred-score-thr', 0.0)
    assert (out_dir / 'vis' / '000000000001.jpg').is_file()
    pred = json.load(open(out_dir / 'preds' / '000000000001.json'))
    assert len(pred['bboxes']) == len(pred['masks']) > 0


# ----------------------------------------------------------- options, errors
def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match='does not exist'):
        run_tool_in_process('train', ['configs/detection/retinanet_casvit_q.py'], monkeypatch)
    with pytest.raises(SystemExit, match='no such checkpoint'):
        run_tool_in_process('train', [RETINA, '--resume', tmp_path / 'nope.pth'], monkeypatch)
    with pytest.raises(SystemExit, match='does not exist'):
        run_tool_in_process('test', [RETINA, tmp_path / 'nope.pth'], monkeypatch)
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'0')
    with pytest.raises(SystemExit, match='ending in .pkl'):
        run_tool_in_process('test', [RETINA, ckpt, '--out', tmp_path / 'preds.json'],
                            monkeypatch)


def test_cpu_uses_gloo_and_work_dir_defaults(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    args = Namespace(config=osp.join(REPO, RETINA), launcher='pytorch', cfg_options=None,
                     work_dir=None)
    cfg = config_from_args(args)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.work_dir == './work_dirs/retinanet_casvit_xs_toy-shapes'
    args.cfg_options = {'env_cfg.dist_cfg.backend': 'mpi'}
    assert config_from_args(args).env_cfg.dist_cfg.backend == 'mpi'


@pytest.mark.parametrize('scope,config', [
    ('mmdet', RETINA),
    ('mmseg', 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'),
    ('mmpretrain', 'mmpretrain::resnet/resnet18_8xb32_in1k.py'),
])
def test_show_dir_uses_each_codebase_hook(scope, config, tmp_path):
    if '::' in config:  # a packaged config of mmseg / mmpretrain, as a user inherits it
        (tmp_path / 'cfg.py').write_text(f"_base_ = ['{config}']\n")
        config = str(tmp_path / 'cfg.py')
    cfg = Config.fromfile(osp.join(REPO, config))
    assert codebase(cfg) == scope
    args = Namespace(show=False, show_dir='painted', wait_time=2)
    cfg = enable_visualization(cfg, args, scope)
    hook = cfg.default_hooks.visualization
    if scope == 'mmdet':
        assert hook.type == 'DetVisualizationHook' and hook.draw
        assert hook.test_out_dir == 'painted'
    elif scope == 'mmseg':
        assert hook.type == 'SegVisualizationHook' and hook.draw
        assert cfg.visualizer.save_dir == 'painted'
    else:
        assert hook.type == 'VisualizationHook' and hook.enable
        assert hook.out_dir == 'painted'


def fake_program(tmp_path, name):
    """An executable that records its arguments, one per line, in <name>.args."""
    path = tmp_path / name
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/{name}.args"\n')
    path.chmod(0o755)
    return path


def test_launch_scripts_build_the_right_commands(tmp_path):
    fake_python = fake_program(tmp_path, 'python')
    fake_program(tmp_path, 'srun')
    env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', PYTHON=str(fake_python))

    def launched(script, *args, program):
        subprocess.run(['bash', f'tools/{script}', *args], cwd=REPO, env=env, check=True)
        return (tmp_path / f'{program}.args').read_text().split('\n')[:-1]

    argv = launched('dist_train.sh', RETINA, '2', '--amp', program='python')
    assert argv[:2] == ['-m', 'torch.distributed.run'] and '--nproc_per_node=2' in argv
    assert argv[-5:] == [osp.join(REPO, 'tools', 'train.py'), RETINA, '--launcher',
                         'pytorch', '--amp']
    argv = launched('dist_test.sh', RETINA, 'ck.pth', '3', '--out', 'r.pkl', program='python')
    assert '--nproc_per_node=3' in argv
    assert argv[-7:] == [osp.join(REPO, 'tools', 'test.py'), RETINA, 'ck.pth', '--launcher',
                         'pytorch', '--out', 'r.pkl']
    env['GPUS'] = '16'
    argv = launched('slurm_train.sh', 'gpu', 'job', RETINA, 'wd', '--resume', program='srun')
    assert ['-p', 'gpu'] == argv[:2] and '--ntasks=16' in argv
    assert '--ntasks-per-node=8' in argv and '--job-name=job' in argv
    assert argv[-6:] == ['-u', osp.join(REPO, 'tools', 'train.py'), RETINA, '--work-dir=wd',
                         '--launcher=slurm', '--resume']
    argv = launched('slurm_test.sh', 'gpu', 'job', RETINA, 'ck.pth', program='srun')
    assert argv[-4:] == [osp.join(REPO, 'tools', 'test.py'), RETINA, 'ck.pth',
                         '--launcher=slurm']
