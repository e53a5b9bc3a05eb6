"""numbanorm: normalization layers and their statistics for NumPy, compiled with Numba.

Forward and hand-derived backward of batch, instance, layer, group, RMS and switchable
normalization and weight standardization, plus one-pass mergeable statistics, on float16/32/64
arrays of any layout.
"""

from ._functional import *  # noqa: F401,F403 -- the public functions, listed in _functional.__all__
from ._functional import __all__ as _functions
from .layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm, SwitchableNorm

__version__ = "0.1.0"

__all__ = ["BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm", "SwitchableNorm", *_functions]
