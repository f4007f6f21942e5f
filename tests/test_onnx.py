"""ONNX round trip: the deployed backbone and a Semantic FPN segmentor export,
and onnxruntime reproduces PyTorch's outputs (1e-4 of the output scale)."""
import os.path as osp
import subprocess
import sys

import torch

from casvit_mm import CASViT
from casvit_mm.apis import relative_error
from casvit_mm.onnx_export import export_onnx, onnxruntime_session, run_onnxruntime
from casvit_mm.models.fusion import switch_model_to_deploy

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOL = 1e-4


def test_deployed_backbone_round_trip(tmp_path):
    model = switch_model_to_deploy(CASViT('xs', out_indices=(1, 2, 3)))
    x = torch.randn(1, 3, 64, 96)
    path = export_onnx(model, x, str(tmp_path / 'casvit_xs.onnx'))
    outputs = run_onnxruntime(onnxruntime_session(path, threads=1), x)
    with torch.no_grad():
        reference = model(x)
    assert [o.shape for o in outputs] == [tuple(r.shape) for r in reference]
    assert relative_error(reference, outputs) < TOL


def test_export_tool_semantic_fpn(tmp_path):
    """The command-line tool end to end: it exports the deployed backbone and
    segmentor and checks onnxruntime against the *eval-mode* PyTorch model."""
    config = osp.join(REPO, 'configs/segmentation/fpn_casvit_xs.py')
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools/deployment/export_onnx.py'), config,
         '--shape', '64', '64', '--out-dir', str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / 'fpn_casvit_xs_backbone.onnx').is_file()
    assert (tmp_path / 'fpn_casvit_xs.onnx').is_file()
    assert result.stdout.count('OK') == 2, result.stdout

