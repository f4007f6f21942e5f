"""ONNX round trips outside mmdeploy: the deployed backbone (the dispatch's
export_backbone), the hand-written whole Mask R-CNN kept (image -> boxes,
scores, labels, masks; the RetinaNet one is tested beside mmdeploy's file in
test_mmdeploy.py, on the same trained model), its RoIAlign, and the export
tool; onnxruntime reproduces what the PyTorch models in eval mode predict."""
import glob
import os.path as osp
import subprocess
import sys

import cv2
import pytest
import torch
from mmdet.structures import DetDataSample
from torch.nn.modules.batchnorm import _BatchNorm

from casvit_mm import CASViT
from casvit_mm.cli import build_model, relative_error
from casvit_mm.deploy.dispatch import exact_graph, export_backbone
from casvit_mm.deploy.ort_quantization import read_kind
from casvit_mm.deploy.onnx_export import (DetectorEnd2End, MaskRCNNEnd2End, _RoIAlign,
                                          export_onnx, matched_pairs, onnxruntime_session,
                                          compile_openvino, run_onnxruntime, run_openvino)
from casvit_mm.deploy.switch import switch_model_to_deploy
from casvit_mm.toy_data.coco import make_toy_coco
from helpers import REPO
from helpers_onnx import export_form_problems

TOL = 1e-4
RETINA_TOY = 'configs/detection/toy/retinanet_casvit_xs_toy-shapes.py'
MASK_RCNN_TOY = 'configs/detection/toy/mask_rcnn_casvit_xs_toy-shapes.py'


def randomize_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return module


@pytest.mark.slow
def test_deployed_backbone_round_trip(tmp_path):
    """The dispatch's backbone file: the export form (no BatchNormalization: the
    output norms are depthwise 1x1 convolutions; GELU one node; q/k and channel
    gates per branch), the kind recorded, a dynamic batch, outputs of the
    eval-mode backbone."""
    import onnx
    model = randomize_bn(CASViT('xs', out_indices=(1, 2, 3))).eval()
    x = torch.randn(1, 3, 64, 96)
    path = export_backbone(model, x, str(tmp_path / 'casvit_xs.onnx'))
    assert read_kind(path) == 'backbone' and not model.deploy  # the model is not changed
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count('Gelu') == 20 and ops.count('BatchNormalization') == 0
    assert not export_form_problems(path, scope='', blocks=10)
    x = torch.randn(2, 3, 64, 96)  # exported with a batch of 1
    outputs = run_onnxruntime(onnxruntime_session(path, threads=1), x)
    with torch.no_grad():
        reference = model(x)
    assert [o.shape for o in outputs] == [tuple(r.shape) for r in reference]
    assert relative_error(reference, outputs) < TOL
    try:  # the optional runtime, where installed
        import openvino  # noqa: F401
    except ImportError:
        return
    assert relative_error(reference, run_openvino(compile_openvino(path, threads=1), x)) < TOL


def test_switch_model_to_deploy_export_form():
    """``switch_model_to_deploy(form='export')``, what every exporter traces: the
    FPN absorbs the output norms it reads first (then none is left), every
    CAS-ViT is in the export form with NCHW weights, and the outputs are the
    eval model's at two image sizes; compile / bf16 and an unknown form are
    refused, and an export-form model does not go back to 'fused'."""
    import copy
    model = build_model(osp.join(REPO, 'configs/segmentation/fpn_casvit_xs_toy.py'))
    model = randomize_bn(model).eval()
    deployed = switch_model_to_deploy(copy.deepcopy(model), form='export')
    backbone = deployed.backbone
    assert backbone.deploy_form == 'export'
    assert all(isinstance(getattr(backbone, f'norm{i}'), torch.nn.Identity)
               for i in backbone.out_indices)  # folded into the FPN's lateral convs
    assert all(p.is_contiguous() for p in backbone.parameters())  # NCHW
    for hw in [(64, 96), (96, 64)]:
        x = torch.randn(1, 3, *hw)
        metas = [dict(img_shape=hw, pad_shape=hw, ori_shape=hw)]
        with torch.no_grad():
            ref, out = model.encode_decode(x, metas), deployed.encode_decode(x, metas)
        assert relative_error(ref, out) < TOL
    with pytest.raises(ValueError, match='fused'):
        switch_model_to_deploy(copy.deepcopy(model), compile=True, form='export')
    with pytest.raises(ValueError, match='form'):
        switch_model_to_deploy(copy.deepcopy(model), form='onnx')
    with pytest.raises(ValueError, match='export form already'):
        switch_model_to_deploy(deployed)


def test_export_onnx_on_a_module_whose_train_returns_none(tmp_path):
    """mmdet's ResNet.train() returns None: export_onnx does not chain it."""
    from mmdet.models.backbones import ResNet
    model = ResNet(18, out_indices=(3, ))
    assert model.train(False) is None
    x = torch.randn(1, 3, 64, 64)
    path = export_onnx(model, x, str(tmp_path / 'resnet.onnx'), dynamo=False)
    with torch.no_grad():
        reference = model(x)
    assert relative_error(reference, run_onnxruntime(onnxruntime_session(path, 1), x)) < TOL


