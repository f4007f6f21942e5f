"""CAS-ViT on the runtimes phones run: ExecuTorch (XNNPACK, fp32 and int8), Core ML, LiteRT.

What ``tools/deployment/export_mobile.py`` and the benchmark's ``executorch``
variants run, as importable pieces (the tests run exactly these).

What runs where, as in a phone app:

* **host side** (the app's own code; here mmengine's / mmdet's / mmseg's /
  mmpretrain's, called as they are): loading and resizing the image, the data
  preprocessor (BGR -> RGB, ``(x - mean) / std``, zero padding bottom-right
  to the exported size), and the post-processing of the raw outputs: mmdet's
  ``bbox_head.predict_by_feat`` (decoding, NMS), mmseg's ``predict_by_feat``
  and ``postprocess_result`` (resize, crop, argmax), mmpretrain's
  ``head._get_predictions`` (softmax, top-1);
* **the exported file**: the network, ``(B, 3, H, W)`` preprocessed images ->
  raw outputs (class logits; RetinaNet's per-level class and box maps;
  Semantic FPN's logits at 1/4 scale; a backbone's feature maps), ``B``
  dynamic, ``H x W`` fixed at export.

The network is the deployed model (``switch_model_to_deploy``: BatchNorms
folded, output norms folded into the FPN) in the export-friendly form of
:meth:`casvit_mm.models.casvit.CASViT.switch_to_deploy` (``form='export'``):
plain 4-D ops that XNNPACK and Core ML take whole.

* :func:`to_executorch`: ``torch.export`` (batch dynamic) -> XNNPACK
  partitioner -> ``.pte``; ``quantize=True`` first quantizes with PT2E
  (``XNNPACKQuantizer``, symmetric int8, per-channel weights, calibrated on
  the batches given: the config's own images, :func:`calibration_batches`;
  the modules of :func:`float_modules` left in fp32). Nearest upsamplings
  are exported as exact transposed convs (:class:`NearestAsTransposedConv`).
  Returns how much of the graph XNNPACK took (ExecuTorch's delegation info).
* :func:`to_coreml`: ``torch.export`` -> coremltools -> ``.mlpackage``
  (ML program, fp16) and its MIL op inventory. Conversion runs on Linux;
  running the package needs macOS or iOS.
* :func:`to_litert` (optional extra ``litert``): litert-torch's converter ->
  ``.tflite`` (fp32; ``quantize=True``: litert-torch's own PT2E int8; batch
  static) and how much of it LiteRT's XNNPACK delegate takes
  (:func:`litert_delegation`).
* :class:`ExecuTorchModel` runs a ``.pte`` in ExecuTorch's Python runtime,
  :class:`LiteRTModel` a ``.tflite`` in LiteRT's interpreter;
  :func:`evaluate_mobile` scores them with the config's own evaluator.

The entry point for a dispatch (one call per file): :func:`export_mobile`.
"""
import contextlib
import copy
import os
import os.path as osp
import threading
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ['MOBILE_KINDS', 'PORTABLE_OK', 'LITERT_CPU_OK', 'MobileExportError', 'MobileNetwork',
           'NearestAsTransposedConv', 'NearestAsConcat',
           'ExecuTorchModel', 'LiteRTModel', 'to_litert', 'litert_delegation',
           'mobile_kind', 'mobile_network', 'export_program', 'to_executorch',
           'quantize_pt2e', 'unshare_weights', 'float_modules', 'to_coreml', 'coreml_ops',
           'calibration_batches',
           'host_predictions', 'evaluate_mobile', 'export_mobile', 'FORMATS']

MOBILE_KINDS = ('classifier', 'detector', 'segmentor', 'backbone')
FORMATS = ('executorch', 'executorch-int8', 'coreml', 'litert', 'litert-int8')
# What XNNPACK (ExecuTorch 1.4's partitioner) does not take from the necks and
# heads of the dense models: bilinear resizes (XNNPACK's static_resize_bilinear_2d
# takes no dynamic shape, and the batch is dynamic), and nearest upsamplings by
# other than whole factors (:class:`NearestAsTransposedConv` makes the others
# XNNPACK's). The CAS-ViT network and the classifier delegate whole.
PORTABLE_OK = ('aten_upsample_nearest2d_vec', 'aten_upsample_bilinear2d_vec')
# What LiteRT's XNNPACK delegate (ai-edge-litert 2.3) leaves to LiteRT's own
# CPU kernels: int8 GELU (the converter turns dequantize -> GELU -> quantize into
# one int8 GELU, which the delegate does not take; LiteRT runs it by a lookup
# table), and the resizes it leaves as ExecuTorch's partitioner does.
LITERT_CPU_OK = ('GELU', 'RESIZE_BILINEAR', 'RESIZE_NEAREST_NEIGHBOR')
# torch.export needs an upper bound for a dynamic batch; ExecuTorch plans the
# activation memory for it.
DEFAULT_MAX_BATCH = 8


class MobileExportError(ValueError):
    """A model or request this module cannot export, with what to do."""


