# mmdeploy's configs/mmseg/segmentation_static.py: image -> label map (argmax in the
# graph). input_shape=None: the size of the export image after the test pipeline.
_base_ = ['./onnx_config.py']
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=True)
