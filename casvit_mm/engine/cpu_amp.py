"""Mixed-precision training on the CPU: bfloat16 autocast, no loss scaling.

Why: mmengine 0.11's ``AmpOptimWrapper`` asserts that CUDA (or an NPU / MLU)
is present, because it always builds a ``GradScaler``. On the CPU, PyTorch's
autocast computes in bfloat16, which has float32's exponent range: gradients
do not underflow, so no loss scaling is needed and a plain ``OptimWrapper``
whose ``optim_context`` also enters ``torch.autocast('cpu')`` is all that
mixed precision takes. Weights, optimizer state and checkpoints stay float32.

``tools/train.py --amp`` picks this wrapper when CUDA is unavailable and
mmengine's ``AmpOptimWrapper`` otherwise. Speed depends on the processor:
with bfloat16 instructions (AVX512-BF16, AMX) autocast is faster; without
them PyTorch emulates bfloat16 and it is usually slower than float32 -- the
option exists so a GPU config with ``--amp`` also runs (and can be debugged)
on a CPU.
"""
from contextlib import contextmanager
from typing import Iterator, Union

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` that runs the forward pass under CPU autocast.

    Args:
        dtype (str | torch.dtype): Autocast type. Defaults to ``'bfloat16'``,
            the type CPU autocast is made for.
        **kwargs: ``OptimWrapper``'s arguments (``optimizer``,
            ``accumulative_counts``, ``clip_grad``).
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16', **kwargs):
        super().__init__(**kwargs)
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f'CPUAmpOptimWrapper: dtype={dtype!r} is not a torch dtype; '
                                 f'use "bfloat16".')
            dtype = getattr(torch, dtype)
        self.cast_dtype = dtype

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
