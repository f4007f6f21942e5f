"""Mobile runtimes (casvit_mm.deploy.mobile, tools/deployment/export_mobile.py).

* The export-friendly deploy form computes what the fused deploy model and the
  eval-mode model compute (random BN statistics), and ``torch.export`` of it
  has none of the ops the mobile compilers refuse.
* ExecuTorch: a toy-trained classifier goes through the tool (fp32 and int8
  .pte, --eval with mmpretrain's Accuracy); XNNPACK runs every op of both
  files (ExecuTorch's delegation info); the files load and run in ExecuTorch's
  Python runtime, fp32 within 1e-4 of the eval-mode model, int8 close to it.
* Whole detectors and segmentors: the .pte's raw outputs through mmdet's /
  mmseg's own post-processing on the host give ``test_step``'s predictions.
* Core ML: conversion succeeds and its MIL op inventory is what the network is
  made of (running the package needs macOS, so it is not run here).
* LiteRT (the optional extra `litert`; skipped with the install line where it
  is absent): the tool's fp32 and int8 .tflite of the trained classifier run
  in LiteRT's interpreter, fp32 within 1e-4 and wholly in XNNPACK, int8 all
  but its GELUs; nearest upsampling's rewrite for it is exact.
"""
import copy
import itertools
import os.path as osp
import re
from collections import Counter

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

pytest.importorskip('executorch', reason='pip install executorch (the tests extra)')

from casvit_mm import CASViT  # noqa: E402
from casvit_mm.cli import build_model, load_config, relative_error  # noqa: E402
from casvit_mm.deploy.mobile import (PORTABLE_OK, ExecuTorchModel,  # noqa: E402
                                     MobileExportError, MobileNetwork, export_program,
                                     calibration_batches, float_modules, host_predictions,
                                     mobile_kind, mobile_network, quantize_pt2e, to_coreml,
                                     to_executorch, unshare_weights)
from casvit_mm.deploy.onnx_export import match_detections  # noqa: E402
from casvit_mm.deploy.ort_quantization import batch_images, calibration_loader  # noqa: E402
from casvit_mm.toy_data.ade import make_toy_ade  # noqa: E402
from casvit_mm.toy_data.coco import cfg_options, make_toy_coco  # noqa: E402
from casvit_mm.toy_data.imagenet import make_toy_imagenet  # noqa: E402
from helpers import ONE_THREAD, REPO, run_tool  # noqa: E402
from test_deploy import randomize_bn  # noqa: E402
from test_quantize import CLS_TOY  # noqa: E402

RETINA_TOY = 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py'
SEG_TOY = 'configs/segmentation/fpn_casvit_xs_toy.py'
MASK_TOY = 'configs/detection/toy/mask_rcnn_casvit_xs_toy-shapes.py'
TOL = 1e-4
# What the mobile compilers refuse or leave to slow kernels (the fused form's ops).
NOT_EXPORT_FRIENDLY = ('unbind', 'addcmul', 'squeeze', 'select', 'slice', 'split', 'chunk',
                       'mkldnn', 'linear')


# ------------------------------------------------------------ the export form
@pytest.mark.parametrize('kwargs', [dict(arch='xs'), dict(arch='s', out_indices=(1, 3)),
                                    dict(arch='xs', out_indices=-1, global_pool=True)])
def test_export_form_equals_fused_and_eval(kwargs):
    model = randomize_bn(CASViT(**kwargs)).eval()
    x = torch.randn(2, 3, 64, 96)
    fused = copy.deepcopy(model)
    fused.switch_to_deploy()
    export = copy.deepcopy(model)
    export.switch_to_deploy(form='export')
    with torch.no_grad():
        reference, out_fused, out_export = model(x), fused(x), export(x)
    assert relative_error(reference, out_export) < TOL
    assert relative_error(out_fused, out_export) < 1e-5  # float rounding only
    assert export.deploy_form == 'export' and fused.deploy_form == 'fused'
    assert not any(isinstance(m, (_BatchNorm, nn.Linear)) for m in export.modules())
    convs = [m for m in export.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous() for c in convs)  # NCHW
    block = export.stages[0][0]
    assert block.export_form and hasattr(block.attn, 'channel_gate_k')
    assert not hasattr(block.attn, 'qk')


