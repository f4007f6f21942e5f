_base_ = ['../_base_/classification_static.py', '../_base_/onnxruntime.py']
