"""numbanorm: normalization layers and their statistics for NumPy, compiled with Numba.

Forward and hand-derived backward of batch, instance, layer, group, RMS and switchable
normalization and weight standardization, normalization over any set of axes, plus one-pass
mergeable statistics and TensorFlow's statistics API, on float16/32/64 arrays of any layout.
"""

from ._functional import *  # noqa: F401,F403 -- the named norms and statistics, see _functional.__all__
from ._functional import __all__ as _functions
from ._normalize import NormalizeStats, normalize, normalize_backward
from ._tfstats import (
    BatchNormalizationGrads,
    batch_normalization_backward,
    moments_backward,
    normalize_moments,
    sufficient_statistics,
    weighted_moments,
)
from .layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm, SwitchableNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm", "SwitchableNorm",
    *_functions,
    "BatchNormalizationGrads", "batch_normalization_backward", "moments_backward", "normalize_moments",
    "sufficient_statistics", "weighted_moments",
    "NormalizeStats", "normalize", "normalize_backward",
]