def test_export_form_from_a_fused_backbone_and_no_way_back():
    model = randomize_bn(CASViT('xs')).eval()
    fused = copy.deepcopy(model)
    fused.switch_to_deploy()
    built = CASViT('xs', deploy=True)  # a fused checkpoint loaded strictly, then switched
    built.load_state_dict(fused.state_dict(), strict=True)
    built.switch_to_deploy(form='export')
    built.switch_to_deploy(form='export')  # repeating is harmless
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(model(x), built(x)) < TOL
    with pytest.raises(ValueError, match='export form already'):
        built.switch_to_deploy()
    with pytest.raises(ValueError, match="'fused' or 'export'"):
        model.switch_to_deploy(form='onnx')


@pytest.mark.slow
def test_exported_graph_is_plain_4d():
    """torch.export of the export form: no 5-D tensor and none of the ops that
    kept the fused form from delegating whole (unbind, addcmul, 2-D means...)."""
    backbone = CASViT('xs', out_indices=-1, global_pool=True).eval()
    backbone.switch_to_deploy(form='export')
    program = export_program(backbone, torch.randn(2, 3, 64, 64))
    targets = Counter(str(n.target) for n in program.graph.nodes if n.op == 'call_function')
    assert not [t for t in targets if any(bad in t for bad in NOT_EXPORT_FRIENDLY)], targets
    ranks = {len(n.meta['val'].shape) for n in program.graph.nodes
             if isinstance(n.meta.get('val'), torch.Tensor)}
    assert max(ranks) == 4, ranks
    means = [n for n in program.graph.nodes if 'mean' in str(n.target)]
    assert means and all(n.args[2] is True for n in means)  # keepdim: 4-D
    blocks = sum(backbone.depths)
    assert targets['aten.conv2d.default'] == 2 + 3 + 16 * blocks + 1  # the output norm too
    assert targets['aten.sigmoid.default'] == 4 * blocks


# ------------------------------------------------------------ ExecuTorch, classifier
# A CAS-ViT of one block per stage: lowering (int8 above all) takes time in
# proportion to the graph, and the toy sizes keep the tests within budget.
TINY = dict(depths=[1, 1, 1, 1], widths=[16, 24, 32, 48])


def tiny(cfg):
    """The config with the tiny backbone (neck / head inputs to match)."""
    cfg.model.backbone.arch = copy.deepcopy(TINY)
    if cfg.model.get('neck'):
        cfg.model.neck.in_channels = list(TINY['widths'])
    if cfg.model.get('head'):
        cfg.model.head.in_channels = TINY['widths'][-1]
    return cfg


