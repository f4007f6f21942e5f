"""From a tool's command line to an mmengine ``Runner``, for the three codebases.

``tools/train.py`` and ``tools/test.py`` read a config the same way (work dir
default, ``--cfg-options``, gloo without CUDA), check its data before building
anything and build the runner the config asks for; ``tools/test.py`` then
switches on the visualisation and test-time augmentation of the config's
codebase the way that codebase's own ``test.py`` does. Kept here so both tools
stay command lines and the tests call the same functions.
"""
import os
import os.path as osp

import torch
from mmengine.config import ConfigDict, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..registry import MODEL_SCOPES
from .build import load_config
from ..utils import DataRootError, check_data_paths
from ..utils.path_check import check_classes

__all__ = ['build_runner', 'check_checkpoints', 'check_data', 'codebase',
           'config_from_args', 'drop_test_time_ema',
           'enable_tta', 'enable_visualization', 'parse_tool_args']


def parse_tool_args(parser):
    """Add the options every runner tool takes (``--cfg-options``, ``--launcher``,
    ``--local-rank``) to ``parser`` and parse the command line."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs '
                        '(e.g. train_dataloader.batch_size=2 "model.neck.in_channels=[1,2]")')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def config_from_args(args):
    """Read ``args.config`` and apply what every tool's command line changes:
    ``args.launcher``, ``args.cfg_options`` and ``args.work_dir``."""
    try:
        cfg = load_config(args.config)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    # work_dir: command line > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    # NCCL needs CUDA: on a CPU machine use gloo unless the config chose otherwise.
    if not torch.cuda.is_available():
        dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
        if dist_cfg.get('backend', 'nccl') == 'nccl':
            dist_cfg['backend'] = 'gloo'
    return cfg


def check_data(cfg, splits):
    """Stop before building anything if the config's data is not on disk."""
    try:
        check_data_paths(cfg, splits)
        check_classes(cfg, splits)
    except DataRootError as e:
        raise SystemExit(str(e))


def check_checkpoints(cfg):
    """Stop before building anything if a checkpoint the run starts from is missing.

    Why: mmengine reads the backbone's ImageNet weights (``init_cfg``) and
    ``load_from`` only after it has built the dataloaders, which on a real data
    set takes minutes. Relative paths are looked for where you run, then in the
    casvit-mm checkout (:mod:`casvit_mm.checkpoint.locate`).
    """
    from ..checkpoint.locate import missing_checkpoints
    missing = missing_checkpoints(cfg)
    if not missing:
        return
    lines = ['A checkpoint this run starts from is not on disk:']
    lines += [f'  {key} = {path!r} (looked for: {looked})' for key, path, looked in missing]
    keys = [key for key, _, _ in missing]
    lines.append('Put the file there (the official ImageNet weights: convert them with '
                 'tools/model_converters/casvit_to_mm.py, docs/checkpoints.md), or pass '
                 + ' '.join(f'--cfg-options {key}=PATH' for key in keys)
                 + ' (an absolute path works from anywhere)')
    init_cfgs = sorted({key.rsplit('.', 1)[0] for key in keys if key.endswith('.checkpoint')})
    if init_cfgs:
        lines[-1] += ', or ' + ' '.join(f'{k}=None' for k in init_cfgs) + \
            ' to train from scratch'
    raise SystemExit('\n'.join(lines) + '.')


def build_runner(cfg):
    """The config's ``runner_type`` if it names one, else mmengine's ``Runner``."""
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def codebase(cfg):
    """The codebase (``default_scope``) of a config: one of ``MODEL_SCOPES``."""
    scope = cfg.get('default_scope')
    if scope not in MODEL_SCOPES:
        raise SystemExit(f'default_scope={scope!r} in the config: tools/test.py serves '
                         f'{MODEL_SCOPES}; set default_scope to one of them.')
    return scope


def enable_visualization(cfg, args, scope):
    """Turn on the codebase's visualisation hook as its own test.py does
    (``args.show``, ``args.show_dir``, ``args.wait_time``)."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise SystemExit('--show/--show-dir need default_hooks.visualization in the config '
                         '(e.g. dict(type="DetVisualizationHook") for mmdet).')
    if scope == 'mmdet':
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        return trigger_visualization_hook(cfg, args)
    if scope == 'mmseg':
        hook.update(draw=True, show=args.show, wait_time=args.wait_time)
        if args.show_dir:
            cfg.visualizer['save_dir'] = args.show_dir
    else:  # mmpretrain
        hook.update(enable=True, show=args.show, wait_time=args.wait_time,
                    out_dir=args.show_dir)
    return cfg


def enable_tta(cfg):
    """Wrap the model in the config's ``tta_model`` and test with its ``tta_pipeline``."""
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise SystemExit('--tta needs tta_model and tta_pipeline in the config (mmdet\'s '
                         'retinanet_tta.py defines both for RetinaNet).')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def drop_test_time_ema(cfg):
    """Remove ``EMAHook`` from a test run whose model is switched to deploy mode.

    At test time mmengine's ``EMAHook`` only swaps the model's parameters with
    its averaged copy around the test epoch, and both hold the same weights:
    the hook saved the averaged weights as the checkpoint's ``state_dict``
    (``before_save_checkpoint``) and, when not resuming, loads that same
    ``state_dict`` into its copy (``after_load_checkpoint``). Dropping it
    changes no prediction; keeping it breaks ``--deploy``, because the swap
    pairs the fused model's parameters with the unfused copy's
    (``The size of tensor a (24) must match the size of tensor b (3)``).
    Returns the types of the hooks dropped.
    """
    hooks = cfg.get('custom_hooks') or []
    kept = [h for h in hooks if h.get('type') not in ('EMAHook', 'mmengine.EMAHook')]
    dropped = [h['type'] for h in hooks if h not in kept]
    cfg.custom_hooks = kept
    return dropped
