"""bf16 inference in PyTorch on CPUs that compute bf16 natively.

Why: on CPUs with AVX512-BF16 or AMX the fused model's convolutions run about
twice as fast in bf16 as in float32 (half the bytes, the matrix units), while
``torch.autocast`` cannot reach deploy mode: its fused oneDNN kernels are not
ops autocast knows, so they keep running in float32. Here the network itself
is cast instead: its weights *and* its activations are bf16, and the fused
kernels then run in bf16 (where oneDNN supports bf16; else the same
arithmetic as plain bf16 ops).

What runs in bf16 and what stays float32 (a whole mmdet / mmseg /
mmpretrain model, or a bare backbone):

* bf16: the backbone, the neck and the heads' layers (every parameter and
  buffer of the model but the data preprocessor's);
* float32: the data preprocessor (normalisation), and everything after the
  heads: their outputs are cast back to float32 before post-processing
  (anchor generation, box decoding, NMS, RoIAlign, resizing, argmax,
  softmax), so coordinates and scores keep float32's resolution. RoIAlign
  (mmcv, no bf16 kernel) reads float32 features; the RoI heads then read
  bf16 again.

The casts are forward hooks of the modules at those boundaries (plain
functions, so the model deep-copies and pickles). On a CPU without native
bf16, :func:`to_bf16` refuses with what to do; ``allow_emulated=True`` runs
anyway (slowly), so that the accuracy cost can be measured on any CPU.
"""
import torch
import torch.nn as nn

from .cpu_isa import cpu_model, native_bf16

__all__ = ['Bf16Unsupported', 'check_bf16', 'to_bf16', 'is_bf16']

# The heads of mmdet, mmseg and mmpretrain models, as attributes of the model
# (single-stage, RPN, classifier, decode and auxiliary heads) or of its RoI head.
_HEADS = ('bbox_head', 'rpn_head', 'head', 'decode_head', 'auxiliary_head')
_ROI_HEADS = ('bbox_head', 'mask_head')


class Bf16Unsupported(RuntimeError):
    """bf16 asked for on a CPU that would only emulate it."""


def check_bf16(allow_emulated=False):
    """Refuse bf16 on a CPU without AVX512-BF16 / AMX-BF16 unless ``allow_emulated``."""
    if native_bf16() or allow_emulated:
        return
    raise Bf16Unsupported(
        f'bf16 inference needs a CPU with AVX512-BF16 or AMX-BF16; this one '
        f'({cpu_model()}) has neither and would only emulate bf16, slower than float32. '
        f'Deploy in float32 here (the default), use int8 (tools/deployment/quantize.py '
        f'--backend openvino), or pass allow_emulated=True (--allow-emulated-bf16) to run '
        f'bf16 anyway, e.g. to measure its accuracy cost.')


def _cast(obj, src, dst):
    """``obj`` with every ``src`` tensor inside (tuples, lists, dicts) cast to ``dst``."""
    if torch.is_tensor(obj):
        return obj.to(dst) if obj.dtype == src else obj
    if isinstance(obj, (list, tuple)):
        cast = [_cast(o, src, dst) for o in obj]
        return type(obj)(cast) if not hasattr(obj, '_fields') else type(obj)(*cast)
    if isinstance(obj, dict):
        return type(obj)((k, _cast(v, src, dst)) for k, v in obj.items())
    return obj


def _inputs_to_bf16(module, args, kwargs):
    return _cast(args, torch.float32, torch.bfloat16), _cast(kwargs, torch.float32,
                                                             torch.bfloat16)


def _inputs_to_float(module, args, kwargs):
    return _cast(args, torch.bfloat16, torch.float32), _cast(kwargs, torch.bfloat16,
                                                             torch.float32)


def _outputs_to_float(module, args, output):
    return _cast(output, torch.bfloat16, torch.float32)


def _boundaries(model):
    """``(enter, leave, float_in)``: the modules whose inputs become bf16, whose
    outputs become float32, and whose inputs go back to float32 (mmcv's RoIAlign)."""
    from ..models.casvit import CASViT
    inner = getattr(model, 'module', model)
    if isinstance(inner, CASViT) or not hasattr(inner, 'backbone'):
        return [inner], [inner], []
    enter, leave, float_in = [inner.backbone], [], []
    heads = [getattr(inner, name) for name in _HEADS if isinstance(getattr(inner, name, None),
                                                                   nn.Module)]
    roi_head = getattr(inner, 'roi_head', None)
    if roi_head is not None:
        heads += [getattr(roi_head, n) for n in _ROI_HEADS
                  if isinstance(getattr(roi_head, n, None), nn.Module)]
        float_in += [m for m in roi_head.children() if hasattr(m, 'roi_layers')]
    for head in heads:
        enter.append(head)
        # mmseg's decode heads call their own forward() in predict(), which skips
        # the head's hooks: their last layer (conv_seg) hands the logits back
        leave.append(head.conv_seg if isinstance(getattr(head, 'conv_seg', None), nn.Module)
                     else head)
    if not heads:  # a backbone with a neck and no head: the neck's outputs leave
        neck = getattr(inner, 'neck', None)
        leave.append(neck if isinstance(neck, nn.Module) else inner.backbone)
    return enter, leave, float_in


def to_bf16(model, allow_emulated=False):
    """Run ``model``'s network in bf16 (in place; returns ``model``).

    Call it on a deployed model (``switch_model_to_deploy(model, bf16=True)``
    does both). Float32 inputs and outputs stay float32 for the caller: a
    detector's ``test_step`` or an inferencer work unchanged.

    Args:
        model (nn.Module): A CASViT, or an mmdet / mmseg / mmpretrain model.
        allow_emulated (bool): Run even where the CPU only emulates bf16
            (slow; for measuring accuracy). Defaults to False: such CPUs raise
            :class:`Bf16Unsupported`.
    """
    check_bf16(allow_emulated)
    if is_bf16(model):
        return model
    enter, leave, float_in = _boundaries(model)
    pre = getattr(model, 'data_preprocessor', None)
    keep = {id(p) for p in (pre.parameters() if isinstance(pre, nn.Module) else ())}
    keep |= {id(b) for b in (pre.buffers() if isinstance(pre, nn.Module) else ())}
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.dtype == torch.float32 and id(tensor) not in keep:
            tensor.data = tensor.data.to(torch.bfloat16)
    for module in enter:
        module.register_forward_pre_hook(_inputs_to_bf16, with_kwargs=True)
    for module in float_in:
        module.register_forward_pre_hook(_inputs_to_float, with_kwargs=True)
    for module in leave:
        module.register_forward_hook(_outputs_to_float)
    model._casvit_bf16 = True
    return model


def is_bf16(model):
    """Whether :func:`to_bf16` converted ``model``."""
    return bool(getattr(model, '_casvit_bf16', False))
