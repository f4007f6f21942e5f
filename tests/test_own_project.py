"""A project of one's own on CAS-ViT, as a user outside the repository starts it.

- configs that inherit ``casvit_mm::...`` read by MM's own tools and inferencers in
  a fresh process that never imports casvit_mm (the start-up hook installed with
  the package), and their pipelines built by a builder outside our tools;
- the example configs of ``configs/own_project/`` (your classes, your data root,
  from pretrained weights), one per task, trained a few iterations on toy data
  whose classes are renamed, each by a different tool;
- the README's own-project snippet, run as written in a directory outside the
  repository;
- a checkpoint whose head does not fit refused on every load path, naming the
  class counts.

The fresh processes load the hook exactly as Python does for an installed
package: ``site.addsitedir`` on a folder that holds ``casvit_mm_config_hook.pth``.
"""
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest
import torch

from casvit_mm.checkpoint import CheckpointError
from casvit_mm.toy_data.ade import make_toy_ade
from casvit_mm.toy_data.coco import make_toy_coco
from casvit_mm.toy_data.imagenet import make_toy_imagenet
from helpers import ONE_THREAD, REPO, read_metrics, run_tool_in_process

BOLTS = ('bolt', 'nut', 'washer')
SITE_PACKAGES = osp.dirname(osp.dirname(torch.__file__))
# Run a script the way `python SCRIPT ARGS` would, after site-packages' .pth files.
BOOT = ('import runpy, site, sys; site.addsitedir(sys.argv[1]); sys.argv = sys.argv[2:]; '
        "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope='module')
def site_dir(tmp_path_factory):
    """A site directory holding the hook's .pth, as pip installs it."""
    site = tmp_path_factory.mktemp('site')
    shutil.copy(osp.join(REPO, 'casvit_mm_config_hook.pth'), site)
    return str(site)


def run_fresh(site, cwd, script, *args, expect_ok=True):
    """``python SCRIPT ARGS`` in ``cwd``, a new interpreter with the hook installed;
    casvit-mm importable (as installed), never imported by the caller."""
    env = dict(ONE_THREAD, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, '-c', BOOT, site, str(script), *map(str, args)],
                          cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if expect_ok:
        assert proc.returncode == 0, f'{script} failed:\n{out[-5000:]}'
    return proc, out


def mm_tool(package, tool='train'):
    return osp.join(SITE_PACKAGES, package, '.mim', 'tools', f'{tool}.py')


def loaders_in_process(*loaders):
    return [f'{loader}.{k}' for loader in loaders
            for k in ('num_workers=0', 'persistent_workers=False')]


def fake_pretrained(path, arch='xs'):
    """A backbone file in the layout the converter writes (random weights: no
    download is possible here), standing in for the ImageNet weights."""
    from casvit_mm import CASViT
    os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save({'state_dict': CASViT(arch=arch).state_dict()}, path)
    return path


# --- toy data with the classes renamed, in the layouts the examples document ---

def coco_with_classes(root, classes=BOLTS, **kwargs):
    """Toy COCO renamed to ``classes``: annotations/{train,val}.json, {train,val}/."""
    gen = make_toy_coco(f'{root}_gen', num_train=4, num_val=2, image_size=64, **kwargs)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    for split, year in (('train', 'train2017'), ('val', 'val2017')):
        shutil.move(osp.join(gen['root'], year), osp.join(root, split))
        coco = json.load(open(gen[f'{split}_ann']))
        for cat, name in zip(coco['categories'], classes):
            cat['name'] = name
        json.dump(coco, open(osp.join(root, 'annotations', f'{split}.json'), 'w'))
    return root


def seg_with_layout(root):
    """Toy ADE label maps in the BaseSegDataset layout of the example
    (images/{train,val}, annotations/{train,val}); the class names are the config's."""
    make_toy_ade(f'{root}_gen', num_train=4, num_val=2, size=(64, 64))
    for kind in ('images', 'annotations'):
        for split, ade in (('train', 'training'), ('val', 'validation')):
            os.makedirs(osp.join(root, kind), exist_ok=True)
            shutil.move(osp.join(f'{root}_gen', kind, ade), osp.join(root, kind, split))
    return root


def folders_with_classes(root, classes):
    """Toy image folders, one folder per class, renamed to ``classes``."""
    gen = make_toy_imagenet(f'{root}_gen', num_train=2, num_val=1, size=64)
    for split in ('train', 'val'):
        for old, new in zip(gen['classes'], classes):
            os.makedirs(osp.join(root, split), exist_ok=True)
            shutil.move(osp.join(f'{root}_gen', split, old), osp.join(root, split, new))
    return root


# --- 1. inherited configs in MM's own tools and inferencers ---

INFER = '''
import json, sys
import numpy as np
assert 'casvit_mm' not in sys.modules  # nothing imported it for us
from mmdet.apis import DetInferencer
from mmseg.apis import MMSegInferencer
from mmpretrain import ImageClassificationInferencer
image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
# mmpretrain's inferencer sets no default scope (mmengine then builds in the one
# another inferencer left current), so it comes first, as in a process of its own
cls = ImageClassificationInferencer(model='cls.py', device='cpu')(image)[0]
det = DetInferencer(model='det.py', device='cpu')(image)['predictions'][0]
seg = MMSegInferencer(model='seg.py', device='cpu')(image, return_datasamples=True)
# the pipeline built outside any Runner, as mmdeploy's create_input builds it
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmcv.transforms import Compose
cfg = Config.fromfile('det.py')
init_default_scope(cfg.default_scope)
steps = {type(t).__name__: type(t).__module__ for t in Compose(cfg.test_pipeline).transforms}
print(json.dumps(dict(det=len(det['labels']), seg=list(seg.pred_sem_seg.data.shape[-2:]),
                      cls=len(cls['pred_scores']), steps=steps,
                      scopes=sorted({t.get('_scope_') for t in cfg.test_pipeline}))))
'''


@pytest.mark.slow
def test_inferencers_read_inherited_configs_in_a_fresh_process(tmp_path, site_dir):
    """DetInferencer, MMSegInferencer and ImageClassificationInferencer take configs
    inheriting ``casvit_mm::`` with no ``import casvit_mm``; mmcv's Compose builds
    their pipeline under the ``_scope_='casvit_mm'`` mmengine put on it."""
    (tmp_path / 'det.py').write_text(
        "_base_ = ['casvit_mm::detection/toy/retinanet_casvit_xs_toy-shapes.py']\n")
    (tmp_path / 'seg.py').write_text("_base_ = ['casvit_mm::segmentation/fpn_casvit_xs_toy.py']\n")
    (tmp_path / 'cls.py').write_text(
        "_base_ = ['casvit_mm::classification/casvit_xs_toy.py']\n")
    (tmp_path / 'infer.py').write_text(INFER)
    proc, _ = run_fresh(site_dir, tmp_path, 'infer.py')
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['seg'] == [64, 64] and result['cls'] == 4
    assert result['scopes'] == ['casvit_mm']  # what mmengine marks inherited dicts with
    assert result['steps']['PackDetInputs'].startswith('mmdet.')
    assert result['steps']['LoadAnnotations'].startswith('mmdet.')  # not mmseg's or mmcv's


def test_hook_registers_casvit_mm_only_when_mmengine_config_loads(tmp_path, site_dir):
    """The hook imports nothing at start-up: neither casvit_mm nor mmengine nor torch."""
    (tmp_path / 'probe.py').write_text(
        'import sys\n'
        "before = [m for m in ('casvit_mm', 'mmengine', 'torch') if m in sys.modules]\n"
        'from mmengine.config.utils import MODULE2PACKAGE\n'
        "print(before, MODULE2PACKAGE.get('casvit_mm'), 'casvit_mm' in sys.modules)\n")
    proc, _ = run_fresh(site_dir, tmp_path, 'probe.py')
    assert proc.stdout.strip().splitlines()[-1] == '[] casvit_mm False'


# --- 2. the example configs, one per task, each trained by a different tool ---

DET_SMALL = ['train_cfg.max_epochs=1', 'train_dataloader.batch_size=2',
             'train_dataloader.dataset.pipeline.2.scale=(64,64)',
             'val_dataloader.dataset.pipeline.1.scale=(64,64)', 'default_hooks.logger.interval=1']


def _inherit(tmp_path, example):
    path = tmp_path / 'mine.py'
    path.write_text(f"_base_ = ['casvit_mm::own_project/{example}']\n")
    return path


@pytest.mark.slow
def test_own_classes_detection_with_mmdets_train_tool(tmp_path, site_dir):
    """RetinaNet example: renamed COCO classes, own data root, pretrained backbone,
    trained and validated by mmdet's own tools/train.py."""
    data = coco_with_classes(str(tmp_path / 'data' / 'my_coco'))
    fake_pretrained(str(tmp_path / 'checkpoints' / 'casvit-xs_3rdparty_in1k.pth'))
    cfg = _inherit(tmp_path, 'retinanet_casvit_xs_own-classes.py')
    _, out = run_fresh(site_dir, tmp_path, mm_tool('mmdet'), cfg, '--work-dir', 'run',
                       '--cfg-options', *DET_SMALL,
                       *loaders_in_process('train_dataloader', 'val_dataloader'))
    assert 'casvit-xs_3rdparty_in1k.pth' in out  # the backbone read its weights
    ckpt = torch.load(tmp_path / 'run' / 'epoch_1.pth', weights_only=False)
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == BOLTS
    assert ckpt['state_dict']['bbox_head.retina_cls.weight'].shape[0] == 9 * len(BOLTS)
    assert 'Epoch(val)' in out  # validated with the COCO metric on our json
    assert osp.isdir(data)
    # and mmdet's own tools/test.py tests it
    _, out = run_fresh(site_dir, tmp_path, mm_tool('mmdet', 'test'), cfg, 'run/epoch_1.pth',
                       '--work-dir', 'test', '--cfg-options',
                       'test_dataloader.dataset.pipeline.1.scale=(64,64)',
                       *loaders_in_process('test_dataloader'))
    assert 'Epoch(test)' in out


def read_metrics_from_log(work_dir):
    """The validation metrics a run logged (scalars.json of its vis_data)."""
    import glob
    found = {}
    for path in glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json')):
        for line in open(path):
            found.update(json.loads(line))
    return found


@pytest.mark.slow
def test_own_classes_instance_segmentation_with_our_train_tool(tmp_path):
    """Mask R-CNN example, trained by this repository's tools/train.py run from
    another directory."""
    coco_with_classes(str(tmp_path / 'data' / 'my_coco'))
    fake_pretrained(str(tmp_path / 'checkpoints' / 'casvit-xs_3rdparty_in1k.pth'))
    cfg = _inherit(tmp_path, 'mask_rcnn_casvit_xs_own-classes.py')
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'train.py'), str(cfg), '--work-dir', 'run',
         '--cfg-options', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
         *DET_SMALL[:3], *loaders_in_process('train_dataloader')],
        cwd=tmp_path, env=dict(ONE_THREAD, PYTHONPATH=REPO), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = torch.load(tmp_path / 'run' / 'epoch_1.pth', weights_only=False)
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == BOLTS
    assert ckpt['state_dict']['roi_head.mask_head.conv_logits.weight'].shape[0] == 3


