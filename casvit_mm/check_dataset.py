"""List every unreadable or inconsistent sample of a config's datasets.

The command line of the expensive sample check (:mod:`casvit_mm.utils.sample_check`);
the cheap check that the paths exist (:mod:`casvit_mm.utils.path_check`) runs
at the start of every ``tools/train.py`` / ``tools/test.py``. Kept at the top of
the package so that ``python -m casvit_mm.check_dataset`` works from anywhere.

Reads every image and annotation of the config's train / val / test datasets
through the loading steps of their own pipelines (see
``casvit_mm.utils.sample_check`` for what is checked), prints one line per
problem -- split, dataset, index, file, reason -- and exits with status 1 if
there is any, 0 otherwise. Run it before a long training job, from anywhere
(``tools/misc/check_dataset.py`` is the same command in the repository):

    python -m casvit_mm.check_dataset configs/detection/retinanet_casvit_m.py
    python tools/misc/check_dataset.py CONFIG --splits train --workers 8
"""
import argparse
import contextlib
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction

import casvit_mm  # noqa: F401  (registers CASViT and the casvit_mm:: configs)
from casvit_mm.utils import DataRootError, check_data_paths, check_datasets
from casvit_mm.utils.path_check import check_classes


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--splits', nargs='+', default=['train', 'val', 'test'],
                        choices=['train', 'val', 'test'], help='dataloaders to check')
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1),
                        help='processes reading the samples (default: up to 8)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs')
    return parser.parse_args()


def main():
    """The command line (``python -m casvit_mm.check_dataset CONFIG``)."""
    args = parse_args()
    if not osp.isfile(args.config):
        raise SystemExit(f'Config file {args.config!r} does not exist.')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    splits = [s for s in args.splits if cfg.get(f'{s}_dataloader')]
    try:
        check_data_paths(cfg, splits)
        check_classes(cfg, splits)
    except DataRootError as e:
        raise SystemExit(str(e))

    def progress(split, name, done, total):
        if done == total or done % 1000 == 0:
            print(f'{split}: {name}: {done}/{total} samples read', file=sys.stderr)

    # stdout holds the problems only (pycocotools prints its progress there).
    with contextlib.redirect_stdout(sys.stderr):
        problems = check_datasets(cfg, splits, workers=args.workers, progress=progress)
    for p in problems:
        print(f'{p.split}\t{p.dataset}\tindex {p.index}\t{p.file}\t{p.reason}')
    if problems:
        samples = len({(p.dataset, p.index) for p in problems})
        print(f'{len(problems)} problem(s) in {samples} sample(s): fix or remove these '
              f'files / annotations before training.', file=sys.stderr)
        sys.exit(1)
    print(f'All samples of {", ".join(splits)} read and consistent.', file=sys.stderr)


if __name__ == '__main__':
    main()
