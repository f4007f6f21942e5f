"""CAS-ViT backbone.

CAS-ViT: Convolutional Additive Self-attention Vision Transformers for Efficient
Mobile Applications (Zhang et al., 2024, https://arxiv.org/abs/2408.03703).
Written from the paper's description; the module layout follows the official
implementation (https://github.com/Tianfang-Zhang/CAS-ViT, MIT licence) so that
its checkpoints convert with a renaming only (see :mod:`casvit_mm.checkpoint`).
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint.backbone import convert_for_backbone
from .fusion import (bn_affine, conv_act, conv_binary, conv_out, conv_plain, fold_bn_into_conv,
                     fold_bn_into_next_1x1, set_conv, use_fused_kernels)


class Downsample(nn.Sequential):
    """conv3x3 stride 2 (bias) -> BN: the downsampling between stages.

    ``deploy=True``: the conv alone, the BN folded into it.
    """

    def __init__(self, in_channels, out_channels, deploy=False):
        layers = [nn.Conv2d(in_channels, out_channels, 3, 2, 1)]
        if not deploy:
            layers.append(nn.BatchNorm2d(out_channels))
        super().__init__(*layers)
        self.deploy = deploy

    def forward(self, x):
        if self.deploy:  # through the same oneDNN op (pre-packed weight) as the blocks
            return conv_plain(self[0], x, use_fused_kernels(x))
        return super().forward(x)

    @torch.no_grad()
    def switch_to_deploy(self):
        if self.deploy:
            return
        conv, bn = self
        set_conv(conv, *fold_bn_into_conv(conv, bn), like=conv.weight)
        del self[1]
        self.deploy = True


class Stem(nn.Sequential):
    """Two stride-2 conv3x3 -> BN -> ReLU: the stride-4 patch embedding.

    ``deploy=True``: conv -> ReLU twice (BNs folded), each pair one fused
    kernel on channels-last CPU tensors.
    """

    def __init__(self, in_channels, out_channels, deploy=False):
        mid = out_channels // 2
        if deploy:
            super().__init__(nn.Conv2d(in_channels, mid, 3, 2, 1), nn.ReLU(),
                             nn.Conv2d(mid, out_channels, 3, 2, 1), nn.ReLU())
        else:
            super().__init__(
                nn.Conv2d(in_channels, mid, 3, 2, 1), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, out_channels, 3, 2, 1), nn.BatchNorm2d(out_channels),
                nn.ReLU())
        self.deploy = deploy

    def forward(self, x):
        if not self.deploy:
            return super().forward(x)
        fused = use_fused_kernels(x)
        return conv_act(self[2], conv_act(self[0], x, 'relu', fused), 'relu', fused)

    @torch.no_grad()
    def switch_to_deploy(self):
        if self.deploy:
            return
        conv1, bn1, _, conv2, bn2, _ = self
        for conv, bn in ((conv1, bn1), (conv2, bn2)):
            set_conv(conv, *fold_bn_into_conv(conv, bn), like=conv.weight)
        del self[4], self[1]  # -> conv, ReLU, conv, ReLU
        self.deploy = True


class LocalIntegration(nn.Module):
    """conv1x1 -> BN -> depthwise conv3x3 -> GELU -> conv1x1 (all convs with bias).

    ``deploy=True``: ``pw1`` (the first conv with the BN folded), ``dw``,
    ``pw2``, run by :meth:`forward_deploy` with GELU and the block's residual
    addition fused into the convolutions before them.
    """

    def __init__(self, dim, deploy=False):
        super().__init__()
        self.deploy = deploy
        if deploy:
            self.pw1 = nn.Conv2d(dim, dim, 1)
            self.dw = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
            self.pw2 = nn.Conv2d(dim, dim, 1)
        else:
            self.network = nn.Sequential(
                nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim),
                nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.GELU(),
                nn.Conv2d(dim, dim, 1))

    def forward(self, x):
        if self.deploy:
            return self.forward_deploy(x, None, use_fused_kernels(x))
        return self.network(x)

    def forward_deploy(self, x, shortcut, fused):
        """``shortcut + LI(x)`` (``LI(x)`` if ``shortcut`` is None) in deploy mode."""
        hidden = conv_act(self.dw, conv_plain(self.pw1, x, fused), 'gelu', fused)
        return conv_out(self.pw2, hidden, shortcut, fused)

    @torch.no_grad()
    def switch_to_deploy(self):
        if self.deploy:
            return
        pw1, bn, dw, _, pw2 = self.network
        self.pw1 = set_conv(pw1, *fold_bn_into_conv(pw1, bn), like=pw1.weight)
        self.dw, self.pw2 = dw, pw2
        del self.network
        self.deploy = True


class SpatialOperation(nn.Module):
    """Gate every position: ``x * sigmoid(conv1x1(ReLU(BN(dwconv3x3(x)))))``."""

    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True), nn.Conv2d(dim, 1, 1, bias=False), nn.Sigmoid())

    def forward(self, x):
        return x * self.block(x)

    def fused_parameters(self):
        """``(dw weight, dw bias, gate weight (C,))`` in float64, the BN folded:
        the gate is ``sigmoid(gate @ relu(dwconv(x)))``."""
        dw, bn, _, gate, _ = self.block
        return (*fold_bn_into_conv(dw, bn), gate.weight.double().flatten())


class ChannelOperation(nn.Module):
    """Gate every channel: ``x * sigmoid(conv1x1(global_avg_pool(x)))``."""

    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1, bias=False),
            nn.Sigmoid())

    def forward(self, x):
        return x * self.block(x)

    def fused_parameters(self):
        """The ``(C, C)`` matrix of the gate ``sigmoid(W @ mean(x))``, float64."""
        return self.block[1].weight.double().flatten(1)


class ConvAdditiveTokenMixer(nn.Module):
    """CATM: ``proj(dwc(Phi(q) + Phi(k)) * v)`` with Phi = channel(spatial(.)).

    The additive similarity of the paper replaces softmax attention; q and k
    have their own (unshared) spatial and channel operations.

    ``deploy=True`` (see :meth:`switch_to_deploy`): the block's pre-norm is
    folded into the projections; q and k come from one 1x1 conv (2C
    channels) and share one depthwise conv, one gate conv, one sigmoid and
    one multiplication for their spatial gates, one block-diagonal matrix
    product for their channel gates and one ``addcmul``.
    """

    def __init__(self, dim, drop_rate=0., deploy=False):
        super().__init__()
        self.deploy = deploy
        if deploy:
            self.qk = nn.Conv2d(dim, 2 * dim, 1)
            self.v = nn.Conv2d(dim, dim, 1)
            self.spatial_dw = nn.Conv2d(2 * dim, 2 * dim, 3, 1, 1, groups=2 * dim)
            self.spatial_gate = nn.Conv2d(2 * dim, 2, 1, bias=False)
            self.channel_gate = nn.Linear(2 * dim, 2 * dim, bias=False)
        else:
            self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
            self.oper_q = nn.Sequential(SpatialOperation(dim), ChannelOperation(dim))
            self.oper_k = nn.Sequential(SpatialOperation(dim), ChannelOperation(dim))
        self.dwc = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj_drop = nn.Dropout(drop_rate)

    def forward(self, x):
        if self.deploy:
            return self.forward_deploy(x, None, use_fused_kernels(x))
        q, k, v = self.qkv(x).chunk(3, dim=1)
        out = self.proj(self.dwc(self.oper_q(q) + self.oper_k(k)) * v)
        return self.proj_drop(out)

    def forward_deploy(self, x, shortcut, fused):
        """``shortcut + CATM(norm(x))`` (no shortcut if None) in deploy mode."""
        if self.export_form:
            return self.forward_export(x, shortcut)
        qk, v = conv_plain(self.qk, x, fused), conv_plain(self.v, x, fused)
        B, C2, H, W = qk.shape
        spatial = conv_act(self.spatial_dw, qk, 'relu', fused)
        spatial = conv_act(self.spatial_gate, spatial, 'sigmoid', fused)
        qk = qk.view(B, 2, C2 // 2, H, W) * spatial.view(B, 2, 1, H, W)
        channel = torch.sigmoid(self.channel_gate(qk.mean((3, 4)).view(B, C2)))
        (q, k), (cq, ck) = qk.unbind(1), channel.view(B, 2, C2 // 2, 1, 1).unbind(1)
        mixed = conv_binary(self.dwc, (q * cq).addcmul_(k, ck), v, 'mul', fused)
        return conv_out(self.proj, mixed, shortcut, fused)

    @torch.no_grad()
    def switch_to_deploy(self, norm=None):
        """Fuse in place; ``norm``: the eval-mode BN applied to this mixer's input
        (the block's ``norm1``), folded into the 1x1 projections."""
        if self.deploy:
            return
        dim, like = self.dwc.in_channels, self.qkv.weight
        if norm is None:
            w, b = self.qkv.weight.double().flatten(1), torch.zeros(3 * dim).double()
        else:
            w, b = fold_bn_into_next_1x1(self.qkv.weight, None, norm)
        self.qk = set_conv(nn.Conv2d(dim, 2 * dim, 1), w[:2 * dim], b[:2 * dim], like)
        self.v = set_conv(nn.Conv2d(dim, dim, 1), w[2 * dim:], b[2 * dim:], like)
        (spatial_q, channel_q), (spatial_k, channel_k) = self.oper_q, self.oper_k
        dw_q, bias_q, gate_q = spatial_q.fused_parameters()
        dw_k, bias_k, gate_k = spatial_k.fused_parameters()
        self.spatial_dw = set_conv(nn.Conv2d(2 * dim, 2 * dim, 3, 1, 1, groups=2 * dim),
                                   torch.cat([dw_q, dw_k]), torch.cat([bias_q, bias_k]), like)
        gate = torch.zeros(2, 2 * dim, dtype=torch.float64)
        gate[0, :dim], gate[1, dim:] = gate_q, gate_k
        self.spatial_gate = set_conv(nn.Conv2d(2 * dim, 2, 1, bias=False), gate, None, like)
        channel = torch.block_diag(channel_q.fused_parameters(), channel_k.fused_parameters())
        self.channel_gate = set_conv(nn.Linear(2 * dim, 2 * dim, bias=False), channel, None,
                                     like)
        del self.qkv, self.oper_q, self.oper_k
        self.deploy = True

    # The export-friendly form: the fused form's weights, split per branch.
    export_form = False

    def forward_export(self, x, shortcut=None):
        """The fused mixer as plain 4-D ops that mobile compilers take whole.

        ``torch.export`` of :meth:`forward_deploy` gives 5-D views, ``unbind``
        (squeeze copies), an ``addcmul`` and 2-D means, which ExecuTorch's
        XNNPACK delegate leaves to portable kernels and Core ML refuses
        (``Unsupported fx node addcmul``; the traced ``C2 // 2`` becomes an
        ``int`` op). Here q and k each have their own 1x1 projection,
        depthwise conv, gate conv and channel gate (a 1x1 conv over a
        ``mean(keepdim=True)``), and no shape is computed in Python. Same
        weights, same function, other float rounding (about 1e-6).
        """
        q, k, v = self.q(x), self.k(x), self.v(x)
        q = q * torch.sigmoid(self.spatial_gate_q(F.relu(self.spatial_dw_q(q))))
        k = k * torch.sigmoid(self.spatial_gate_k(F.relu(self.spatial_dw_k(k))))
        q = q * torch.sigmoid(self.channel_gate_q(q.mean((2, 3), keepdim=True)))
        k = k * torch.sigmoid(self.channel_gate_k(k.mean((2, 3), keepdim=True)))
        out = self.proj(self.dwc(q + k) * v)
        return out if shortcut is None else out + shortcut

    @torch.no_grad()
    def switch_to_export(self, norm=None):
        """Fuse (if not yet) and split the fused q/k modules per branch: the
        export-friendly form (:meth:`forward_export`). Weights are copied,
        not recomputed, so it holds exactly the fused model's numbers."""
        if self.export_form:
            return
        self.switch_to_deploy(norm)
        dim = self.dwc.in_channels

        def conv(in_ch, out_ch, weight, bias=None, kernel=1, groups=1):
            module = nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, groups=groups,
                               bias=bias is not None)
            return set_conv(module, weight.contiguous(), bias, like=weight)

        qk_w, qk_b = self.qk.weight, self.qk.bias
        dw_w, dw_b = self.spatial_dw.weight, self.spatial_dw.bias
        gate, channel = self.spatial_gate.weight.flatten(1), self.channel_gate.weight
        for i, name in enumerate('qk'):
            part = slice(i * dim, (i + 1) * dim)
            setattr(self, name, conv(dim, dim, qk_w[part], qk_b[part]))
            setattr(self, f'spatial_dw_{name}',
                    conv(dim, dim, dw_w[part], dw_b[part], kernel=3, groups=dim))
            setattr(self, f'spatial_gate_{name}', conv(dim, 1, gate[i:i + 1, part]))
            setattr(self, f'channel_gate_{name}', conv(dim, dim, channel[part, part]))
        del self.qk, self.spatial_dw, self.spatial_gate, self.channel_gate
        self.export_form = True