@pytest.mark.slow
def test_own_classes_semantic_segmentation_with_mmsegs_train_tool(tmp_path, site_dir):
    """Semantic FPN example (BaseSegDataset, five classes of our own names), trained
    and evaluated by mmseg's own tools/train.py."""
    seg_with_layout(str(tmp_path / 'data' / 'my_seg'))
    fake_pretrained(str(tmp_path / 'checkpoints' / 'casvit-xs_3rdparty_in1k.pth'))
    cfg = _inherit(tmp_path, 'fpn_casvit_xs_own-classes.py')
    _, out = run_fresh(
        site_dir, tmp_path, mm_tool('mmseg'), cfg, '--work-dir', 'run', '--cfg-options',
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'train_dataloader.batch_size=2',
        'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
        'model.data_preprocessor.size=(64,64)',
        'train_dataloader.dataset.pipeline.2.scale=(128,64)',
        'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
        'val_dataloader.dataset.pipeline.1.scale=(128,64)',
        *loaders_in_process('train_dataloader', 'val_dataloader'))
    ckpt = torch.load(tmp_path / 'run' / 'iter_2.pth', weights_only=False)
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == ('rust', 'paint', 'weld', 'bolt',
                                                             'gap')
    assert 'mIoU' in read_metrics_from_log(tmp_path / 'run')
    assert 'IoU' in out and 'rust' in out  # the per-class table names our classes