# ------------------------------------------------------------------ network
def mobile_kind(model: nn.Module, backbone_only: bool = False) -> str:
    """What :class:`MobileNetwork` exports for ``model``: 'classifier',
    'detector' (single-stage: backbone, neck, head), 'segmentor' or 'backbone'."""
    if backbone_only or not hasattr(model, 'backbone'):
        return 'backbone'
    if hasattr(model, 'decode_head'):
        return 'segmentor'
    if getattr(model, 'with_rpn', False) or hasattr(model, 'roi_head'):
        raise MobileExportError(
            f'{type(model).__name__} is a two-stage detector: its RoI head needs RoIAlign '
            f'and NMS between the network parts, which the mobile runtimes do not take. '
            f'Export a single-stage detector (RetinaNet), or the backbone with '
            f'--backbone-only.')
    if hasattr(model, 'bbox_head'):
        return 'detector'
    if hasattr(model, 'head') and hasattr(model, 'extract_feat'):
        return 'classifier'
    return 'backbone'


class MobileNetwork(nn.Module):
    """The network of an OpenMMLab model as tensor in, flat tuple of tensors out.

    ``forward(images)``: ``(B, 3, H, W)`` images *after* the model's data
    preprocessor ->

    * classifier: ``(logits,)``, what ``model.head`` computes before softmax;
    * detector: ``cls_score_0..L-1, bbox_pred_0..L-1``, the head's raw maps;
    * segmentor: ``(logits,)`` at the decode head's scale (1/4);
    * backbone: the feature maps.
    """

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        if kind not in MOBILE_KINDS:
            raise MobileExportError(f'kind must be one of {MOBILE_KINDS}, got {kind!r}')
        self.model, self.kind = model, kind

    def forward(self, images):
        model = self.model
        if self.kind == 'backbone':
            return tuple(model(images))
        if self.kind == 'classifier':
            return (model.head(model.extract_feat(images)),)
        if self.kind == 'segmentor':
            return (model._forward(images),)
        cls_scores, bbox_preds = model.bbox_head(model.extract_feat(images))[:2]
        return tuple(cls_scores) + tuple(bbox_preds)


class ExportGroupNorm(nn.Module):
    """``nn.GroupNorm`` as 4-D means and element-wise ops, which XNNPACK runs.

    XNNPACK has no group norm; exported as ATen's ``native_group_norm`` it
    stays on ExecuTorch's portable kernels (the toy RetinaNet's head has
    GroupNorm). Here: ``(B, C, H, W)`` viewed as ``(B, G, C/G, H*W)`` (the
    batch inferred: one ``-1``, as XNNPACK's reshape needs), its mean and
    biased variance over the last two dims (4-D ``mean(keepdim=True)``),
    normalised, viewed back, scaled and shifted. Same function, other rounding.
    """

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.groups, self.channels, self.eps = norm.num_groups, norm.num_channels, norm.eps
        shape = (1, self.channels, 1, 1)
        self.weight = nn.Parameter(norm.weight.detach().reshape(shape).clone(),
                                   requires_grad=False) if norm.affine else None
        self.bias = nn.Parameter(norm.bias.detach().reshape(shape).clone(),
                                 requires_grad=False) if norm.affine else None

    def forward(self, x):
        H, W = x.shape[2], x.shape[3]
        grouped = x.reshape(-1, self.groups, self.channels // self.groups, H * W)
        centred = grouped - grouped.mean((2, 3), keepdim=True)
        var = (centred * centred).mean((2, 3), keepdim=True)
        out = (centred * torch.rsqrt(var + self.eps)).reshape(-1, self.channels, H, W)
        return out if self.weight is None else out * self.weight + self.bias


def _replace_group_norms(module: nn.Module):
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, ExportGroupNorm(child))
        else:
            _replace_group_norms(child)


def mobile_network(model: nn.Module, kind: str) -> MobileNetwork:
    """A deployed copy of ``model`` in the export-friendly form, wrapped for ``kind``.

    ``switch_model_to_deploy(..., form='export')`` on a copy (BatchNorms
    folded, the backbone's output norms folded into an FPN where exact, every
    CAS-ViT in its export form with NCHW weights: what the ONNX exports trace
    too), then every ``nn.GroupNorm`` replaced by :class:`ExportGroupNorm`.
    """
    from casvit_mm import CASViT
    from casvit_mm.deploy.switch import switch_model_to_deploy
    source = model.backbone if kind == 'backbone' and hasattr(model, 'backbone') else model
    if not any(isinstance(m, CASViT) for m in source.modules()):
        raise MobileExportError(f'{type(model).__name__} has no CASViT inside: the mobile '
                                f'export is for CAS-ViT models')
    deployed = switch_model_to_deploy(copy.deepcopy(source), channels_last=False,
                                      form='export')
    _replace_group_norms(deployed)
    return MobileNetwork(deployed, kind).eval()


