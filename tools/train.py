"""Train a model from a config: mmdet's / mmseg's / mmpretrain's ``train.py``.

The same command line as the OpenMMLab tools, for the three codebases: the
config's ``default_scope`` picks mmdet, mmseg or mmpretrain, and mmengine's
``Runner`` does all the work. What this file adds: it imports ``casvit_mm``
first (so ``type='CASViT'`` and ``casvit_mm::`` configs resolve even without
``custom_imports``), and it picks the ``gloo`` backend for distributed runs
on a machine without CUDA, where mmengine's default (NCCL) cannot start.
It also checks that the config's data is on disk before building anything,
writes checkpoints atomically (``casvit_mm.engine.AtomicCheckpointHook``) and
makes ``--amp`` work on the CPU (bfloat16 autocast).
For long runs it stops on a non-finite loss (exit 3), checkpoints the current
iteration and exits 75 on SIGTERM / SIGUSR1, and makes a sample that fails to
load name its file and ``tools/misc/check_dataset.py`` (docs/reliability.md).

    python tools/train.py configs/detection/retinanet_casvit_m.py
    bash tools/dist_train.sh configs/detection/retinanet_casvit_m.py 8
"""
import argparse
import os.path as osp

import torch

import casvit_mm  # noqa: F401  (registers CASViT in every codebase)
from casvit_mm.cli import (build_runner, check_checkpoints, check_data, config_from_args,
                            parse_tool_args)
from casvit_mm.checkpoint import CheckpointError, check_resumable
from casvit_mm.engine import (closing_process_group, setup_cpu_distributed,
                             use_atomic_checkpoints, use_compile_fixes, use_long_run_guards)
from casvit_mm.utils import name_load_errors


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model (mmdet, mmseg, mmpretrain)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic-mixed-precision training (float16 with '
                        'loss scaling on a GPU, bfloat16 autocast on the CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate linearly from the total batch '
                        'written in the config (auto_scale_lr.base_batch_size)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or, with no value, from the '
                        'latest checkpoint in the work dir')
    return parse_tool_args(parser)


def main():
    args = parse_args()
    cfg = config_from_args(args)

    if args.amp:
        if torch.cuda.is_available():
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
        else:  # mmengine's AmpOptimWrapper needs CUDA: bfloat16 autocast, no scaler
            cfg.optim_wrapper.type = 'CPUAmpOptimWrapper'
            cfg.optim_wrapper.pop('loss_scale', None)

    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise SystemExit(f'--auto-scale-lr needs auto_scale_lr = dict(enable=False, '
                             f'base_batch_size=N) in {args.config}, with N the total '
                             f'batch the learning rate was set for.')
        cfg.auto_scale_lr.enable = True

    # --resume PATH resumes from PATH; a bare --resume from the latest checkpoint.
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise SystemExit(f'--resume {args.resume!r}: no such checkpoint. Give a .pth '
                             f'from the work dir, or --resume alone for the latest one.')
        try:  # an official (mmcv 1.x) file has weights but no training state
            check_resumable(args.resume)
        except CheckpointError as e:
            raise SystemExit(f'--resume: {e}')
        cfg.resume, cfg.load_from = True, args.resume

    # Checkpoints written atomically: a kill during a save never corrupts the latest.
    use_atomic_checkpoints(cfg)
    use_long_run_guards(cfg)  # stop on a non-finite loss; save and exit 75 on SIGTERM/SIGUSR1
    name_load_errors(cfg, args.config)  # a bad sample's error names it and the check command
    use_compile_fixes(cfg)  # cfg.compile: let TorchDynamo trace the optimizer step
    check_data(cfg, ['train', 'val'] if cfg.get('val_cfg') else ['train'])
    check_checkpoints(cfg)  # the ImageNet weights and load_from, before any dataloader
    setup_cpu_distributed(cfg)  # torchrun on a machine without CUDA
    with closing_process_group():  # never left to Python's exit (gloo may abort there)
        build_runner(cfg).train()


if __name__ == '__main__':
    main()