@pytest.mark.slow
def test_own_classes_classification_with_mmpretrains_train_tool(tmp_path, site_dir):
    """Classifier example (one folder per class, renamed), fine-tuned from an
    ImageNet-layout classifier file by mmpretrain's own tools/train.py."""
    classes = ('clean', 'crack', 'dent', 'scratch')
    folders_with_classes(str(tmp_path / 'data' / 'my_images'), classes)
    from casvit_mm.cli import build_model
    imagenet = build_model(osp.join(REPO, 'configs/classification/casvit_xs_in1k.py'))
    os.makedirs(tmp_path / 'checkpoints')
    torch.save({'state_dict': imagenet.state_dict()},
               tmp_path / 'checkpoints' / 'casvit-xs_3rdparty_in1k.pth')
    cfg = _inherit(tmp_path, 'casvit_xs_own-classes.py')
    run_fresh(site_dir, tmp_path, mm_tool('mmpretrain'), cfg, '--work-dir', 'run',
              '--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4',
              'val_dataloader.batch_size=4', 'default_hooks.logger.interval=1',
              'train_dataloader.dataset.pipeline.1.scale=64',  # RandomResizedCrop 224
              'val_dataloader.dataset.pipeline.1.scale=64',  # ResizeEdge 256
              'val_dataloader.dataset.pipeline.2.crop_size=64',  # CenterCrop 224
              *loaders_in_process('train_dataloader', 'val_dataloader'))
    ckpt = torch.load(tmp_path / 'run' / 'epoch_1.pth', weights_only=False)
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == classes
    assert ckpt['state_dict']['head.head.weight'].shape[0] == 4
    assert 'accuracy/top1' in read_metrics_from_log(tmp_path / 'run')


