# mmdeploy converts the ONNX file with OpenVINO's model optimizer; `opt_shapes` is the
# shape OpenVINO plans for (a dynamic file runs at other sizes too).
backend_config = dict(
    type='openvino', model_inputs=[dict(opt_shapes=dict(input=[1, 3, 800, 1344]))])
