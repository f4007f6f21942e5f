"""What the command-line tools in ``tools/`` share, importable, so the tools stay
thin and the tests exercise exactly what they run.

Not named ``apis``: in mmdet and mmseg ``apis`` is what users call for inference
(``init_detector``, ``DetInferencer``); this package is the tools' plumbing.

- :mod:`.build`: build a model from a config without touching the network,
  compare outputs, fuse a trained checkpoint (export, benchmark, converters).
- :mod:`.runner`: a config from a tool's command line, the data check, the
  runner, and the per-codebase switches of ``tools/test.py``.
"""
from .build import build_model, deploy_config, load_config, relative_error, reparameterize
from .runner import (build_runner, check_checkpoints, check_data, codebase,
                     config_from_args, drop_test_time_ema,
                     enable_tta, enable_visualization, parse_tool_args)

__all__ = ['build_model', 'build_runner', 'check_checkpoints', 'check_data',
           'codebase',
           'config_from_args', 'deploy_config', 'drop_test_time_ema', 'enable_tta', 'enable_visualization',
           'load_config', 'parse_tool_args', 'relative_error', 'reparameterize']
