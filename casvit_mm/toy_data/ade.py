"""A tiny, deterministic data set in the ADE20K layout, for demos and tests.

It is written exactly the way ``ADEChallengeData2016`` is, so mmseg's own
``ADE20KDataset`` reads it unchanged::

    ROOT/images/training/ADE_train_00000001.jpg       RGB JPEG
    ROOT/annotations/training/ADE_train_00000001.png  uint8 label map
    ROOT/images/validation/ADE_val_00000001.jpg
    ROOT/annotations/validation/ADE_val_00000001.png

Label values follow ADE20K: ``0`` is "other / unlabelled" (dropped to 255 by
``reduce_zero_label=True``) and ``k >= 1`` is ADE20K class ``k - 1``. The
scenes use ADE20K's first five classes (wall, building, sky, floor, tree), so
``ADE20KDataset(metainfo=dict(classes=TOY_ADE_CLASSES))`` maps them to 0..4
and the label values in the files are the real ADE20K ones.

Each class has its own colour family and texture (brick rows, window grids,
a sky gradient, a checkered floor, leafy noise), jittered per image, so a
network trained from scratch learns it in minutes on a CPU; a few
"unlabelled" clutter blobs check that the ignore label is honoured.
"""
import os
import os.path as osp

import numpy as np
from PIL import Image

#: The toy classes: ADE20K's first five, in ADE20K's order.
TOY_ADE_CLASSES = ('wall', 'building', 'sky', 'floor', 'tree')
#: Values written in the label PNGs (ADE20K's: class index + 1; 0 = unlabelled).
WALL, BUILDING, SKY, FLOOR, TREE = 1, 2, 3, 4, 5
SPLITS = {'training': 'ADE_train', 'validation': 'ADE_val'}


def _scene_labels(rng, height, width):
    """A label map: sky above a horizon, wall, floor, buildings, trees, clutter."""
    labels = np.full((height, width), WALL, np.uint8)
    yy, xx = np.mgrid[:height, :width]
    horizon = rng.randint(int(0.25 * height), int(0.45 * height))
    floor_line = rng.randint(int(0.70 * height), int(0.85 * height))
    labels[:horizon] = SKY
    labels[floor_line:] = FLOOR
    for _ in range(rng.randint(1, 4)):  # buildings rise from the horizon
        w = rng.randint(width // 8, width // 3)
        x0 = rng.randint(0, width - w)
        top = rng.randint(int(0.05 * height), horizon)
        labels[top:horizon + rng.randint(0, height // 8), x0:x0 + w] = BUILDING
    for _ in range(rng.randint(1, 4)):  # trees: ellipses in front
        cy = rng.randint(horizon - height // 10, floor_line)
        cx = rng.randint(0, width)
        ry, rx = rng.randint(height // 10, height // 4), rng.randint(width // 14, width // 6)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = TREE
    for _ in range(rng.randint(0, 3)):  # unlabelled clutter (ADE's 0)
        h, w = rng.randint(4, height // 6), rng.randint(4, width // 6)
        y0, x0 = rng.randint(0, height - h), rng.randint(0, width - w)
        labels[y0:y0 + h, x0:x0 + w] = 0
    return labels


def _render(rng, labels):
    """Paint a label map: one jittered colour and texture per class, plus noise."""
    height, width = labels.shape
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    base = {
        WALL: (200, 180, 150), BUILDING: (120, 120, 135), SKY: (110, 160, 230),
        FLOOR: (140, 100, 60), TREE: (45, 125, 45),
    }
    texture = {
        WALL: 18 * (np.floor(yy / 6) % 2)[..., None],                      # brick rows
        BUILDING: -60 * (((yy % 10) < 5) & ((xx % 8) < 4))[..., None],     # windows
        SKY: (40 * yy / height)[..., None],                                # gradient
        FLOOR: 30 * ((np.floor(yy / 8) + np.floor(xx / 8)) % 2)[..., None],  # tiles
        TREE: 35 * rng.standard_normal((height, width, 1)),                # leaves
    }
    img = np.zeros((height, width, 3), np.float32)
    for value, colour in base.items():
        mask = labels == value
        colour = np.asarray(colour, np.float32) + rng.uniform(-20, 20, 3)
        img[mask] = (colour + texture[value])[mask]
    clutter = labels == 0
    img[clutter] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_toy_ade(root, num_train=100, num_val=25, size=(160, 120), seed=0):
    """Write the toy set under ``root``; the same arguments give the same files.

    Args:
        root (str): Output folder (created; existing files are overwritten).
        num_train (int): Images in ``training``.
        num_val (int): Images in ``validation``.
        size (tuple[int, int]): ``(width, height)`` of every image. The default
            160 x 120 is deliberately not a multiple of 32 on both sides, so
            the evaluation's resize-to-multiple-of-32 step is exercised.
        seed (int): Random seed.

    Returns:
        dict: ``root``, ``classes`` and the number of images per split.
    """
    width, height = size
    if num_train < 1 or num_val < 1 or width < 32 or height < 32:
        raise ValueError(f'make_toy_ade needs at least one image per split and images of '
                         f'at least 32 x 32, got num_train={num_train}, num_val={num_val}, '
                         f'size={size}')
    counts = {'training': num_train, 'validation': num_val}
    for offset, (split, prefix) in enumerate(SPLITS.items()):
        rng = np.random.RandomState(seed * 2 + offset)
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(1, counts[split] + 1):
            labels = _scene_labels(rng, height, width)
            name = f'{prefix}_{i:08d}'
            Image.fromarray(_render(rng, labels)).save(
                osp.join(img_dir, name + '.jpg'), quality=92)
            Image.fromarray(labels).save(osp.join(ann_dir, name + '.png'))
    return dict(root=root, classes=TOY_ADE_CLASSES, train=num_train, val=num_val)
