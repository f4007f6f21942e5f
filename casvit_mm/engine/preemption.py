"""Pre-emption: on SIGTERM, SIGUSR1 or Ctrl-C, finish the iteration, save it, stop.

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
``--resume`` continues from that iteration.

Signals reach every process of a job: Slurm signals all of them, Ctrl-C the
whole foreground group, torchrun each rank's group. So:

- building the hook makes every DataLoader worker leave the signals to the
  main process (:mod:`~casvit_mm.engine.worker_signals`), which would
  otherwise fail at once with ``DataLoader worker ... is killed by signal``;
- repeats of SIGTERM / SIGUSR1 are dropped (torchrun forwards the signal a
  rank already got from Slurm); the scheduler's SIGKILL is the hard stop;
- Ctrl-C (SIGINT) stops the same way, saving the iteration, but exits
  :data:`EXIT_INTERRUPTED` (130) and writes no ``preempted`` marker (a user's
  stop is not to be requeued); a second Ctrl-C stops at once
  (``KeyboardInterrupt``; checkpoints are atomic, so none is left half-written);
- a signal during a validation or a test stops it after the batch under way
  (all-reduced per batch, when every rank has as many batches): a validation
  inside training is dropped (the scheduler's grace period rarely covers a
  whole one) and the trained iteration saved; ``tools/test.py`` exits with a
  message and nothing saved.

Epoch-based loops restart an epoch from its first batch on resume, which
would train the first part of a pre-empted epoch twice.
:class:`ResumableEpochBasedTrainLoop` skips the batches of the resumed epoch
that the checkpoint already trained, the way mmengine's
``IterBasedTrainLoop`` skips finished iterations (the data is still read, so
random augmentations see the same random stream as an uninterrupted run).
"""
import logging
import os
import os.path as osp
import signal
import threading
from typing import Optional, Sequence

import torch
from mmengine.dist import all_reduce, barrier, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS, LOOPS
from mmengine.runner import EpochBasedTrainLoop

from .atomic_checkpoint import AtomicCheckpointHook, atomic_write, save_atomically
from .non_finite import StopRun, check_finite_state
from .worker_signals import use_signal_safe_workers

EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a run stopped by Ctrl-C
# Written to the work dir (holding the checkpoint's path) when a run stops for a
# signal: job scripts test for it where a launcher reports its own exit status.
PREEMPTED_MARKER = 'preempted'
# The stop asked for, as a number all ranks can all-reduce (max): a scheduler's
# pre-emption outranks a Ctrl-C (the scheduler will kill the job anyway).
_NONE, _INTERRUPT, _PREEMPT = 0, 1, 2


class Preempted(StopRun):
    """Stops the process with :data:`EXIT_PREEMPTED` after the checkpoint is written."""
    exit_code = EXIT_PREEMPTED


class Interrupted(StopRun):
    """Stops the process with :data:`EXIT_INTERRUPTED` (Ctrl-C) after the checkpoint is written."""
    exit_code = EXIT_INTERRUPTED