# --- 2. the README's snippet, as written, outside the repository ---

def readme_block(lang, title):
    import re
    text = open(osp.join(REPO, 'README.md'), encoding='utf-8').read()
    blocks = re.findall(rf'```{lang}\n(.*?)```', text, flags=re.S)
    found = [b for b in blocks if b.startswith(f'# {title}')]
    assert found, f'README lost its "{title}" block'
    return found[0]


@pytest.mark.slow
def test_readme_own_project_snippet_as_written(tmp_path, site_dir):
    """The README's my_retinanet.py, in a directory outside the repository: trained
    by tools/train.py, then used by DetInferencer in a fresh process."""
    (tmp_path / 'my_retinanet.py').write_text(readme_block('python', 'my_retinanet.py'))
    coco_with_classes(str(tmp_path / 'data' / 'bolts'))
    fake_pretrained(str(tmp_path / 'checkpoints' / 'casvit-xs_3rdparty_in1k.pth'))
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'train.py'), 'my_retinanet.py',
         '--cfg-options', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
         *DET_SMALL[:3], *loaders_in_process('train_dataloader')],
        cwd=tmp_path, env=dict(ONE_THREAD, PYTHONPATH=REPO), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = tmp_path / 'work_dirs' / 'my_retinanet' / 'epoch_1.pth'
    inference = readme_block('python', 'inference with the trained model')
    (tmp_path / 'predict.py').write_text(
        'import sys\nassert "casvit_mm" not in sys.modules\n'
        + inference.replace('work_dirs/my_retinanet/epoch_12.pth', str(ckpt))
                   .replace("'image.jpg'", repr(str(tmp_path / 'data/bolts/val/000000000001.jpg')))
        + '\nprint(sorted(inferencer.model.dataset_meta["classes"]))\n')
    proc, _ = run_fresh(site_dir, tmp_path, 'predict.py')
    assert proc.stdout.strip().splitlines()[-1] == str(sorted(BOLTS))


