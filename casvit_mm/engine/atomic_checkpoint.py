"""Checkpoints that a kill can never leave half-written as the latest one.

Why: mmengine 0.11's ``CheckpointHook`` writes ``iter_N.pth`` in place
(``open(path, 'wb')``), never calls ``fsync``, rewrites the ``last_checkpoint``
pointer (which ``--resume`` follows) in place too, and, with
``max_keep_ckpts``, deletes the oldest checkpoint *before* writing the new
one. A job killed during a save (SIGKILL from the scheduler, a node lost) can
then leave a truncated ``iter_N.pth``, an empty pointer, or -- with
``max_keep_ckpts=1`` -- no loadable checkpoint at all.

``AtomicCheckpointHook`` is ``CheckpointHook`` with the save reordered:

1. the checkpoint is written to ``iter_N.pth.partial`` next to its final
   place, flushed to disk (``fsync``) and renamed (``os.replace``, atomic on
   POSIX file systems) to ``iter_N.pth``;
2. the ``last_checkpoint`` pointer is replaced the same way;
3. only then are checkpoints beyond ``max_keep_ckpts`` deleted.

Before any of this, the state to be saved is checked for inf / nan
(:func:`~casvit_mm.engine.non_finite.check_finite_state`): a diverged run
stops there, so no checkpoint holds non-finite weights and no finite one is
rotated away for one. At any instant the pointer names a complete file. Everything else (when to
save, which keys, best checkpoints, publishing) is the parent's. Object
stores (``out_dir`` on a non-local backend) already write whole objects, so
there the parent's code runs unchanged.

``tools/train.py`` switches the stock ``CheckpointHook`` of any config to this
one (:func:`use_atomic_checkpoints`); with MM's own ``train.py`` set
``default_hooks.checkpoint.type='AtomicCheckpointHook'`` and import
``casvit_mm.engine`` in ``custom_imports``.
"""
import glob
import os
import os.path as osp
import tempfile

from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from .non_finite import check_finite_state

PARTIAL_SUFFIX = '.partial'


def _fsync_dir(path):
    """Make a rename in ``path`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_file(src: str, dst: str) -> None:
    """Flush ``src`` to disk and rename it to ``dst`` in one atomic step."""
    with open(src, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(src, dst)
    _fsync_dir(osp.dirname(osp.abspath(dst)))


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` (bytes or str) to ``path``: readers see the old or the new file, whole."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{osp.basename(path)}.',
                               suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        commit_file(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose saves are atomic and delete old files last.

    Takes exactly ``CheckpointHook``'s arguments.
    """

    def _is_local(self):
        return isinstance(self.file_backend, LocalBackend)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        # Leftovers of a save that was killed: never loaded, safe to drop.
        if self._is_local() and is_main_process():
            for path in glob.glob(osp.join(glob.escape(self.out_dir), '*' + PARTIAL_SUFFIX)):
                os.remove(path)

    def _rotate(self, runner, step):
        """Record ``step`` among the kept checkpoints; return the paths to delete later."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []
        outdated = []
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            outdated.append(osp.join(self.out_dir,
                                     self.filename_tmpl.format(self.keep_ckpt_ids.popleft())))
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return outdated

    def _save_checkpoint_with_step(self, runner, step, meta):
        # Never a checkpoint of non-finite weights, and never delete a finite
        # one to make room for it: this stops the run first.
        check_finite_state(runner)
        if not self._is_local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        outdated = self._rotate(runner, step)
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        save_atomically(runner, self.out_dir, filename, meta=meta, by_epoch=self.by_epoch,
                        save_optimizer=self.save_optimizer,
                        save_param_scheduler=self.save_param_scheduler,
                        file_client_args=self.file_client_args,
                        backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        for path in outdated:
            if osp.isfile(path):
                os.remove(path)


def save_atomically(runner, out_dir, filename, **kwargs):
    """``runner.save_checkpoint`` to ``out_dir/filename`` through a ``.partial``
    file, then point ``last_checkpoint`` at it; returns the path.

    ``kwargs`` are ``Runner.save_checkpoint``'s. Call it on every rank: the
    runner gathers the state and rank 0 writes.
    """
    path = osp.join(out_dir, filename)
    runner.save_checkpoint(out_dir, filename + PARTIAL_SUFFIX, **kwargs)
    if is_main_process():
        commit_file(path + PARTIAL_SUFFIX, path)
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), path)
    return path


def use_atomic_checkpoints(cfg: Config) -> Config:
    """Swap the config's stock ``CheckpointHook`` for :class:`AtomicCheckpointHook`.

    A checkpoint hook of another type (the user's own) is left alone.
    Returns ``cfg``.
    """
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if hook is not None and hook.get('type') in ('CheckpointHook', CheckpointHook):
        hook['type'] = 'AtomicCheckpointHook'
    return cfg
