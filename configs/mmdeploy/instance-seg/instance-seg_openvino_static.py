_base_ = ['../_base_/instance-seg_static.py', '../_base_/openvino.py']
