"""``tools/test.py --deploy``: test the deploy-mode (fused) model."""
from typing import Callable, Optional

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DeployHook(Hook):
    """Switch to deploy mode once the checkpoint is in: ``Runner.test`` loads the
    checkpoint after ``before_run`` and before the test loop's ``before_test``.

    Args:
        switch (callable, optional): Called with the (unwrapped) model; defaults
            to :func:`casvit_mm.deploy.switch.switch_model_to_deploy`.
    """
    priority = 'VERY_HIGH'

    def __init__(self, switch: Optional[Callable[[nn.Module], nn.Module]] = None):
        if switch is None:
            from ..deploy.switch import switch_model_to_deploy as switch
        self.switch = switch

    def before_test(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.switch(model)
        switched = [name or 'model' for name, m in model.named_modules()
                    if type(m).__name__ == 'CASViT' and m.deploy]
        if not switched:
            raise RuntimeError('--deploy: the model has no CASViT that switched to deploy '
                               'mode; test without --deploy.')
        print_log(f'--deploy: testing the deploy-mode model ({", ".join(switched)} switched '
                  f'to fused blocks)', logger='current')