class ConvMlp(nn.Module):
    """conv1x1 C->rC -> GELU -> Dropout -> conv1x1 rC->C -> Dropout.

    ``deploy=True``: the block's pre-norm folded into ``fc1``, GELU and the
    residual addition fused into ``fc1`` / ``fc2`` (:meth:`forward_deploy`).
    """

    def __init__(self, dim, mlp_ratio=4., drop_rate=0., deploy=False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.deploy = deploy
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x):
        if self.deploy:
            return self.forward_deploy(x, None, use_fused_kernels(x))
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def forward_deploy(self, x, shortcut, fused):
        """``shortcut + MLP(norm(x))`` (no shortcut if None) in deploy mode."""
        return conv_out(self.fc2, conv_act(self.fc1, x, 'gelu', fused), shortcut, fused)

    @torch.no_grad()
    def switch_to_deploy(self, norm=None):
        """Fuse in place; ``norm``: the eval-mode BN before this MLP, folded into fc1."""
        if self.deploy:
            return
        if norm is not None:
            set_conv(self.fc1, *fold_bn_into_next_1x1(self.fc1.weight, self.fc1.bias, norm),
                     like=self.fc1.weight)
        self.deploy = True


class AdditiveBlock(nn.Module):
    """One CAS-ViT block: local integration, then CATM and MLP, each pre-normed.

    ``x + LI(x)`` has no drop path (as in the official code); the two other
    residual branches share the block's drop-path rate.

    ``deploy=True`` (or :meth:`switch_to_deploy`): no BatchNorm left (``norm1``
    and ``norm2`` folded into the 1x1 convolutions after them), q/k fused, and
    on channels-last CPU tensors every GELU / ReLU / sigmoid, residual addition
    and ``* v`` after a convolution runs inside it. Same function as the
    trained block in eval mode, up to float rounding.
    """

    def __init__(self, dim, mlp_ratio=4., drop_rate=0., drop_path_rate=0., deploy=False):
        super().__init__()
        self.deploy = deploy
        self.local_perception = LocalIntegration(dim, deploy)
        self.attn = ConvAdditiveTokenMixer(dim, drop_rate, deploy)
        self.mlp = ConvMlp(dim, mlp_ratio, drop_rate, deploy)
        if not deploy:
            self.norm1 = nn.BatchNorm2d(dim)
            self.norm2 = nn.BatchNorm2d(dim)
        self.drop_path = (DropPath(drop_path_rate) if drop_path_rate > 0 and not deploy
                          else nn.Identity())

    export_form = False  # see switch_to_export

    def forward(self, x):
        if self.deploy:
            fused = not self.export_form and use_fused_kernels(x)
            x = self.local_perception.forward_deploy(x, x, fused)
            x = self.attn.forward_deploy(x, x, fused)
            return self.mlp.forward_deploy(x, x, fused)
        x = x + self.local_perception(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    @torch.no_grad()
    def switch_to_deploy(self):
        """Fuse in place for inference (uses the BN running statistics)."""
        if self.deploy:
            return
        self.local_perception.switch_to_deploy()
        self.attn.switch_to_deploy(self.norm1)
        self.mlp.switch_to_deploy(self.norm2)
        del self.norm1, self.norm2
        self.drop_path = nn.Identity()
        self.deploy = True

    @torch.no_grad()
    def switch_to_export(self):
        """The export-friendly form: fused, then the mixer split per branch
        (:meth:`ConvAdditiveTokenMixer.forward_export`), plain ops only."""
        self.switch_to_deploy()
        self.attn.switch_to_export()
        self.export_form = True


class CASViT(BaseModule):
    """CAS-ViT backbone for classification, detection and segmentation.

    A PyTorch implementation of `CAS-ViT: Convolutional Additive Self-attention
    Vision Transformers for Efficient Mobile Applications
    <https://arxiv.org/abs/2408.03703>`_, modified from the official
    implementation (https://github.com/Tianfang-Zhang/CAS-ViT, MIT).

    Four stages at strides 4, 8, 16 and 32. Each requested stage output goes
    through its own BatchNorm (``norm{i}``), as in the official dense backbone.

    Args:
        arch (str | dict): ``'xs'``, ``'s'``, ``'m'``, ``'t'`` (the paper's
            sizes) or ``'l'`` (defined only in the official segmentation code),
            or a dict with keys ``depths`` and ``widths`` (four ints each) and
            optionally ``mlp_ratio``. Defaults to ``'xs'``.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (int | Sequence[int]): Stages to output, 0-3; negative
            indices count from the end. Defaults to ``(0, 1, 2, 3)``.
        frozen_stages (int): Stages to freeze (no gradient, eval mode):
            ``-1`` freezes nothing, ``0`` the stem, ``k`` the stem and stages
            ``0..k-1`` with the downsamplings and output norms among them.
            Defaults to -1.
        norm_eval (bool): Keep every BatchNorm in eval mode in training
            (running statistics frozen, affine still trained), as the official
            detection and segmentation recipes do. Defaults to False.
        drop_rate (float): Dropout after the token mixer and in the MLP.
            Defaults to 0.
        drop_path_rate (float): Stochastic depth; block ``b`` of ``N`` gets
            ``drop_path_rate * b / (N - 1)``. Defaults to 0.
        global_pool (bool): Return globally average-pooled vectors ``(B, C)``
            instead of feature maps -- the classification mode: the official
            classifier is BN -> average pool -> linear heads, i.e. ``norm3``
            followed by the pooling. Defaults to False.
        with_cp (bool): Checkpoint the activations of every block to save
            memory at the cost of a second forward. Defaults to False.
        deploy (bool): Build the fused inference structure directly (every
            block as after :meth:`switch_to_deploy`), to load a fused
            checkpoint strictly -- the ``configs/*/deploy/`` variants set it.
            Such a model cannot be trained. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialisation config.
            ``dict(type='Pretrained', checkpoint=PATH, prefix=...)`` loads any
            official or casvit-mm checkpoint layout: mmengine reads the file
            (``weights_only``, :mod:`casvit_mm.checkpoint`), and the
            load-state-dict hook converts and checks it, as on every loading path.

    Example:
        >>> import torch
        >>> from casvit_mm import CASViT
        >>> model = CASViT(arch='xs', out_indices=(0, 1, 2, 3)).eval()
        >>> for out in model(torch.rand(1, 3, 224, 224)):
        ...     print(tuple(out.shape))
        (1, 48, 56, 56)
        (1, 56, 28, 28)
        (1, 112, 14, 14)
        (1, 220, 7, 7)
    """
    arch_settings = {
        'xs': dict(depths=[2, 2, 4, 2], widths=[48, 56, 112, 220]),
        's': dict(depths=[3, 3, 6, 3], widths=[48, 64, 128, 256]),
        'm': dict(depths=[3, 3, 6, 3], widths=[64, 96, 192, 384]),
        't': dict(depths=[3, 3, 6, 3], widths=[96, 128, 256, 512]),
        'l': dict(depths=[4, 4, 8, 4], widths=[96, 128, 256, 512]),
    }
    num_stages = 4

    def __init__(self,
                 arch: Union[str, Dict] = 'xs',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 global_pool: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[Dict, Sequence[Dict]]] = None,
                 deploy: bool = False):
        super().__init__(init_cfg=init_cfg)
        # the size name ('m'), as casvit_mm.checkpoint.layouts.arch_name reads it from a
        # state dict; None for a custom dict
        self.arch_name: Optional[str] = arch.lower() if isinstance(arch, str) else None
        self.arch = self.parse_arch(arch)
        self.depths = list(self.arch['depths'])
        self.widths = list(self.arch['widths'])
        self.in_channels = in_channels
        self.out_indices = self.parse_out_indices(out_indices, self.num_stages)
        if not (isinstance(frozen_stages, int) and -1 <= frozen_stages <= self.num_stages):
            raise ValueError(
                f'frozen_stages must be an int in [-1, {self.num_stages}] (-1: freeze '
                f'nothing, 0: the stem, k: the stem and stages 0..k-1), got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.global_pool = global_pool
        self.with_cp = with_cp
        self.deploy = deploy

        self.patch_embed = Stem(in_channels, self.widths[0], deploy)
        total = sum(self.depths)
        rates = [drop_path_rate * b / max(total - 1, 1) for b in range(total)]
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
            if i > 0:
                self.downsamples.append(Downsample(self.widths[i - 1], width, deploy))
            first = sum(self.depths[:i])
            self.stages.append(nn.Sequential(*[
                AdditiveBlock(width, self.arch['mlp_ratio'], drop_rate, rates[first + j],
                              deploy)
                for j in range(depth)]))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.BatchNorm2d(self.widths[i]))
        self._freeze_stages()
        # A fused checkpoint into a training model or the reverse: its own message first.
        self._register_load_state_dict_pre_hook(self._check_checkpoint_layout)
        # Every loader (init_cfg, load_checkpoint, load_from, resume) converts
        # official keys and checks the fit here (casvit_mm.checkpoint.backbone).
        self.register_load_state_dict_pre_hook(_load_any_layout)
        if deploy:
            self._finish_deploy()

    # ------------------------------------------------------------------ args
    @classmethod
    def parse_arch(cls, arch: Union[str, Dict]) -> dict:
        """Resolve ``arch`` to ``dict(depths, widths, mlp_ratio)`` or explain why not."""
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_settings:
                raise ValueError(
                    f'Unknown CAS-ViT arch {arch!r}: choose one of '
                    f'{sorted(cls.arch_settings)} or pass a dict with keys '
                    f"'depths' and 'widths' (four ints each).")
            arch = cls.arch_settings[key]
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        missing = {'depths', 'widths'} - set(arch)
        if missing:
            raise ValueError(f'Custom CAS-ViT arch {arch} lacks the keys {sorted(missing)}: '
                             f"it needs 'depths' and 'widths', four ints each.")
        unknown = set(arch) - {'depths', 'widths', 'mlp_ratio'}
        if unknown:
            raise ValueError(f'Custom CAS-ViT arch has unknown keys {sorted(unknown)}; '
                             f"allowed: 'depths', 'widths', 'mlp_ratio'.")
        for key in ('depths', 'widths'):
            value = arch[key]
            if (not isinstance(value, (list, tuple)) or len(value) != cls.num_stages
                    or not all(isinstance(v, int) and v > 0 for v in value)):
                raise ValueError(f"arch['{key}'] must be {cls.num_stages} positive ints, "
                                 f'got {value!r}')
        if any(w % 2 for w in arch['widths'][:1]):
            raise ValueError(f"arch['widths'][0] must be even (the stem halves it), "
                             f"got {arch['widths'][0]}")
        return dict(depths=list(arch['depths']), widths=list(arch['widths']),
                    mlp_ratio=float(arch.get('mlp_ratio', 4.)))

    @staticmethod
    def parse_out_indices(out_indices: Union[int, Sequence[int]], num_stages: int) -> tuple:
        """Normalise to sorted non-negative stage indices without touching the caller's list."""
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)) or not out_indices:
            raise ValueError(f'out_indices must be an int or a non-empty sequence of ints, '
                             f'got {out_indices!r}')
        resolved = []
        for index in out_indices:
            if not isinstance(index, int) or not -num_stages <= index < num_stages:
                raise ValueError(
                    f'out_indices {tuple(out_indices)} has {index!r}: CAS-ViT has '
                    f'{num_stages} stages, so each index must be in '
                    f'[{-num_stages}, {num_stages - 1}]')
            resolved.append(index % num_stages)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f'out_indices {tuple(out_indices)} names a stage twice')
        return tuple(sorted(resolved))

    # ----------------------------------------------------------------- build
    def init_weights(self) -> None:
        """Truncated-normal Linear init, or mmengine's ``Pretrained`` loading (any
        checkpoint layout: the load hook converts and checks it).

        A fused backbone (``deploy=True``) given a training-layout checkpoint
        loads it into a training twin, fuses the twin and copies its weights.
        """
        init_cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        if self.deploy and any(isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'
                               for cfg in init_cfgs):
            twin = CASViT(self.arch, self.in_channels, self.out_indices,
                          global_pool=self.global_pool, init_cfg=self.init_cfg)
            twin.init_weights()
            twin.switch_to_deploy()
            self.load_state_dict(twin.state_dict())
            self._is_init = True
            return
        super().init_weights()
        if self.init_cfg is None:
            self.apply(self._init_linear)

    @staticmethod
    def _init_linear(m):
        # As the official code: only Linear layers get a special init (the
        # convolutions keep PyTorch's default). The training layout has none;
        # the deploy layout's fused channel gate (``channel_gate``) is one.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    # --------------------------------------------------------------- forward
    def _check_input(self, x):
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if x.dim() != 4:
            raise ValueError(
                f'CASViT expects a batch of images shaped (B, {self.in_channels}, H, W), got '
                f'{tuple(x.shape)}; add the batch dimension with x[None].')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'CASViT expects a batch of images shaped (B, {self.in_channels}, H, W), got '
                f'{x.shape[1]} channels {tuple(x.shape)}; set in_channels={x.shape[1]} or '
                f'convert the images.')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self._check_input(x)
        if self.deploy_form == 'fused' and self.patch_embed[0].weight.is_contiguous(
                memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # fused kernels from the stem on
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsamples[i - 1](x)
            if self.with_cp and self.training and x.requires_grad:
                for block in stage:
                    x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = stage(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                if self.global_pool:  # 4-D mean in the export form (XNNPACK, Core ML)
                    # (reshape to (-1, C): no symbolic shape, which XNNPACK refuses)
                    out = (out.mean((2, 3), keepdim=True).reshape(-1, self.widths[i])
                           if self.deploy_form == 'export' else out.mean((2, 3)))
                outs.append(out)
        return tuple(outs)

    # ------------------------------------------------------------- training
    def _frozen_modules(self):
        if self.frozen_stages >= 0:
            yield self.patch_embed
        for i in range(self.frozen_stages):
            if i > 0:
                yield self.downsamples[i - 1]
            yield self.stages[i]
            if i in self.out_indices:
                yield getattr(self, f'norm{i}')

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'CASViT':
        if mode and self.deploy:
            raise RuntimeError('This CASViT is in deploy mode (BatchNorm folded away, built '
                               'with deploy=True or switched with switch_to_deploy()) and '
                               'cannot be trained: build it with deploy=False to train.')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer id of a parameter for layer-wise learning-rate decay.

        The stem is layer 0, block ``b`` (counted over all stages) is ``b + 1``,
        a downsampling belongs to the block it feeds, the output norms to the
        last layer; parameters outside the backbone (heads) get the deepest id.

        Returns:
            tuple[int, int]: The layer id and the number of layers.
        """
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        parts = name.split('.')
        if parts[0] == 'patch_embed':
            layer_id = 0
        elif parts[0] == 'stages':
            stage, block = int(parts[1]), int(parts[2])
            layer_id = sum(self.depths[:stage]) + block + 1
        elif parts[0] == 'downsamples':
            layer_id = sum(self.depths[:int(parts[1]) + 1]) + 1
        else:
            layer_id = num_layers - 1
        return layer_id, num_layers

    # ---------------------------------------------------------------- deploy
    @property
    def deploy_form(self) -> Optional[str]:
        """None (training layout), ``'fused'`` or ``'export'``."""
        if not self.deploy:
            return None
        return 'export' if getattr(self, '_export_form', False) else 'fused'

    def switch_to_deploy(self, form: str = 'fused') -> None:
        """Fuse for inference, in place: the whole fast path.

        ``form='export'``: the same fused model in the export-friendly form
        instead (each block's :meth:`AdditiveBlock.switch_to_export`): plain
        4-D ATen ops in NCHW that ExecuTorch's XNNPACK delegate, Core ML and
        LiteRT take whole (no fused oneDNN kernels, no 5-D views, ``unbind``
        or ``addcmul``). Slower in eager PyTorch (10-15 %): for
        ``torch.export`` only. A fused backbone (``deploy=True``) switches
        to it too; there is no way back.

        Every module with a ``switch_to_deploy()`` fuses itself (BatchNorms
        folded, q/k fused), then the weights are stored channels-last so that
        on a CPU the fused oneDNN kernels run. The result has the structure of
        ``CASViT(..., deploy=True)``: its state dict is the fused checkpoint
        (``tools/model_converters/casvit_reparameterize.py`` writes it). The
        output norms ``norm{i}`` stay; ``casvit_mm.deploy.switch.
        switch_model_to_deploy`` also folds them into an FPN. Safe to repeat.
        """
        if form not in ('fused', 'export'):
            raise ValueError(f"form must be 'fused' or 'export', got {form!r}")
        if self.deploy_form == form:
            return
        if self.deploy_form == 'export':
            raise ValueError('This CASViT is in the export form already; build it again '
                             'with deploy=True (or switch a training model) for the fused '
                             'form.')
        if not self.deploy:
            self.eval()
            _switch_children_to_deploy(self)
            self.deploy = True
            self._finish_deploy()
        if form == 'export':
            for stage in self.stages:
                for block in stage:
                    block.switch_to_export()
            # a BatchNorm on its own (the output norms an FPN did not absorb) is no
            # XNNPACK op: the same affine map as a depthwise 1x1 convolution
            for i in self.out_indices:
                norm = getattr(self, f'norm{i}')
                if isinstance(norm, _BatchNorm):
                    scale, shift = bn_affine(norm)
                    conv = nn.Conv2d(norm.num_features, norm.num_features, 1,
                                     groups=norm.num_features)
                    setattr(self, f'norm{i}',
                            set_conv(conv, scale, shift, like=norm.running_mean).eval())
            self.to(memory_format=torch.contiguous_format)  # NCHW: no layout copies
            self.requires_grad_(False)
            self._export_form = True

    def _finish_deploy(self):
        # channels-last weights make oneDNN pick NHWC and let use_fused_kernels fuse
        self.requires_grad_(False)
        self.to(memory_format=torch.channels_last)
        super().train(False)

    def _check_checkpoint_layout(self, state_dict, prefix, *args):
        """Refuse, with the way out, a checkpoint whose layout (fused or not) is
        not this backbone's: mmengine's loaders would only warn and go on
        with random weights."""
        keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
        # the training layout, this repository's or the official one (both have norm1)
        unfused = any('.norm1.' in k for k in keys)
        fused = any(k.startswith('stages.') and ('.attn.qk.' in k or '.attn.q.' in k)
                    for k in keys)
        if self.deploy and unfused:
            raise RuntimeError(
                'This CASViT has deploy=True (fused) but the checkpoint holds the '
                'training layout (with BatchNorms): convert it first with '
                'tools/model_converters/casvit_reparameterize.py, or load it into the '
                'config without deploy and switch with --deploy / switch_to_deploy().')
        if not self.deploy and fused:
            raise RuntimeError(
                'The checkpoint is a fused (deploy) CAS-ViT checkpoint but this CASViT was '
                'built for training: load it into a deploy config (configs/*/deploy/, '
                'backbone=dict(deploy=True)).')

    def extra_repr(self) -> str:
        return (f"depths={self.depths}, widths={self.widths}, "
                f"out_indices={self.out_indices}")


def _load_any_layout(module: CASViT, state_dict: dict, prefix: str, local_metadata: dict,
                     *args) -> None:
    """Load-state-dict pre-hook of ``CASViT``: the backbone's keys, in whatever layout
    the checkpoint has, replaced by the converted and checked ones."""
    converted = convert_for_backbone(module, state_dict, prefix, local_metadata)
    if converted is None:
        return
    tensors, message = converted
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]
    state_dict.update(tensors)
    print_log(message, logger='current')


def _switch_children_to_deploy(module):
    """Call ``switch_to_deploy()`` on the outermost submodules that have one
    (each fuses what is inside it), as timm's RepViT walker does."""
    for child in module.children():
        if hasattr(child, 'switch_to_deploy'):
            child.switch_to_deploy()
        else:
            _switch_children_to_deploy(child)
