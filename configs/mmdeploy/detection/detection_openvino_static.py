_base_ = ['../_base_/detection_static.py', '../_base_/openvino.py']