@pytest.fixture(scope='module')
def trained_classifier(tmp_path_factory):
    """A tiny CAS-ViT classifier trained 60 steps on the toy image folders:
    its config and checkpoint."""
    from mmengine.optim import OptimWrapper
    from mmengine.runner import Runner, set_random_seed
    tmp = tmp_path_factory.mktemp('mobile_cls')
    root = str(tmp / 'toy_imagenet')
    make_toy_imagenet(root, num_train=8, num_val=4, size=64, seed=0)
    config = tmp / 'tiny_cls.py'
    loader = "dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=%r))" % root
    config.write_text(
        f"_base_ = [{osp.join(REPO, CLS_TOY)!r}]\n"
        f"model = dict(backbone=dict(arch=dict(_delete_=True, **{TINY!r})),\n"
        f"             head=dict(in_channels={TINY['widths'][-1]}))\n"
        + ''.join(f'{name} = {loader}\n' for name in
                  ('train_dataloader', 'val_dataloader', 'test_dataloader')))
    cfg = load_config(str(config))
    set_random_seed(0)
    model = build_model(cfg)
    model.train()
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=2e-3))
    train = Runner.build_dataloader(dict(cfg.train_dataloader, batch_size=8, sampler=dict(
        type='DefaultSampler', shuffle=True, seed=0)), seed=0)
    for step, data in zip(range(60), itertools.cycle(train)):
        model.train_step(data, optim)
    checkpoint = str(tmp / 'tiny_cls.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
    return dict(cfg=cfg, config=str(config), checkpoint=checkpoint, tmp=tmp)


@pytest.fixture(scope='module')
def classifier_files(trained_classifier):
    """The tool run once on the trained tiny classifier: fp32 and int8 .pte
    (int8 lowering is the slow part: once per module), --eval with
    mmpretrain's Accuracy."""
    cfg, config = trained_classifier['cfg'], trained_classifier['config']
    checkpoint, out_dir = trained_classifier['checkpoint'], trained_classifier['tmp'] / 'out'
    out = run_tool('tools/deployment/export_mobile.py', config, '--checkpoint', checkpoint,
                   '--calib-images', 8, '--calib-batch', 4, '--repeats', 1, '--threads', 1,
                   '--max-batch', 4, '--out-dir', out_dir, '--eval', '--max-drop', 0.125,
                   env=ONE_THREAD)
    print(out)
    return dict(out=out, fp32=str(out_dir / 'tiny_cls_fp32.pte'),
                int8=str(out_dir / 'tiny_cls_int8.pte'), cfg=cfg, checkpoint=checkpoint)


@pytest.mark.slow
def test_tool_delegates_everything_and_scores(classifier_files):
    out = classifier_files['out']
    for fmt in ('executorch', 'executorch-int8'):
        line = next(line for line in out.splitlines() if f' {fmt} ' in line)
        delegated, total = map(int, re.search(r'XNNPACK runs (\d+) of (\d+) ops', line).groups())
        assert line.startswith('OK') and delegated == total > 100, line
        assert 'in 1 subgraph' in line, line
    pytorch, fp32, verdict = scored(out, 'executorch')
    assert fp32 == pytorch  # the fp32 file scores as the eval-mode PyTorch model
    assert verdict.startswith('OK   largest difference'), verdict  # parity, both ways
    pytorch, int8, verdict = scored(out, 'executorch-int8')
    assert verdict.startswith('OK   largest loss'), verdict  # int8: its loss, --max-drop


def scored(out, fmt):
    """export_mobile --eval's lines for ``fmt`` (metric_drop's table, each line
    led by the format): PyTorch's and the file's top-1, and the verdict line."""
    lines = [line.split(None, 1)[1] for line in out.splitlines()
             if line.split(None, 1)[:1] == [fmt]]
    top1 = next(line for line in lines if line.startswith('accuracy/top1'))
    verdict = next(line for line in lines if line.startswith(('OK', 'FAIL')))
    pytorch, score = map(float, top1.split()[1:3])
    return pytorch, score, verdict


@pytest.mark.slow
def test_pte_files_run_in_executorch(classifier_files):
    """Both files load in ExecuTorch's Python runtime and take any batch up to
    the exported maximum; fp32 is the eval-mode model to 1e-4 of the output
    scale, int8 is close to it but not equal (something was quantized) and
    smaller."""
    cfg, checkpoint = classifier_files['cfg'], classifier_files['checkpoint']
    model = build_model(cfg, checkpoint).eval()
    data = next(iter(calibration_loader(cfg, 'val', 4)))
    images = batch_images(data, model, 'backbone', (64, 64))
    with torch.no_grad():
        reference = MobileNetwork(model, 'classifier')(images)
    fp32 = ExecuTorchModel(classifier_files['fp32'])
    int8 = ExecuTorchModel(classifier_files['int8'])
    assert relative_error(reference, fp32(images)) <= TOL
    assert relative_error([r[:1] for r in reference], fp32(images[:1])) <= TOL  # batch 1
    error = relative_error(reference, int8(images))
    assert 1e-3 < error < 0.5, error  # quantized: moved, but not far
    assert (fp32(images)[0].argmax(1) == int8(images)[0].argmax(1)).float().mean() >= 0.75
    # (the last stage, most of the weights, stays fp32 by default: float_modules)
    assert osp.getsize(classifier_files['int8']) < 0.9 * osp.getsize(classifier_files['fp32'])
    with pytest.raises(Exception):  # above the exported maximum batch: refused, not wrong
        fp32(torch.zeros(5, 3, 64, 64))


# ------------------------------------------------------------ LiteRT (optional extra)
@pytest.fixture(scope='module')
def litert_files(request):
    """The tool on the trained tiny classifier with --formats litert litert-int8
    --eval. LiteRT is an optional extra (about 800 MB): where it is absent,
    the tests that use this skip, saying how to install it."""
    for module in ('litert_torch', 'ai_edge_litert.interpreter'):
        pytest.importorskip(module, reason='LiteRT is the optional extra `litert`: pip install '
                            '-e .[litert] && pip install --no-deps litert-torch==0.10.0 '
                            '(CASVIT_LITERT=1 bash tools/setup_env.sh)')
    trained_classifier = request.getfixturevalue('trained_classifier')  # once LiteRT is there
    config, checkpoint = trained_classifier['config'], trained_classifier['checkpoint']
    out_dir = trained_classifier['tmp'] / 'out_litert'
    out = run_tool('tools/deployment/export_mobile.py', config, '--checkpoint', checkpoint,
                   '--formats', 'litert', 'litert-int8', '--calib-images', 8,
                   '--calib-batch', 4, '--repeats', 1, '--threads', 1, '--max-batch', 4,
                   '--out-dir', out_dir, '--eval', '--max-drop', 0.125, env=ONE_THREAD)
    print(out)
    return dict(trained_classifier, out=out, fp32=str(out_dir / 'tiny_cls_fp32.tflite'),
                int8=str(out_dir / 'tiny_cls_int8.tflite'))


@pytest.mark.slow
def test_litert_tool_delegates_and_scores(litert_files):
    """fp32: every op in one XNNPACK partition; int8: everything but its GELUs
    (LiteRT's int8 GELU, which the delegate does not take); --eval through
    metric_drop: the fp32 file scores as PyTorch."""
    out = litert_files['out']
    fp32 = next(line for line in out.splitlines() if ' litert ' in line)
    delegated, total = map(int, re.search(r'XNNPACK runs (\d+) of (\d+) ops', fp32).groups())
    assert fp32.startswith('OK') and delegated == total > 100, fp32
    assert 'in 1 partition' in fp32, fp32
    int8 = next(line for line in out.splitlines() if ' litert-int8 ' in line)
    delegated, total = map(int, re.search(r'XNNPACK runs (\d+) of (\d+) ops', int8).groups())
    assert int8.startswith('OK') and total - delegated == sum(TINY['depths']) * 2, int8
    assert "left: {'GELU'" in int8, int8  # and nothing else
    pytorch, score, verdict = scored(out, 'litert')
    assert score == pytorch and verdict.startswith('OK'), verdict
    pytorch, score, verdict = scored(out, 'litert-int8')
    assert verdict.startswith('OK   largest loss'), verdict


@pytest.mark.slow
def test_litert_files_run_in_the_interpreter(litert_files):
    """Both .tflite files load and run in LiteRT's interpreter, at batch 1 (a
    larger batch runs image by image). fp32: the eval-mode model to 1e-4 of
    the output scale, all of it in XNNPACK (litert_delegation). int8: a fully
    integer file (int8 input); close to the model, not equal, smaller."""
    import numpy as np

    from casvit_mm.deploy.mobile import LiteRTModel, litert_delegation
    cfg, checkpoint = litert_files['cfg'], litert_files['checkpoint']
    model = build_model(cfg, checkpoint).eval()
    data = next(iter(calibration_loader(cfg, 'val', 4)))
    images = batch_images(data, model, 'backbone', (64, 64))
    with torch.no_grad():
        reference = MobileNetwork(model, 'classifier')(images)
    fp32, int8 = LiteRTModel(litert_files['fp32']), LiteRTModel(litert_files['int8'])
    assert fp32.batch == int8.batch == 1
    assert relative_error(reference, fp32(images)) <= TOL
    assert relative_error([r[:1] for r in reference], fp32(images[:1])) <= TOL
    info = litert_delegation(litert_files['fp32'])
    assert info['non_delegated'] == 0 and info['subgraphs'] == 1, info
    assert int8.input['dtype'] == np.int8
    out8 = int8(images)
    assert torch.equal(out8[0][2:3], int8(images[2:3])[0])  # chunks: image by image
    error = relative_error(reference, out8)
    assert 1e-3 < error < 0.5, error
    assert (fp32(images)[0].argmax(1) == out8[0].argmax(1)).float().mean() >= 0.75
    assert osp.getsize(litert_files['int8']) < 0.6 * osp.getsize(litert_files['fp32'])


# ------------------------------------------------------------ whole dense models
@pytest.fixture(scope='module')
def toy_coco_root(tmp_path_factory):
    return make_toy_coco(str(tmp_path_factory.mktemp('mobile_coco')), num_train=2, num_val=4,
                         image_size=64, seed=0)['root']


def no_workers(cfg):
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].num_workers, cfg[loader].persistent_workers = 0, False
    return cfg


