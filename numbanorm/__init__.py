"""numbanorm: normalization layers and their statistics for NumPy, compiled with Numba.

Forward and hand-derived backward of batch, instance, layer and group normalization, plus
one-pass mergeable statistics, on float16/32/64 arrays of any layout.
"""

from ._functional import (
    Grads,
    NormStats,
    batch_norm,
    batch_norm_backward,
    batch_normalization,
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
    layer_norm,
    layer_norm_backward,
    merge,
    moments,
    Moments,
    rms_norm,
    rms_norm_backward,
    switchable_norm,
    switchable_norm_backward,
    SwitchableGrads,
    SwitchableStats,
    welford,
)
from ._tfstats import (
    BatchNormalizationGrads,
    batch_normalization_backward,
    moments_backward,
    normalize_moments,
    sufficient_statistics,
    weighted_moments,
)
from ._normalize import NormalizeStats, normalize, normalize_backward
from .layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm, SwitchableNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
    "SwitchableNorm",
    "Grads",
    "NormStats",
    "batch_norm",
    "batch_norm_backward",
    "batch_normalization",
    "batch_normalization_backward",
    "BatchNormalizationGrads",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "merge",
    "moments",
    "moments_backward",
    "normalize",
    "normalize_backward",
    "NormalizeStats",
    "normalize_moments",
    "sufficient_statistics",
    "weighted_moments",
    "Moments",
    "rms_norm",
    "rms_norm_backward",
    "switchable_norm",
    "switchable_norm_backward",
    "SwitchableGrads",
    "SwitchableStats",
    "welford",
]
