"""A tiny, deterministic image-folder classification set, for demos and tests.

The layout is the class-per-folder one of ImageNet's ``train/`` (and of
torchvision's ``ImageFolder``), which mmpretrain's ``CustomDataset`` reads with
no annotation file; the class list is the sorted folder names::

    ROOT/train/checker/checker_0000.JPEG
    ROOT/train/disk/...
    ROOT/val/checker/checker_0000.JPEG
    ...

Four classes of patterns -- a checkerboard, a filled disk, a ring and
stripes -- in random colours, positions, sizes and angles on a noisy
background: colour says nothing about the class, shape and texture do, and a
small network learns them from scratch in a few minutes on a CPU.
"""
import os
import os.path as osp

import numpy as np
from PIL import Image

#: Class names, i.e. folder names, in the order mmpretrain assigns labels.
TOY_IMAGENET_CLASSES = ('checker', 'disk', 'ring', 'stripes')
SPLITS = ('train', 'val')


def _pattern(rng, name, size):
    """A boolean foreground mask of one class, randomly placed and scaled."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    radius = rng.uniform(0.25, 0.42) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    dist = np.hypot(yy - cy, xx - cx)
    inside = dist <= radius
    if name == 'disk':
        return inside
    if name == 'ring':
        return inside & (dist >= radius * rng.uniform(0.5, 0.7))
    square = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
    if name == 'checker':
        cell = rng.uniform(size / 16, size / 8)
        return square & (((np.floor((yy - cy) / cell) + np.floor((xx - cx) / cell)) % 2) == 0)
    if name == 'stripes':
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(size / 10, size / 5)
        phase = (yy * np.cos(angle) + xx * np.sin(angle)) / period
        return square & ((phase % 1) < 0.5)
    raise ValueError(f'unknown toy class {name!r}; expected one of {TOY_IMAGENET_CLASSES}')


def _render(rng, name, size):
    background = rng.uniform(0, 255, 3)
    foreground = (background + 128 + rng.uniform(-40, 40, 3)) % 256
    img = np.empty((size, size, 3), np.float32)
    img[:] = background
    img[_pattern(rng, name, size)] = foreground
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_toy_imagenet(root, num_train=48, num_val=16, size=64, seed=0):
    """Write the toy set under ``root``; the same arguments give the same files.

    Args:
        root (str): Output folder (created; existing files are overwritten).
        num_train (int): Training images per class.
        num_val (int): Validation images per class.
        size (int): Side of the square images.
        seed (int): Random seed.

    Returns:
        dict: ``root``, ``classes`` and the number of images per split.
    """
    if num_train < 1 or num_val < 1 or size < 32:
        raise ValueError(f'make_toy_imagenet needs at least one image per class and split '
                         f'and a size of at least 32, got num_train={num_train}, '
                         f'num_val={num_val}, size={size}')
    counts = dict(train=num_train, val=num_val)
    for offset, split in enumerate(SPLITS):
        rng = np.random.RandomState(seed * 2 + offset)
        for name in TOY_IMAGENET_CLASSES:
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(counts[split]):
                Image.fromarray(_render(rng, name, size)).save(
                    osp.join(folder, f'{name}_{i:04d}.JPEG'), format='JPEG', quality=92)
    n = len(TOY_IMAGENET_CLASSES)
    return dict(root=root, classes=TOY_IMAGENET_CLASSES, train=num_train * n, val=num_val * n)