@pytest.mark.slow
def test_retinanet_raw_outputs_and_mmdet_post_processing(toy_coco_root, tmp_path):
    """RetinaNet: the .pte holds backbone, neck and head, every op on XNNPACK;
    mmdet's own predict_by_feat on its raw maps gives test_step's detections."""
    from mmengine.config import Config
    torch.manual_seed(0)
    cfg = tiny(Config.fromfile(osp.join(REPO, RETINA_TOY)))
    model = randomize_bn(build_model(cfg)).eval()
    # random class biases: spread-out scores, so that detections pass score_thr
    model.bbox_head.retina_cls.bias.data.normal_(0, 2)
    cfg.merge_from_dict(dict(o.split('=', 1) for o in cfg_options(toy_coco_root)))
    no_workers(cfg)
    assert mobile_kind(model) == 'detector'
    data = next(iter(calibration_loader(cfg, 'val', 2)))
    shape = tuple(data['inputs'][0].shape[1:])
    images = batch_images(data, model, 'backbone', shape)
    info = to_executorch(mobile_network(model, 'detector'), images[:1],
                         str(tmp_path / 'retina.pte'), max_batch=2)
    # every op, the FPN's nearest upsampling too (as a transposed conv)
    assert info['non_delegated'] == 0, info
    outputs = ExecuTorchModel(info['path'])(images)
    assert len(outputs) == 2 * len(model.bbox_head.prior_generator.strides)
    samples = host_predictions('detector', model, outputs, copy.deepcopy(data['data_samples']),
                               shape)
    with torch.no_grad():
        reference = model.test_step(data)
    for ref, got in zip(reference, samples):
        r, g = ref.pred_instances, got.pred_instances
        keep = r.scores > 0.05
        found = match_detections((r.bboxes[keep], r.scores[keep], r.labels[keep]),
                                 (g.bboxes, g.scores, g.labels), iou=0.99, score_tol=1e-3)
        assert keep.any() and found == 1.0


