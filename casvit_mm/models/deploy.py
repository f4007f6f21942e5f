"""Deploy mode for CAS-ViT: fold every BatchNorm, share the q/k ops, go NHWC.

Why: CAS-ViT is meant to be fast, but a block in the training layout runs
about 25 small ops, many of them memory-bound passes over the large stride-4
feature maps (six BatchNorms, gate multiplications, additions). Inference
needs none of the BatchNorms, q and k can share their ops, and oneDNN runs
the many 1x1 and depthwise convolutions fastest on channels-last tensors.
Every rewrite below is exact algebra; results change only by float rounding.

Per block (:class:`DeployAdditiveBlock`):

* local integration: its BN folded into the conv1x1 before it;
* ``norm1`` folded into the 1x1 q/k and v projections after it and ``norm2``
  into ``mlp.fc1`` (a BN in eval mode is a per-channel affine map, and a 1x1
  convolution without padding of an affine map is again a 1x1 convolution);
* q and k come from one 1x1 conv (2C channels); their spatial operations run
  as one depthwise conv over 2C channels (BNs folded), one 1x1 conv to the two
  gates, one sigmoid and one broadcast multiplication; their channel gates as
  one (block-diagonal) matrix product; ``q * cq + k * ck`` as one ``addcmul``;
* on channels-last CPU tensors, every activation, residual addition and the
  ``* v`` that directly follows a convolution runs inside it (oneDNN's fused
  convolution kernels, see :func:`use_fused_kernels`): GELU, ReLU, sigmoid,
  ``+ x`` and ``* v`` then cost no pass over memory of their own. Elsewhere
  (NCHW, tracing, export, ``torch.compile``, input gradients) the same
  arithmetic runs as plain ops.

Stem and downsamplings: BN folded into the convolution before it. The output
norms ``norm{i}`` stay (within the backbone nothing follows them);
:func:`switch_model_to_deploy` folds them into the 1x1 lateral convolutions of
an FPN neck where that is exact.

What each step is worth is measured in the README ("Speed"). Tried and
dropped: the channel gates as per-sample weights of ``dwc`` (a grouped conv
with two inputs per group runs about twice as slow in oneDNN as a depthwise
conv), in-place gate multiplications (no measurable gain). ``torch.compile``
is an option of :func:`switch_model_to_deploy`.

A deployed ``CASViT`` refuses ``train()`` (see ``CASViT.train``); build a fresh
model to train. The deployed parameters do not require gradients (gradients
with respect to the input still work).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ['DeployAdditiveBlock', 'fold_casvit', 'switch_model_to_deploy',
           'fold_output_norms_into_fpn']


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


def fold_bn_into_next_1x1(weight, bias, bn):
    """Weight and bias of ``conv1x1(bn(x))`` as one conv1x1 (float64).

    Exact because a 1x1 convolution has no padding: every output pixel sees
    exactly the normalised pixel under it.
    """
    scale, shift = bn_affine(bn)
    w = weight.double().flatten(1)  # (out, in)
    new_bias = w @ shift
    if bias is not None:
        new_bias = new_bias + bias.double()
    return w * scale, new_bias


def _set(conv, weight, bias, like):
    conv.weight = nn.Parameter(weight.to(like), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.to(like), requires_grad=False)


# ------------------------------------------------------- fused conv kernels
# oneDNN's convolution with a fused activation or addition: the op torch.compile
# (inductor) emits for these patterns on CPU, here called directly in eager
# mode. It saves a full pass over the output, which matters for the large
# stride-4 maps. It exists in every CPU build of torch with oneDNN; without it
# (or when tracing, compiling, exporting, or recording gradients, which it does
# not support) the plain ops run instead.
_POINTWISE = getattr(getattr(torch.ops, 'mkldnn', None), '_convolution_pointwise', None)
_ACTIVATIONS = {'gelu': F.gelu, 'relu': F.relu, 'sigmoid': torch.sigmoid}


def use_fused_kernels(x):
    """Whether :func:`conv_act` / :func:`conv_binary` may fuse on input ``x``."""
    return (_POINTWISE is not None and x.device.type == 'cpu'
            and x.dtype == torch.float32
            and x.is_contiguous(memory_format=torch.channels_last)
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and not torch.onnx.is_in_onnx_export())


def _conv_args(conv):
    return conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups


def conv_act(conv, x, act, fused):
    """``act(conv(x))`` for ``act`` in gelu (exact, erf), relu, sigmoid."""
    if fused:
        return _POINTWISE(x, *_conv_args(conv), act, [], 'none' if act == 'gelu' else None)
    return _ACTIVATIONS[act](conv(x))


def conv_binary(conv, x, other, op, fused):
    """``conv(x) + other`` (``op='add'``) or ``conv(x) * other`` (``'mul'``)."""
    if fused:
        w, b, padding, stride, dilation, groups = _conv_args(conv)
        return _POINTWISE.binary(x, other, w, b, padding, stride, dilation, groups,
                                 op, None, None, [], None)
    # in place into the fresh conv output: no backward needs its old value for add
    return conv(x).add_(other) if op == 'add' else conv(x) * other


# --------------------------------------------------------------- the block
class DeployAdditiveBlock(nn.Module):
    """An ``AdditiveBlock`` with its BNs folded and q/k fused (see module doc).

    Built from a trained block with :meth:`from_block`; computes the same
    function as that block in eval mode.
    """

    def __init__(self, dim, hidden):
        super().__init__()
        self.dim = dim
        # local integration: conv1x1 (BN folded) -> dwconv3x3 -> GELU -> conv1x1
        self.li_pw1 = nn.Conv2d(dim, dim, 1)
        self.li_dw = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.li_pw2 = nn.Conv2d(dim, dim, 1)
        # token mixer, norm1 folded into qk and v; q and k stacked (2C channels)
        self.qk = nn.Conv2d(dim, 2 * dim, 1)
        self.v = nn.Conv2d(dim, dim, 1)
        self.spatial_dw = nn.Conv2d(2 * dim, 2 * dim, 3, 1, 1, groups=2 * dim)
        self.spatial_gate = nn.Conv2d(2 * dim, 2, 1, bias=False)
        self.channel_gate = nn.Linear(2 * dim, 2 * dim, bias=False)
        self.dwc = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        # MLP, norm2 folded into fc1
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    @classmethod
    @torch.no_grad()
    def from_block(cls, block):
        """Fold a trained ``AdditiveBlock`` (any train/eval state: its BN
        running statistics are used)."""
        attn, mlp = block.attn, block.mlp
        dim = attn.dwc.in_channels
        new = cls(dim, mlp.fc1.out_channels)
        like = attn.qkv.weight

        li = block.local_perception.network  # conv1x1, BN, dwconv, GELU, conv1x1
        new.li_pw1 = fuse_conv_bn_eval(li[0].eval(), li[1].eval())
        new.li_dw.load_state_dict(li[2].state_dict())
        new.li_pw2.load_state_dict(li[4].state_dict())

        w, b = fold_bn_into_next_1x1(attn.qkv.weight, attn.qkv.bias, block.norm1)
        _set(new.qk, w[:2 * dim].reshape(2 * dim, dim, 1, 1), b[:2 * dim], like)
        _set(new.v, w[2 * dim:].reshape(dim, dim, 1, 1), b[2 * dim:], like)

        spatial_q, channel_q = attn.oper_q
        spatial_k, channel_k = attn.oper_k
        dw_q = fuse_conv_bn_eval(spatial_q.block[0].eval(), spatial_q.block[1].eval())
        dw_k = fuse_conv_bn_eval(spatial_k.block[0].eval(), spatial_k.block[1].eval())
        _set(new.spatial_dw, torch.cat([dw_q.weight, dw_k.weight]),
             torch.cat([dw_q.bias, dw_k.bias]), like)
        gate = torch.zeros(2, 2 * dim, dtype=torch.float64)
        gate[0, :dim] = spatial_q.block[3].weight.double().flatten()
        gate[1, dim:] = spatial_k.block[3].weight.double().flatten()
        _set(new.spatial_gate, gate.view(2, 2 * dim, 1, 1), None, like)
        channel = torch.zeros(2 * dim, 2 * dim, dtype=torch.float64)
        channel[:dim, :dim] = channel_q.block[1].weight.double().flatten(1)
        channel[dim:, dim:] = channel_k.block[1].weight.double().flatten(1)
        _set(new.channel_gate, channel, None, like)
        new.dwc.load_state_dict(attn.dwc.state_dict())
        new.proj.load_state_dict(attn.proj.state_dict())

        w, b = fold_bn_into_next_1x1(mlp.fc1.weight, mlp.fc1.bias, block.norm2)
        _set(new.fc1, w.view(*w.shape, 1, 1), b, like)
        new.fc2.load_state_dict(mlp.fc2.state_dict())
        new.requires_grad_(False)
        return new.eval().to(like.device)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError('A deployed CAS-ViT block (BatchNorm folded) cannot be '
                               'trained: build a fresh model to train.')
        return super().train(mode)

    def forward(self, x):
        fused = use_fused_kernels(x)
        # x = x + LocalIntegration(x)
        x = conv_binary(self.li_pw2, conv_act(self.li_dw, self.li_pw1(x), 'gelu', fused),
                        x, 'add', fused)
        # x = x + CATM(norm1(x)), with q and k stacked along the channels
        qk, v = self.qk(x), self.v(x)
        B, C2, H, W = qk.shape
        spatial = conv_act(self.spatial_dw, qk, 'relu', fused)
        spatial = conv_act(self.spatial_gate, spatial, 'sigmoid', fused)
        qk = qk.view(B, 2, C2 // 2, H, W) * spatial.view(B, 2, 1, H, W)
        channel = torch.sigmoid(self.channel_gate(qk.mean((3, 4)).view(B, C2)))
        (q, k), (cq, ck) = qk.unbind(1), channel.view(B, 2, C2 // 2, 1, 1).unbind(1)
        mixed = conv_binary(self.dwc, (q * cq).addcmul_(k, ck), v, 'mul', fused)
        x = conv_binary(self.proj, mixed, x, 'add', fused)
        # x = x + MLP(norm2(x))
        return conv_binary(self.fc2, conv_act(self.fc1, x, 'gelu', fused), x, 'add', fused)


# ------------------------------------------------------------ the backbone
def _fuse_sequential_conv_bn(seq):
    """``Sequential(conv, BN, [act], ...)`` with every BN folded into its conv."""
    layers, modules = [], list(seq)
    for i, m in enumerate(modules):
        if isinstance(m, _BatchNorm):
            continue
        if (isinstance(m, nn.Conv2d) and i + 1 < len(modules)
                and isinstance(modules[i + 1], _BatchNorm)):
            m = fuse_conv_bn_eval(m.eval(), modules[i + 1].eval())
        elif isinstance(m, nn.ReLU):
            m = nn.ReLU(inplace=True)
        layers.append(m)
    return nn.Sequential(*layers)


@torch.no_grad()
def fold_casvit(backbone):
    """Rewrite a ``CASViT`` in place for inference (called by ``switch_to_deploy``).

    Folds the stem, downsampling and in-block BatchNorms and replaces every
    block by a :class:`DeployAdditiveBlock`; ``CASViT.forward`` runs unchanged.
    Running it on an already deployed backbone does nothing.
    """
    from .casvit import AdditiveBlock
    if getattr(backbone, 'deployed', False):
        return backbone
    backbone.eval()
    backbone.patch_embed = _fuse_sequential_conv_bn(backbone.patch_embed)
    for i, down in enumerate(backbone.downsamples):
        backbone.downsamples[i] = _fuse_sequential_conv_bn(down)
    for stage in backbone.stages:
        for j, block in enumerate(stage):
            if isinstance(block, AdditiveBlock):
                stage[j] = DeployAdditiveBlock.from_block(block)
    backbone.requires_grad_(False)
    return backbone.eval()


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


def switch_model_to_deploy(model, channels_last=True, compile=False, fold_output_norms=True):
    """Put every ``CASViT`` inside ``model`` into deploy mode; return ``model`` in eval mode.

    Works on a bare backbone, a detector, a segmentor or a classifier (for an
    inferencer: ``switch_model_to_deploy(inferencer.model)``). Outputs equal
    the eval-mode model's up to float rounding; the model can no longer train.

    Args:
        model (nn.Module): The model; changed in place.
        channels_last (bool): Store the CAS-ViT weights channels-last, so that
            its convolutions run in the NHWC layout oneDNN is fastest with on
            CPUs. Defaults to True.
        compile (bool | dict): Also ``torch.compile`` each CAS-ViT (``dict``:
            keyword arguments for ``torch.compile``). Compiling takes about a
            minute and recompiles for every new input shape: worth it for a
            fixed input size. Defaults to False.
        fold_output_norms (bool): Where ``model.neck`` is an FPN directly fed
            by ``model.backbone``, fold the backbone's output BNs into its 1x1
            lateral convs (see :func:`fold_output_norms_into_fpn`). Defaults
            to True.
    """
    from .casvit import CASViT
    model.eval()
    inner = getattr(model, 'module', model)  # a (Distributed)DataParallel wrapper
    backbones = [m for m in model.modules() if isinstance(m, CASViT)]
    if not backbones:
        raise ValueError(f'switch_model_to_deploy found no CASViT inside '
                         f'{type(model).__name__}: deploy mode applies to CAS-ViT models only.')
    for backbone in backbones:
        backbone.switch_to_deploy()
    neck = getattr(inner, 'neck', None)
    if (fold_output_norms and isinstance(getattr(inner, 'backbone', None), CASViT)
            and isinstance(neck, nn.Module)):
        fold_output_norms_into_fpn(inner.backbone, neck)
    for backbone in backbones:
        if channels_last:
            backbone.to(memory_format=torch.channels_last)
        if compile:
            backbone.compile(**(compile if isinstance(compile, dict) else {}))
    return model
