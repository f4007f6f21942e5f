"""Draw the training loss (and validation metrics) of a run as a PNG.

Reads the ``vis_data/scalars.json`` mmengine writes into the work dir and
draws it with matplotlib (``casvit_mm.utils.plot_curves``); mmdet's
``analyze_logs.py plot_curve`` does the same but needs seaborn.

    python tools/analysis_tools/plot_curves.py work_dirs/demo --out work_dirs/demo/curves.png
"""
import argparse
import glob
import os.path as osp

from casvit_mm.utils import plot_curves, read_scalars


def training_scalars(path):
    """``path`` if it is a file, else the latest run under the work dir ``path``
    that logged a training loss (a test run in the same work dir logs none)."""
    if osp.isfile(path):
        return path
    runs = sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))
    trained = [p for p in runs if read_scalars(p)[0]]
    if not trained:
        raise SystemExit(f'{path}: no <timestamp>/vis_data/scalars.json with a training '
                         f'loss; give the work dir of a tools/train.py run.')
    return trained[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('path', help='a work dir of tools/train.py, or a scalars.json')
    parser.add_argument('--out', default='curves.png', help='the PNG to write')
    parser.add_argument('--title', help='a title over the curves')
    args = parser.parse_args()
    scalars = training_scalars(args.path)
    drawn = plot_curves(scalars, args.out, title=args.title)
    print(f'{", ".join(drawn)} of {scalars} drawn in {args.out}')


if __name__ == '__main__':
    main()