@pytest.mark.slow
def test_segmentor_raw_outputs_and_mmseg_post_processing(tmp_path):
    """Semantic FPN: logits from the .pte, mmseg's predict_by_feat and
    postprocess_result on the host (padding to the exported size cropped off
    as mmseg does it) give test_step's label maps."""
    from mmengine.config import Config
    root = make_toy_ade(str(tmp_path / 'ade'), num_train=1, num_val=2, size=(96, 72), seed=0)
    cfg = tiny(Config.fromfile(osp.join(REPO, SEG_TOY)))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = root['root']
    no_workers(cfg)
    torch.manual_seed(0)
    model = randomize_bn(build_model(cfg)).eval()
    data = next(iter(calibration_loader(cfg, 'val', 2)))
    h, w = data['inputs'][0].shape[1:]
    shape = (h + 32, w)  # exported larger than the images: padded, then cropped on the host
    images = batch_images(data, model, 'backbone', shape)
    info = to_executorch(mobile_network(model, 'segmentor'), images[:1],
                         str(tmp_path / 'fpn.pte'), max_batch=2)
    assert set(info['non_delegated_ops']) <= set(PORTABLE_OK), info  # neck/head resizes
    outputs = ExecuTorchModel(info['path'])(images)
    samples = host_predictions('segmentor', model, outputs,
                               copy.deepcopy(data['data_samples']), shape)
    with torch.no_grad():
        reference = model.test_step(data)
    for ref, got in zip(reference, samples):
        assert ref.pred_sem_seg.data.shape == got.pred_sem_seg.data.shape
        equal = (ref.pred_sem_seg.data == got.pred_sem_seg.data).float().mean()
        assert equal >= 0.99, float(equal)


