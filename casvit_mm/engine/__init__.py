"""Training-engine pieces for long jobs: atomic checkpoints, CPU mixed
precision, multi-process runs on CPUs and mmengine's ``compile`` option.

Every hook of this package lives here. Importing it registers
``AtomicCheckpointHook``, ``PlainParamGroupsHook``, ``NonFiniteLossHook``,
``PreemptionHook``, ``StrictCheckpointHook`` and ``DeployHook`` (mmengine HOOKS),
``ResumableEpochBasedTrainLoop`` (mmengine LOOPS) and ``CPUAmpOptimWrapper``
(mmengine OPTIM_WRAPPERS); these registries are the parents of mmdet's, mmseg's
and mmpretrain's, so the names resolve under any default scope.
"""
from .atomic_checkpoint import (AtomicCheckpointHook, atomic_write, commit_file,
                                use_atomic_checkpoints)
from .compile import PlainParamGroupsHook, use_compile_fixes
from .cpu_amp import CPUAmpOptimWrapper
from .cpu_dist import closing_process_group, setup_cpu_distributed
from .deploy_hook import DeployHook
from .guards import use_long_run_guards, use_stop_signals
from .non_finite import EXIT_DIVERGED, NonFiniteLossHook, TrainingDiverged
from .preemption import (EXIT_INTERRUPTED, EXIT_PREEMPTED, Interrupted, Preempted,
                         PreemptionHook, ResumableEpochBasedTrainLoop)
from .strict_checkpoint import StrictCheckpointHook
from .worker_signals import use_signal_safe_workers

__all__ = [
    'AtomicCheckpointHook', 'CPUAmpOptimWrapper', 'DeployHook', 'EXIT_DIVERGED',
    'EXIT_INTERRUPTED', 'EXIT_PREEMPTED', 'Interrupted', 'NonFiniteLossHook',
    'PlainParamGroupsHook', 'Preempted', 'PreemptionHook', 'ResumableEpochBasedTrainLoop',
    'StrictCheckpointHook', 'TrainingDiverged', 'atomic_write', 'closing_process_group',
    'commit_file', 'setup_cpu_distributed', 'use_atomic_checkpoints', 'use_compile_fixes',
    'use_long_run_guards', 'use_signal_safe_workers', 'use_stop_signals'
]
