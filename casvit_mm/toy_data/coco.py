"""A tiny COCO-format instance data set, generated deterministically.

Solid shapes (squares, circles, triangles) of random colours on a noisy
background, 1-3 per image, never overlapping, so every box and polygon mask is
exact. The files follow the COCO 2017 layout that mmdet's packaged configs
expect, only smaller::

    ROOT/annotations/instances_train2017.json
    ROOT/annotations/instances_val2017.json
    ROOT/train2017/000000000001.jpg ...
    ROOT/val2017/000000000001.jpg ...

so a config that reads COCO only needs ``data_root`` (and the class names)
changed to read it. The same ``seed`` always gives the same files, which makes
the README demo and the tests reproducible without any download.
"""
import json
import os
import os.path as osp

import cv2
import numpy as np

CLASSES = ('square', 'circle', 'triangle')
SPLITS = ('train2017', 'val2017')


def _polygon(kind, cx, cy, size, rng):
    """Integer vertices of one shape centred at (cx, cy), about ``size`` wide."""
    r = size / 2
    if kind == 'square':
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    elif kind == 'circle':
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
    else:  # triangle, any orientation
        start = rng.uniform(0, 2 * np.pi)
        angles = start + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        pts = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
    return np.round(np.array(pts)).astype(np.int32)


def _polygon_area(pts):
    x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _make_image(rng, image_size, max_objects, min_frac, max_frac):
    """One image (H, W, 3 uint8, BGR) and its objects as (class index, polygon)."""
    base = rng.integers(60, 196, size=3)
    noise = rng.normal(0, 25, size=(image_size, image_size, 3))
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    objects, boxes = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(50):  # rejection sampling: keep shapes apart
            size = rng.uniform(min_frac, max_frac) * image_size
            cx, cy = rng.uniform(size / 2 + 1, image_size - size / 2 - 1, size=2)
            kind = int(rng.integers(len(CLASSES)))
            pts = _polygon(CLASSES[kind], cx, cy, size, rng)
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            if all(x0 > bx1 + 2 or x1 < bx0 - 2 or y0 > by1 + 2 or y1 < by0 - 2
                   for bx0, by0, bx1, by1 in boxes):
                break
        else:
            continue
        # A colour far from the background, so the shape is always visible.
        color = (base + rng.integers(70, 130, size=3) * rng.choice([-1, 1], size=3)) % 256
        cv2.fillPoly(img, [pts], color=[int(c) for c in color])
        boxes.append((x0, y0, x1, y1))
        objects.append((kind, pts))
    return img, objects


def _write_split(root, split, num_images, image_size, rng, max_objects, min_frac,
                 max_frac):
    img_dir = osp.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        img, objects = _make_image(rng, image_size, max_objects, min_frac, max_frac)
        file_name = f'{image_id:012d}.jpg'
        cv2.imwrite(osp.join(img_dir, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=image_id, file_name=file_name, width=image_size,
                           height=image_size))
        for kind, pts in objects:
            x0, y0 = pts.min(0).tolist()
            x1, y1 = pts.max(0).tolist()
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=kind + 1,
                bbox=[x0, y0, x1 - x0, y1 - y0], area=_polygon_area(pts),
                segmentation=[pts.reshape(-1).astype(float).tolist()], iscrowd=0))
    coco = dict(
        info=dict(description='casvit-mm toy shapes (generated)', version='1.0'),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(CLASSES)])
    ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
    os.makedirs(osp.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file, img_dir


def make_toy_coco(root='data/toy_coco', num_train=200, num_val=50, image_size=160,
                  seed=0, max_objects=3, min_frac=0.18, max_frac=0.45):
    """Write a small COCO-format instance data set and return its paths.

    Args:
        root (str): Output folder (created; existing files are overwritten).
        num_train (int): Images in ``train2017``. Defaults to 200.
        num_val (int): Images in ``val2017``. Defaults to 50.
        image_size (int): Side of the square images in pixels. Defaults to 160.
        seed (int): The same seed writes the same data set. Defaults to 0.
        max_objects (int): Objects per image are drawn from 1..max_objects.
        min_frac, max_frac (float): Object size as a fraction of the image side;
            the defaults keep the smallest shape (about 29 px at 160 px) above
            the smallest RetinaNet anchor's reach (32 px at stride 8).

    Returns:
        dict: ``root``, ``train_ann``, ``val_ann``, ``train_img_dir``,
        ``val_img_dir`` and ``classes``.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'make_toy_coco needs at least one image per split, got '
                         f'num_train={num_train}, num_val={num_val}')
    if image_size < 32:
        raise ValueError(f'image_size must be at least 32 px (mmdet drops smaller '
                         f'training images), got {image_size}')
    if not 0 < min_frac <= max_frac < 1:
        raise ValueError(f'need 0 < min_frac <= max_frac < 1, got {min_frac}, {max_frac}')
    # Independent streams per split: changing num_train leaves val unchanged.
    train_rng, val_rng = (np.random.default_rng([seed, i]) for i in range(2))
    paths = dict(root=root, classes=CLASSES)
    for split, num, rng in (('train2017', num_train, train_rng),
                            ('val2017', num_val, val_rng)):
        ann_file, img_dir = _write_split(root, split, num, image_size, rng, max_objects,
                                         min_frac, max_frac)
        key = split[:-4]
        paths[f'{key}_ann'], paths[f'{key}_img_dir'] = ann_file, img_dir
    return paths


def cfg_options(root):
    """``--cfg-options`` that point a toy detection config at data under ``root``.

    mmengine resolves ``data_root`` when it parses a config, so overriding
    ``data_root`` alone changes nothing: the dataloaders and the evaluator must
    each be redirected, which these key=value strings do. The toy configs
    validate at the end of training on the test split, so the val dataloader
    and evaluator are redirected too.
    """
    root = root.rstrip('/') + '/'
    return [f'train_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}',
            f'test_evaluator.ann_file={root}annotations/instances_val2017.json',
            f'val_dataloader.dataset.data_root={root}',
            f'val_evaluator.ann_file={root}annotations/instances_val2017.json']