def test_two_stage_detectors_say_what_to_do():
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, MASK_TOY))
    with pytest.raises(MobileExportError, match='two-stage'):
        mobile_kind(build_model(cfg))


# ------------------------------------------------------------ Core ML
@pytest.mark.slow
def test_coreml_conversion_and_op_inventory(tmp_path):
    """The export form converts whole to a Core ML ML program, and its MIL ops
    are exactly the network's: one conv per Conv2d (16 a block), one GELU per
    local-integration and MLP branch, four sigmoids and two means per mixer."""
    pytest.importorskip('coremltools')
    backbone = randomize_bn(CASViT('xs', out_indices=(1, 3))).eval()
    network = mobile_network(backbone, 'backbone')
    mlmodel, ops = to_coreml(network, torch.randn(1, 3, 64, 64), str(tmp_path / 'xs.mlpackage'))
    assert osp.isdir(tmp_path / 'xs.mlpackage')
    blocks = sum(backbone.depths)
    convs = sum(isinstance(m, nn.Conv2d) for m in network.modules())
    assert ops['conv'] == convs == 2 + 3 + 16 * blocks + 2  # two output norms as convs
    assert ops['gelu'] == 2 * blocks and ops['sigmoid'] == 4 * blocks
    assert ops['reduce_mean'] == 2 * blocks and ops['relu'] == 2 + 2 * blocks
    assert set(ops) <= {'conv', 'gelu', 'sigmoid', 'reduce_mean', 'relu', 'mul', 'add',
                        'cast'}, ops
    spec = mlmodel.get_spec()
    assert len(spec.description.output) == 2


# ------------------------------------------------------------ int8 settings, upsampling
def test_nearest_upsampling_exports_as_an_exact_transposed_conv():
    """Nearest upsampling by whole factors (by scale or by size, as mmdet's FPN
    calls it) leaves the graph as a depthwise transposed conv, with the same
    numbers; other resizes stay as they are."""
    import torch.nn.functional as F

    class Resizes(nn.Module):
        def forward(self, x):
            up = F.interpolate(x, scale_factor=2, mode='nearest')
            sized = F.interpolate(x, size=(x.shape[2] * 2, x.shape[3] * 4))
            odd = F.interpolate(x, size=(11, 13), mode='nearest')
            return up, sized, odd, F.interpolate(x, scale_factor=2, mode='bilinear')

    x = torch.randn(2, 3, 5, 6)
    program = export_program(Resizes(), x, max_batch=4)
    targets = Counter(str(n.target) for n in program.graph.nodes if n.op == 'call_function')
    assert targets['aten.conv_transpose2d.input'] == 2, targets
    assert sum('upsample_nearest' in t for t in targets.elements()) == 1, targets  # 11x13
    assert sum('upsample_bilinear' in t for t in targets.elements()) == 1, targets
    for got, expected in zip(program.module()(x), Resizes()(x)):
        assert torch.equal(got, expected)
    assert F.interpolate.__name__ == 'interpolate' and 'deploy' not in F.interpolate.__module__


def test_nearest_as_concat_for_litert():
    """LiteRT's rewrite of whole-factor nearest upsampling (stacked copies):
    no upsample op left for them, the same numbers."""
    import torch.nn.functional as F

    from casvit_mm.deploy.mobile import NearestAsConcat

    class Resizes(nn.Module):
        def forward(self, x):
            return (F.interpolate(x, scale_factor=2, mode='nearest'),
                    F.interpolate(x, size=(x.shape[2] * 3, x.shape[3] * 2)),
                    F.interpolate(x, size=(11, 13), mode='nearest'))

    x = torch.randn(2, 3, 5, 6)
    program = export_program(Resizes(), x, max_batch=None, nearest=NearestAsConcat)
    targets = Counter(str(n.target) for n in program.graph.nodes if n.op == 'call_function')
    assert sum('upsample_nearest' in t for t in targets.elements()) == 1, targets  # 11x13
    assert targets['aten.stack.default'] == 4, targets
    for got, expected in zip(program.module()(x), Resizes()(x)):
        assert torch.equal(got, expected)
    assert F.interpolate.__name__ == 'interpolate' and 'deploy' not in F.interpolate.__module__


