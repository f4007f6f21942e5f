"""Inference fusion for CAS-ViT: BatchNorm arithmetic and oneDNN's fused kernels.

Why: CAS-ViT is meant to be fast, but a block in the training layout runs
about 25 small ops, many of them memory-bound passes over the large stride-4
feature maps (six BatchNorms, gate multiplications, additions). Inference
needs none of the BatchNorms, q and k can share their ops, and oneDNN runs
the many 1x1 and depthwise convolutions fastest on channels-last tensors with
the activation or addition that follows fused into the convolution.

Each module of :mod:`casvit_mm.models.casvit` fuses itself in its own
``switch_to_deploy()`` (as mmpretrain's MobileOne and timm's RepViT do) with
the arithmetic below; ``CASViT(deploy=True)`` builds the fused structure
directly, so that a fused checkpoint reloads strictly. This module holds what
they share, and imports no model:

* exact BatchNorm folding (in float64, then cast back);
* :func:`conv_act` / :func:`conv_binary`: ``act(conv(x))``, ``conv(x) + y``
  and ``conv(x) * y`` as one oneDNN kernel on channels-last CPU tensors
  (:func:`use_fused_kernels`), with weights pre-packed once for oneDNN
  (:func:`packed_weight`), else as plain ops.

The whole-model switch (every CAS-ViT of a detector, the output norms folded
into its FPN, bf16) is :func:`casvit_mm.deploy.switch.switch_model_to_deploy`.
"""
import weakref
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['bn_affine', 'fold_bn_into_conv', 'fold_bn_into_next_1x1', 'use_fused_kernels',
           'packed_weight', 'conv_plain', 'conv_act', 'conv_binary', 'conv_out', 'set_conv']


# ------------------------------------------------------------ BN arithmetic
def bn_affine(bn: _BatchNorm):
    """``(scale, shift)`` in float64 with ``bn(x) == scale * x + shift`` in eval mode."""
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def fold_bn_into_conv(conv: nn.Conv2d, bn: _BatchNorm):
    """Weight and bias (float64) of ``bn(conv(x))`` as one convolution."""
    scale, shift = bn_affine(bn)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    return weight, bias


def fold_bn_into_next_1x1(weight, bias, bn):
    """Weight ``(out, in)`` and bias of ``conv1x1(bn(x))`` as one conv1x1 (float64).

    Exact because a 1x1 convolution has no padding: every output pixel sees
    exactly the normalised pixel under it.
    """
    scale, shift = bn_affine(bn)
    w = weight.double().flatten(1)  # (out, in)
    new_bias = w @ shift
    if bias is not None:
        new_bias = new_bias + bias.double()
    return w * scale, new_bias


def set_conv(conv, weight, bias, like):
    """Give ``conv`` (or a Linear) new frozen parameters cast like the tensor ``like``."""
    conv.weight = nn.Parameter(weight.reshape(conv.weight.shape).to(like),
                               requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.to(like), requires_grad=False)
    return conv


# ------------------------------------------------------- fused conv kernels
# oneDNN's convolution with a fused activation or addition: the op torch.compile
# (inductor) emits for these patterns on CPU, here called directly in eager
# mode. It saves a full pass over the output, which matters for the large
# stride-4 maps. It exists in every CPU build of torch with oneDNN; without it
# (or when tracing, compiling, exporting, or recording gradients, which it does
# not support) the plain ops run instead: tests compare both with eval mode.
_POINTWISE = getattr(getattr(torch.ops, 'mkldnn', None), '_convolution_pointwise', None)
_REORDER = getattr(getattr(torch.ops, 'mkldnn', None), '_reorder_convolution_weight', None)
_ACTIVATIONS = {'gelu': F.gelu, 'relu': F.relu, 'sigmoid': torch.sigmoid}
# conv -> ((data_ptr, version, input shape), weight pre-packed for oneDNN); weak, so that
# copies and deleted models take nothing along; keyed by the weight's version, so that
# loading new weights (load_state_dict copies in place) repacks instead of using stale
# ones, and by the input shape, for which oneDNN picks the layout (one entry per conv:
# a new shape repacks, which costs what the unpacked call costs anyway).
_PACKED = weakref.WeakKeyDictionary()


@lru_cache(maxsize=None)
def _bf16_kernels():
    """Whether oneDNN takes bf16 here (AVX-512 or newer; bf16 deploy mode
    otherwise runs the plain ops in bf16)."""
    probe = getattr(getattr(torch.ops, 'mkldnn', None), '_is_mkldnn_bf16_supported', None)
    return bool(probe is not None and probe())


def use_fused_kernels(x):
    """Whether :func:`conv_act` / :func:`conv_binary` may fuse on input ``x``."""
    return (_POINTWISE is not None and x.device.type == 'cpu'
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _bf16_kernels()))
            and x.is_contiguous(memory_format=torch.channels_last)
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and not torch.onnx.is_in_onnx_export())


def packed_weight(conv, x):
    """``conv.weight`` reordered once into the blocked layout oneDNN picks for
    inputs shaped like ``x``, as Inductor's freezing does: the fused op
    otherwise reorders the weight at every call (measured: 2-5 % of the
    backbone's time, see docs/deploy.md)."""
    weight = conv.weight
    if _REORDER is None:
        return weight
    key = (weight.data_ptr(), weight._version, tuple(x.shape))
    cached = _PACKED.get(conv)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():
            packed = _REORDER(weight, list(conv.padding), list(conv.stride),
                              list(conv.dilation), conv.groups, list(x.shape))
        cached = _PACKED[conv] = (key, packed)
    return cached[1]


def _conv_args(conv, x):
    return (packed_weight(conv, x), conv.bias, conv.padding, conv.stride, conv.dilation,
            conv.groups)


def conv_plain(conv, x, fused):
    """``conv(x)``, fused or not through the same oneDNN op as the others:
    PyTorch's own dispatch leaves oneDNN for a slower GEMM path on 1x1
    convolutions of batches below 16 when it runs on one thread."""
    if fused:
        return _POINTWISE(x, *_conv_args(conv, x), 'none', [], None)
    return conv(x)


def conv_act(conv, x, act, fused):
    """``act(conv(x))`` for ``act`` in gelu (exact, erf), relu, sigmoid."""
    if fused:
        return _POINTWISE(x, *_conv_args(conv, x), act, [], 'none' if act == 'gelu' else None)
    return _ACTIVATIONS[act](conv(x))


def conv_binary(conv, x, other, op, fused):
    """``conv(x) + other`` (``op='add'``) or ``conv(x) * other`` (``'mul'``)."""
    if fused:
        w, b, padding, stride, dilation, groups = _conv_args(conv, x)
        return _POINTWISE.binary(x, other, w, b, padding, stride, dilation, groups,
                                 op, None, None, [], None)
    # in place into the fresh conv output: no backward needs its old value for add
    return conv(x).add_(other) if op == 'add' else conv(x) * other


def conv_out(conv, x, shortcut, fused):
    """``conv(x) + shortcut``, or ``conv(x)`` when ``shortcut`` is None."""
    if shortcut is None:
        return conv_plain(conv, x, fused)
    return conv_binary(conv, x, shortcut, 'add', fused)