class NearestAsTransposedConv:
    """Nearest upsampling by whole factors as a depthwise transposed convolution.

    ExecuTorch 1.4's XNNPACK partitioner has no nearest upsampling, so the FPN's
    ``F.interpolate(mode='nearest')`` stayed on portable kernels. Upsampling by
    whole factors ``(fh, fw)`` is a depthwise ``conv_transpose2d`` with a
    ``(C, 1, fh, fw)`` kernel of ones and stride ``(fh, fw)``: each output
    pixel is one input pixel times 1.0, so the result is bit-identical, and
    XNNPACK runs it (fp32 and int8: the ones are exact in int8).

    Used as a context around ``torch.export``: ``record(network, example)``
    first runs the network eagerly to make the kernels (real tensors, which
    ``torch.export`` then lifts as constants) and keeps only the calls whose
    output the transposed conv reproduces exactly; inside the context
    ``torch.nn.functional.interpolate`` uses them (mmdet's FPN and mmseg's
    ``resize`` call it through the module). Other resizes are left as they are.

    Concurrency: the patch replaces a module-level function, so it holds a
    process-wide lock from ``record`` to the end of the context: two exports in
    two threads run one after the other, never restoring each other's function
    (``torch.export`` itself is not safe to run in two threads at once either:
    without the lock, three concurrent exports fail inside torch with
    "ProxyTorchDispatchMode slot already occupied" and the like).
    What a lock cannot do: a thread that calls ``F.interpolate`` outside any
    export while one runs goes through the patched function too. It still gets
    the original's result for every call but those whose (channels, factors,
    dtype) were recorded, and for those a transposed conv that reproduced the
    original bit for bit on the recorded input (the same arithmetic: one
    pixel times 1.0). Do not export while other threads upsample if that is
    not acceptable.
    """

    _lock = threading.RLock()  # one patch at a time, process-wide

    def __init__(self):
        self.kernels = {}
        self.original = None

    @staticmethod
    def _factors(x, size, scale_factor):
        H, W = x.shape[-2:]
        if size is not None:
            out = (size, size) if isinstance(size, int) else tuple(size)
        elif scale_factor is not None:
            scale = scale_factor if isinstance(scale_factor, (tuple, list)) else (
                scale_factor, scale_factor)
            if any(float(s) != int(s) for s in scale):
                return None
            out = (H * int(scale[0]), W * int(scale[1]))
        else:
            return None
        if out[0] % H or out[1] % W:
            return None
        return int(out[0]) // int(H), int(out[1]) // int(W)

    def _deconv(self, x, size=None, scale_factor=None, mode='nearest', align_corners=None,
                recompute_scale_factor=None, antialias=False):
        args = (x, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
        factors = (self._factors(x, size, scale_factor)
                   if mode == 'nearest' and x.dim() == 4 and not antialias else None)
        key = factors and (int(x.shape[1]), *factors, x.dtype)
        return key, args

    def record(self, network: nn.Module, example: torch.Tensor):
        with self._lock:
            return self._record(network, example)

    def _record(self, network, example):
        original = self.original = torch.nn.functional.interpolate

        def interpolate(*a, **kw):
            key, args = self._deconv(*a, **kw)
            out = original(*args)
            if key and key not in self.kernels and key[1:3] != (1, 1):
                kernel = self._kernel(key)
                if torch.equal(self._upsample(args[0], key, kernel), out):
                    self.kernels[key] = kernel
            return out
        torch.nn.functional.interpolate = interpolate
        try:
            with torch.no_grad():
                network(example)
        finally:
            torch.nn.functional.interpolate = original
        return self

    def __enter__(self):
        self._lock.acquire()  # released by __exit__
        original = self.original = torch.nn.functional.interpolate

        def interpolate(*a, **kw):
            key, args = self._deconv(*a, **kw)
            kernel = self.kernels.get(key) if key else None
            if kernel is None:
                return original(*args)
            return self._upsample(args[0], key, kernel)
        torch.nn.functional.interpolate = interpolate
        return self

    @staticmethod
    def _kernel(key):
        channels, fh, fw, dtype = key
        return torch.ones(channels, 1, fh, fw, dtype=dtype)

    @staticmethod
    def _upsample(x, key, kernel):
        return torch.nn.functional.conv_transpose2d(x, kernel, stride=key[1:3], groups=key[0])

    def __exit__(self, *exc):
        try:
            torch.nn.functional.interpolate = self.original
        finally:
            self._lock.release()


class NearestAsConcat(NearestAsTransposedConv):
    """Nearest upsampling by whole factors as copies stacked and reshaped, for LiteRT.

    The same context as :class:`NearestAsTransposedConv` (recorded, checked
    bit for bit on every call before use, the same lock), another exact
    rewrite: ``(B, C, H, W)`` -> ``stack([x] * fw, -1)`` viewed as
    ``(B, C, H, W*fw)`` -> ``stack([y] * fh, -2)`` viewed as
    ``(B, C, H*fh, W*fw)``: each output pixel is a copy of its input pixel.
    LiteRT's converter makes concatenations and reshapes of it, which LiteRT's
    XNNPACK delegate runs; ``F.interpolate``'s ``RESIZE_NEAREST_NEIGHBOR`` it
    leaves to LiteRT's kernels, and the transposed conv becomes a
    concatenation with one input per channel there, which it refuses too.
    """

    @staticmethod
    def _kernel(key):
        return True  # nothing to hold: the rewrite has no weights

    @staticmethod
    def _upsample(x, key, kernel):
        channels, fh, fw, _ = key
        H, W = x.shape[2], x.shape[3]
        y = torch.stack([x] * fw, dim=-1).reshape(-1, channels, H, W * fw)
        return torch.stack([y] * fh, dim=-2).reshape(-1, channels, H * fh, W * fw)


def export_program(network: nn.Module, example: torch.Tensor,
                   max_batch: Optional[int] = DEFAULT_MAX_BATCH,
                   nearest: Optional[type] = NearestAsTransposedConv):
    """``torch.export`` of ``network`` at ``example``'s image size, the batch
    dimension dynamic up to ``max_batch`` (None: static, as ``example``);
    nearest upsamplings by whole factors as transposed convolutions
    (:class:`NearestAsTransposedConv`, exact), which XNNPACK runs.

    PT2E int8 needs the dynamic batch at this point already (a static one
    fails later with ``Guard failed: x.size()[0] == 8``). ``nearest``: the
    rewrite of nearest upsamplings (:class:`NearestAsTransposedConv`; LiteRT:
    :class:`NearestAsConcat`; None: none).
    """
    dynamic = None
    if max_batch is not None:
        if example.shape[0] < 2:  # torch.export specialises a size-1 dimension
            example = example.expand(2, *example.shape[1:]).contiguous()
        dynamic = ({0: torch.export.Dim('batch', min=1, max=max_batch)},)
    rewrite = nearest().record(network, example) if nearest else contextlib.nullcontext()
    with torch.no_grad(), rewrite:
        return torch.export.export(network, (example,), dynamic_shapes=dynamic)


def calibration_batches(cfg, model, shape: Sequence[int], num_images: int = 32,
                        batch_size: int = 8, split: str = 'train',
                        seed: int = 0) -> List[torch.Tensor]:
    """``num_images`` images of the config's ``split`` through its test pipeline
    and the model's data preprocessor, padded to ``shape``: what the exported
    network takes (the int8 calibration data of
    :mod:`casvit_mm.deploy.ort_quantization`, in tensors)."""
    from casvit_mm.deploy.ort_quantization import DataloaderCalibration
    reader = DataloaderCalibration(cfg, model, 'backbone', shape, num_images, batch_size,
                                   split, seed)
    return [torch.from_numpy(batch['images']) for batch in reader]


def float_modules(network: MobileNetwork) -> List[str]:
    """The modules of ``network`` that int8 leaves in fp32 by default (names as in
    ``network.model``): for a classifier, the last stage of its CAS-ViT;
    nothing for the other kinds.

    Why (measured on the toy-trained demos, int8 simulated by the converted
    PT2E graph): with everything int8 the classifier loses 3 of 64 val images
    (top-1 0.906 -> 0.859); leaving the last stage in fp32 recovers them in
    simulation (the stem, the head, the attention gates in fp32 do not), and
    the lowered file loses 1 image (other observers, more calibration images,
    stem or head in fp32 do no better: docs/deploy.md). Semantic FPN loses
    nothing all-int8, nor does RetinaNet lose more than 0.01 mAP.
    """
    from casvit_mm import CASViT
    if network.kind != 'classifier':
        return []
    return [f'{name}.stages.{len(module.stages) - 1}'.lstrip('.')
            for name, module in network.model.named_modules() if isinstance(module, CASViT)]


def _outside(module_names: Sequence[str]):
    """A quantizer filter: True for graph nodes not inside ``module_names``
    (names in ``MobileNetwork.model``, as ``torch.export`` records them)."""
    prefixes = tuple(f'model.{name}' for name in module_names)

    def keep(node) -> bool:
        for path, _ in node.meta.get('nn_module_stack', {}).values():
            path = path.replace("L['self'].", '')
            if any(path == p or path.startswith(p + '.') for p in prefixes):
                return False
        return True
    return keep


def unshare_weights(graph_module: torch.fx.GraphModule) -> int:
    """Give every convolution / linear of ``graph_module`` its own weight and bias.

    A module called more than once (a dense detector's head runs its convs
    on every FPN level) gives one weight used by several convs. PT2E then
    quantizes its first use only, and ExecuTorch 1.4's XNNPACK lowering
    hands the later, float uses the *quantized* bias: the ``.pte`` fails to
    load (``XNNCompiler: Failed to create convolution node N with code:
    xnn_status_invalid_parameter``, an fp32 conv with a qcint32 bias). With a
    copy per use (same values, so the same function) each use is quantized
    with its own input's scale. Returns the number of copies made."""
    copies = 0
    for node in list(graph_module.graph.nodes):
        if node.op != 'get_attr':
            continue
        users = [u for u in node.users if u.op == 'call_function' and any(
            op in str(u.target) for op in ('conv', 'linear'))]
        for index, user in enumerate(users[1:], 1):
            name = f'{node.target.replace(".", "_")}_use{index}'
            tensor = _attribute(graph_module, node.target).detach().clone()
            graph_module.register_buffer(name, tensor)
            with graph_module.graph.inserting_before(user):
                copy_node = graph_module.graph.get_attr(name)
            copy_node.meta = dict(node.meta)
            user.replace_input_with(node, copy_node)
            copies += 1
    if copies:
        graph_module.graph.lint()
        graph_module.recompile()
    return copies


def _attribute(module: nn.Module, target: str):
    for part in target.split('.'):
        module = getattr(module, part)
    return module


def quantize_pt2e(network: nn.Module, example: torch.Tensor,
                  calibration: Iterable[torch.Tensor],
                  max_batch: Optional[int] = DEFAULT_MAX_BATCH,
                  keep_float: Optional[Sequence[str]] = None,
                  quantizer=None, fold_quantize: bool = True,
                  nearest: Optional[type] = NearestAsTransposedConv) -> nn.Module:
    """PT2E static int8 for XNNPACK: ``XNNPACKQuantizer`` with the symmetric
    per-channel configuration (histogram observers for activations), torchao's
    ``prepare_pt2e``, one pass over the ``calibration`` batches,
    ``convert_pt2e``; a conv called more than once gets a weight copy per call
    first (:func:`unshare_weights`). Returns the quantized graph module (still float in,
    float out; GELU and sigmoid stay float between dequantize / quantize
    nodes, as the quantizer annotates them).

    ``keep_float``: modules of ``network.model`` (names, e.g.
    ``'backbone.stages.3'``) the quantizer leaves alone, so that XNNPACK runs
    them in fp32. None: :func:`float_modules` (the accurate default); ``()``:
    everything int8. ``quantizer``: another PT2E quantizer, already configured
    (LiteRT's, :func:`to_litert`); it takes no ``keep_float``. ``fold_quantize``:
    torchao's ``convert_pt2e`` option (LiteRT's converter takes the weights'
    quantize nodes unfolded, as litert-torch's own examples call it).
    ``nearest``: as :func:`export_program`.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    if quantizer is None:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True))
    if keep_float is None:
        keep_float = float_modules(network) if isinstance(network, MobileNetwork) else ()
    if keep_float:
        if not hasattr(quantizer, 'set_filter_function'):
            raise MobileExportError(
                f'{type(quantizer).__name__} cannot leave modules in fp32 (LiteRT: '
                f'set_module_name(name, None) fails with "quantization_config == None is not '
                f'supported yet"); quantize everything (--int8-float with no name)')
        known = {name for name, _ in network.model.named_modules()}
        unknown = [name for name in keep_float if name not in known]
        if unknown:
            raise MobileExportError(f'no module {unknown} to keep in fp32; the network has '
                                    f'e.g. {sorted(known)[1:6]}')
        quantizer.set_filter_function(_outside(keep_float))
    graph = export_program(network, example, max_batch, nearest).module()
    unshare_weights(graph)
    prepared = prepare_pt2e(graph, quantizer)
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
            seen += 1
    if not seen:
        raise MobileExportError('int8 needs calibration images: none were given')
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def delegation(edge_program) -> Dict:
    """How much of a lowered program XNNPACK runs (ExecuTorch's delegation info):
    delegated and non-delegated op counts, the delegated subgraphs, and the
    op types left to ExecuTorch's portable kernels."""
    from executorch.devtools.backend_debug import get_delegation_info
    graph_module = edge_program.exported_program().graph_module
    info = get_delegation_info(graph_module)
    # getitem picks the outputs of a delegate call: bookkeeping, not computation
    left = {op: b.non_delegated for op, b in info.delegation_by_operator.items()
            if b.non_delegated and op != 'getitem'}
    return dict(delegated=info.num_delegated_nodes, non_delegated=sum(left.values()),
                subgraphs=info.num_delegated_subgraphs, non_delegated_ops=left)


def to_executorch(network: nn.Module, example: torch.Tensor, path: str,
                  quantize: bool = False, calibration: Optional[Iterable] = None,
                  max_batch: Optional[int] = DEFAULT_MAX_BATCH,
                  keep_float: Optional[Sequence[str]] = None) -> Dict:
    """Lower ``network`` to XNNPACK and write the ``.pte`` to ``path``.

    ``quantize``: PT2E int8 first (:func:`quantize_pt2e`, calibrated on
    ``calibration``, ``keep_float`` left in fp32). Returns
    :func:`delegation`'s summary plus the path.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    if quantize:
        if calibration is None:
            raise MobileExportError('int8 needs calibration batches (calibration_batches)')
        network = quantize_pt2e(network, example, calibration, max_batch, keep_float)
    program = export_program(network, example, max_batch)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    summary = delegation(edge)
    executorch_program = edge.to_executorch()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'wb') as f:
        executorch_program.write_to_file(f)
    return dict(summary, path=path)


def coreml_ops(mlmodel) -> Counter:
    """The MIL operations of a converted Core ML model, by type (``const`` left out)."""
    program = mlmodel._mil_program
    ops = Counter()

    def walk(block):
        for op in block.operations:
            if op.op_type != 'const':
                ops[op.op_type] += 1
            for inner in getattr(op, 'blocks', []):
                walk(inner)
    for function in program.functions.values():
        walk(function)
    return ops


def to_coreml(network: nn.Module, example: torch.Tensor, path: str):
    """Convert ``network`` at ``example``'s shape (static) to a Core ML ML
    program (fp16 compute, coremltools' default) saved as ``path``
    (``.mlpackage``). Conversion runs anywhere coremltools installs; running
    the package needs macOS / iOS (coremltools cannot predict on Linux).

    Returns:
        tuple: the ``MLModel`` and :func:`coreml_ops` of it.
    """
    import coremltools as ct
    program = export_program(network, example, max_batch=None).run_decompositions({})
    mlmodel = ct.convert(program, convert_to='mlprogram',
                         minimum_deployment_target=ct.target.iOS17)
    os.makedirs(osp.dirname(osp.abspath(path)) or '.', exist_ok=True)
    mlmodel.save(path)
    return mlmodel, coreml_ops(mlmodel)


# ------------------------------------------------------------------ LiteRT
def to_litert(network: nn.Module, example: torch.Tensor, path: str, quantize: bool = False,
              calibration: Optional[Iterable] = None) -> Dict:
    """Convert ``network`` with litert-torch to a LiteRT ``.tflite`` at ``path``,
    at ``example``'s shape, batch included (static).

    fp32: ``litert_torch.convert`` of the network (``torch.export`` inside
    it), nearest upsamplings by whole factors as :class:`NearestAsConcat`
    (exact), which LiteRT's XNNPACK delegate takes. (int8 keeps them as
    resizes, on LiteRT's own kernels: with the rewrite, litert-torch's
    conversion passes fail on the quantized graph, ``Sizes of tensors must
    match except in dimension 4``.) ``quantize``:
    litert-torch's own PT2E path first (its ``PT2EQuantizer`` with
    ``get_symmetric_quantization_config(is_per_channel=True)``: int8 weights
    per channel, histogram observers, calibrated on ``calibration``, split
    into batches of ``example``'s size; every layer, as that quantizer leaves
    no module in fp32), then the converter in its static-int8 mode, which
    gives a fully integer file: int8 input and outputs, their scales in the
    file (:class:`LiteRTModel` converts).

    Why the batch is static: with a dynamic one (``dynamic_shapes``) the files
    convert, the fp32 classifier even runs, but LiteRT cannot allocate the int8
    classifier nor the fp32 RetinaNet (``XNNPack delegate failed to reshape
    runtimeNode N (TfLiteXNNPackDelegate) failed to prepare``). An app runs
    batch 1; :class:`LiteRTModel` runs a larger batch in chunks.

    Returns :func:`litert_delegation` of the file plus its path.
    """
    import litert_torch
    if quantize:
        from litert_torch.quantize.pt2e_quantizer import (PT2EQuantizer,
                                                          get_symmetric_quantization_config)
        from litert_torch.quantize.quant_config import QuantConfig
        if calibration is None:
            raise MobileExportError('int8 needs calibration batches (calibration_batches)')
        quantizer = PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True))
        batch = len(example)
        calibration = [b[i:i + batch] for b in calibration for i in range(0, len(b), batch)
                       if len(b[i:i + batch]) == batch]
        graph = quantize_pt2e(network, example, calibration, max_batch=None, keep_float=(),
                              quantizer=quantizer, fold_quantize=False,
                              nearest=None)
        # the network was exported in eval mode; the graph module's flag says
        # training all the same, and litert-torch warns on the flag
        graph.training = False
        with torch.no_grad():
            edge = litert_torch.convert(graph, (example,),
                                        quant_config=QuantConfig(pt2e_quantizer=quantizer))
    else:
        with torch.no_grad(), NearestAsConcat().record(network, example):
            edge = litert_torch.convert(network, (example,))
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    edge.export(path)
    return dict(litert_delegation(path), path=path)


def _interpreter(path: str, threads: Optional[int] = None):
    from ai_edge_litert.interpreter import Interpreter
    if not osp.isfile(path):
        raise MobileExportError(f'{path!r} does not exist')
    # the default op resolver applies LiteRT's default delegate: XNNPACK
    return Interpreter(model_path=path, num_threads=threads)


def litert_delegation(path: str) -> Dict:
    """How much of a ``.tflite`` LiteRT's XNNPACK delegate takes, as
    :func:`delegation` says it for ExecuTorch: delegated and non-delegated op
    counts, the delegated partitions, the op types LiteRT's own kernels run.

    Read from the interpreter after ``allocate_tensors`` (when the default
    XNNPACK delegate has replaced what it takes by ``DELEGATE`` nodes): the
    execution plan is walked back from the outputs; every original op reached
    outside a delegate runs on LiteRT's kernels.
    """
    interpreter = _interpreter(path, 1)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    delegates = [o for o in ops if o['op_name'] == 'DELEGATE']
    original = [o for o in ops if o['op_name'] != 'DELEGATE']
    made_by = {int(t): o for o in original for t in o['outputs']}
    made_by.update({int(t): d for d in delegates for t in d['outputs']})
    needed = [int(t) for t in interpreter._interpreter.OutputIndices()]
    seen, used, left = set(), set(), {}
    while needed:
        tensor = needed.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        node = made_by.get(tensor)
        if node is None:  # an input or a constant
            continue
        if node['op_name'] == 'DELEGATE':
            used.add(node['index'])
        else:
            left[node['index']] = node
        needed += [int(i) for i in node['inputs'] if i >= 0]
    left_ops = Counter(node['op_name'] for node in left.values())
    return dict(delegated=len(original) - len(left), non_delegated=len(left),
                subgraphs=len(used), non_delegated_ops=dict(left_ops))


class LiteRTModel:
    """A ``.tflite`` in LiteRT's interpreter (XNNPACK delegate, ``threads``
    threads): ``model(images)`` -> list of output tensors, in the network's
    order. A fully integer file (int8) gets its input quantized and its
    outputs dequantized with the scales the file holds, as an app does; a
    file with a static batch runs a larger batch in chunks of that size."""

    def __init__(self, path: str, threads: Optional[int] = None):
        import numpy as np
        self.np, self.path = np, path
        self.interpreter = _interpreter(path, threads)
        self.runner = self.interpreter.get_signature_runner()
        self.input_name, self.input = next(iter(self.runner.get_input_details().items()))
        # litert-torch names the outputs output_0, output_1, ...: the network's order
        self.outputs = sorted(self.runner.get_output_details().items(),
                              key=lambda item: int(item[0].rsplit('_', 1)[-1]))
        batch = int(self.input['shape_signature'][0])
        self.batch = None if batch < 0 else batch

    def _quantize(self, x, details):
        scale, zero = details['quantization']
        return self.np.clip(self.np.round(x / scale) + zero, -128, 127).astype(details['dtype'])

    def _run(self, x):
        np = self.np
        if self.input['dtype'] != np.float32:
            x = self._quantize(x, self.input)
        result = self.runner(**{self.input_name: x})
        outputs = []
        for name, details in self.outputs:
            value = result[name]
            if value.dtype != np.float32:
                scale, zero = details['quantization']
                value = (value.astype(np.float32) - zero) * scale
            outputs.append(torch.from_numpy(np.ascontiguousarray(value)))
        return outputs

    def __call__(self, images: torch.Tensor) -> List[torch.Tensor]:
        x = images.detach().contiguous().numpy()
        if self.batch is None or len(x) == self.batch:
            return self._run(x)
        parts = []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = self.np.concatenate([chunk, self.np.zeros((pad, *chunk.shape[1:]),
                                                                  chunk.dtype)])
            parts.append([o[:len(o) - pad] for o in self._run(chunk)])
        return [torch.cat(chunks) for chunks in zip(*parts)]


# ------------------------------------------------------------------ runtime
def set_threads(threads: int):
    """XNNPACK's thread pool size in ExecuTorch's Python runtime."""
    from executorch.extension.pybindings import portable_lib
    reset = getattr(portable_lib, '_unsafe_reset_threadpool', None)
    if reset is not None:
        reset(int(threads))


class ExecuTorchModel:
    """A ``.pte`` loaded in ExecuTorch's Python runtime: ``model(images)`` ->
    list of output tensors. ``threads``: XNNPACK's thread pool (None: keep)."""

    def __init__(self, path: str, threads: Optional[int] = None):
        from executorch.runtime import Runtime
        if not osp.isfile(path):
            raise MobileExportError(f'{path!r} does not exist')
        if threads:
            set_threads(threads)
        self.path = path
        self.program = Runtime.get().load_program(path)
        self.method = self.program.load_method('forward')

    def __call__(self, images: torch.Tensor) -> List[torch.Tensor]:
        return list(self.method.execute([images.contiguous()]))


