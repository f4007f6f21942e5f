"""bf16 deploy mode (casvit_mm.deploy.bf16, switch_model_to_deploy(bf16=True)) and the
CPU's instruction-set report (casvit_mm.deploy.cpu_isa): bf16 outputs stay within
a stated tolerance of fp32 deploy mode (with the opt-in on CPUs that emulate
bf16), whole models keep float32 pre- and post-processing, and CPUs without
native bf16 get a clear refusal."""
import copy
import os.path as osp

import pytest
import torch

from casvit_mm import CASViT
from casvit_mm.cli import build_model, load_config, relative_error
from casvit_mm.deploy.bf16 import Bf16Unsupported, is_bf16, to_bf16
from casvit_mm.deploy.cpu_isa import ISA_FLAGS, cpu_flags, isa, isa_line, native_bf16
from casvit_mm.deploy.switch import switch_model_to_deploy
from helpers import MASK, ONE_THREAD, REPO, RETINA
from helpers_onnx import export_form_problems

# bf16 keeps 8 bits of mantissa (a relative rounding error of 2^-9 per value);
# through the ~40 layers of CAS-ViT-XS the features moved at most 1.2 % of their
# scale (measured: 0.4-1.2 % over seeds): the stated tolerance is 3 %.
BF16_TOL = 0.03
# Through backbone, FPN and the heads' stacked convolutions (random weights, 64 px)
# each raw head output moved up to 5 % of its own scale (the smallest-scale output,
# the last level's box deltas, moves most): stated 10 %. What that costs in the
# metric is measured on trained models by tools/deployment/bf16_eval.py.
BF16_HEAD_TOL = 0.1
SEG_TOY = 'configs/segmentation/fpn_casvit_xs_toy.py'


