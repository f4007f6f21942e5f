"""The complexity tool reproduces the paper's table and counts whole models from configs."""
import subprocess
import sys
import textwrap

import pytest
import torch

from casvit_mm.complexity import CASViTClassifier, count_flops, count_params
from helpers import REPO


# The paper: params of the classifier (both heads), paper GFLOPs at 224x224
PAPER = {'xs': (3.20, 0.560), 's': (5.76, 0.932), 'm': (12.42, 1.887), 't': (21.76, 3.597)}


@pytest.mark.parametrize('arch', PAPER)
def test_paper_table_at_224(arch):
    model = CASViTClassifier(arch).eval()
    params, gflops = PAPER[arch]
    assert round(count_params(model) / 1e6, 2) == params
    assert round(count_flops(model, torch.zeros(1, 3, 224, 224)) / 1e9, 3) == gflops


@pytest.mark.slow
def test_tool_on_a_detector_config(tmp_path):
    cfg = tmp_path / 'retina.py'
    cfg.write_text(textwrap.dedent('''
        _base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
        custom_imports = dict(imports=['casvit_mm'], allow_failed_imports=False)
        model = dict(
            backbone=dict(_delete_=True, type='CASViT', arch='xs', out_indices=(1, 2, 3)),
            neck=dict(in_channels=[56, 112, 220]))
    '''))
    out = subprocess.run([sys.executable, 'tools/analysis_tools/get_flops.py', str(cfg),
                          '--shape', '128', '128'], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    total = float(lines[-2].split('GFLOPs:')[1])
    backbone = float(lines[-1].split('GFLOPs')[1])
    assert 'backbone CASViT' in lines[-1]
    assert 0 < backbone < total  # the heads add work on top of the backbone
