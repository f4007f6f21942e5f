"""Every model by name: the metafiles, mmpretrain's get_model / list_models and
the three inferencers, on local weight files (nothing is downloaded)."""
import os.path as osp
import re

import numpy as np
import pytest
import torch
from mmengine.fileio import load
from mmengine.registry import DefaultScope

import casvit_mm  # noqa: F401  (adds the model index)
from casvit_mm.checkpoint import to_mmpretrain
from casvit_mm.checkpoint.locate import SCHEME, model_file
from casvit_mm.model_index import MIM_DIR, config_of, model_names
from helpers import REPO
from reference_casvit import official_forward, official_state_dict
from test_official_checkpoints import config_path, official_file

CLASSIFIERS = [f'casvit-{a}_3rdparty_in1k' for a in ('m', 's', 't', 'xs')]
# The official implementation's results: box AP, mask AP, mIoU, lower ImageNet top-1
OFFICIAL = {
    'retinanet_casvit-xs_fpn_1x_coco': {'box AP': 36.5},
    'retinanet_casvit-t_fpn_1x_coco': {'box AP': 41.9},
    'mask-rcnn_casvit-m_fpn_1x_coco': {'box AP': 42.3, 'mask AP': 38.9},
    'fpn_casvit-s_8xb4-40k_ade20k-512x512': {'mIoU': 41.3},
    'casvit-m_3rdparty_in1k': {'Top 1 Accuracy': 82.8},
}


def image():
    return np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)


def test_metafiles_name_every_config_once():
    index = load(osp.join(REPO, 'model-index.yml'))
    assert index == load(osp.join(MIM_DIR, 'model-index.yml'))  # the package's copy
    names = model_names()
    assert len(names) == len(set(names)) == 16  # 4 sizes x (cls, RetinaNet, Mask R-CNN, FPN)
    for name in names:
        config = config_of(name)
        assert osp.isfile(config), config
    models = {m['Name']: m for f in index['Import'] for m in load(osp.join(REPO, f))['Models']}
    for name, metrics in OFFICIAL.items():
        got = {k: v for r in models[name]['Results'] for k, v in r['Metrics'].items()}
        assert got == metrics
    for name, model in models.items():  # one naming rule: checkpoints/<name>.pth
        if name in CLASSIFIERS:  # as casvit_mm://<name>, which get_model reads from there
            assert model['Weights'] == SCHEME + name
            assert model_file(name) == f'checkpoints/{name}.pth'
        else:
            assert model['Weights'] == f'checkpoints/{name}.pth'
        assert re.match(r'(cas-vit-\w+|(retinanet|mask_rcnn|fpn)_rcvit_\w+)\.pth$',
                        model['Converted From']['Weights'])


def test_list_models_and_get_model_by_name(tmp_path):
    from mmpretrain import get_model, list_models
    assert sorted(list_models('*casvit*')) == CLASSIFIERS
    official = official_state_dict('xs', classifier=True, num_classes=1000, seed=5)
    path = tmp_path / 'casvit-xs_3rdparty_in1k.pth'
    torch.save(dict(state_dict=to_mmpretrain(official)), path)
    model = get_model('casvit-xs_3rdparty_in1k', pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x, mode='tensor')
    assert (logits - official_forward(official, x, 'xs', classifier=True)).abs().max() <= 1e-5


def test_image_classification_inferencer_by_name(tmp_path):
    from mmpretrain import ImageClassificationInferencer
    path = tmp_path / 'casvit-xs_3rdparty_in1k.pth'
    official = official_state_dict('xs', classifier=True, num_classes=1000, seed=6)
    torch.save(dict(state_dict=to_mmpretrain(official)), path)
    # mmpretrain's inferencer builds its pipeline under the current default scope,
    # which an earlier DetInferencer in the same process leaves at 'mmdet'.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = ImageClassificationInferencer('casvit-xs_3rdparty_in1k',
                                                   pretrained=str(path))
        result = inferencer(image())[0]
    assert len(result['pred_scores']) == 1000


def test_det_and_seg_inferencers_with_the_config_of_a_name(tmp_path):
    """The official whole-model files, unconverted, straight into the inferencers."""
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer
    det, seg = tmp_path / 'retinanet_rcvit_xs.pth', tmp_path / 'fpn_rcvit_xs.pth'
    official_file(config_path('retinanet', 'xs'), 'xs', det)
    official_file(config_path('fpn', 'xs'), 'xs', seg)
    inferencer = DetInferencer(model=config_of('retinanet_casvit-xs_fpn_1x_coco'),
                               weights=str(det), device='cpu', show_progress=False)
    assert 'scores' in inferencer(image())['predictions'][0]
    inferencer = MMSegInferencer(model=config_of('fpn_casvit-xs_8xb4-40k_ade20k-512x512'),
                                 weights=str(seg), device='cpu')
    assert inferencer(image())['predictions'].shape == (64, 80)


def test_det_inferencer_by_name_needs_scope_casvit_mm(tmp_path):
    """mmengine's inferencers use ``scope`` for the model index *and* the registries:
    with mmdet's scope the name is unknown; with ``scope='casvit_mm'`` the name is
    found in this package's index and, through the ``casvit_mm``-scope registries
    (casvit_mm/registry.py), mmdet's transforms and models build."""
    from mmdet.apis import DetInferencer
    path = tmp_path / 'retinanet_rcvit_xs.pth'
    official_file(config_path('retinanet', 'xs'), 'xs', path)
    with pytest.raises(ValueError, match='Cannot find model'):
        DetInferencer(model='retinanet_casvit-xs_fpn_1x_coco', weights=str(path), device='cpu')
    inferencer = DetInferencer(model='retinanet_casvit-xs_fpn_1x_coco', scope='casvit_mm',
                               weights=str(path), device='cpu')
    assert type(inferencer.model).__name__ == 'RetinaNet'
    assert type(inferencer.pipeline.transforms[-1]).__module__.startswith('mmdet.')
