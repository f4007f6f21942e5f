"""Stop signals the way schedulers and terminals deliver them: to every process
of the job -- the training process, its DataLoader workers and, under torchrun,
the launcher and every rank with its workers.

Every run is a real tools/train.py, tools/test.py or tools/dist_train.sh on the
toy COCO set. A small hook (HOLD, below) stops a run at a chosen point until a
signal has arrived, so the test knows which iteration was under way; the
signal itself comes from outside, to the whole process group (``os.killpg``,
as Ctrl-C and Slurm's cgroup kill do) or to every process of a torchrun launch.
"""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from casvit_mm.checkpoint import safe_load
from casvit_mm.engine import EXIT_INTERRUPTED, EXIT_PREEMPTED
from helpers import ONE_THREAD, REPO, RETINA, logged_steps, toy_train_options
from test_long_runs import assert_same_weights, free_port, latest, weights

HOLD = '''
import os
import os.path as osp
import time

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class HoldForSignal(Hook):
    """Before training iteration `at` (or the first batch of a validation or
    test), write WORK_DIR/holding.RANK and wait until PreemptionHook has got a
    stop signal (at most 2 minutes)."""

    def __init__(self, where='train', at=1):
        self.where, self.at = where, at

    def _hold(self, runner):
        open(osp.join(runner.work_dir, f'holding.{get_rank()}'), 'w').close()
        stop = next(h for h in runner.hooks if type(h).__name__ == 'PreemptionHook')
        deadline = time.monotonic() + 120
        while stop.received is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.where == 'train' and runner.iter + 1 == self.at:
            self._hold(runner)

    def before_val_iter(self, runner, batch_idx, data_batch=None):
        if self.where == 'val' and batch_idx == 0:
            self._hold(runner)

    def before_test_iter(self, runner, batch_idx, data_batch=None):
        if self.where == 'test' and batch_idx == 0:
            self._hold(runner)
'''


def held_config(tmp_path, where='train', at=1):
    """The toy RetinaNet with HoldForSignal(where, at); its directory goes on PYTHONPATH."""
    (tmp_path / 'hold_for_signal.py').write_text(HOLD)
    config = tmp_path / f'held_{where}_{at}.py'
    config.write_text(
        f'_base_ = [{os.path.join(REPO, RETINA)!r}]\n'
        "custom_imports = dict(imports=['casvit_mm', 'hold_for_signal'],\n"
        "                      allow_failed_imports=False)\n"
        f'custom_hooks = [dict(type="HoldForSignal", where={where!r}, at={at})]\n')
    return str(config)


def env_with(tmp_path, **extra):
    path = os.pathsep.join([str(tmp_path), ONE_THREAD.get('PYTHONPATH', '')])
    return dict(ONE_THREAD, PYTHONPATH=path, **extra)


def options(toy, workers, persistent, max_iters, validate=False):
    """--cfg-options of a deterministic toy run, every dataloader with ``workers``
    worker processes; without ``validate`` no validation at the end (quicker)."""
    # Periodic checkpoints far apart: what is saved at the signal is the hook's own.
    opts = toy_train_options(toy, deterministic=True, **{
        'train_cfg.max_iters': max_iters, 'default_hooks.checkpoint.interval': 100})
    opts = [o for o in opts if validate or not o.startswith('val_')]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if validate or loader != 'val_dataloader':
            opts += [f'{loader}.num_workers={workers}',
                     f'{loader}.persistent_workers={persistent and workers > 0}']
    return opts + ([] if validate else ['val_dataloader=None', 'val_cfg=None',
                                        'val_evaluator=None'])


STARTED = []


@pytest.fixture(autouse=True)
def no_run_left_behind():
    """A test that fails while a run it started still holds or trains kills that
    run (and, for torchrun, its ranks and their workers)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            for pid in reversed(descendants(proc.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()


def start(cmd, work, env, log='out.log'):
    """``cmd`` in the background, in a process group (session) of its own, as a
    job step or a terminal's foreground job is; its output in work/LOG."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / log, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    STARTED.append(proc)
    return proc


def wait_until_held(proc, work, ranks=1, timeout=600):
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if all((work / f'holding.{r}').exists() for r in range(ranks)):
            return
        time.sleep(0.05)
    raise AssertionError(f'the run ended or stalled before the signal point:\n'
                         f'{(work / "out.log").read_text()[-4000:]}')


def finish(proc, work, timeout=600, log='out.log'):
    code = proc.wait(timeout=timeout)
    return code, (work / log).read_text()


