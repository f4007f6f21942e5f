"""Check, before anything is built, that the paths a config names exist (cheap).

Why: with a missing data set, mmdet, mmseg and mmpretrain fail inside dataset
construction, once training starts and the model is already built, with a
bare ``FileNotFoundError: [Errno 2] No such file or directory:
'data/coco/annotations/instances_train2017.json'`` that never says how the
folder should look. This check lists every missing path of the config's
datasets and evaluators and shows the layout the config expects, plus the
command that generates the small toy set instead.
"""
import os
import os.path as osp

from .dataset_configs import leaf_datasets

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


def check_dataset_command(config='CONFIG'):
    """The command that lists the damaged samples of ``config``, as it runs from
    here: the repository's tool from the checkout's root, the module elsewhere."""
    tool = osp.join('tools', 'misc', 'check_dataset.py')
    if osp.isfile(tool) and osp.isfile(osp.join('casvit_mm', 'check_dataset.py')):
        return f'python {tool} {config}'
    return f'python -m casvit_mm.check_dataset {config}'


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
    return [p for leaf in leaf_datasets(dataset) for p in _leaf_paths(leaf)]


def _leaf_paths(dataset):
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


STANDARD_ROOTS = {'mmdet': 'data/coco', 'mmseg': 'data/ade', 'mmpretrain': 'data/imagenet'}


def check_data_paths(cfg, splits):
    """Raise :class:`DataRootError` with what to do if data is missing.

    The standard layout (and a ``data/`` symlink) is suggested only when the
    config reads the standard place (``data/coco`` for mmdet, ...); a data set
    of one's own is told the paths its config names and how to change them.
    """
    missing = missing_data_paths(cfg, splits)
    if not missing:
        return
    scope = cfg.get('default_scope')
    layout, toy = LAYOUTS.get(scope, (None, None))
    standard = STANDARD_ROOTS.get(scope)
    reads_standard = standard is not None and any(
        _inside(path, standard) for _, path in missing)
    lines = ['The data set this config reads is not on disk:']
    lines += [f'  {where}: {path}' for where, path in missing]
    if layout and reads_standard:
        lines += ['Put the data in the layout the config expects (paths relative to the '
                  'directory you run from; a symlink data/ -> your copy is enough):',
                  layout]
    else:
        lines.append('What the config reads (data_root, then ann_file and data_prefix '
                     'inside it):')
        lines += _config_layout(cfg, {where.split('.')[0].split('_')[0]
                                      for where, _ in missing})
        if any(not osp.isabs(path) for _, path in missing):
            lines.append(f'Relative paths are read from the directory you run in '
                         f'({os.getcwd()}).')
    lines += ['or point the config at your copy (edit data_root, or pass --cfg-options '
              '<split>_dataloader.dataset.data_root=PATH/ for each split).'
              if reads_standard else
              'Fix data_root, ann_file or data_prefix of these datasets in the config (or '
              'with --cfg-options <split>_dataloader.dataset.data_root=PATH/); a data set of '
              'your own: docs/own_project.md.']
    if toy:
        lines += [f'To try the pipeline without the real data, generate the toy set: {toy}']
    raise DataRootError('\n'.join(lines))


def _config_layout(cfg, splits):
    """One line per dataset of ``splits``: its data_root, ann_file and data_prefix."""
    lines = []
    for split in sorted(splits):
        loader = cfg.get(f'{split}_dataloader') or {}
        for dataset in leaf_datasets(loader.get('dataset')):
            parts = [f"data_root={dataset.get('data_root')!r}"]
            parts += [f'{key}={dataset[key]!r}' for key in ('ann_file', 'data_prefix')
                      if dataset.get(key)]
            lines.append(f'  {split}: ' + ', '.join(parts))
    return lines


def check_classes(cfg, splits):
    """Raise :class:`DataRootError` when ``metainfo.classes`` cannot select anything.

    Why: mmdet's ``CocoDataset`` keeps the annotations whose category *name* is
    in ``metainfo.classes``; names that match none of the file's categories
    leave the data set empty, and training died in mmengine with
    ``ValueError: need at least one array to concatenate``. mmseg's
    ``ADE20KDataset`` takes only ADE20K's own class names. Runs when a config
    sets ``metainfo.classes`` (a data set of one's own); reads the category
    list of COCO-format annotation files.
    """
    import json
    problems = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader') or {}
        for dataset in leaf_datasets(loader.get('dataset')):
            classes = (dataset.get('metainfo') or {}).get('classes')
            if not classes:
                continue
            where = f'{split}_dataloader.dataset'
            if dataset.get('type') == 'ADE20KDataset':
                from mmseg.datasets import ADE20KDataset
                others = [c for c in classes if c not in ADE20KDataset.METAINFO['classes']]
                if others:
                    problems.append(
                        f'{where}: ADE20KDataset only takes ADE20K\'s class names, not '
                        f'{others[:5]}: read a data set of your own with type='
                        f"'BaseSegDataset', img_suffix='.jpg', seg_map_suffix='.png', "
                        f'reduce_zero_label=True (docs/own_project.md).')
                continue
            ann_file = dataset.get('ann_file') or ''
            path = osp.join(dataset.get('data_root') or '', ann_file)
            if not ann_file.endswith('.json') or _is_remote(path, dataset) \
                    or not osp.isfile(path):
                continue
            with open(path) as f:
                categories = json.load(f).get('categories')
            if not isinstance(categories, list):
                continue
            names = [c.get('name') for c in categories]
            if not set(classes) & set(names):
                problems.append(
                    f'{where}: metainfo.classes {tuple(classes)} match none of the '
                    f'categories of {path}: {tuple(names)}. Name the classes as the file '
                    f'does (any subset, any order).')
    if problems:
        raise DataRootError('\n'.join(['The classes of this config select nothing:']
                                      + problems))
