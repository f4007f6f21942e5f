"""Training-engine pieces for long jobs: atomic checkpoints, CPU mixed
precision, multi-process runs on CPUs and mmengine's ``compile`` option.

Importing this package registers ``AtomicCheckpointHook`` and
``PlainParamGroupsHook`` (mmengine HOOKS) and ``CPUAmpOptimWrapper`` (mmengine
OPTIM_WRAPPERS); these registries are the parents of mmdet's, mmseg's and
mmpretrain's, so the names resolve under any default scope.
"""
from .atomic_checkpoint import (AtomicCheckpointHook, atomic_write, commit_file,
                                use_atomic_checkpoints)
from .compile import PlainParamGroupsHook, use_compile_fixes
from .cpu_amp import CPUAmpOptimWrapper
from .cpu_dist import setup_cpu_distributed

__all__ = ['AtomicCheckpointHook', 'CPUAmpOptimWrapper', 'PlainParamGroupsHook',
           'atomic_write', 'commit_file', 'setup_cpu_distributed', 'use_atomic_checkpoints',
           'use_compile_fixes']