def descendants(pid):
    """``pid`` and every process below it (torchrun, its ranks, their workers)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        found.append(parent)
        out = subprocess.run(['ps', '-o', 'pid=', '--ppid', str(parent)],
                             capture_output=True, text=True).stdout
        todo += map(int, out.split())
    return found


def assert_no_worker_crash(out):
    for crash in ('DataLoader worker', 'Traceback', 'exited unexpectedly'):
        assert crash not in out, out[-5000:]


def saved_at(work, step):
    assert latest(work) == str(work / f'iter_{step}.pth')
    assert safe_load(latest(work))['meta']['iter'] == step
    assert not glob.glob(str(work / '*.partial'))


# ------------------------------------------------------------ the workers
WORKERS = r"""
import os, signal, subprocess, sys, time
import torch
from casvit_mm.engine import use_signal_safe_workers

if sys.argv[1] == 'safe':
    use_signal_safe_workers()
signal.signal(signal.SIGTERM, lambda *_: None)  # the main process handles it (as the hook)
loader = torch.utils.data.DataLoader(list(range(64)), batch_size=2, num_workers=2,
                                     persistent_workers=True)
batches = iter(loader)
next(batches)
workers = batches._workers
# Not from their parent: what a scheduler, a terminal or torchrun sends.
for sig in ('TERM', 'INT', 'USR1'):
    subprocess.run(['kill', '-s', sig, *(str(w.pid) for w in workers)], check=True)
time.sleep(1)
print('alive after the signals:', [w.is_alive() for w in workers], flush=True)
print('batches after the signals:', len([b for b in batches]), flush=True)
# PyTorch's own shutdown of a worker (and multiprocessing's at exit) still works.
workers[0].terminate()
workers[0].join(10)
print('terminated by the parent:', workers[0].exitcode, flush=True)
"""


def test_data_workers_leave_stop_signals_to_the_main_process():
    """SIGTERM, SIGINT and SIGUSR1 from another process leave the workers running
    and the loader working; the SIGTERM of PyTorch's own shutdown ends them."""
    def run(mode):
        proc = subprocess.run([sys.executable, '-c', WORKERS, mode], cwd=REPO, env=ONE_THREAD,
                              capture_output=True, text=True, timeout=120)
        return proc.stdout + proc.stderr

    out = run('safe')
    assert 'alive after the signals: [True, True]' in out, out[-3000:]
    assert 'batches after the signals: 31' in out
    assert 'terminated by the parent: 0' in out
    out = run('stock')  # PyTorch alone: the same signals kill the workers and the loader
    assert 'RuntimeError: DataLoader worker (pid ' in out, out[-3000:]
    assert 'is killed by signal: Terminated' in out


# ------------------------------------------------------------ one process
@pytest.mark.slow
@pytest.mark.parametrize('workers,persistent,sig', [
    (0, False, 'SIGUSR1'), (2, True, 'SIGTERM'), (2, False, 'SIGINT')])
def test_a_stop_signal_to_the_whole_group_saves_the_iteration(toy, tmp_path, workers,
                                                                persistent, sig):
    """SIGTERM / SIGUSR1 (Slurm) or SIGINT (Ctrl-C) to the run and its data
    workers: the iteration under way is finished and saved; a scheduler's signal
    exits 75 and writes the marker, Ctrl-C exits 130 and writes none."""
    work = tmp_path / 'work'
    cmd = [sys.executable, 'tools/train.py', held_config(tmp_path, 'train', 2),
           '--work-dir', str(work), '--cfg-options', *options(toy, workers, persistent, 4)]
    proc = start(cmd, work, env_with(tmp_path))
    wait_until_held(proc, work)
    os.killpg(proc.pid, getattr(signal, sig))  # the run and its DataLoader workers
    code, out = finish(proc, work)
    assert_no_worker_crash(out)
    saved_at(work, 2)
    if sig == 'SIGINT':
        assert code == EXIT_INTERRUPTED, out[-4000:]
        assert 'Ctrl-C: stopping after the current iteration' in out
        assert 'Interrupted (Ctrl-C): stopped after iteration 2 and saved it' in out
        assert not (work / 'preempted').exists()  # a requeue script must not requeue it
    else:
        assert code == EXIT_PREEMPTED, out[-4000:]
        assert f'Pre-empted ({sig} received): stopped after iteration 2 and saved it' in out
        assert (work / 'preempted').read_text().strip() == latest(work)


