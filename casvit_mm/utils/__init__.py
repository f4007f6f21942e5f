"""Small helpers of the tools (data checks, training curves)."""
from .curves import plot_curves, read_scalars
from .path_check import DataRootError, check_data_paths, missing_data_paths
from .sample_check import Problem, check_datasets
from .sample_errors import BadSampleError, NameBadSample, name_load_errors

__all__ = ['BadSampleError', 'DataRootError', 'NameBadSample', 'Problem', 'check_data_paths',
           'check_datasets', 'missing_data_paths', 'name_load_errors', 'plot_curves',
           'read_scalars']
