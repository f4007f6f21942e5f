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
they share:

* exact BatchNorm folding (in float64, then cast back);
* :func:`conv_act` / :func:`conv_binary`: ``act(conv(x))``, ``conv(x) + y``
  and ``conv(x) * y`` as one oneDNN kernel on channels-last CPU tensors
  (:func:`use_fused_kernels`), with weights pre-packed once for oneDNN
  (:func:`packed_weight`), else as plain ops;
* the whole-model step that needs two models' parts at once: folding the
  backbone's output norms into an FPN's 1x1 lateral convs
  (:func:`fold_output_norms_into_fpn`, called by :func:`switch_model_to_deploy`).
"""
import weakref
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['bn_affine', 'fold_bn_into_conv', 'fold_bn_into_next_1x1', 'use_fused_kernels',
           'packed_weight', 'conv_plain', 'conv_act', 'conv_binary', 'conv_out', 'set_conv',
           'switch_model_to_deploy', 'fold_output_norms_into_fpn']


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


# ------------------------------------------------------- whole-model helpers
def _fpn_consumers(neck, num_outs):
    """How an mmdet/mmseg ``FPN`` reads each backbone output position.

    Returns ``{position: conv}`` for outputs read only by a plain 1x1 lateral
    conv, ``{position: None}`` for outputs the FPN never reads, or ``None``
    when ``neck`` is not such an FPN.
    """
    needed = ('lateral_convs', 'start_level', 'backbone_end_level', 'add_extra_convs')
    if not all(hasattr(neck, name) for name in needed) or len(neck.in_channels) != num_outs:
        return None
    consumers = {}
    for pos in range(num_outs):
        if not neck.start_level <= pos < neck.backbone_end_level:
            consumers[pos] = None  # the FPN skips this input
            continue
        if neck.add_extra_convs == 'on_input' and pos == neck.backbone_end_level - 1:
            continue  # also read by a padded 3x3 extra conv: folding is not exact there
        lateral = neck.lateral_convs[pos - neck.start_level]
        conv = getattr(lateral, 'conv', lateral)
        if (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
                and conv.groups == 1 and tuple(conv.padding) == (0, 0)):
            consumers[pos] = conv
    return consumers


@torch.no_grad()
def fold_output_norms_into_fpn(backbone, neck):
    """Fold the backbone's output BNs into the FPN's 1x1 lateral convs.

    Only where exact: the lateral conv is 1x1 without padding and nothing else
    reads that output (with ``add_extra_convs='on_input'`` the last output
    also feeds a padded 3x3 conv, so its norm stays). The norm of an output
    the FPN never reads (below ``start_level``) is dropped. Folded and dropped
    norms become ``nn.Identity``: the backbone's own outputs change, the
    model's do not. Returns the stage indices whose norm was removed.
    """
    consumers = _fpn_consumers(neck, len(backbone.out_indices))
    removed = []
    for pos, conv in (consumers or {}).items():
        stage = backbone.out_indices[pos]
        norm = getattr(backbone, f'norm{stage}')
        if not isinstance(norm, _BatchNorm):
            continue
        if conv is not None:
            w, b = fold_bn_into_next_1x1(conv.weight, conv.bias, norm)
            like = conv.weight
            conv.weight = nn.Parameter(w.view_as(like).to(like), requires_grad=False)
            conv.bias = nn.Parameter(b.to(like), requires_grad=False)
        setattr(backbone, f'norm{stage}', nn.Identity())
        removed.append(stage)
    return removed


def switch_model_to_deploy(model, compile=False, fold_output_norms=True,
                           channels_last=True, bf16=False, allow_emulated_bf16=False):
    """Switch every ``CASViT`` inside ``model`` to deploy mode; return ``model`` in eval mode.

    The whole-model form of ``backbone.switch_to_deploy()``: it runs exactly
    that on every CAS-ViT (the same fused blocks, channels-last weights and
    fused kernels as ``CASViT(deploy=True)``), then does what needs the
    neighbouring modules too. Works on a bare backbone, a detector, a
    segmentor or a classifier (an inferencer: ``switch_model_to_deploy(
    inferencer.model)``); ``tools/test.py --deploy`` calls it. Outputs equal
    the eval-mode model's up to float rounding; the model can no longer train.

    Args:
        model (nn.Module): The model; changed in place.
        compile (bool | str | dict): Also ``torch.compile`` each CAS-ViT:
            ``True`` with the defaults, ``'freezing'`` with Inductor's
            ``freezing`` option (weights become constants and are pre-packed
            for oneDNN; needs ``torch.no_grad()`` / ``inference_mode`` at call
            time to take effect), a ``dict`` as keyword arguments of
            ``torch.compile``. Compiling takes about a minute and again for
            every new input shape: worth it for a fixed input size.
            Defaults to False.
        fold_output_norms (bool): Where ``model.neck`` is an FPN directly fed
            by ``model.backbone``, fold the backbone's output BNs into its 1x1
            lateral convs (see :func:`fold_output_norms_into_fpn`). The model's
            outputs do not change, but its state dict then no longer fits a
            ``deploy=True`` config. Defaults to True.
        channels_last (bool): Keep the channels-last weights deploy mode
            stores (False: back to NCHW, for layout experiments only; the
            fused kernels then do not run). Defaults to True.
        bf16 (bool): Run the network in bf16, weights and activations
            (:func:`casvit_mm.deploy.bf16.to_bf16`: inputs, post-processing
            and outputs stay float32). Refused on CPUs without AVX512-BF16 /
            AMX-BF16 unless ``allow_emulated_bf16``. Defaults to False.
        allow_emulated_bf16 (bool): With ``bf16``, run on a CPU that only
            emulates bf16 (slow: to measure the accuracy cost anywhere).
    """
    from .casvit import CASViT
    if bf16:  # refuse before changing anything
        from ..deploy.bf16 import check_bf16
        check_bf16(allow_emulated_bf16)
    model.eval()
    inner = getattr(model, 'module', model)  # a (Distributed)DataParallel wrapper
    backbones = [m for m in model.modules() if isinstance(m, CASViT)]
    if not backbones:
        raise ValueError(f'switch_model_to_deploy found no CASViT inside '
                         f'{type(model).__name__}: deploy mode applies to CAS-ViT models only.')
    for backbone in backbones:
        backbone.switch_to_deploy()
        if not channels_last:
            backbone.to(memory_format=torch.contiguous_format)
    neck = getattr(inner, 'neck', None)
    if (fold_output_norms and isinstance(getattr(inner, 'backbone', None), CASViT)
            and isinstance(neck, nn.Module)):
        fold_output_norms_into_fpn(inner.backbone, neck)
    if compile:
        if compile == 'freezing':
            kwargs = dict(options={'freezing': True})
        elif isinstance(compile, dict):
            kwargs = compile
        elif compile is True:
            kwargs = {}
        else:
            raise ValueError(f"compile must be a bool, 'freezing' or a dict of torch.compile "
                             f'arguments, got {compile!r}')
        for backbone in backbones:
            backbone.compile(**kwargs)
    if bf16:
        from ..deploy.bf16 import to_bf16
        to_bf16(model, allow_emulated_bf16)
    return model