def test_nearest_patch_is_one_at_a_time_across_threads():
    """Exports in several threads at once (the patch of F.interpolate is
    process-wide): each graph gets its transposed conv, and F.interpolate is
    the original afterwards (without the lock a thread could keep another's
    patched function as its "original" and restore that)."""
    import threading

    import torch.nn.functional as F
    original = F.interpolate

    class Up(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode='nearest') + 1

    found, errors = [], []

    def export():
        try:
            program = export_program(Up(), torch.randn(2, 4, 6, 6), max_batch=4)
            found.append(sum(str(n.target) == 'aten.conv_transpose2d.input'
                             for n in program.graph.nodes))
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)
    threads = [threading.Thread(target=export) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert found == [1, 1, 1]
    assert F.interpolate is original


@pytest.mark.slow
def test_int8_keeps_the_sensitive_modules_float():
    """By default int8 leaves a classifier's last CAS-ViT stage fp32
    (float_modules), a detector's nothing; named modules: the quantizer puts no quantize node inside them and
    quantizes the rest; unknown names are refused."""
    from mmengine.config import Config
    cfg = tiny(Config.fromfile(osp.join(REPO, RETINA_TOY)))
    network = mobile_network(build_model(cfg).eval(), 'detector')
    assert float_modules(network) == []
    classifier = mobile_network(build_model(tiny(Config.fromfile(osp.join(REPO, CLS_TOY)))),
                                'classifier')
    assert float_modules(classifier) == ['backbone.stages.3']
    backbone = mobile_network(CASViT(arch=TINY).eval(), 'backbone')
    assert float_modules(backbone) == []
    x = torch.randn(2, 3, 64, 64)
    quantized = quantize_pt2e(backbone, x, [x], keep_float=['stages.3'])

    def quantizes(node):
        return 'quantize_per' in str(node.target) and 'dequantize' not in str(node.target)
    inside = Counter()
    for node in quantized.graph.nodes:
        stack = [path for path, _ in node.meta.get('nn_module_stack', {}).values()]
        inside[any('stages.3' in path for path in stack), quantizes(node)] += 1
    assert inside[False, True] > 10 and inside[True, True] == 0, inside
    with pytest.raises(MobileExportError, match='no module'):
        quantize_pt2e(backbone, x, [x], keep_float=['stages.9'])


class SharedHead(nn.Module):
    """A dense detector's pattern in small: one conv stack run on two levels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)  # the next level
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.cls = nn.Conv2d(16, 9, 3, padding=1)

    def forward(self, x):
        level0 = self.stem(x)
        level1 = self.down(level0)
        return tuple(self.cls(torch.relu(self.conv(f))) for f in (level0, level1))


def weight_users(graph_module):
    """For each conv of a graph: the weight it reads (the get_attr target)."""
    def source(node):
        while node.op == 'call_function':  # through (de)quantize nodes
            node = node.args[0]
        return node.target
    return [source(n.args[1]) for n in graph_module.graph.nodes
            if n.op == 'call_function' and 'conv' in str(n.target)]


def test_int8_quantizes_every_use_of_a_shared_conv():
    """A conv module called on several inputs (RetinaNet's head on every FPN
    level) gets a weight copy per call before PT2E, so that each call is
    quantized; the copies are the same numbers (the same function)."""
    torch.manual_seed(0)
    model = SharedHead().eval()
    x = torch.randn(2, 3, 16, 16)
    graph = export_program(model, x, max_batch=4).module()
    assert len(set(weight_users(graph))) == 4  # conv and cls: shared by the two levels
    assert unshare_weights(graph) == 4  # conv and cls: weight and bias, once more each
    assert len(set(weight_users(graph))) == 6
    with torch.no_grad():
        for got, expected in zip(graph(x), model(x)):
            assert torch.equal(got, expected)
    quantized = quantize_pt2e(model, x, [x], max_batch=4, keep_float=())
    convs = [n for n in quantized.graph.nodes
             if n.op == 'call_function' and 'conv' in str(n.target)]
    assert len(convs) == 6
    for conv in convs:  # input and weight come out of dequantize: quantized, every level
        assert all('dequantize' in str(arg.target) for arg in conv.args[:2]), conv.args


@pytest.mark.slow
def test_int8_shared_conv_loads_and_runs(tmp_path):
    """The int8 .pte of a shared-conv network loads in XNNPACK (without the
    copies it fails: ``Failed to create convolution node ... invalid_parameter``)
    and reproduces the converted PT2E graph it was lowered from."""
    torch.manual_seed(0)
    model = SharedHead().eval()
    x = torch.randn(2, 3, 16, 16)
    calibration = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    info = to_executorch(model, x, str(tmp_path / 'shared.pte'), quantize=True,
                         calibration=calibration, max_batch=4, keep_float=())
    assert info['subgraphs'] == 1 and info['non_delegated'] == 0, info
    outputs = ExecuTorchModel(info['path'])(x)
    with torch.no_grad():
        simulated = quantize_pt2e(model, x, calibration, max_batch=4, keep_float=())(x)
    assert relative_error(simulated, outputs) < 0.02  # int8 rounding (XNNPACK's own)
    assert relative_error(model(x), outputs) < 0.1


@pytest.mark.slow
def test_int8_accuracy_of_the_trained_classifier(classifier_files):
    """int8 accuracy, asserted: the trained tiny classifier quantized as the tool
    quantizes it (same calibration images, its last stage fp32) scores on the
    val split within one image of PyTorch, with the converted PT2E graph run in
    PyTorch (fast: what the accuracy search uses); and the lowered int8 .pte
    reproduces that graph: its logits within 3 int8 steps, the same top-1
    wherever the top two are more than 6 steps apart (int8 logits tie often:
    XNNPACK and PyTorch round the last step differently)."""
    from mmengine.runner import Runner
    cfg, checkpoint = classifier_files['cfg'], classifier_files['checkpoint']
    model = build_model(cfg, checkpoint).eval()
    shape = (64, 64)
    network = mobile_network(model, 'classifier')
    calibration = calibration_batches(cfg, model, shape, 8, 4)  # the tool's --calib-* above
    simulated = quantize_pt2e(network, calibration[0][:1], calibration, max_batch=4)
    lowered = ExecuTorchModel(classifier_files['int8'])
    output = next(n for n in simulated.graph.nodes if n.op == 'output').args[0][0]
    assert 'dequantize_per_tensor' in str(output.target), output.target  # int8 logits
    step = output.args[1]  # their quantization step
    loader = Runner.build_dataloader(dict(cfg.val_dataloader, batch_size=4))
    correct = Counter()
    for data in loader:
        images = batch_images(data, model, 'backbone', shape)
        labels = torch.tensor([int(s.gt_label) for s in data['data_samples']])
        with torch.no_grad():
            logits = dict(pytorch=network(images)[0], int8=simulated(images)[0],
                          pte=lowered(images)[0])
        for name, value in logits.items():
            correct[name] += int((value.argmax(1) == labels).sum())
        # the .pte rounds as XNNPACK does: within a few steps of the int8 logits
        assert (logits['pte'] - logits['int8']).abs().max() <= 3 * step
        top2 = logits['int8'].topk(2, 1).values
        clear = top2[:, 0] - top2[:, 1] > 6 * step  # no near-tie that this rounding can swap
        assert torch.equal(logits['pte'].argmax(1)[clear], logits['int8'].argmax(1)[clear])
        assert relative_error(logits['pytorch'], logits['int8']) > 1e-4  # quantized
    images = len(loader.dataset)
    print(f'top-1 of {images} images: {dict(correct)}')
    chance = images / len(loader.dataset.metainfo['classes'])
    assert correct['pytorch'] > chance  # it learnt something: the check means something
    assert correct['int8'] >= correct['pytorch'] - 1
