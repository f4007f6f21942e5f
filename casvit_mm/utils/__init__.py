"""Small helpers of the tools (data checks)."""
from .data_check import DataRootError, check_data_paths, missing_data_paths

__all__ = ['DataRootError', 'check_data_paths', 'missing_data_paths']