# ------------------------------------------------------------------ host side
def host_predictions(kind: str, model: nn.Module, outputs: Sequence[torch.Tensor],
                     data_samples, shape: Sequence[int]):
    """The raw outputs of one batch -> the batch's data samples with predictions,
    through the model's own post-processing code (what its ``predict`` calls
    after the network): mmdet's ``predict_by_feat`` (rescaled to the original
    image), mmseg's ``predict_by_feat`` + ``postprocess_result`` (the padding to
    ``shape`` cropped off), mmpretrain's ``head._get_predictions``."""
    outputs = [torch.as_tensor(o) for o in outputs]
    with torch.no_grad():
        if kind == 'classifier':
            return model.head._get_predictions(outputs[0], data_samples)
        if kind == 'detector':
            levels = len(outputs) // 2
            metas = [s.metainfo for s in data_samples]
            results = model.bbox_head.predict_by_feat(
                outputs[:levels], outputs[levels:], batch_img_metas=metas, rescale=True)
            return model.add_pred_to_datasample(data_samples, results)
        if kind == 'segmentor':
            H, W = shape
            for sample in data_samples:
                h, w = sample.metainfo['img_shape'][:2]
                # mmseg's own way to say the input was padded bottom-right
                sample.set_metainfo(dict(img_shape=(H, W), pad_shape=(H, W),
                                         padding_size=[0, W - w, 0, H - h]))
            metas = [s.metainfo for s in data_samples]
            logits = model.decode_head.predict_by_feat(outputs[0], metas)
            return model.postprocess_result(logits, data_samples)
    raise MobileExportError(f'no host post-processing for kind {kind!r}')


