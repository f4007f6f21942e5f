"""Small helpers of the tools: the data checks and training curves.

- :mod:`.path_check`: do the paths a config names exist (cheap, every tool run);
- :mod:`.sample_check`: read every sample, list the bad ones (expensive: the
  command line ``python -m casvit_mm.check_dataset CONFIG``);
- :mod:`.sample_errors`: a sample that fails during training names itself;
- :mod:`.dataset_configs`: the one walk under dataset wrappers they share.
"""
from .curves import plot_curves, read_scalars
from .path_check import DataRootError, check_data_paths, missing_data_paths
from .sample_check import Problem, check_datasets
from .sample_errors import BadSampleError, NameBadSample, name_load_errors

__all__ = ['BadSampleError', 'DataRootError', 'NameBadSample', 'Problem', 'check_data_paths',
           'check_datasets', 'missing_data_paths', 'name_load_errors', 'plot_curves',
           'read_scalars']
