"""Read every sample of a config's datasets before training; list the bad ones (expensive).

The cheap check, run by every ``tools/train.py`` / ``tools/test.py`` start, only
asks whether the paths exist (:mod:`.path_check`).

Why: a damaged file (a truncated JPEG, an unreadable label map) or an
inconsistent annotation (a box outside its image, a label map of another
size) is found by training only when a worker reaches it, possibly hours in,
one at a time. This check goes through every sample of the config's
train / val / test datasets the way training loads them -- the dataset is
built from the config (so annotation files are parsed and filtered by the
codebase itself) and each sample goes through the loading steps (``Load*``
transforms) of the dataset's own pipeline -- and reports every problem as
``(split, dataset, index, file, reason)``.

Besides what the loading steps raise, it checks:

- the image file decodes completely (PIL): OpenCV, which mmcv uses, decodes a
  truncated JPEG into a partly grey image without an error;
- the decoded size equals the ``height`` / ``width`` the annotation states;
- boxes (``gt_bboxes``) lie inside the image (1 px tolerance), have positive
  width and height and finite coordinates; box labels are class indices;
- a label map (``gt_seg_map``) has the image's size and only class indices or
  the dataset's ``ignore_index``;
- a classification label (``gt_label``) is a class index.

Note that mmdet's COCO parser already drops boxes lying entirely outside
their image and boxes under 1 px, silently: those cannot be seen here.
``tools/misc/check_dataset.py`` is the command line.
"""
import io
from collections import namedtuple

import numpy as np
import torch
from mmengine.fileio import get as read_bytes
from mmengine.registry import DATASETS, init_default_scope
from PIL import Image

from .dataset_configs import describe_dataset, leaf_datasets
from .sample_errors import is_loading_step

Problem = namedtuple('Problem', 'split dataset index file reason')


def _classes(dataset):
    meta = getattr(dataset, 'metainfo', None) or {}
    classes = meta.get('classes')
    return len(classes) if classes is not None else None


def _as_array(value):
    if hasattr(value, 'tensor'):  # mmdet's HorizontalBoxes
        value = value.tensor
    if torch.is_tensor(value):
        value = value.numpy()
    return np.asarray(value)


def _file_problems(info, backend_args):
    path = info.get('img_path')
    if not path:
        return []
    try:
        with Image.open(io.BytesIO(read_bytes(path, backend_args=backend_args))) as img:
            img.load()  # decodes everything: raises on a truncated file
    except Exception as e:
        return [f'image does not decode completely ({type(e).__name__}: {e})']
    return []


def _consistency_problems(results, info, dataset):
    """What is wrong with one loaded sample (list of reasons)."""
    reasons = []
    img = results.get('img')
    shape = tuple(img.shape[:2]) if img is not None else results.get('ori_shape')
    if shape is not None and info.get('height') and info.get('width'):
        if (int(info['height']), int(info['width'])) != tuple(shape):
            reasons.append(f'image is {shape[0]}x{shape[1]} (HxW) but the annotation says '
                           f'{info["height"]}x{info["width"]}')
    num_classes = _classes(dataset)
    if results.get('gt_bboxes') is not None:
        boxes = _as_array(results['gt_bboxes']).reshape(-1, 4).astype(np.float64)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            box = f'box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] (x1, y1, x2, y2)'
            if not np.isfinite([x1, y1, x2, y2]).all():
                reasons.append(f'{box} is not finite')
            elif x2 <= x1 or y2 <= y1:
                reasons.append(f'{box} has no area')
            elif shape is not None and (x1 < -1 or y1 < -1 or x2 > shape[1] + 1
                                        or y2 > shape[0] + 1):
                reasons.append(f'{box} lies outside the {shape[1]}x{shape[0]} (WxH) image')
        labels = results.get('gt_bboxes_labels')
        if labels is not None and num_classes is not None:
            labels = _as_array(labels).reshape(-1)
            bad = sorted({int(x) for x in labels if not 0 <= x < num_classes})
            if bad:
                reasons.append(f'box labels {bad} are not class indices (0..{num_classes - 1})')
    if results.get('gt_seg_map') is not None:
        seg = _as_array(results['gt_seg_map'])
        if shape is not None and tuple(seg.shape[:2]) != tuple(shape):
            reasons.append(f'label map is {seg.shape[0]}x{seg.shape[1]} but the image is '
                           f'{shape[0]}x{shape[1]}')
        if num_classes is not None:
            ignore = getattr(dataset, 'ignore_index', 255)
            values = np.unique(seg)
            bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore)]
            if bad:
                reasons.append(f'label map holds values {bad[:10]} that are neither class '
                               f'indices (0..{num_classes - 1}) nor ignore_index {ignore}')
    label = results.get('gt_label', info.get('gt_label'))
    if label is not None and num_classes is not None and results.get('gt_bboxes') is None:
        bad = [int(x) for x in _as_array(label).reshape(-1) if not 0 <= x < num_classes]
        if bad:
            reasons.append(f'label {bad} is not a class index (0..{num_classes - 1})')
    return reasons


