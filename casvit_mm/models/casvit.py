"""CAS-ViT backbone.

CAS-ViT: Convolutional Additive Self-attention Vision Transformers for Efficient
Mobile Applications (Zhang et al., 2024, https://arxiv.org/abs/2408.03703).
Written from the paper's description; the module layout follows the official
implementation (https://github.com/Tianfang-Zhang/CAS-ViT, MIT licence) so that
its checkpoints convert with a renaming only (see :mod:`casvit_mm.checkpoint`).
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint.backbone import convert_on_load, load_backbone_checkpoint


def conv_bn(in_channels, out_channels, stride=2):
    """conv3x3 (bias) -> BN: the downsampling between stages."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1),
        nn.BatchNorm2d(out_channels))


class Stem(nn.Sequential):
    """Two stride-2 conv3x3 -> BN -> ReLU: the stride-4 patch embedding."""

    def __init__(self, in_channels, out_channels):
        mid = out_channels // 2
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, 2, 1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, out_channels, 3, 2, 1), nn.BatchNorm2d(out_channels),
            nn.ReLU())


class LocalIntegration(nn.Module):
    """conv1x1 -> BN -> depthwise conv3x3 -> GELU -> conv1x1 (all convs with bias)."""

    def __init__(self, dim):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.GELU(),
            nn.Conv2d(dim, dim, 1))

    def forward(self, x):
        return self.network(x)


class SpatialOperation(nn.Module):
    """Gate every position: ``x * sigmoid(conv1x1(ReLU(BN(dwconv3x3(x)))))``."""

    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True), nn.Conv2d(dim, 1, 1, bias=False), nn.Sigmoid())

    def forward(self, x):
        return x * self.block(x)


class ChannelOperation(nn.Module):
    """Gate every channel: ``x * sigmoid(conv1x1(global_avg_pool(x)))``."""

    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1, bias=False),
            nn.Sigmoid())

    def forward(self, x):
        return x * self.block(x)


class ConvAdditiveTokenMixer(nn.Module):
    """CATM: ``proj(dwc(Phi(q) + Phi(k)) * v)`` with Phi = channel(spatial(.)).

    The additive similarity of the paper replaces softmax attention; q and k
    have their own (unshared) spatial and channel operations.
    """

    def __init__(self, dim, drop_rate=0.):
        super().__init__()
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.oper_q = nn.Sequential(SpatialOperation(dim), ChannelOperation(dim))
        self.oper_k = nn.Sequential(SpatialOperation(dim), ChannelOperation(dim))
        self.dwc = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj_drop = nn.Dropout(drop_rate)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=1)
        out = self.proj(self.dwc(self.oper_q(q) + self.oper_k(k)) * v)
        return self.proj_drop(out)


class ConvMlp(nn.Module):
    """conv1x1 C->rC -> GELU -> Dropout -> conv1x1 rC->C -> Dropout."""

    def __init__(self, dim, mlp_ratio=4., drop_rate=0.):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class AdditiveBlock(nn.Module):
    """One CAS-ViT block: local integration, then CATM and MLP, each pre-normed.

    ``x + LI(x)`` has no drop path (as in the official code); the two other
    residual branches share the block's drop-path rate.
    """

    def __init__(self, dim, mlp_ratio=4., drop_rate=0., drop_path_rate=0.):
        super().__init__()
        self.local_perception = LocalIntegration(dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = ConvAdditiveTokenMixer(dim, drop_rate)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, mlp_ratio, drop_rate)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.local_perception(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


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
        init_cfg (dict | list[dict], optional): Initialisation config.
            ``dict(type='Pretrained', checkpoint=PATH, prefix=...)`` loads any
            official or casvit-mm checkpoint layout, converting and checking it
            (see :func:`casvit_mm.checkpoint.load_backbone_checkpoint`); any
            other loader is converted and checked by a load-state-dict hook.

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
                 init_cfg: Optional[Union[Dict, Sequence[Dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_name = repr(arch.lower()) if isinstance(arch, str) else 'custom'
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
        self.deployed = False

        self.patch_embed = Stem(in_channels, self.widths[0])
        total = sum(self.depths)
        rates = [drop_path_rate * b / max(total - 1, 1) for b in range(total)]
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
            if i > 0:
                self.downsamples.append(conv_bn(self.widths[i - 1], width))
            first = sum(self.depths[:i])
            self.stages.append(nn.Sequential(*[
                AdditiveBlock(width, self.arch['mlp_ratio'], drop_rate, rates[first + j])
                for j in range(depth)]))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.BatchNorm2d(self.widths[i]))
        self._freeze_stages()
        # Every loader (init_cfg, load_checkpoint, load_from, resume) converts
        # official keys and checks the fit here (casvit_mm.checkpoint.backbone).
        self.register_load_state_dict_pre_hook(convert_on_load)

    # ------------------------------------------------------------------ args
    @classmethod
    def parse_arch(cls, arch) -> dict:
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
    def parse_out_indices(out_indices, num_stages) -> tuple:
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
    def init_weights(self):
        """Truncated-normal Linear/conv init, or load a checkpoint (any layout)."""
        init_cfg = self.init_cfg
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            load_backbone_checkpoint(self, init_cfg['checkpoint'],
                                     prefix=init_cfg.get('prefix'))
            self._is_init = True
            return
        super().init_weights()
        if init_cfg is None:
            self.apply(self._init_linear)

    @staticmethod
    def _init_linear(m):
        # As the official code: only Linear layers get a special init (the
        # convolutions keep PyTorch's default).
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

    def forward(self, x):
        self._check_input(x)
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
                outs.append(out.mean((2, 3)) if self.global_pool else out)
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

    def train(self, mode: bool = True):
        if mode and self.deployed:
            raise RuntimeError('This CASViT was switched to deploy mode (BatchNorm folded '
                               'away) and cannot be trained: build a fresh model to train.')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = ''):
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

    def switch_to_deploy(self):
        """Fold every BatchNorm for inference (see :mod:`casvit_mm.models.deploy`)."""
        from .deploy import fold_casvit
        fold_casvit(self)
        self.deployed = True

    def extra_repr(self):
        return (f"depths={self.depths}, widths={self.widths}, "
                f"out_indices={self.out_indices}")

