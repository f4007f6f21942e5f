"""What several test files share: the repository root, running a tool as a user
does, reading what a run wrote, and the command-line options of a quick toy run.

Test files import it as ``from helpers import ...`` (pytest puts ``tests/`` on
``sys.path``, the way ``reference_casvit`` is found); the fixtures stay in
``conftest.py``, which pytest loads by itself.

The tools are run as subprocesses from the repository root (the way the README
runs them), so these helpers build command lines and read the files mmengine
writes into a work dir, rather than reaching into a runner.
"""
import glob
import json
import os
import os.path as osp
import runpy
import subprocess
import sys

from casvit_mm.toy_data.coco import cfg_options

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
RETINA = 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py'
MASK = 'configs/detection/toy/mask_rcnn_casvit_xs_toy-shapes.py'
# One thread: the models and images of the tests are tiny, so a second thread
# gains nothing, and on a busy machine idle-spinning OpenMP threads cost
# minutes; with a fixed seed it also makes CPU training deterministic.
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def run_tool(*args, env=None, timeout=900):
    """``python ARGS`` from the repository root; fails the test on a non-zero exit.

    Returns:
        str: stdout and stderr together.
    """
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f'{args[0]} failed:\n{proc.stdout[-4000:]}\n'
                                  f'{proc.stderr[-4000:]}')
    return proc.stdout + proc.stderr


def run_tool_in_process(tool, argv, monkeypatch):
    """``python tools/TOOL.py ARGV`` in this process, so a test can catch the
    ``SystemExit`` a tool raises with its message (e.g. before a runner is built)."""
    path = osp.join(REPO, 'tools', f'{tool}.py')
    monkeypatch.setattr(sys, 'argv', [path, *map(str, argv)])
    runpy.run_path(path, run_name='__main__')


def read_metrics(work_dir):
    """The metrics tools/test.py wrote (work_dir/<timestamp>/<timestamp>.json)."""
    files = [p for p in glob.glob(osp.join(work_dir, '*', '*.json'))
             if osp.basename(p)[:-5] == osp.basename(osp.dirname(p))]
    assert files, f'no metrics json under {work_dir}'
    return json.load(open(sorted(files)[-1]))


def logged_steps(work_dir):
    """Training iterations logged by each run in work_dir, oldest run first."""
    runs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    return [[r['step'] for r in map(json.loads, open(p)) if 'loss' in r] for p in runs]


def loader_options(data_root=None):
    """--cfg-options that make every dataloader (train, val, test) load in the
    test's own process (no workers to start or leave behind) and, given
    ``data_root``, read from it."""
    opts = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if data_root is not None:
            opts.append(f'{loader}.dataset.data_root={data_root}')
        opts += [f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    return opts


def toy_train_options(toy, deterministic=False, **extra):
    """--cfg-options for a quick toy detection run: the toy data, 2 images a
    batch, a log line every iteration, no dataloader workers; ``deterministic``
    adds a fixed seed and deterministic algorithms; ``extra`` is key=value."""
    opts = cfg_options(toy['root']) + ['default_hooks.logger.interval=1',
                                       'train_dataloader.batch_size=2']
    if deterministic:
        opts += ['randomness.seed=0', 'randomness.deterministic=True']
    return opts + loader_options() + [f'{k}={v}' for k, v in extra.items()]
