"""Stop a diverging run loudly, before anything non-finite reaches a checkpoint.

Why: mmengine 0.11 logs ``loss: nan`` and trains on. With a learning rate far
too high the toy RetinaNet is ``nan`` from iteration 5, yet the run writes
checkpoints full of NaN weights, points ``last_checkpoint`` (what ``--resume``
follows) at them, rotates the last finite ones away with ``max_keep_ckpts``
and exits 0. mmdet's ``CheckInvalidLossHook`` asserts on the total loss, for
mmdet only, and says nothing about the cause.

:class:`NonFiniteLossHook` (any codebase: it reads mmengine's ``log_vars``)
runs after every training iteration, before ``CheckpointHook``. It costs no
extra device synchronisation: mmengine's ``RuntimeInfoHook`` has already turned
every logged loss into a Python float for the message hub, and those floats
are what is checked. On a non-finite loss it logs which terms are non-finite,
at which iteration, the likely causes with this run's learning rate and total
batch, and which checkpoint ``--resume`` will use; then it exits with
:data:`EXIT_DIVERGED`. Nothing of that iteration is saved.

A finite loss does not prove finite weights: the update that follows it can
overflow. :func:`check_finite_state` is therefore also called by
``AtomicCheckpointHook`` right before each save (one pass over the tensors it
is about to copy anyway); a non-finite weight or optimizer state stops the run
the same way, before any old checkpoint is deleted.
"""
import math
import os.path as osp
from typing import Optional

import torch
from mmengine.dist import get_world_size
from mmengine.hooks import Hook, RuntimeInfoHook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS

from ..utils.path_check import check_dataset_command

EXIT_DIVERGED = 3  # exit status of a run stopped by a non-finite loss or weight


class StopRun(SystemExit):
    """A deliberate stop: exits with the class's ``exit_code``; ``message`` says why."""
    exit_code = 1

    def __init__(self, message):
        super().__init__(self.exit_code)
        self.message = message

    def __str__(self):
        return self.message


class TrainingDiverged(StopRun):
    """Stops the process with :data:`EXIT_DIVERGED`."""
    exit_code = EXIT_DIVERGED


def _last_checkpoint(runner):
    """What ``last_checkpoint`` names (mmengine's ``find_latest_checkpoint``
    reads the same file but logs "Did not find last_checkpoint to be resumed"
    when there is none, which would mislead in a divergence message)."""
    pointer = osp.join(runner.work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            return f.read().strip() or None
    return None


def _optim_wrappers(runner):
    wrappers = runner.optim_wrapper
    return list(wrappers.values()) if isinstance(wrappers, OptimWrapperDict) else [wrappers]


def _learning_rate(runner):
    return max(group['lr'] for w in _optim_wrappers(runner) for group in w.optimizer.param_groups)


def diverged_message(runner, what):
    """The message of a stopped run: ``what`` went non-finite; causes; what to resume."""
    cfg = runner.cfg
    batch = (cfg.get('train_dataloader') or {}).get('batch_size')
    world = get_world_size()
    base = (cfg.get('auto_scale_lr') or {}).get('base_batch_size')
    if batch:
        total = f'{world} process(es) x {batch} images = {world * batch}'
    else:
        total = f'{world} process(es) x train_dataloader.batch_size'
    set_for = (f'the config sets it for a total batch of {base} (auto_scale_lr.base_batch_size)'
               if base else 'the config does not say for which total batch '
               '(auto_scale_lr.base_batch_size)')
    last = _last_checkpoint(runner)
    resume = (f'The last checkpoint, {last}, holds finite weights: `--resume` continues from '
              f'it (nothing of this iteration was saved).' if last else
              'No checkpoint had been saved yet: nothing to resume from.')
    return '\n'.join([
        f'Training stopped at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): {what}.',
        resume,
        'What usually causes this:',
        f'  - a learning rate too high for the total batch: lr is {_learning_rate(runner):g} '
        f'now, {set_for}; this run trains with {total}. Pass --auto-scale-lr to scale the lr '
        f'to the batch you run, or lower optim_wrapper.optimizer.lr (a longer warm-up or '
        f'optim_wrapper.clip_grad=dict(max_norm=...) also help);',
        '  - float16 without loss scaling: use --amp (mmengine\'s AmpOptimWrapper scales the '
        'loss dynamically) instead of casting the model to half precision;',
        '  - a damaged sample or annotation (e.g. an empty or huge box): '
        f'{check_dataset_command(getattr(cfg, "filename", None) or "CONFIG")} '
        'lists them.',
    ])


def _state_tensors(runner):
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    yield from (('state_dict.' + k, v) for k, v in model.state_dict().items())
    for wrapper in _optim_wrappers(runner):
        for param_id, state in wrapper.optimizer.state_dict()['state'].items():
            for k, v in state.items():
                yield f'optimizer.state.{param_id}.{k}', v


def non_finite_state(runner):
    """Names of the model's and optimizer's floating tensors that hold inf or nan."""
    # Grouped by device: on a GPU, Adam's ``step`` counters stay on the CPU
    # while the weights are on CUDA, and one stack cannot mix them.
    by_device = {}
    for name, value in _state_tensors(runner):
        if torch.is_tensor(value) and value.is_floating_point():
            by_device.setdefault(value.device, []).append((name, torch.isfinite(value).all()))
    bad = []
    for pairs in by_device.values():
        finite = torch.stack([flag for _, flag in pairs]).cpu()  # one sync per device
        bad += [name for (name, _), ok in zip(pairs, finite.tolist()) if not ok]
    return bad


def check_finite_state(runner):
    """Stop the run (:class:`TrainingDiverged`) if the state about to be saved is not finite."""
    bad = non_finite_state(runner)
    if bad:
        shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
        message = diverged_message(
            runner, f'non-finite values in {len(bad)} tensor(s) of the state to be saved '
            f'({shown}); the checkpoint was not written')
        runner.logger.error(message)
        raise TrainingDiverged(message)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training when a logged loss is inf or nan (see the module docstring).

    Takes no arguments. Runs after ``RuntimeInfoHook`` and before
    ``CheckpointHook``, so a non-finite iteration is never saved.
    """
    priority = 'ABOVE_NORMAL'

    def before_train(self, runner) -> None:
        # The floats RuntimeInfoHook puts in the message hub cost no extra sync.
        self._from_hub = any(isinstance(h, RuntimeInfoHook) for h in runner.hooks)

    def _losses(self, runner, outputs):
        hub = runner.message_hub
        for key, value in outputs.items():
            if 'loss' not in key:
                continue
            if self._from_hub and f'train/{key}' in hub.log_scalars:
                value = hub.get_scalar(f'train/{key}').current()
            yield key, float(value)

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        if not outputs:
            return
        losses = dict(self._losses(runner, outputs))
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if not bad:
            return
        terms = ', '.join(f'{k}={v}' for k, v in bad.items())
        finite = ', '.join(f'{k}={v:.4g}' for k, v in losses.items() if k not in bad)
        message = diverged_message(
            runner, f'non-finite loss: {terms}' + (f' (finite: {finite})' if finite else ''))
        runner.logger.error(message)
        raise TrainingDiverged(message)