class _Samples(torch.utils.data.Dataset):
    """Index ``i`` -> the problems of sample ``i`` (so a DataLoader checks in parallel)."""

    def __init__(self, dataset, backend_args):
        self.dataset = dataset
        self.backend_args = backend_args

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        info = self.dataset.get_data_info(idx)
        file = info.get('img_path') or info.get('seg_map_path') or ''
        reasons = _file_problems(info, self.backend_args)
        try:
            results = self.dataset.pipeline(info)  # the loading steps only
        except Exception as e:
            reasons.append(f'loading failed: {type(e).__name__}: {e}')
        else:
            if results is None:
                reasons.append('a loading step returned nothing (an empty or unreadable file)')
            else:
                reasons += _consistency_problems(results, info, self.dataset)
        return [(idx, file, reason) for reason in reasons]


def _as_is(found):
    return found


def build_loading_dataset(dataset_cfg):
    """The dataset of ``dataset_cfg`` with only the loading steps of its pipeline."""
    cfg = dataset_cfg.copy()
    cfg['pipeline'] = [step.get('transform') if _wrapped(step) else step
                       for step in (dataset_cfg.get('pipeline') or [])
                       if is_loading_step(step) or _wrapped(step)]
    return DATASETS.build(cfg)


def _wrapped(step):
    return isinstance(step, dict) and step.get('type') == 'NameBadSample'


def check_datasets(cfg, splits=('train', 'val', 'test'), workers=0, progress=None):
    """Every problem of the datasets of ``<split>_dataloader`` (list of :class:`Problem`).

    Args:
        cfg (Config): A full config.
        splits (Sequence[str]): Which dataloaders to check. A split whose
            dataloader is None is skipped; the same dataset listed by two
            splits (mmdet's val and test) is read once.
        workers (int): Data-loading processes used to read the samples.
        progress (callable, optional): Called with ``(split, name, done, total)``.
    """
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    problems, seen = [], set()
    for split in splits:
        loader = cfg.get(f'{split}_dataloader') or {}
        for dataset_cfg in leaf_datasets(loader.get('dataset')):
            name = describe_dataset(dataset_cfg)
            key = repr(sorted((k, repr(v)) for k, v in dataset_cfg.items() if k != 'pipeline'))
            if key in seen:
                continue
            seen.add(key)
            dataset = build_loading_dataset(dataset_cfg)
            samples = _Samples(dataset, dataset_cfg.get('backend_args'))
            batches = torch.utils.data.DataLoader(
                samples, batch_size=None, num_workers=workers, collate_fn=_as_is)
            for done, found in enumerate(batches, 1):
                problems += [Problem(split, name, *p) for p in found]
                if progress is not None:
                    progress(split, name, done, len(samples))
    return problems
