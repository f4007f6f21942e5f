"""Switch a config on for long runs: stop on divergence, save on pre-emption.

``tools/train.py`` calls :func:`use_long_run_guards` on every config (as it
calls ``use_atomic_checkpoints``), ``tools/test.py`` calls
:func:`use_stop_signals`. With MM's own ``train.py``, add the same by hand:
``custom_hooks = [dict(type='NonFiniteLossHook'), dict(type='PreemptionHook')]``,
``train_cfg.type='ResumableEpochBasedTrainLoop'`` for epoch-based configs, and
``'casvit_mm.engine'`` in ``custom_imports`` (MM's ``test.py``: the
``PreemptionHook`` alone).
"""
from mmengine.config import Config

GUARD_HOOKS = ('NonFiniteLossHook', 'PreemptionHook')


def _add_hooks(cfg, names):
    hooks = list(cfg.get('custom_hooks') or [])
    present = {h.get('type') for h in hooks}
    cfg.custom_hooks = hooks + [dict(type=name) for name in names if name not in present]


def use_stop_signals(cfg: Config) -> Config:
    """Add :class:`PreemptionHook` to ``cfg`` (unless it lists one): a stop signal
    (SIGTERM, SIGUSR1, Ctrl-C) to any process of the run -- DataLoader workers
    included -- ends training, validation or testing cleanly. Returns ``cfg``."""
    _add_hooks(cfg, ['PreemptionHook'])
    return cfg


def use_long_run_guards(cfg: Config) -> Config:
    """Add :class:`NonFiniteLossHook` and :class:`PreemptionHook` to ``cfg``.

    An epoch-based loop (``EpochBasedTrainLoop``, or ``by_epoch=True``
    without a type) becomes ``ResumableEpochBasedTrainLoop``, which resumes
    inside an epoch. Hooks the config already lists are not added twice.
    Returns ``cfg``.
    """
    _add_hooks(cfg, GUARD_HOOKS)
    train_cfg = cfg.get('train_cfg')
    if train_cfg:
        if train_cfg.get('type') == 'EpochBasedTrainLoop' or (
                'type' not in train_cfg and train_cfg.get('by_epoch')):
            train_cfg.pop('by_epoch', None)
            train_cfg['type'] = 'ResumableEpochBasedTrainLoop'
    return cfg