def reference_detections(model, images):
    """mmdet's own ``test_step`` on unresized images: what the ONNX file must reproduce.
    At least 20 detections per image, so that the comparison is a real one (not 0 == 0)."""
    H, W = images.shape[2:]
    samples = [DetDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W),
                                           scale_factor=(1., 1.))) for _ in images]
    with torch.no_grad():
        reference = [r.pred_instances for r in
                     model.test_step(dict(inputs=list(images), data_samples=samples))]
    assert min(len(r.scores) for r in reference) >= 20
    return reference


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_roi_align_matches_mmcv(aligned, sampling_ratio, tmp_path):
    """The exported RoIAlign (ONNX RoiAlign, opset 17) computes mmcv's op,
    boxes smaller than a feature pixel and reaching past the border included."""
    from mmcv.ops import roi_align

    class Op(torch.nn.Module):
        def forward(self, feats):
            return _RoIAlign.apply(feats, rois[:, 1:], rois[:, 0].long(), (7, 7), 0.25,
                                   sampling_ratio, 'avg', aligned)

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 8, 24, 32, generator=g)
    xy = torch.rand(40, 2, generator=g) * torch.tensor([140., 110.]) - 6
    wh = torch.rand(40, 2, generator=g) ** 3 * 80 + 0.5
    rois = torch.cat([torch.arange(40)[:, None] % 2, xy, xy + wh], 1).float()
    path = export_onnx(Op(), feats, str(tmp_path / 'roi_align.onnx'), dynamo=False)
    out = run_onnxruntime(onnxruntime_session(path, threads=1), feats)[0]
    reference = roi_align(feats, rois, (7, 7), 0.25, sampling_ratio, 'avg', aligned)
    assert relative_error([reference], [out]) < TOL


@pytest.mark.slow
def test_mask_rcnn_end_to_end(tmp_path):
    """Image -> boxes, scores, labels and masks pasted into the image, with a
    dynamic batch: the exported deployed Mask R-CNN finds every detection of
    mmdet's test_step (same label, IoU >= 0.99, score within 1e-3), and the
    masks of those detections agree on >= 99 % of the pixels.

    Seeded random weights, not training (a Mask R-CNN takes minutes on a
    loaded CPU): the classifiers of the RPN, box and mask heads get std-0.1
    weights, so that scores and mask logits
    spread instead of all sitting at the same value, where any top-k or the
    0.5 mask threshold would be a coin toss between float roundings; not
    more, or box scores saturate at 1.0 and tie again."""
    torch.manual_seed(0)
    model = randomize_bn(build_model(osp.join(REPO, MASK_RCNN_TOY)))
    g = torch.Generator().manual_seed(0)
    for layer in (model.rpn_head.rpn_cls, model.roi_head.bbox_head.fc_cls,
                  model.roi_head.mask_head.conv_logits):
        torch.nn.init.normal_(layer.weight, std=0.1, generator=g)
    toy = make_toy_coco(str(tmp_path / 'toy_coco'), num_train=1, num_val=2, image_size=96,
                        seed=0)
    images = torch.stack([torch.from_numpy(cv2.imread(p)).permute(2, 0, 1) for p in
                          sorted(glob.glob(osp.join(toy['val_img_dir'], '*.jpg')))])
    reference = reference_detections(model, images)

    wrapper = exact_graph(model)
    assert isinstance(wrapper, MaskRCNNEnd2End)
    path = export_onnx(wrapper, images[:1].float(), str(tmp_path / 'mask_rcnn.onnx'),
                       dynamo=False, output_names=['boxes', 'scores', 'labels', 'masks'],
                       dynamic_batch=True)
    boxes, scores, labels, masks = run_onnxruntime(onnxruntime_session(path, threads=1),
                                                   images.float())  # 2 images, exported with 1
    assert masks.shape == (len(images), 100, *images.shape[2:]) and masks.dtype == bool
    equal, total = 0, 0
    for b, ref in enumerate(reference):
        keep = scores[b] > 0  # the rest is padding
        assert keep.sum() == len(ref.scores)
        pairs = matched_pairs((ref.bboxes, ref.scores, ref.labels),
                              (boxes[b][keep], scores[b][keep], labels[b][keep]))
        assert len(pairs) >= 0.99 * len(ref.scores), f'image {b}: {len(pairs)} found'
        ref_masks = ref.masks[[i for i, _ in pairs]]
        onnx_masks = torch.from_numpy(masks[b][keep][[j for _, j in pairs]])
        assert 0.01 < ref_masks.double().mean() < 0.99  # masks, not empty or full planes
        equal += int((ref_masks == onnx_masks).sum())
        total += ref_masks.numel()
    assert equal / total >= 0.99, f'{equal / total:.4%} of mask pixels agree'


def test_detector_wrapper_refuses_what_it_does_not_export():
    model = build_model(osp.join(REPO, 'configs/detection/mask_rcnn_casvit_xs.py'))
    with pytest.raises(ValueError, match='single-stage'):
        DetectorEnd2End(model)
    with pytest.raises(ValueError, match='Mask R-CNN'):
        MaskRCNNEnd2End(build_model(osp.join(REPO, RETINA_TOY)))
    # segmentors and classifiers: mmdeploy's files give the same results, no wrapper kept
    with pytest.raises(ValueError, match='without --wrappers'):
        exact_graph(build_model(osp.join(REPO, 'configs/segmentation/fpn_casvit_xs.py')))


@pytest.mark.slow
def test_export_tool_semantic_fpn(tmp_path):
    """The command-line tool end to end: it exports the deployed backbone and the
    segmentor (through mmdeploy, dynamic H/W) and checks onnxruntime against the
    *eval-mode* PyTorch model (the segmentor at three sizes)."""
    config = osp.join(REPO, 'configs/segmentation/fpn_casvit_xs.py')
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools/deployment/export_onnx.py'), config,
         '--shape', '64', '64', '--out-dir', str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / 'fpn_casvit_xs_backbone.onnx').is_file()
    assert (tmp_path / 'fpn_casvit_xs_onnxruntime_dynamic' / 'end2end.onnx').is_file()
    assert result.stdout.count('OK') == 2, result.stdout