def random_bn(model, seed=0):
    """Random BatchNorm statistics and affine parameters: what training leaves
    (fresh ones make every fold the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def test_isa_report():
    """The ISA line names the CPU and every extension, and agrees with
    /proc/cpuinfo about bf16."""
    line = isa_line()
    assert all(f'{flag}+' in line or f'{flag}-' in line for flag in ISA_FLAGS), line
    assert set(isa()) == set(ISA_FLAGS)
    flags = cpu_flags()
    assert native_bf16() == bool({'avx512_bf16', 'amx_bf16'} & flags)
    assert ('bf16: native' in line) == native_bf16()


@pytest.mark.skipif(native_bf16(), reason='this CPU has native bf16: nothing to refuse')
def test_bf16_refused_where_emulated():
    """Without the opt-in, a CPU that emulates bf16 refuses bf16 deploy mode
    before touching the model, and the tool says what to do."""
    model = random_bn(CASViT('xs')).eval()
    with pytest.raises(Bf16Unsupported, match='AVX512-BF16 or AMX-BF16.*allow_emulated'):
        switch_model_to_deploy(model, bf16=True)
    assert not model.deploy and next(model.parameters()).dtype == torch.float32
    with pytest.raises(Bf16Unsupported):
        to_bf16(model)
    proc = run_tool_expect_failure('tools/deployment/bf16_eval.py', osp.join(REPO, RETINA),
                                   osp.join(REPO, RETINA))  # any existing file: refused first
    assert 'would only emulate bf16' in proc and '--allow-emulated-bf16' in proc, proc


def run_tool_expect_failure(*args):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=ONE_THREAD,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_bf16_backbone_within_tolerance():
    """bf16 deploy mode of a backbone: bf16 weights, float32 features within
    BF16_TOL of fp32 deploy mode, and not equal to them (bf16 did run)."""
    torch.manual_seed(0)
    model = random_bn(CASViT('xs', out_indices=(0, 1, 2, 3))).eval()
    x = torch.randn(2, 3, 64, 64)
    fp32 = switch_model_to_deploy(copy.deepcopy(model))
    bf16 = switch_model_to_deploy(copy.deepcopy(model), bf16=True, allow_emulated_bf16=True)
    assert is_bf16(bf16) and not is_bf16(fp32)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        ref, out = fp32(x), bf16(x)
    assert all(o.dtype == torch.float32 for o in out)
    error = relative_error(ref, out)
    print(f'bf16 backbone: max |bf16 - fp32| / max |fp32| = {error:.4f}')
    assert 1e-4 < error < BF16_TOL, error
    again = copy.deepcopy(bf16)  # the casts are plain hooks: copies keep them
    with torch.no_grad():
        assert relative_error(out, again(x)) == 0


@pytest.mark.parametrize('config', [RETINA, MASK, SEG_TOY])
def test_bf16_whole_model_keeps_float_outside_the_network(config):
    """A whole detector / segmentor in bf16 deploy mode: its network computes
    in bf16, its data preprocessor and post-processing in float32 (boxes,
    scores and masks come back float32, RoIAlign reads float32); the heads'
    raw outputs stay within BF16_HEAD_TOL of fp32 deploy mode."""
    torch.manual_seed(0)
    cfg = load_config(osp.join(REPO, config))
    if 'rpn' in cfg.model.test_cfg:  # few RoIs: emulated bf16 is slow, the check is the same
        cfg.model.test_cfg.rpn.update(nms_pre=100, max_per_img=20)
        cfg.model.test_cfg.rcnn.max_per_img = 5
    model = random_bn(build_model(cfg))
    fp32 = switch_model_to_deploy(copy.deepcopy(model))
    bf16 = switch_model_to_deploy(copy.deepcopy(model), bf16=True, allow_emulated_bf16=True)
    assert all(p.dtype == torch.float32 for p in bf16.data_preprocessor.parameters())
    assert {p.dtype for p in bf16.backbone.parameters()} == {torch.bfloat16}
    x = torch.rand(1, 3, 64, 64) * 255
    from mmdet.testing import demo_mm_inputs
    with torch.no_grad():
        if 'segmentation' in config:
            inputs = fp32.data_preprocessor(dict(inputs=[x[0]]), False)['inputs']
            ref = fp32.decode_head(fp32.extract_feat(inputs))
            out = bf16.decode_head.forward(bf16.extract_feat(inputs))  # as mmseg's predict
            assert out.dtype == torch.float32
            assert relative_error(ref, out) < BF16_HEAD_TOL
            samples = bf16.predict(inputs)
            assert samples[0].seg_logits.data.dtype == torch.float32
            return
        data = demo_mm_inputs(batch_size=1, image_shapes=[(3, 64, 64)], num_items=[0])
        inputs = fp32.data_preprocessor(data, False)['inputs']
        head = 'bbox_head' if hasattr(fp32, 'bbox_head') else 'rpn_head'
        ref = getattr(fp32, head)(fp32.extract_feat(inputs))
        out = getattr(bf16, head)(bf16.extract_feat(inputs))
        assert all(t.dtype == torch.float32 for level in out for t in level)
        assert relative_error(ref, out) < BF16_HEAD_TOL
        result = bf16.test_step(data)[0].pred_instances
    assert result.bboxes.dtype == torch.float32 and result.scores.dtype == torch.float32
    if 'mask_rcnn' in config:
        assert 'masks' in result


def load_benchmark():
    """tools/analysis_tools/benchmark.py as a module (a script, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'benchmark', osp.join(REPO, 'tools', 'analysis_tools', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fused_form_file_matches_the_dispatch_file(tmp_path):
    """The benchmark's ``*-fused-form`` variants time a file exported from the
    fused deploy form (what every file held before the export form); it must
    compute what the dispatch's export-form file computes (float rounding: 1e-6
    of the output scale measured, stated 1e-5), in OpenVINO at the f32 hint as
    those variants run it, and be the other form."""
    pytest.importorskip('openvino')
    from casvit_mm.deploy.dispatch import export_backbone
    from casvit_mm.deploy.nncf_int8 import compile_openvino, run_openvino
    from casvit_mm.deploy.ort_quantization import read_kind
    benchmark = load_benchmark()
    torch.manual_seed(0)
    model = random_bn(CASViT('xs', out_indices=(0, 1, 2, 3))).eval()
    x = torch.randn(2, 3, 64, 64)
    export = export_backbone(model, x, str(tmp_path / 'export.onnx'))
    fused = benchmark.fused_form_backbone(model, x, str(tmp_path / 'fused.onnx'))
    assert read_kind(fused) == 'backbone' and not model.deploy  # the model is not changed
    assert not export_form_problems(export, scope='', blocks=10)
    assert 'MatMul' in str(export_form_problems(fused, scope=''))  # the channel gate
    outputs = [run_openvino(compile_openvino(path, 1, input_shape=x.shape), x)
               for path in (fused, export)]
    assert len(outputs[0]) == len(outputs[1]) == 4
    assert relative_error(outputs[0], outputs[1]) < 1e-5


def test_benchmark_resnet_retinanets_come_from_mmdet():
    """The whole-RetinaNet rows' ResNet detectors are mmdet's own configs: they
    exist in the installed mmdet and build ResNet-18 / ResNet-50 RetinaNets."""
    from mmengine.config import Config
    benchmark = load_benchmark()
    for name, depth in (('resnet18', 18), ('resnet50', 50)):
        cfg = Config.fromfile(benchmark.mmdet_config(benchmark.RESNET_RETINANETS[name]))
        assert cfg.model.type == 'RetinaNet' and cfg.model.backbone.depth == depth
