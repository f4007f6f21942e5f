"""The CPU's model and the instruction-set extensions that decide low-precision speed.

Why: int8 and bf16 pay off only where the CPU has matrix instructions for them
(AVX-512 VNNI / AVX-VNNI for int8 dot products, AVX512-BF16 and AMX for bf16,
AMX-INT8). The same benchmark ratio means different things on an AVX2-only
CPU and on one with AMX, so every speed figure is printed with
:func:`isa_line`, and the bf16 deploy mode refuses CPUs that would only
emulate bf16 (:func:`native_bf16`).

Read from ``/proc/cpuinfo`` (Linux); elsewhere from PyTorch's own cpuinfo
probes (``torch.cpu._is_*_supported``), which cover the same extensions.
"""
import platform
from functools import lru_cache

import torch

__all__ = ['ISA_FLAGS', 'cpu_flags', 'cpu_model', 'isa', 'isa_line', 'native_bf16',
           'native_int8']

# The extensions a speed figure depends on, in /proc/cpuinfo's spelling.
ISA_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_bf16',
             'amx_int8')


def _torch_probe(name):
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


@lru_cache(maxsize=None)
def cpu_flags():
    """The CPU's feature flags (lower case), as ``/proc/cpuinfo`` lists them."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    # not Linux: PyTorch's cpuinfo probes, for the extensions that matter here
    probes = {'avx2': '_is_avx2_supported', 'avx512f': '_is_avx512_supported',
              'avx512_vnni': '_is_vnni_supported', 'avx512_bf16': '_is_avx512_bf16_supported',
              'amx_bf16': '_is_amx_tile_supported', 'amx_int8': '_is_amx_tile_supported'}
    return frozenset(flag for flag, probe in probes.items() if _torch_probe(probe))


@lru_cache(maxsize=None)
def cpu_model():
    """The CPU's model name (``model name`` of ``/proc/cpuinfo``)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa():
    """``{flag: present}`` for :data:`ISA_FLAGS`."""
    flags = cpu_flags()
    return {flag: flag in flags for flag in ISA_FLAGS}


def native_bf16():
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16).

    Elsewhere bf16 is emulated: oneDNN converts to float32 and back around
    float32 arithmetic (on AVX-512 CPUs), or PyTorch falls back to slow
    reference kernels (AVX2-only CPUs); either is slower than float32.
    """
    flags = cpu_flags()
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def native_int8():
    """Whether the CPU has int8 dot-product instructions (VNNI or AMX-INT8)."""
    flags = cpu_flags()
    return bool({'avx512_vnni', 'avx_vnni', 'amx_int8'} & flags)


def isa_line():
    """One line for a speed report: the CPU, its logical cores and the extensions."""
    import os
    marks = ' '.join(f'{flag}{"+" if present else "-"}' for flag, present in isa().items())
    return (f'CPU: {cpu_model()} ({os.cpu_count()} logical); ISA: {marks} '
            f'(int8 dot products: {"native" if native_int8() else "none"}, '
            f'bf16: {"native" if native_bf16() else "emulated"})')
