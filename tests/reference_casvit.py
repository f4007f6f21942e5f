"""An independent, functional CAS-ViT written from the paper's description.

It runs directly on a state dict in the *official* key layout (flat ``network``
list, ``patch_embed.0/1/3/4``, ``norm0/2/4/6``, ``norm``/``head``/``dist_head``)
with ``torch.nn.functional`` only, so it shares no code with ``casvit_mm``: a
wrong block order, a shared q/k weight or a wrong key mapping in the plugin
shows up as a difference against it. Inference (eval-mode BN) only.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F

ARCHS = {  # the paper's architecture table
    'xs': ([2, 2, 4, 2], [48, 56, 112, 220]),
    's': ([3, 3, 6, 3], [48, 64, 128, 256]),
    'm': ([3, 3, 6, 3], [64, 96, 192, 384]),
    't': ([3, 3, 6, 3], [96, 128, 256, 512]),
    'l': ([4, 4, 8, 4], [96, 128, 256, 512]),
}


def official_state_dict(arch, classifier=False, dense_norms=True, num_classes=10, seed=0):
    """Random weights in the official layout, with non-trivial BN statistics."""
    depths, widths = ARCHS[arch] if isinstance(arch, str) else arch
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()

    def conv(name, cout, cin, k, bias=True, gain=1.):
        # scaled so that 20 residual blocks keep activations O(1) in float32
        fan_in = cin * k * k
        sd[f'{name}.weight'] = gain * torch.randn(cout, cin, k, k, generator=g) / fan_in ** 0.5
        if bias:
            sd[f'{name}.bias'] = 0.1 * torch.randn(cout, generator=g)

    def bn(name, c):
        sd[f'{name}.weight'] = 0.5 + torch.rand(c, generator=g)
        sd[f'{name}.bias'] = 0.1 * torch.randn(c, generator=g)
        sd[f'{name}.running_mean'] = 0.1 * torch.randn(c, generator=g)
        sd[f'{name}.running_var'] = 0.5 + torch.rand(c, generator=g)
        sd[f'{name}.num_batches_tracked'] = torch.tensor(100)

    c0 = widths[0]
    conv('patch_embed.0', c0 // 2, 3, 3)
    bn('patch_embed.1', c0 // 2)
    conv('patch_embed.3', c0, c0 // 2, 3)
    bn('patch_embed.4', c0)
    for i, (depth, c) in enumerate(zip(depths, widths)):
        for j in range(depth):
            p = f'network.{2 * i}.{j}'
            conv(f'{p}.local_perception.network.0', c, c, 1)
            bn(f'{p}.local_perception.network.1', c)
            conv(f'{p}.local_perception.network.2', c, 1, 3)
            conv(f'{p}.local_perception.network.4', c, c, 1, gain=0.2)
            bn(f'{p}.norm1', c)
            conv(f'{p}.attn.qkv', 3 * c, c, 1, bias=False)
            for op in ('oper_q', 'oper_k'):
                conv(f'{p}.attn.{op}.0.block.0', c, 1, 3)
                bn(f'{p}.attn.{op}.0.block.1', c)
                conv(f'{p}.attn.{op}.0.block.3', 1, c, 1, bias=False)
                conv(f'{p}.attn.{op}.1.block.1', c, c, 1, bias=False)
            conv(f'{p}.attn.dwc', c, 1, 3)
            conv(f'{p}.attn.proj', c, 1, 3, gain=0.2)
            bn(f'{p}.norm2', c)
            conv(f'{p}.mlp.fc1', 4 * c, c, 1)
            conv(f'{p}.mlp.fc2', c, 4 * c, 1, gain=0.2)
        if i < 3:
            conv(f'network.{2 * i + 1}.proj', widths[i + 1], c, 3)
            bn(f'network.{2 * i + 1}.norm', widths[i + 1])
    if classifier:
        bn('norm', widths[-1])
        for head in ('head', 'dist_head'):
            sd[f'{head}.weight'] = 0.02 * torch.randn(num_classes, widths[-1], generator=g)
            sd[f'{head}.bias'] = 0.1 * torch.randn(num_classes, generator=g)
    elif dense_norms:
        for i in range(4):
            bn(f'norm{2 * i}', widths[i])
    return sd


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f'{p}.running_mean'], sd[f'{p}.running_var'],
                        sd[f'{p}.weight'], sd[f'{p}.bias'], False, 0., 1e-5)


def _conv(x, sd, p, stride=1, padding=0, depthwise=False):
    return F.conv2d(x, sd[f'{p}.weight'], sd.get(f'{p}.bias'), stride, padding,
                    groups=x.shape[1] if depthwise else 1)


def _gates(x, sd, p):
    """Spatial then channel gating of one of q / k."""
    s = F.relu(_bn(_conv(x, sd, f'{p}.0.block.0', padding=1, depthwise=True), sd,
                   f'{p}.0.block.1'))
    x = x * torch.sigmoid(_conv(s, sd, f'{p}.0.block.3'))
    c = _conv(x.mean((2, 3), keepdim=True), sd, f'{p}.1.block.1')
    return x * torch.sigmoid(c)


def _block(x, sd, p):
    li = _conv(x, sd, f'{p}.local_perception.network.0')
    li = _bn(li, sd, f'{p}.local_perception.network.1')
    li = F.gelu(_conv(li, sd, f'{p}.local_perception.network.2', padding=1, depthwise=True))
    x = x + _conv(li, sd, f'{p}.local_perception.network.4')

    q, k, v = _conv(_bn(x, sd, f'{p}.norm1'), sd, f'{p}.attn.qkv').chunk(3, dim=1)
    qk = _gates(q, sd, f'{p}.attn.oper_q') + _gates(k, sd, f'{p}.attn.oper_k')
    qk = _conv(qk, sd, f'{p}.attn.dwc', padding=1, depthwise=True)
    x = x + _conv(qk * v, sd, f'{p}.attn.proj', padding=1, depthwise=True)

    h = F.gelu(_conv(_bn(x, sd, f'{p}.norm2'), sd, f'{p}.mlp.fc1'))
    return x + _conv(h, sd, f'{p}.mlp.fc2')


@torch.no_grad()
def official_forward(sd, x, arch, classifier=False):
    """Dense outputs (four BN'd stage maps) or eval-mode logits (mean of both heads)."""
    depths, _ = ARCHS[arch] if isinstance(arch, str) else arch
    x = F.relu(_bn(_conv(x, sd, 'patch_embed.0', 2, 1), sd, 'patch_embed.1'))
    x = F.relu(_bn(_conv(x, sd, 'patch_embed.3', 2, 1), sd, 'patch_embed.4'))
    outs = []
    for i, depth in enumerate(depths):
        if i > 0:
            x = _bn(_conv(x, sd, f'network.{2 * i - 1}.proj', 2, 1), sd,
                    f'network.{2 * i - 1}.norm')
        for j in range(depth):
            x = _block(x, sd, f'network.{2 * i}.{j}')
        if not classifier:
            outs.append(_bn(x, sd, f'norm{2 * i}'))
    if not classifier:
        return outs
    pooled = _bn(x, sd, 'norm').mean((2, 3))
    return (F.linear(pooled, sd['head.weight'], sd['head.bias'])
            + F.linear(pooled, sd['dist_head.weight'], sd['dist_head.bias'])) / 2
