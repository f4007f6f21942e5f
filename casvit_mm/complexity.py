"""Parameter and FLOP counting in the CAS-ViT paper's convention.

The paper's GFLOPs are what ``thop`` reports: multiply-accumulates of conv and
linear layers (no bias term), plus 4 operations per element for an affine
BatchNorm and the pooling arithmetic of adaptive average pooling; activations, dropout and functional
element-wise ops count nothing. mmengine's / fvcore's counters skip BN and pooling
and give slightly lower numbers than the paper's table; this module counts the
paper's way with forward hooks, so it works on any ``nn.Module`` -- a bare
backbone, a classifier, a detector or a segmentor -- with no extra dependency.
"""
import math

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def _conv_flops(m, inputs, output):
    kernel = math.prod(m.kernel_size) * m.in_channels // m.groups
    return output.numel() * kernel


def _linear_flops(m, inputs, output):
    return output.numel() * m.in_features


def _bn_flops(m, inputs, output):
    # normalise (2 per element), then the affine transform (2 more), as thop counts
    return (4 if m.affine else 2) * inputs[0].numel()


def _adaptive_avgpool_flops(m, inputs, output):
    window = math.prod(i // o for i, o in zip(inputs[0].shape[2:], output.shape[2:]))
    return (window + 1) * output.numel()


RULES = [
    (nn.Conv2d, _conv_flops),
    (nn.Linear, _linear_flops),
    (_BatchNorm, _bn_flops),
    (nn.AdaptiveAvgPool2d, _adaptive_avgpool_flops),
]


def count_flops(model: nn.Module, *inputs, **kwargs) -> int:
    """FLOPs (MACs, paper convention) of one ``model(*inputs, **kwargs)`` call."""
    total = [0]
    handles = []

    def hook(rule):
        def fn(m, args, out):
            total[0] += rule(m, args, out)
        return fn

    for m in model.modules():
        for cls, rule in RULES:
            if isinstance(m, cls):
                handles.append(m.register_forward_hook(hook(rule)))
                break
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class CASViTClassifier(nn.Module):
    """The official ImageNet model (backbone, BN, pool, ``head`` + ``dist_head``),
    built only to count what the paper's table counts."""

    def __init__(self, arch, num_classes=1000):
        super().__init__()
        from .models import CASViT
        self.backbone = CASViT(arch, out_indices=(3,), global_pool=True)
        width = self.backbone.widths[-1]
        self.head = nn.Linear(width, num_classes)
        self.dist_head = nn.Linear(width, num_classes)

    def forward(self, x):
        feat = self.backbone(x)[-1]
        return (self.head(feat) + self.dist_head(feat)) / 2
