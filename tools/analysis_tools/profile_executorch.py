"""Where the time of CAS-ViT goes in ExecuTorch + XNNPACK, fp32 against int8.

ExecuTorch's own per-op profile (ETDump, read by ``executorch.devtools.
Inspector``) needs a runtime built with ``EXECUTORCH_ENABLE_EVENT_TRACER``;
the pip wheel's ``executorch.runtime`` is not (``load_program(...,
enable_etdump=True)`` runs, then reports "No etdump data found"), and
XNNPACK's per-operator profiling is a build option too. So this profiles by
parts: each op type of one CAS-ViT block in its export form (the 1x1 and
depthwise convolutions, GELU, the spatial and channel gates with their
sigmoids, the residual add), and the whole block, each lowered alone to
XNNPACK in fp32 and in PT2E int8 (``casvit_mm.deploy.mobile.to_executorch``,
the same path as the exported models), timed in ExecuTorch's Python runtime
at the block's input size, times the stage's depth. Isolated ops include
their own quantize / dequantize at the edges, which is what an op that
XNNPACK cannot run in int8 (GELU, sigmoid) costs inside an int8 graph.

Example (CAS-ViT-M, the first and the third stage at 224x224, batch 8):
  python tools/analysis_tools/profile_executorch.py --arch m --stages 0 2 --batch 8
"""
import argparse
import copy
import os
import os.path as osp
import platform
import statistics
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Op(nn.Module):
    """One op type of the block, as ``forward_export`` computes it."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind = kind
        self.conv = {'pw': lambda: nn.Conv2d(dim, dim, 1),
                     'pw_expand': lambda: nn.Conv2d(dim, 4 * dim, 1),
                     'pw_reduce': lambda: nn.Conv2d(4 * dim, dim, 1),
                     'dw3x3': lambda: nn.Conv2d(dim, dim, 3, 1, 1, groups=dim),
                     'spatial_gate': lambda: nn.Conv2d(dim, 1, 1, bias=False),
                     'channel_gate': lambda: nn.Conv2d(dim, dim, 1, bias=False)}.get(
                         kind, lambda: nn.Identity())()

    def forward(self, x):
        if self.kind.startswith('gelu'):
            return F.gelu(x)
        if self.kind == 'spatial_gate':
            return x * torch.sigmoid(self.conv(x))
        if self.kind == 'channel_gate':
            return x * torch.sigmoid(self.conv(x.mean((2, 3), keepdim=True)))
        if self.kind == 'add':
            return x + x
        return self.conv(x)


# op type -> (input channels factor, times per block in the export form)
# (pw: the local integration's two, q, k, v; dw3x3: the local integration's,
# the two spatial ones, dwc, proj; gelu: after the local integration's dw and
# in the MLP; add: q + k, the three residuals)
OPS = {'pw': (1, 5), 'pw_expand': (1, 1), 'pw_reduce': (4, 1), 'dw3x3': (1, 5),
       'gelu': (1, 1), 'gelu_4c': (4, 1), 'spatial_gate': (1, 2), 'channel_gate': (1, 2),
       'add': (1, 4)}


def timed(run, x, repeats):
    run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    from casvit_mm import CASViT
    from casvit_mm.deploy.mobile import ExecuTorchModel, to_executorch
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='m')
    parser.add_argument('--stages', nargs='+', type=int, default=[0, 2])
    parser.add_argument('--input', type=int, default=224, help='image size')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--ops', nargs='+', default=list(OPS) + ['block'])
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = CASViT(args.arch).eval()
    deployed = copy.deepcopy(backbone)
    deployed.switch_to_deploy(form='export')
    print(f'CPU: {platform.processor() or platform.machine()}, threads {args.threads}, '
          f'load average {os.getloadavg()[0]:.2f}; CAS-ViT-{args.arch}, batch {args.batch}')
    print(f'{"stage":<6}{"op":<14}{"x/block":>8}{"fp32 ms":>10}{"int8 ms":>10}'
          f'{"int8/fp32":>10}{"fp32 ms x n":>13}{"int8 ms x n":>13}')
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            dim, size = backbone.widths[stage], args.input // 4 // 2 ** stage
            depth = backbone.depths[stage]
            for op in args.ops:
                if op == 'block':
                    network = deployed.stages[stage][0]  # fused, export form
                    factor, per_block = 1, 1
                else:
                    network = Op(op, dim).eval()
                    factor, per_block = OPS[op]
                x = torch.randn(args.batch, dim * factor, size, size)
                ms = []
                for int8 in (False, True):
                    path = osp.join(tmp, f'{stage}_{op}_{int8}.pte')
                    to_executorch(network, x, path, quantize=int8, calibration=[x],
                                  max_batch=args.batch, keep_float=())
                    ms.append(timed(ExecuTorchModel(path, args.threads), x, args.repeats))
                n = per_block * depth
                print(f'{stage:<6}{op:<14}{per_block:>8}{ms[0]:>10.2f}{ms[1]:>10.2f}'
                      f'{ms[1] / ms[0]:>10.2f}{ms[0] * n:>13.1f}{ms[1] * n:>13.1f}', flush=True)
    print(f'load average at end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