def evaluate_mobile(runners: Sequence, cfg, model: nn.Module, kind: str,
                    shape: Sequence[int], max_batch: int = DEFAULT_MAX_BATCH) -> List[Dict]:
    """Score exported networks with the config's test evaluator on its test split.

    ``runners``: callables ``images -> raw outputs`` (:class:`ExecuTorchModel`,
    or the PyTorch network itself for the reference), run on the same
    batches: the images through the test pipeline and ``model``'s data
    preprocessor, padded to ``shape``; the outputs through
    :func:`host_predictions`; the config's evaluator (CocoMetric, IoUMetric,
    Accuracy) scores them.
    """
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner

    from casvit_mm.deploy.ort_quantization import batch_images
    if kind == 'backbone':
        raise MobileExportError('evaluation needs a whole model (a backbone has no metric)')
    loader_cfg = copy.deepcopy(cfg.get('test_dataloader') or cfg.val_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False,
                      batch_size=min(max_batch, loader_cfg.get('batch_size', 1)))
    loader = Runner.build_dataloader(loader_cfg)
    evaluator_cfg = cfg.get('test_evaluator') or cfg.val_evaluator
    evaluators = [Evaluator(copy.deepcopy(evaluator_cfg)) for _ in runners]
    for ev in evaluators:
        ev.dataset_meta = loader.dataset.metainfo
    for data in loader:
        images = batch_images(data, model, 'backbone', shape)
        for run, ev in zip(runners, evaluators):
            with torch.no_grad():
                outputs = run(images)
            samples = host_predictions(kind, model, outputs,
                                       copy.deepcopy(data['data_samples']), shape)
            ev.process(data_samples=samples, data_batch=data)
    return [ev.evaluate(len(loader.dataset)) for ev in evaluators]


