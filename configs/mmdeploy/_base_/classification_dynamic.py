# mmdeploy's configs/mmpretrain/classification_dynamic.py.
_base_ = ['./classification_static.py']
onnx_config = dict(
    dynamic_axes={
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'output': {0: 'batch'},
    })
