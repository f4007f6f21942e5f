"""tools/train.py and tools/test.py end to end on the toy COCO set (RetinaNet and
Mask R-CNN, a few iterations each), --resume, the image demo, and the options
and launchers of the tools."""
import glob
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys
from argparse import Namespace

import mmengine
import pytest
from mmengine.config import Config

from casvit_mm.checkpoint import safe_load
from casvit_mm.toy_data.coco import cfg_options, make_toy_coco

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
RETINA = 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py'
MASK = 'configs/detection/toy/mask_rcnn_casvit_xs_toy-shapes.py'


@pytest.fixture(scope='session')
def toy(tmp_path_factory):
    """8 training and 4 validation images of 64 px, generated once per session."""
    root = tmp_path_factory.mktemp('toy_coco')
    return make_toy_coco(str(root), num_train=8, num_val=4, image_size=64, seed=0)


def options(toy, **extra):
    """--cfg-options for a quick run: the toy data, 2 images a batch, no workers."""
    opts = cfg_options(toy['root']) + ['default_hooks.logger.interval=1',
                                       'train_dataloader.batch_size=2']
    for loader in ('train_dataloader', 'test_dataloader'):
        opts += [f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    return opts + [f'{k}={v}' for k, v in extra.items()]


def run(*args):
    # One thread: these models and images are tiny, so a second thread gains
    # nothing, and on a busy machine idle-spinning OpenMP threads cost minutes.
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (f'{args[0]} failed:\n{proc.stdout[-4000:]}\n'
                                  f'{proc.stderr[-4000:]}')
    return proc.stdout + proc.stderr


def logged_steps(work_dir):
    """Training iterations logged by each run in work_dir, oldest run first."""
    runs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    return [[r['step'] for r in map(json.loads, open(p)) if 'loss' in r] for p in runs]


def read_metrics(work_dir):
    """The metrics tools/test.py wrote (work_dir/<timestamp>/<timestamp>.json)."""
    files = [p for p in glob.glob(osp.join(work_dir, '*', '*.json'))
             if osp.basename(p)[:-5] == osp.basename(osp.dirname(p))]
    assert files, f'no metrics json under {work_dir}'
    return json.load(open(sorted(files)[-1]))


def test_retinanet_train_resume_test(toy, tmp_path):
    work = tmp_path / 'work'
    run('tools/train.py', RETINA, '--work-dir', work,
        '--cfg-options', *options(toy, **{'train_cfg.max_iters': 2}))
    assert (work / 'iter_2.pth').is_file()

    # --resume (no path): continue from the latest checkpoint at iteration 2.
    run('tools/train.py', RETINA, '--work-dir', work, '--resume',
        '--cfg-options', *options(toy, **{'train_cfg.max_iters': 4}))
    assert safe_load(work / 'iter_4.pth')['meta']['iter'] == 4
    assert logged_steps(work) == [[1, 2], [3, 4]]

    # Score threshold 0: after 4 iterations RetinaNet's scores are still near
    # its prior (0.01), below the default 0.05, and COCO eval needs detections.
    vis, pkl = tmp_path / 'vis', tmp_path / 'preds.pkl'
    out = run('tools/test.py', RETINA, work / 'iter_4.pth', '--work-dir', work,
              '--show-dir', vis, '--out', pkl,
              '--cfg-options', *options(toy, **{'model.test_cfg.score_thr': 0.0}))
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
        '--cfg-options', *options(toy, **{'model.test_cfg.score_thr': 0.0}))
    for a, b in zip(preds, mmengine.load(str(pkl2))):
        top_a = a['pred_instances']['scores'][:10]
        top_b = b['pred_instances']['scores'][:10]
        assert (top_a - top_b).abs().max() < 1e-3

    # The fused checkpoint in the deploy config: the same predictions, no refolding.
    fused, pkl3 = tmp_path / 'fused.pth', tmp_path / 'preds_fused.pkl'
    run('tools/model_converters/casvit_reparameterize.py', RETINA, work / 'iter_4.pth', fused)
    run('tools/test.py', RETINA.replace('/toy/', '/deploy/'), fused, '--work-dir',
        tmp_path / 'fused', '--out', pkl3,
        '--cfg-options', *options(toy, **{'model.test_cfg.score_thr': 0.0}))
    for a, b in zip(preds, mmengine.load(str(pkl3))):
        top_a = a['pred_instances']['scores'][:10]
        top_b = b['pred_instances']['scores'][:10]
        assert (top_a - top_b).abs().max() < 1e-3


def test_mask_rcnn_train_test_and_image_demo(toy, tmp_path):
    work = tmp_path / 'work'
    run('tools/train.py', MASK, '--work-dir', work,
        '--cfg-options', *options(toy, **{'train_cfg.max_iters': 2}))
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()

    run('tools/test.py', MASK, ckpt, '--work-dir', work, '--cfg-options', *options(toy))
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
def import_tool(name):
    """tools/<name>.py as a module (under another name: ``test`` is in the stdlib)."""
    sys.path.insert(0, osp.join(REPO, 'tools'))  # test.py imports its sibling train.py
    try:
        spec = importlib.util.spec_from_file_location(
            f'casvit_tool_{name}', osp.join(REPO, 'tools', f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.pop(0)


def call_main(tool, argv, monkeypatch):
    monkeypatch.setattr(sys, 'argv', [f'{tool.__name__}.py', *map(str, argv)])
    tool.main()


def test_clear_errors(tmp_path, monkeypatch):
    train, test = import_tool('train'), import_tool('test')
    with pytest.raises(SystemExit, match='does not exist'):
        call_main(train, ['configs/detection/retinanet_casvit_q.py'], monkeypatch)
    with pytest.raises(SystemExit, match='no such checkpoint'):
        call_main(train, [RETINA, '--resume', tmp_path / 'nope.pth'], monkeypatch)
    with pytest.raises(SystemExit, match='does not exist'):
        call_main(test, [RETINA, tmp_path / 'nope.pth'], monkeypatch)
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'0')
    with pytest.raises(SystemExit, match='ending in .pkl'):
        call_main(test, [RETINA, ckpt, '--out', tmp_path / 'preds.json'], monkeypatch)


def test_cpu_uses_gloo_and_work_dir_defaults(monkeypatch):
    train = import_tool('train')
    monkeypatch.setattr(train.torch.cuda, 'is_available', lambda: False)
    args = Namespace(config=osp.join(REPO, RETINA), launcher='pytorch', cfg_options=None,
                     work_dir=None)
    cfg = train.load_config(args)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.work_dir == './work_dirs/retinanet_casvit_xs_toy-shapes'
    args.cfg_options = {'env_cfg.dist_cfg.backend': 'mpi'}
    assert train.load_config(args).env_cfg.dist_cfg.backend == 'mpi'


@pytest.mark.parametrize('scope,config', [
    ('mmdet', RETINA),
    ('mmseg', 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'),
    ('mmpretrain', 'mmpretrain::resnet/resnet18_8xb32_in1k.py'),
])
def test_show_dir_uses_each_codebase_hook(scope, config, tmp_path):
    test = import_tool('test')
    if '::' in config:  # a packaged config of mmseg / mmpretrain, as a user inherits it
        (tmp_path / 'cfg.py').write_text(f"_base_ = ['{config}']\n")
        config = str(tmp_path / 'cfg.py')
    cfg = Config.fromfile(osp.join(REPO, config))
    assert test.codebase(cfg) == scope
    args = Namespace(show=False, show_dir='painted', wait_time=2)
    cfg = test.enable_visualization(cfg, args, scope)
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