# ------------------------------------------------------------------ entry point
def export_mobile(model: nn.Module, fmt: str, path: str, shape: Sequence[int],
                  kind: Optional[str] = None, calibration: Optional[Iterable] = None,
                  max_batch: int = DEFAULT_MAX_BATCH,
                  keep_float: Optional[Sequence[str]] = None) -> Dict:
    """Export ``model`` (a trained CAS-ViT classifier, single-stage detector,
    segmentor or backbone, training layout) to one mobile format.

    Args:
        model: the model, unchanged (a deployed copy is exported).
        fmt: ``'executorch'`` (XNNPACK fp32 ``.pte``), ``'executorch-int8'``
            (PT2E int8 ``.pte``; needs ``calibration``), ``'coreml'``
            (``.mlpackage``), ``'litert'`` / ``'litert-int8'`` (``.tflite``,
            :func:`to_litert`; at batch 1, what an app runs).
        path: the file to write.
        shape: ``(H, W)`` of the exported input.
        kind: :func:`mobile_kind` of the model (default: detected).
        calibration: batches of preprocessed images (:func:`calibration_batches`).
        max_batch: the largest batch the ``.pte`` takes.
        keep_float: int8: modules left in fp32 (default :func:`float_modules`).

    Returns:
        dict: ``path``, ``kind`` and, for ExecuTorch and LiteRT, the delegation
        summary (:func:`delegation`, :func:`litert_delegation`), for Core ML
        the MIL op inventory.
    """
    if fmt not in FORMATS:
        raise MobileExportError(f'format must be one of {FORMATS}, got {fmt!r}')
    kind = kind or mobile_kind(model)
    network = mobile_network(model, kind)
    example = torch.zeros(1, 3, *shape)
    if fmt == 'coreml':
        _, ops = to_coreml(network, example, path)
        return dict(path=path, kind=kind, coreml_ops=dict(ops))
    if fmt.startswith('litert'):
        if keep_float:
            raise MobileExportError('litert-int8 quantizes every layer: LiteRT\'s PT2E '
                                    'quantizer leaves no module in fp32')
        info = to_litert(network, example, path, quantize=fmt == 'litert-int8',
                         calibration=calibration)
        return dict(info, kind=kind)
    info = to_executorch(network, example, path, quantize=fmt == 'executorch-int8',
                         calibration=calibration, max_batch=max_batch, keep_float=keep_float)
    return dict(info, kind=kind)
