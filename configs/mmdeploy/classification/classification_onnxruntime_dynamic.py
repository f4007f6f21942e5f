_base_ = ['../_base_/classification_dynamic.py', '../_base_/onnxruntime.py']
