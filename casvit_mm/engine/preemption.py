"""Pre-emption: on SIGTERM / SIGUSR1, finish the iteration, save it, exit 75.

Why: schedulers stop jobs with SIGTERM (Slurm at pre-emption or at the time
limit, then SIGKILL after a grace period; ``srun --signal=USR1@N`` sends
SIGUSR1 ``N`` seconds before the limit). mmengine 0.11 installs no handler, so
the process dies at once and everything since the last periodic checkpoint
is lost, at every pre-emption.

:class:`PreemptionHook` catches those signals and only sets a flag. At the end
of every training iteration (after every other hook: the parameter schedulers
have stepped, EMA is updated, the periodic checkpoint is written) the flag is
read; in a multi-process run it is all-reduced first (one one-element
all-reduce per iteration), so every rank stops at the same iteration even when
the signal reached only some of them. (On GPUs that all-reduce comes after
mmengine's ``RuntimeInfoHook`` has already waited for the iteration to finish,
by turning each loss into a float for the log, so it adds a message, not a
stall; ``interval`` thins it out.) Then the iteration is checkpointed
atomically (``iter_N.pth`` through ``.partial`` + rename, ``last_checkpoint``
pointed at it; skipped when the periodic checkpoint already saved this
iteration), all ranks wait for rank 0 to finish writing, and the process exits
with :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``: "try again later"), which a
job script can tell apart from success (0), a crash (1) and divergence (3).
Launchers report their own status (torchrun: 1, naming the workers' 75), so
rank 0 also writes the file ``preempted`` (the checkpoint's path) into the
work dir; ``tools/slurm_train.sh`` deletes it before starting and tests for it.
``--resume`` continues from that iteration. A second signal of the same kind
acts as it would without the hook (SIGTERM: die now).

Epoch-based loops restart an epoch from its first batch on resume, which
would train the first part of a pre-empted epoch twice.
:class:`ResumableEpochBasedTrainLoop` skips the batches of the resumed epoch
that the checkpoint already trained, the way mmengine's
``IterBasedTrainLoop`` skips finished iterations (the data is still read, so
random augmentations see the same random stream as an uninterrupted run).
"""
import logging
import os.path as osp
import signal
import threading

import torch
from mmengine.dist import all_reduce, barrier, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS, LOOPS
from mmengine.runner import EpochBasedTrainLoop

from .atomic_checkpoint import AtomicCheckpointHook, atomic_write, save_atomically
from .non_finite import StopRun, check_finite_state

EXIT_PREEMPTED = 75
# Written to the work dir (holding the checkpoint's path) when a run stops for a
# signal: job scripts test for it where a launcher reports its own exit status.
PREEMPTED_MARKER = 'preempted'


class Preempted(StopRun):
    """Stops the process with :data:`EXIT_PREEMPTED` after the checkpoint is written."""
    exit_code = EXIT_PREEMPTED


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Checkpoint the current iteration and exit on a stop signal.

    Args:
        signals (Sequence[str]): Signals that ask for a stop. Defaults to
            ``('SIGTERM', 'SIGUSR1')``.
        interval (int): Read (and, with several processes, all-reduce) the
            flag every ``interval`` iterations. Defaults to 1.
    """
    priority = 'LOWEST'

    def __init__(self, signals=('SIGTERM', 'SIGUSR1'), interval=1):
        unknown = [s for s in signals if not isinstance(getattr(signal, s, None), signal.Signals)]
        if unknown:
            raise ValueError(f'PreemptionHook: unknown signal(s) {unknown}; use names such '
                             f'as "SIGTERM", "SIGUSR1".')
        self.signals = [getattr(signal, s) for s in signals]
        self.interval = int(interval)
        self.received = None
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.received = signal.Signals(signum)
        # A second signal of this kind does what it did before (SIGTERM: die).
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def before_train(self, runner):
        if threading.current_thread() is not threading.main_thread():
            runner.logger.warning('PreemptionHook: training runs outside the main thread, '
                                  'where signal handlers cannot be installed; a stop '
                                  'signal will end the process without a checkpoint.')
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def after_train(self, runner):
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)
        self._previous = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self.every_n_train_iters(runner, self.interval):
            return
        flag = torch.tensor([int(self.received is not None)])
        if get_world_size() > 1:
            all_reduce(flag, op='max')  # every rank stops at the same iteration
        if not flag.item():
            return
        path = self._save(runner)
        if is_main_process():  # launchers (torchrun, srun) may not pass exit status 75 on
            atomic_write(osp.join(runner.work_dir, PREEMPTED_MARKER), path + '\n')
        barrier()  # nobody exits (and lets a launcher kill rank 0) before the file is whole
        why = (f'{self.received.name} received' if self.received is not None
               else 'a stop signal reached another process')
        message = (f'Pre-empted ({why}): stopped after iteration {runner.iter + 1} and saved '
                   f'it to {path}. Run the same command with --resume to continue; exit '
                   f'status {EXIT_PREEMPTED}.')
        runner.logger.warning(message)
        raise Preempted(message)

    def _save(self, runner):
        step = runner.iter + 1
        hook = next((h for h in runner.hooks if isinstance(h, AtomicCheckpointHook)), None)
        if hook is not None and not hook.by_epoch and hook._is_local():
            path = hook.last_ckpt
            if path != osp.join(hook.out_dir, hook.filename_tmpl.format(step)):
                runner.logger.info(f'Saving checkpoint at {step} iterations (pre-emption)')
                hook._save_checkpoint_with_step(runner, step, meta=dict(epoch=runner.epoch,
                                                                          iter=step))
                path = hook.last_ckpt
            return path
        # Epoch-based runs (the epoch is unfinished: named by iteration, kept out
        # of max_keep_ckpts' rotation) and runs without the atomic hook.
        check_finite_state(runner)
        out_dir = hook.out_dir if hook is not None and hook._is_local() else runner.work_dir
        runner.logger.info(f'Saving checkpoint at {step} iterations (pre-emption)')
        return save_atomically(runner, out_dir, f'iter_{step}.pth', by_epoch=False,
                               meta=dict(epoch=runner.epoch, iter=step))


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes inside an epoch (after a pre-emption).

    Takes ``EpochBasedTrainLoop``'s arguments.
    """

    def run_epoch(self):
        self._skip = self._iter - self._epoch * len(self.dataloader)
        if self._skip > 0:
            print_log(f'Resuming inside epoch {self._epoch + 1}: reading and skipping its '
                      f'first {self._skip} batches, trained before the interruption',
                      logger='current', level=logging.WARNING)
        super().run_epoch()

    def run_iter(self, idx, data_batch):
        if idx < getattr(self, '_skip', 0):
            return
        super().run_iter(idx, data_batch)