def _say(text):
    """Write to stderr from a signal handler (``print`` and logging may be inside
    a write of the interrupted code, which they must not re-enter)."""
    try:
        os.write(2, text.encode() + b'\n')
    except OSError:
        pass


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Checkpoint the current iteration and exit on a stop signal.

    Handles the signals in training, validation and testing (installed in
    ``before_run``). Building it also makes every DataLoader worker of the
    process leave the signals to the main process
    (:func:`~casvit_mm.engine.worker_signals.use_signal_safe_workers`).

    Args:
        signals (Sequence[str]): Signals of a scheduler that asks for a stop
            (exit :data:`EXIT_PREEMPTED`). Defaults to ``('SIGTERM', 'SIGUSR1')``.
        interval (int): Read (and, with several processes, all-reduce) the
            flag every ``interval`` training iterations. Defaults to 1.
        ctrl_c (bool): Handle SIGINT too: a first Ctrl-C stops like a
            pre-emption but exits :data:`EXIT_INTERRUPTED`, a second one stops
            at once (``KeyboardInterrupt``). Defaults to True.
    """
    priority = 'LOWEST'

    def __init__(self,
                 signals: Sequence[str] = ('SIGTERM', 'SIGUSR1'),
                 interval: int = 1,
                 ctrl_c: bool = True):
        unknown = [s for s in signals if not isinstance(getattr(signal, s, None), signal.Signals)]
        if unknown:
            raise ValueError(f'PreemptionHook: unknown signal(s) {unknown}; use names such '
                             f'as "SIGTERM", "SIGUSR1".')
        self.signals = [getattr(signal, s) for s in signals]
        self.ctrl_c = bool(ctrl_c) and signal.SIGINT not in self.signals
        self.interval = int(interval)
        self.received = None
        self._previous = {}
        self._training = False
        self._check_loop = True
        # Before any loader of the run starts its workers (the runner builds the
        # training loop, and with it the first iterator, before `before_run`).
        use_signal_safe_workers()

    # ------------------------------------------------------------ signals
    def _on_signal(self, signum, frame):
        sig = signal.Signals(signum)
        if sig == signal.SIGINT:
            if self.received is None:
                self.received = sig
                _say('Ctrl-C: stopping after the current iteration and saving it (a '
                     'validation or test stops at its next batch). Press Ctrl-C again to '
                     'stop at once without saving.')
            # The next Ctrl-C does what it did before (KeyboardInterrupt).
            signal.signal(signum, self._previous.get(signum, signal.default_int_handler))
            return
        # A scheduler's signal. Repeats are dropped: Slurm signals every process
        # and torchrun forwards the same signal again; the scheduler's SIGKILL
        # at the end of its grace period is the hard stop. The first signal
        # decides the kind of stop (torchrun answers a second Ctrl-C with SIGTERM).
        if self.received is None:
            self.received = sig
            _say(f'{sig.name} received: stopping after the current iteration and saving '
                 f'it (a validation or test stops at its next batch).')

    def _install(self, runner):
        if self._previous:
            return
        if threading.current_thread() is not threading.main_thread():
            runner.logger.warning('PreemptionHook: the run is outside the main thread, '
                                  'where signal handlers cannot be installed; a stop '
                                  'signal will end the process without a checkpoint.')
            return
        for signum in self.signals + ([signal.SIGINT] if self.ctrl_c else []):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _restore(self):
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)
        self._previous = {}

    def before_run(self, runner) -> None:
        self._install(runner)

    def before_train(self, runner) -> None:
        self._install(runner)  # a runner that calls the loop without `before_run`
        self._training = True

    def after_train(self, runner) -> None:
        self._training = False

    def after_run(self, runner) -> None:
        self._restore()

    def _asked(self, every_rank=True):
        """The stop asked for here or, all-reduced, by any rank."""
        level = {None: _NONE, signal.SIGINT: _INTERRUPT}.get(self.received, _PREEMPT)
        if every_rank and get_world_size() > 1:
            flag = torch.tensor([level])
            all_reduce(flag, op='max')  # every rank stops at the same iteration
            level = int(flag.item())
        return level

    # ------------------------------------------------------------ training
    def after_train_iter(self,
                         runner,
                         batch_idx: Optional[int] = None,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        level = self._asked()
        if level:
            self._stop_training(runner, level, runner.iter + 1)

    def _stop_training(self, runner, level, step, during=''):
        path = self._save(runner, step)
        if is_main_process() and level == _PREEMPT:  # launchers may not pass status 75 on
            atomic_write(osp.join(runner.work_dir, PREEMPTED_MARKER), path + '\n')
        barrier()  # nobody exits (and lets a launcher kill rank 0) before the files are whole
        self._raise(runner, level, lambda code: (
            f'{self._why(level)}{during}: stopped after iteration {step} and saved it '
            f'to {path}. Run the same command with --resume to continue; exit '
            f'status {code}.'))

    @staticmethod
    def _raise(runner, level, message_with_code):
        """Log and raise the stop of ``level``: :class:`Preempted` (exit status 75)
        or :class:`Interrupted` (130); ``message_with_code(code)`` says what happened."""
        stop, code = ((Preempted, EXIT_PREEMPTED) if level == _PREEMPT
                      else (Interrupted, EXIT_INTERRUPTED))
        message = message_with_code(code)
        runner.logger.warning(message)
        raise stop(message)

    def _why(self, level):
        if self.received is None:
            return 'Pre-empted (a stop signal reached another process)' if level == _PREEMPT \
                else 'Interrupted (Ctrl-C reached another process)'
        if self.received == signal.SIGINT:
            return 'Interrupted (Ctrl-C)'
        return f'Pre-empted ({self.received.name} received)'

    # ------------------------------------------------------ validation, test
    @staticmethod
    def _batches(loop):
        """How many batches ``loop`` runs (-1: unknown, e.g. an iterable dataset)."""
        try:
            return len(loop.dataloader)
        except (AttributeError, TypeError):
            return -1

    def _loop_start(self, loop):
        """Check the flag at every batch of a loop only when all ranks run the same
        number of batches (each check is a collective)."""
        size = self._batches(loop)
        if get_world_size() > 1:
            sizes = torch.tensor([size, -size])
            all_reduce(sizes, op='max')
            self._check_loop = size >= 0 and int(sizes[0]) == -int(sizes[1])
        else:
            self._check_loop = True

    def before_val_epoch(self, runner) -> None:
        self._loop_start(runner.val_loop)

    def before_test_epoch(self, runner) -> None:
        self._loop_start(runner.test_loop)

    def after_val_iter(self,
                       runner,
                       batch_idx: int,
                       data_batch: Optional[dict] = None,
                       outputs=None) -> None:
        self._stop_evaluation(runner, 'validation', runner.val_loop, batch_idx)

    def after_test_iter(self,
                        runner,
                        batch_idx: int,
                        data_batch: Optional[dict] = None,
                        outputs=None) -> None:
        self._stop_evaluation(runner, 'test', runner.test_loop, batch_idx)

    def _stop_evaluation(self, runner, what, loop, batch_idx):
        if not self._check_loop:
            return
        level = self._asked()
        if not level:
            return
        size = self._batches(loop)
        at = f'batch {batch_idx + 1}' + (f' of {size}' if size >= 0 else '')
        if self._training:  # training state is whole: iteration runner.iter is done
            self._stop_training(runner, level, runner.iter,
                                during=f' during the validation after iteration {runner.iter}, '
                                f'which was stopped at {at} (its metrics are not computed)')
        self._raise(runner, level, lambda code: (
            f'{self._why(level)}: the {what} stopped after {at}; no metrics were '
            f'computed and nothing was saved. Run the same command again; exit '
            f'status {code}.'))

    def _save(self, runner, step):
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
