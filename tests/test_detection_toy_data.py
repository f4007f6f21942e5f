"""The generated toy COCO set: deterministic, valid COCO, exact boxes and masks."""
import json
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO

from casvit_mm.toy_data.coco import CLASSES, cfg_options, make_toy_coco
from helpers import ONE_THREAD, REPO, RETINA


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = make_toy_coco(str(tmp_path / 'a'), num_train=4, num_val=2, image_size=64, seed=3)
    b = make_toy_coco(str(tmp_path / 'b'), num_train=4, num_val=2, image_size=64, seed=3)
    c = make_toy_coco(str(tmp_path / 'c'), num_train=4, num_val=2, image_size=64, seed=4)
    for key in ('train_ann', 'val_ann'):
        assert read(a[key]) == read(b[key])
        assert read(a[key]) != read(c[key])
    name = '000000000001.jpg'
    assert read(osp.join(a['train_img_dir'], name)) == read(osp.join(b['train_img_dir'], name))
    # Independent streams: more training images leave the val split unchanged.
    d = make_toy_coco(str(tmp_path / 'd'), num_train=6, num_val=2, image_size=64, seed=3)
    assert read(a['val_ann']) == read(d['val_ann'])


def test_valid_coco_with_exact_boxes_and_masks(tmp_path):
    paths = make_toy_coco(str(tmp_path), num_train=12, num_val=3, image_size=96, seed=0)
    coco = COCO(paths['train_ann'])
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == 12
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert min(counts) >= 1 and max(counts) <= 3
    seen = set()
    for ann in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96 and w > 10 and h > 10
        poly = np.array(ann['segmentation'][0]).reshape(-1, 2)
        assert poly[:, 0].min() == x and poly[:, 0].max() == x + w
        mask = coco.annToMask(ann)
        assert abs(int(mask.sum()) - ann['area']) <= 0.25 * ann['area']
        ys, xs = np.nonzero(mask)
        assert xs.min() >= x - 1 and xs.max() <= x + w and ys.max() <= y + h
        seen.add(ann['category_id'])
    assert seen == {1, 2, 3}
    with open(paths['val_ann']) as f:
        assert len(json.load(f)['images']) == 3


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match='at least one image'):
        make_toy_coco(str(tmp_path), num_train=0)
    with pytest.raises(ValueError, match='at least 32'):
        make_toy_coco(str(tmp_path), image_size=16)


def test_cfg_options_redirect_a_toy_config(tmp_path):
    from mmengine.config import Config
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(
        repo, 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py'))
    options = dict(o.split('=', 1) for o in cfg_options('/somewhere/toy'))
    cfg.merge_from_dict(options)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == '/somewhere/toy/'
    for evaluator in ('val_evaluator', 'test_evaluator'):
        assert cfg[evaluator].ann_file == '/somewhere/toy/annotations/instances_val2017.json'


@pytest.mark.slow
def test_mmdets_own_get_flops_runs_on_the_toy_config(tmp_path):
    """mmdet's analysis tools read ``val_dataloader``: the toy configs keep one."""
    import mmdet
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'analysis_tools',
                    'get_flops.py')
    if not osp.isfile(tool):
        pytest.skip('this mmdet wheel ships no .mim/tools/analysis_tools/get_flops.py')
    toy = make_toy_coco(str(tmp_path / 'toy'), num_train=2, num_val=2, image_size=64)
    proc = subprocess.run(
        [sys.executable, tool, RETINA, '--num-images', '1', '--cfg-options',
         *cfg_options(toy['root'])], cwd=REPO, env=ONE_THREAD, capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    flops = re.search(r'Flops: ([\d.]+)G', proc.stdout)
    assert flops and float(flops.group(1)) > 0, proc.stdout[-2000:]
    assert 'Input shape: (64, 64)' in proc.stdout  # an image of the toy val split
