"""DataLoader workers leave stop signals to the main process.

Why: schedulers and terminals signal every process of a job, not just the
training process. Slurm (``proctrack/cgroup``) sends SIGTERM to every process
of the job step, Ctrl-C sends SIGINT to the whole foreground process group,
and torchrun forwards a signal to each worker's process group (``os.killpg``),
which holds that worker's DataLoader workers too. PyTorch 2.13's DataLoader
workers die of it: ``_worker_loop`` installs a C handler that re-raises a
SIGTERM not sent by the worker's parent, SIGUSR1 ends a process by default,
and SIGINT makes the worker return. The main process then fails on its own
(its SIGCHLD handler raises ``RuntimeError: DataLoader worker (pid N) is
killed by signal: Terminated``, or the next batch finds ``DataLoader worker
... exited unexpectedly``) before its pre-emption handler can save anything.

:func:`use_signal_safe_workers` replaces ``torch.utils.data._utils.worker.
_worker_loop`` -- the function every worker process runs, looked up each time
an iterator starts its workers -- by :func:`_worker_loop`, which first calls
:func:`leave_stop_signals_to_main_process` and then runs PyTorch's own loop
unchanged. In the worker, SIGTERM, SIGINT and SIGUSR1 are blocked and a
daemon thread takes them with ``sigwaitinfo``, which tells who sent each:

- SIGTERM from the process that started the worker is PyTorch's own shutdown
  (``Process.terminate()`` when a worker does not stop in time, and
  multiprocessing's exit handler, which terminates and then joins every
  worker): the worker exits at once with status 0, exactly as PyTorch's C
  handler does. Ignoring that one would hang the main process at exit.
- every other stop signal (the scheduler's, the terminal's, the launcher's)
  is dropped: the main process got it too and stops at the next iteration
  boundary; it then shuts the workers down as after any run
  (:class:`~casvit_mm.engine.preemption.PreemptionHook`).

Blocking rather than ignoring also survives PyTorch's ``_worker_loop``
installing its SIGTERM handler after this function ran. The patch is a
single assignment, installed by ``PreemptionHook`` when a runner is built
(before any loader of the run starts its workers), so every dataloader of a
run -- training, validation, test, persistent or not -- gets it, whatever the
config says. A worker that is never signalled behaves exactly as before.

Limits: programs a worker starts with ``exec`` inherit the blocked mask
(SIGKILL still ends them); a worker started by ``spawn`` can still be killed
by a signal that arrives in the first milliseconds, before this runs.
"""
import multiprocessing
import os
import signal
import threading

import torch.utils.data._utils.worker as torch_worker

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# PyTorch's own loop, kept before the patch (also in a spawned worker, which
# imports this module afresh and unpickles _worker_loop below by name).
_torch_worker_loop = torch_worker._worker_loop


def _starter_pid():
    """The pid of the process that started this worker (the training process)."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getppid()


def _take_stop_signals(starter):
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid == starter:
            os._exit(0)  # PyTorch's shutdown of its worker, as its C handler does


def leave_stop_signals_to_main_process():
    """In a DataLoader worker: block the stop signals and let a thread drop them
    (SIGTERM from the training process itself still ends the worker)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_take_stop_signals, args=(_starter_pid(),),
                     name='stop-signals', daemon=True).start()


def _worker_loop(*args, **kwargs):
    """PyTorch's ``_worker_loop``, run after :func:`leave_stop_signals_to_main_process`."""
    leave_stop_signals_to_main_process()
    return _torch_worker_loop(*args, **kwargs)


def use_signal_safe_workers():
    """Make every DataLoader worker started from now on in this process leave
    stop signals to the main process. Idempotent."""
    torch_worker._worker_loop = _worker_loop