@pytest.mark.slow
def test_sigterm_to_the_group_then_resume_matches_an_uninterrupted_run(toy, tmp_path):
    """The case as reported: one persistent data worker, SIGTERM to the run and
    its worker during iteration 3; --resume ends with the weights of a run that
    was never stopped."""
    opts = options(toy, 1, True, 6)
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    env = env_with(tmp_path)
    runs = [start([sys.executable, 'tools/train.py', config, '--work-dir', str(work),
                   '--cfg-options', *opts], work, env)
            for config, work in ((RETINA, straight), (held_config(tmp_path, 'train', 3), stopped))]
    wait_until_held(runs[1], stopped)
    os.killpg(runs[1].pid, signal.SIGTERM)
    code, out = finish(runs[1], stopped)
    assert code == EXIT_PREEMPTED, out[-4000:]
    assert_no_worker_crash(out)
    saved_at(stopped, 3)
    assert finish(runs[0], straight)[0] == 0, (straight / 'out.log').read_text()[-4000:]

    proc = subprocess.run([sys.executable, 'tools/train.py', RETINA, '--work-dir', str(stopped),
                           '--resume', '--cfg-options', *opts],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert logged_steps(stopped)[-1] == [4, 5, 6]
    assert_same_weights(weights(stopped / 'iter_6.pth'), weights(straight / 'iter_6.pth'),
                        weights(stopped / 'iter_3.pth'))


@pytest.mark.slow
def test_a_signal_during_validation_and_during_tools_test_stops_cleanly(toy, tmp_path):
    """SIGTERM to the group while the validation at the end of training runs:
    the validation stops, the trained iteration is saved, exit 75. Then
    tools/test.py on that checkpoint, SIGINT to its group during the first
    batch: exit 130 with a message, no worker traceback."""
    work = tmp_path / 'work'
    opts = options(toy, 1, True, 2, validate=True) + ['val_dataloader.batch_size=2',
                                                      'test_dataloader.batch_size=2']
    proc = start([sys.executable, 'tools/train.py', held_config(tmp_path, 'val'),
                  '--work-dir', str(work), '--cfg-options', *opts], work, env_with(tmp_path))
    wait_until_held(proc, work)
    os.killpg(proc.pid, signal.SIGTERM)
    code, out = finish(proc, work)
    assert code == EXIT_PREEMPTED, out[-4000:]
    assert_no_worker_crash(out)
    assert ('Pre-empted (SIGTERM received) during the validation after iteration 2, which '
            'was stopped at batch 1 of 2') in out
    saved_at(work, 2)

    test_work = tmp_path / 'test'
    proc = start([sys.executable, 'tools/test.py', held_config(tmp_path, 'test'),
                  latest(work), '--work-dir', str(test_work), '--cfg-options', *opts],
                 test_work, env_with(tmp_path))
    wait_until_held(proc, test_work)
    os.killpg(proc.pid, signal.SIGINT)
    code, out = finish(proc, test_work)
    assert code == EXIT_INTERRUPTED, out[-4000:]
    assert_no_worker_crash(out)
    assert ('Interrupted (Ctrl-C): the test stopped after batch 1 of 2; no metrics were '
            'computed and nothing was saved. Run the same command again') in out


# ------------------------------------------------------------ two processes
@pytest.mark.slow
def test_sigterm_to_every_process_of_a_torchrun_launch_then_resume(toy, tmp_path):
    """tools/dist_train.sh, 2 gloo processes with 2 data workers each. SIGTERM
    to torchrun, both ranks and their workers (as Slurm's cgroup kill does;
    torchrun then forwards it to each rank's group again) during iteration 2:
    both ranks finish it, rank 0 saves it; --resume ends equal to an
    uninterrupted 2-process run."""
    opts = options(toy, 2, True, 4)
    stopped, straight = tmp_path / 'stopped', tmp_path / 'straight'

    def launch(config, work, *flags, log='out.log'):
        return start(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(work),
                      *flags, '--cfg-options', *opts], work,
                     env_with(tmp_path, PORT=str(free_port()), PYTHON=sys.executable), log)

    runs = [launch(RETINA, straight), launch(held_config(tmp_path, 'train', 2), stopped)]
    wait_until_held(runs[1], stopped, ranks=2)
    everyone = descendants(runs[1].pid)
    assert len(everyone) >= 1 + 2 + 2 * 2, everyone  # torchrun, 2 ranks, 2 workers each
    for pid in everyone:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:  # already ended by torchrun's forwarded signal
            pass
    code, out = finish(runs[1], stopped)
    assert code != 0, out[-5000:]  # torchrun's own status after a signal
    assert 'DataLoader worker' not in out and 'exited unexpectedly' not in out, out[-5000:]
    assert 'Pre-empted (SIGTERM received): stopped after iteration 2 and saved it' in out
    saved_at(stopped, 2)
    assert (stopped / 'preempted').read_text().strip() == latest(stopped)
    assert finish(runs[0], straight)[0] == 0, (straight / 'out.log').read_text()[-5000:]

    code, out = finish(launch(RETINA, stopped, '--resume', log='resume.log'), stopped,
                       log='resume.log')
    assert code == 0, out[-5000:]
    assert logged_steps(stopped)[-1] == [3, 4]
    assert_same_weights(weights(stopped / 'iter_4.pth'), weights(straight / 'iter_4.pth'),
                        weights(stopped / 'iter_2.pth'))