# --- 3. a head that does not fit is refused on every path ---

@pytest.fixture(scope='module')
def three_class_checkpoint(tmp_path_factory):
    """A toy RetinaNet trained (here: initialised) for bolt, nut, washer, saved as an
    mmengine run saves it, training state included so that --resume takes it."""
    from casvit_mm.cli import build_model
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py'))
    model = build_model(cfg)
    path = str(tmp_path_factory.mktemp('ckpt') / 'three.pth')
    torch.save({'state_dict': model.state_dict(), 'message_hub': {}, 'optimizer': {},
                'meta': dict(epoch=0, iter=1, dataset_meta=dict(classes=BOLTS))}, path)
    return path


TWO_CLASSES = 'model.bbox_head.num_classes=2'
MESSAGE = re.escape("the checkpoint's head has 3 classes (bolt, nut, washer), this config 2")


def test_mismatched_head_refused_by_det_inferencer(tmp_path, three_class_checkpoint):
    from mmdet.apis import DetInferencer
    (tmp_path / 'two.py').write_text(
        "_base_ = ['casvit_mm::detection/toy/retinanet_casvit_xs_toy-shapes.py']\n"
        'model = dict(bbox_head=dict(num_classes=2))\n')
    with pytest.raises(CheckpointError, match=MESSAGE) as e:
        DetInferencer(model=str(tmp_path / 'two.py'), weights=three_class_checkpoint,
                      device='cpu')
    assert 'model.bbox_head.num_classes' in str(e.value) and "prefix='backbone.'" in str(e.value)


def test_mismatched_head_refused_without_class_names(tmp_path):
    """A bare state dict (no meta): the class count comes from the shapes."""
    from casvit_mm.cli import build_model
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    cfg = Config.fromfile(osp.join(REPO, 'configs/detection/mask_rcnn_casvit_xs.py'))
    cfg.model.roi_head.bbox_head.num_classes = 2
    cfg.model.roi_head.mask_head.num_classes = 2
    two = build_model(cfg)
    before = {k: v.clone() for k, v in two.state_dict().items()}
    cfg.model.roi_head.bbox_head.num_classes = 3
    cfg.model.roi_head.mask_head.num_classes = 3
    torch.save(build_model(cfg).state_dict(), tmp_path / 'mask3.pth')
    with pytest.raises(CheckpointError, match=r"head has 3 classes, this config 2 \("
                                              r'model.roi_head.bbox_head.num_classes, '
                                              r'model.roi_head.mask_head.num_classes'):
        load_checkpoint(two, str(tmp_path / 'mask3.pth'))
    assert all(torch.equal(v, two.state_dict()[k]) for k, v in before.items())  # untouched


