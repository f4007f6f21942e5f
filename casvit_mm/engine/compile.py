"""Make mmengine's ``compile`` option trace the optimizer step.

Why: ``cfg.compile = True`` makes mmengine 0.11 wrap the model's whole
``train_step`` -- forward, loss, backward *and* ``optimizer.step()`` -- in
``torch.compile``. When the config has a ``paramwise_cfg`` (every
classification config here: no weight decay on norms and biases), mmengine's
optimizer constructor stores the parameter groups as ``ConfigDict`` objects,
and TorchDynamo (torch 2.13) fails while tracing ``AdamW.step`` over them::

    InternalTorchDynamoError: AttributeError: 'UserDefinedDictVariable'
    object has no attribute 'items'

``PlainParamGroupsHook`` turns the groups into plain dicts right before
training starts (after a resume has loaded the optimizer state, before the
first compiled step). Values are unchanged; the optimizer state is keyed by
parameter, not by group, so nothing else notices. ``tools/train.py`` adds the
hook whenever the config sets ``compile``.
"""
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS


@HOOKS.register_module()
class PlainParamGroupsHook(Hook):
    """Replace the optimizer's ``ConfigDict`` parameter groups by plain dicts."""
    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        wrappers = runner.optim_wrapper
        wrappers = wrappers.values() if isinstance(wrappers, OptimWrapperDict) else [wrappers]
        for wrapper in wrappers:
            groups = wrapper.optimizer.param_groups
            groups[:] = [dict(group) for group in groups]


def use_compile_fixes(cfg: Config) -> Config:
    """Add :class:`PlainParamGroupsHook` to a config that sets ``compile``."""
    if cfg.get('compile'):
        hooks = list(cfg.get('custom_hooks') or [])
        if not any(h.get('type') == 'PlainParamGroupsHook' for h in hooks):
            hooks.append(dict(type='PlainParamGroupsHook'))
        cfg.custom_hooks = hooks
    return cfg
