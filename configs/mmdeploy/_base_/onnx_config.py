# mmdeploy's configs/_base_/onnx_config.py, for CAS-ViT models.
# opset 20 (mmdeploy's default is 11): from opset 20 on GELU exports as one `Gelu` node
# instead of five element-wise ops (CAS-ViT has a GELU in every block; the int8 speed
# depends on it, docs/quantization.md), and RoIAlign is the standard `RoiAlign` with its
# `aligned` mode (mmdeploy emulates it below opset 16). onnxruntime >= 1.16 and
# OpenVINO >= 2024 run opset 20.
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=20,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['output'],
    input_shape=None,
    optimize=True)