@pytest.mark.slow
@pytest.mark.parametrize('tool,argv', [
    ('test', ['{ckpt}', '--cfg-options', TWO_CLASSES]),
    ('train', ['--cfg-options', TWO_CLASSES, 'load_from={ckpt}']),
    ('train', ['--resume', '{ckpt}', '--cfg-options', TWO_CLASSES]),
], ids=['tools-test', 'load_from', 'resume'])
def test_mismatched_head_refused_by_the_tools(tool, argv, toy, three_class_checkpoint,
                                              tmp_path, monkeypatch):
    from casvit_mm.toy_data.coco import cfg_options
    argv = [a.format(ckpt=three_class_checkpoint) for a in argv]
    config = osp.join(REPO, 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py')
    opts = cfg_options(toy['root']) + loaders_in_process(
        'train_dataloader', 'val_dataloader', 'test_dataloader')
    with pytest.raises(CheckpointError, match=MESSAGE):
        run_tool_in_process(tool, [config, *argv, *opts, '--work-dir', tmp_path], monkeypatch)


# --- 4. pretrained weights found, or explained before anything is built ---

@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from an empty directory, with no checkout to fall back on."""
    from casvit_mm.checkpoint import locate
    run_dir = tmp_path / 'elsewhere'
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    monkeypatch.setattr(locate, 'checkout_dir', lambda: None)
    return run_dir


def test_relative_checkpoint_found_in_the_checkout(tmp_path, monkeypatch):
    """A config's checkpoints/... is read from the casvit-mm checkout when the
    directory you run in does not have it."""
    from casvit_mm import CASViT
    from casvit_mm.checkpoint import locate
    clone = tmp_path / 'clone'
    fake_pretrained(str(clone / 'checkpoints' / 'casvit-xs_3rdparty_in1k.pth'))
    (tmp_path / 'project').mkdir()
    monkeypatch.chdir(tmp_path / 'project')
    monkeypatch.setattr(locate, 'checkout_dir', lambda: str(clone))
    assert locate.checkout_dir() == str(clone)
    model = CASViT(arch='xs', init_cfg=dict(type='Pretrained',
                                           checkpoint='checkpoints/casvit-xs_3rdparty_in1k.pth'))
    model.init_weights()
    saved = torch.load(clone / 'checkpoints' / 'casvit-xs_3rdparty_in1k.pth')['state_dict']
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_missing_pretrained_stops_train_before_any_dataloader(toy, elsewhere, monkeypatch):
    from casvit_mm.toy_data.coco import cfg_options
    config = osp.join(REPO, 'configs/detection/retinanet_casvit_xs.py')  # reads the weights
    work = elsewhere / 'work'
    with pytest.raises(SystemExit) as err:
        run_tool_in_process('train', [config, '--work-dir', work, '--cfg-options',
                                      *cfg_options(toy['root'])], monkeypatch)
    message = str(err.value)
    assert str(elsewhere / 'checkpoints' / 'casvit-xs_3rdparty_in1k.pth') in message
    assert '--cfg-options model.backbone.init_cfg.checkpoint=PATH' in message
    assert 'model.backbone.init_cfg=None' in message
    assert not work.exists()  # stopped before the runner was built


def test_get_model_pretrained_true_says_where_and_how(elsewhere):
    from mmpretrain import get_model
    with pytest.raises(FileNotFoundError) as err:
        get_model('casvit-xs_3rdparty_in1k', pretrained=True)
    message = str(err.value)
    assert str(elsewhere / 'checkpoints' / 'casvit-xs_3rdparty_in1k.pth') in message
    assert 'pretrained=PATH' in message and 'pretrained=False' in message
    assert 'init_cfg' not in message  # advice for a get_model caller


# --- 5. the small ones ---

def test_classes_the_annotation_file_lacks_are_named(toy, tmp_path, monkeypatch):
    """metainfo.classes that match no category stop the tool and list the file's
    categories (instead of mmengine's 'need at least one array to concatenate')."""
    from casvit_mm.toy_data.coco import cfg_options
    config = osp.join(REPO, 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py')
    with pytest.raises(SystemExit) as err:
        run_tool_in_process('train', [config, '--work-dir', tmp_path / 'work', '--cfg-options',
                                      *cfg_options(toy['root']),
                                      "train_dataloader.dataset.metainfo.classes=[bolt,nut]"],
                            monkeypatch)
    assert ("metainfo.classes ('bolt', 'nut') match none of the categories" in str(err.value)
            and "('square', 'circle', 'triangle')" in str(err.value))


def test_ade20k_dataset_with_own_classes_points_to_base_seg_dataset():
    from casvit_mm.cli import load_config
    from casvit_mm.utils import DataRootError
    from casvit_mm.utils.path_check import check_classes
    cfg = load_config(osp.join(REPO, 'configs/segmentation/fpn_casvit_xs_toy.py'))
    cfg.train_dataloader.dataset.metainfo = dict(classes=('rust', 'paint'))
    with pytest.raises(DataRootError, match=r"type='BaseSegDataset'.*own_project"):
        check_classes(cfg, ['train'])


def test_check_dataset_command_runs_from_anywhere(toy, tmp_path, elsewhere):
    """The command messages give for listing damaged samples runs where the user is."""
    from casvit_mm.toy_data.coco import cfg_options
    from casvit_mm.utils.path_check import check_dataset_command
    config = osp.join(REPO, 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py')
    command = check_dataset_command(config)
    assert command == f'python -m casvit_mm.check_dataset {config}'
    proc = subprocess.run([sys.executable, *command.split()[1:], '--workers', '0', '--splits',
                           'test', '--cfg-options', *cfg_options(toy['root'])[1:3]],
                          cwd=elsewhere, env=dict(ONE_THREAD, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'All samples of test read and consistent' in proc.stderr


def test_deploy_switch_is_logged(toy, tmp_path, monkeypatch, capsys):
    from casvit_mm.cli import build_model
    from casvit_mm.toy_data.coco import cfg_options
    config = osp.join(REPO, 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py')
    ckpt = tmp_path / 'toy.pth'
    torch.save({'state_dict': build_model(config).state_dict()}, ckpt)
    run_tool_in_process('test', [config, ckpt, '--deploy', '--work-dir', tmp_path / 'work',
                                 '--cfg-options', *cfg_options(toy['root'])[1:3],
                                 *loaders_in_process('test_dataloader')], monkeypatch)
    out = capsys.readouterr()
    assert '--deploy: testing the deploy-mode model (backbone switched' in out.out + out.err


def test_mmdeploy_create_input_on_an_inherited_config(tmp_path):
    """mmdeploy builds the test pipeline from mmengine's root registries under the
    dicts' ``_scope_='casvit_mm'``; it used to stop with ``KeyError: 'PackDetInputs
    is not in the mmengine::transform registry'``."""
    pytest.importorskip('mmdeploy')
    import numpy as np
    from mmdeploy.apis.utils import build_task_processor
    from mmengine.config import Config
    (tmp_path / 'mine.py').write_text(
        "_base_ = ['casvit_mm::detection/toy/retinanet_casvit_xs_toy-shapes.py']\n")
    model_cfg = Config.fromfile(str(tmp_path / 'mine.py'))
    assert {t.get('_scope_') for t in model_cfg.test_pipeline} == {'casvit_mm'}
    deploy_cfg = Config(dict(codebase_config=dict(type='mmdet', task='ObjectDetection'),
                             backend_config=dict(type='onnxruntime'),
                             onnx_config=dict(type='onnx', input_shape=None)))
    task = build_task_processor(model_cfg, deploy_cfg, 'cpu')
    data, inputs = task.create_input(np.zeros((64, 64, 3), np.uint8), input_shape=None)
    assert data['inputs'][0].shape == (3, 64, 64)
    assert type(data['data_samples'][0]).__name__ == 'DetDataSample'
