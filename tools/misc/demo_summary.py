"""Print the summary that ends each demo (`make demo`, `demo-seg`, `demo-cls`).

    python tools/misc/demo_summary.py {det,seg,cls} WORK_DIR TRAIN_SECONDS TOTAL_SECONDS

Reads what the runs left in WORK_DIR: the training losses from mmengine's
``scalars.json`` and the metrics ``tools/test.py`` wrote, so the numbers shown
are the logged ones.
"""
import argparse
import glob
import json
import os.path as osp

from casvit_mm.utils import read_scalars


def test_metrics(test_dir):
    """The metrics of the newest ``tools/test.py`` run in ``test_dir``
    (mmengine writes them to ``<timestamp>/<timestamp>.json``)."""
    files = [p for p in glob.glob(osp.join(test_dir, '*', '*.json'))
             if osp.basename(p)[:-len('.json')] == osp.basename(osp.dirname(p))]
    if not files:
        raise SystemExit(f'no test metrics under {test_dir}: did tools/test.py run?')
    with open(sorted(files)[-1]) as f:
        return json.load(f)


def training_losses(work):
    """(iteration, loss) pairs logged by the first training run in ``work``."""
    runs = sorted(glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json')))
    train, _ = read_scalars(runs[0])
    return [(r['step'], r['loss']) for r in train]


def detection(work):
    losses = training_losses(work)
    metrics = test_metrics(osp.join(work, 'test'))
    print('\n== CAS-ViT-XS RetinaNet on the toy shapes (val split, 50 images)')
    print('training loss by iteration: ' +
          ', '.join(f'{s}: {l:.2f}' for s, l in losses[::2] + losses[-1:]))
    print(f"bbox mAP {metrics['coco/bbox_mAP']:.3f}   mAP@0.5 {metrics['coco/bbox_mAP_50']:.3f}"
          f"   mAP@0.75 {metrics['coco/bbox_mAP_75']:.3f}")
    print(f'drawn predictions: {work}/vis/   predictions: {work}/predictions.pkl')
    print(f'training curve: {work}/curves.png   full logs: {work}/train_console.log, '
          f'{work}/test_console.log')


def segmentation(work):
    metrics = test_metrics(osp.join(work, 'test'))
    print('\n== Semantic FPN + CAS-ViT-XS (from scratch) on the toy ADE20K validation split')
    print(f"mIoU {metrics['mIoU'] / 100:.3f}   mAcc {metrics['mAcc'] / 100:.3f}   "
          f"aAcc {metrics['aAcc'] / 100:.3f}")
    print(f'label maps: {work}/label_maps/   overlay: {work}/overlay_ADE_val_00000001.png')
    print(f'full logs: {work}/train_console.log, {work}/test_console.log')


def classification(work):
    metrics = test_metrics(osp.join(work, 'test'))
    print('\n== CAS-ViT-XS (from scratch) on the toy image-folder val split (4 classes)')
    print(f"top-1 accuracy {metrics['accuracy/top1'] / 100:.3f}")
    print(f'predictions: {work}/predictions.pkl')
    print(f'full logs: {work}/train_console.log, {work}/test_console.log')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('task', choices=['det', 'seg', 'cls'])
    parser.add_argument('work_dir')
    parser.add_argument('train_seconds', type=int)
    parser.add_argument('total_seconds', type=int)
    args = parser.parse_args()
    dict(det=detection, seg=segmentation, cls=classification)[args.task](args.work_dir)
    print(f'time: {args.train_seconds} s to generate and train, {args.total_seconds} s in all')


if __name__ == '__main__':
    main()
