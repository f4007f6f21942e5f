"""Test (and evaluate) a checkpoint: mmdet's / mmseg's / mmpretrain's ``test.py``.

The config's ``default_scope`` picks the codebase; ``--show-dir`` and ``--out``
then switch on that codebase's own visualisation hook and result dumping,
exactly as its own ``tools/test.py`` does:

=========== ============================== =====================================
scope       --show-dir (painted images)    --out
=========== ============================== =====================================
mmdet       DetVisualizationHook           DumpDetResults (a .pkl file)
mmseg       SegVisualizationHook           IoUMetric output_dir (PNG label maps)
mmpretrain  VisualizationHook              DumpResults (a .pkl file)
=========== ============================== =====================================

``--deploy`` switches the model to deploy mode after the checkpoint is loaded
(``casvit_mm.deploy.switch.switch_model_to_deploy``: the backbone's
``switch_to_deploy()``, the fused fast path, plus its output norms folded into
the FPN), to test the model that will be deployed. A fused checkpoint
(``tools/model_converters/casvit_reparameterize.py``) is tested with the
config's ``configs/*/deploy/`` variant instead, with or without ``--deploy``.

    python tools/test.py CONFIG CHECKPOINT --show-dir vis --out results.pkl
"""
import argparse
import os.path as osp

import casvit_mm  # noqa: F401  (registers CASViT in every codebase)
from casvit_mm.checkpoint.locate import resolve_checkpoint, where_looked
from casvit_mm.cli import (build_runner, check_data, codebase, config_from_args,
                           drop_test_time_ema, enable_tta, enable_visualization,
                           parse_tool_args)
from casvit_mm.engine import (DeployHook, StrictCheckpointHook, closing_process_group,
                              setup_cpu_distributed, use_stop_signals)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a model (mmdet, mmseg, mmpretrain)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='dump predictions: a .pkl file (mmdet, '
                        'mmpretrain) or a directory of label maps (mmseg)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory where painted images are saved '
                        '(under work_dir/<timestamp>/ when relative, for mmdet)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--deploy', action='store_true',
                        help='switch the model to deploy mode (fused CAS-ViT) after loading')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation: needs tta_model and tta_pipeline '
                        'in the config')
    return parse_tool_args(parser)


def main():
    args = parse_args()
    switch_to_deploy = None
    if args.deploy:  # fail before building anything when the function is missing
        from casvit_mm.deploy.switch import switch_model_to_deploy as switch_to_deploy
    # a relative path: where you run, then in the casvit-mm checkout
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'Checkpoint {args.checkpoint!r} does not exist (looked for: '
                         f'{where_looked(args.checkpoint)}): give the .pth written by '
                         f'tools/train.py (work_dirs/<config>/iter_N.pth or epoch_N.pth).')
    cfg = config_from_args(args)
    scope = codebase(cfg)
    if args.out and scope != 'mmseg' and not args.out.endswith(('.pkl', '.pickle')):
        raise SystemExit(f'--out {args.out!r}: {scope} dumps predictions as a pickle; '
                         f'give a file name ending in .pkl')
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = enable_visualization(cfg, args, scope)
    if args.tta:
        enable_tta(cfg)
    if args.deploy and drop_test_time_ema(cfg):  # the checkpoint already holds the EMA weights
        print('--deploy: EMAHook left out; the checkpoint\'s state_dict holds the averaged '
              'weights it would swap in')
    if args.out and scope == 'mmseg':
        cfg.test_evaluator.update(output_dir=args.out, keep_results=True)

    use_stop_signals(cfg)  # SIGTERM/SIGUSR1/Ctrl-C: stop at a batch boundary, clear message
    check_data(cfg, ['test'])
    setup_cpu_distributed(cfg)  # torchrun on a machine without CUDA
    runner = build_runner(cfg)

    if args.out and scope != 'mmseg':
        if scope == 'mmdet':
            from mmdet.evaluation import DumpDetResults as Dump
        else:
            from mmengine.evaluator import DumpResults as Dump
        runner.test_evaluator.metrics.append(Dump(out_file_path=args.out))
    if switch_to_deploy is not None:
        runner.register_hook(DeployHook(switch_to_deploy))
    # the checkpoint must fit the whole model (mmengine would only warn)
    runner.register_hook(StrictCheckpointHook())

    with closing_process_group():  # never left to Python's exit (gloo may abort there)
        runner.test()


if __name__ == '__main__':
    main()
