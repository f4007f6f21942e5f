"""Switch a config on for long runs: stop on divergence, save on pre-emption.

``tools/train.py`` calls :func:`use_long_run_guards` on every config (as it
calls ``use_atomic_checkpoints``). With MM's own ``train.py``, add the same
by hand: ``custom_hooks = [dict(type='NonFiniteLossHook'),
dict(type='PreemptionHook')]``, ``train_cfg.type='ResumableEpochBasedTrainLoop'``
for epoch-based configs, and ``'casvit_mm.engine'`` in ``custom_imports``.
"""
GUARD_HOOKS = ('NonFiniteLossHook', 'PreemptionHook')


def use_long_run_guards(cfg):
    """Add :class:`NonFiniteLossHook` and :class:`PreemptionHook` to ``cfg``.

    An epoch-based loop (``EpochBasedTrainLoop``, or ``by_epoch=True``
    without a type) becomes ``ResumableEpochBasedTrainLoop``, which resumes
    inside an epoch. Hooks the config already lists are not added twice.
    Returns ``cfg``.
    """
    hooks = list(cfg.get('custom_hooks') or [])
    present = {h.get('type') for h in hooks}
    hooks += [dict(type=name) for name in GUARD_HOOKS if name not in present]
    cfg.custom_hooks = hooks
    train_cfg = cfg.get('train_cfg')
    if train_cfg:
        if train_cfg.get('type') == 'EpochBasedTrainLoop' or (
                'type' not in train_cfg and train_cfg.get('by_epoch')):
            train_cfg.pop('by_epoch', None)
            train_cfg['type'] = 'ResumableEpochBasedTrainLoop'
    return cfg
