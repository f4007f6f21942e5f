"""Check, before anything is built, that the data a config names is on disk.

Why: with a missing data set, mmdet, mmseg and mmpretrain fail inside dataset
construction, once training starts and the model is already built, with a
bare ``FileNotFoundError: [Errno 2] No such file or directory:
'data/coco/annotations/instances_train2017.json'`` that never says how the
folder should look. This check lists every missing path of the config's
datasets and evaluators and shows the layout the config expects, plus the
command that generates the small toy set instead.
"""
import os.path as osp

LAYOUTS = {
    'mmdet': (
        'COCO 2017 (mmdet):\n'
        '  data/coco/annotations/instances_train2017.json\n'
        '  data/coco/annotations/instances_val2017.json\n'
        '  data/coco/train2017/*.jpg\n'
        '  data/coco/val2017/*.jpg',
        'python tools/dataset_converters/make_toy_coco.py data/toy_coco  '
        '(then use configs/detection/toy/)'),
    'mmseg': (
        'ADE20K (mmseg):\n'
        '  data/ade/ADEChallengeData2016/images/training/*.jpg\n'
        '  data/ade/ADEChallengeData2016/images/validation/*.jpg\n'
        '  data/ade/ADEChallengeData2016/annotations/training/*.png\n'
        '  data/ade/ADEChallengeData2016/annotations/validation/*.png',
        'python tools/dataset_converters/make_toy_ade.py data/toy_ade  '
        '(then use configs/segmentation/fpn_casvit_xs_toy.py)'),
    'mmpretrain': (
        'ImageNet-1k (mmpretrain):\n'
        '  data/imagenet/train/<class>/*.JPEG   (or files listed in meta/train.txt)\n'
        '  data/imagenet/val/*.JPEG\n'
        '  data/imagenet/meta/val.txt           ("<file> <label>" per line)',
        'python tools/dataset_converters/make_toy_imagenet.py data/toy_imagenet  '
        '(then use configs/classification/casvit_xs_toy.py)'),
}


class DataRootError(FileNotFoundError):
    """The data a config points at is not where it says."""


def _is_remote(path, dataset):
    backend = (dataset.get('backend_args') or {}).get('backend', 'local')
    return '://' in str(path) or backend not in ('local', 'disk')


def dataset_paths(dataset):
    """Paths a dataset config expects to exist (data_root, ann_file, data_prefix).

    Dataset wrappers (``dataset=`` or ``datasets=[...]``) are followed.
    Relative ``ann_file`` and ``data_prefix`` are joined to ``data_root``, as
    mmengine's ``BaseDataset`` does. Remote storage is not checked.
    """
    if not dataset:
        return []
    if dataset.get('dataset') is not None:
        return dataset_paths(dataset['dataset'])
    if dataset.get('datasets') is not None:
        return [p for d in dataset['datasets'] for p in dataset_paths(d)]
    root = dataset.get('data_root') or ''
    if _is_remote(root, dataset):
        return []
    prefix = dataset.get('data_prefix') or dataset.get('split') or ''
    prefixes = list(prefix.values()) if isinstance(prefix, dict) else [prefix]
    paths = [root] if root else []
    for rel in [dataset.get('ann_file') or ''] + prefixes:
        if rel and not _is_remote(rel, dataset):
            paths.append(osp.join(root, rel))
    return paths


def evaluator_paths(evaluator):
    """``ann_file`` of the evaluator(s) (COCO metrics read it from disk)."""
    evaluators = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    return [e['ann_file'] for e in evaluators
            if e and e.get('ann_file') and '://' not in e['ann_file']]


def missing_data_paths(cfg, splits):
    """``(where, path)`` for every path of ``splits`` that does not exist.

    Args:
        cfg (Config): The full config.
        splits (Iterable[str]): Any of ``'train'``, ``'val'``, ``'test'``; each
            checks ``<split>_dataloader.dataset`` and ``<split>_evaluator``.
    """
    missing = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader') or {}
        candidates = [(f'{split}_dataloader.dataset', p)
                      for p in dataset_paths(loader.get('dataset'))]
        candidates += [(f'{split}_evaluator.ann_file', p)
                       for p in evaluator_paths(cfg.get(f'{split}_evaluator'))]
        for where, path in candidates:
            # Under a missing folder every path is missing: name the folder only.
            if not osp.exists(path) and not any(
                    w == where and _inside(path, m) for w, m in missing):
                missing.append((where, path))
    return missing


def _inside(path, folder):
    path, folder = osp.normpath(path), osp.normpath(folder)
    return path == folder or path.startswith(folder + osp.sep)


def check_data_paths(cfg, splits):
    """Raise :class:`DataRootError` with the expected layout if data is missing."""
    missing = missing_data_paths(cfg, splits)
    if not missing:
        return
    layout, toy = LAYOUTS.get(cfg.get('default_scope'), (None, None))
    lines = ['The data set this config reads is not on disk:']
    lines += [f'  {where}: {path}' for where, path in missing]
    if layout:
        lines += ['Put the data in the layout the config expects (paths relative to the '
                  'directory you run from; a symlink data/ -> your copy is enough):',
                  layout]
    lines += ['or point the config at your copy (edit data_root, or pass --cfg-options '
              '<split>_dataloader.dataset.data_root=PATH/ for each split).']
    if toy:
        lines += [f'To try the pipeline without the real data, generate the toy set: {toy}']
    raise DataRootError('\n'.join(lines))
