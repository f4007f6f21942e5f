_base_ = ['../_base_/classification_dynamic.py', '../_base_/openvino.py']
