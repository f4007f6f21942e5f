_base_ = ['../_base_/instance-seg_dynamic.py', '../_base_/openvino.py']
