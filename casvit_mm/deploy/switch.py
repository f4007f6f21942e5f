"""The whole-model deploy switch: every CAS-ViT of a model fused, then what needs
the neighbouring modules too.

Each block fuses itself (``switch_to_deploy()`` in :mod:`casvit_mm.models.casvit`,
with the arithmetic of :mod:`casvit_mm.models.fusion`); this module is the one
walk over a whole detector, segmentor or classifier that calls it on every
``CASViT`` (``tools/test.py --deploy``, the inferencers, export and
quantization), folds the backbone's output norms into an FPN's 1x1 lateral convs
(:func:`fold_output_norms_into_fpn`: two models' parts at once) and optionally
compiles or runs in bf16 (:mod:`.bf16`). ``from casvit_mm import
switch_model_to_deploy`` is the same function.

Two forms, the same outputs up to float rounding: ``form='fused'`` (the default:
channels-last weights and fused oneDNN kernels, the fast path in eager PyTorch)
and ``form='export'`` (plain 4-D NCHW ops, q/k and the channel gates as separate
1x1 convolutions, output norms left unfolded as depthwise 1x1 convolutions:
what every exporter of the package traces: OpenVINO runs it faster and the
mobile compilers take it whole; docs/quantization.md).
"""
from typing import List, Union

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.casvit import CASViT
from ..models.fusion import fold_bn_into_next_1x1

__all__ = ['FORMS', 'switch_model_to_deploy', 'fold_output_norms_into_fpn']

# ``CASViT.switch_to_deploy``'s forms: 'fused' for eager PyTorch, 'export' for exporters
FORMS = ('fused', 'export')


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
def fold_output_norms_into_fpn(backbone: nn.Module, neck: nn.Module) -> List[int]:
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


def switch_model_to_deploy(model: nn.Module,
                           compile: Union[bool, str, dict] = False,
                           fold_output_norms: bool = True,
                           channels_last: bool = True,
                           bf16: bool = False,
                           allow_emulated_bf16: bool = False,
                           form: str = 'fused') -> nn.Module:
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
        form (str): ``'fused'`` (default: the fast path in eager PyTorch) or
            ``'export'``: every CAS-ViT then goes on to
            ``switch_to_deploy(form='export')`` (after the FPN has absorbed
            what output norms it can; the others become depthwise 1x1
            convolutions), NCHW weights whatever ``channels_last`` says. What
            every ONNX / OpenVINO / mobile export of this package traces: plain
            4-D ops, faster in OpenVINO (docs/quantization.md), slower in eager
            PyTorch. Not with ``compile`` or ``bf16`` (both run the fused
            kernels). Defaults to 'fused'.
    """
    if form not in FORMS:
        raise ValueError(f'form must be one of {FORMS}, got {form!r}')
    if form == 'export' and (compile or bf16):
        raise ValueError("form='export' is for exporters: compile and bf16 run the fused "
                         "form (form='fused')")
    if bf16:  # refuse before changing anything
        from .bf16 import check_bf16
        check_bf16(allow_emulated_bf16)
    model.eval()
    inner = getattr(model, 'module', model)  # a (Distributed)DataParallel wrapper
    backbones = [m for m in model.modules() if isinstance(m, CASViT)]
    if not backbones:
        raise ValueError(f'switch_model_to_deploy found no CASViT inside '
                         f'{type(model).__name__}: deploy mode applies to CAS-ViT models only.')
    for backbone in backbones:
        if backbone.deploy_form != 'export':  # fused first: the FPN folds BatchNorms
            backbone.switch_to_deploy()  # (an export-form one asked for 'fused' raises below)
        if not channels_last:
            backbone.to(memory_format=torch.contiguous_format)
    neck = getattr(inner, 'neck', None)
    if (fold_output_norms and isinstance(getattr(inner, 'backbone', None), CASViT)
            and isinstance(neck, nn.Module)):
        fold_output_norms_into_fpn(inner.backbone, neck)
    for backbone in backbones:
        backbone.switch_to_deploy(form=form)
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
        from .bf16 import to_bf16
        to_bf16(model, allow_emulated_bf16)
    return model
