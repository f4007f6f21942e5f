"""Deterministic generators of tiny data sets in the real formats (COCO, ADE20K,
ImageNet folders), so demos and tests run end to end with no download."""
