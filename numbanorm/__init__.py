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
from .layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm, SwitchableNorm
from . import _overloads  # noqa: F401  (the public functions inside @njit code; compiles nothing)

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
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "merge",
    "moments",
    "Moments",
    "rms_norm",
    "rms_norm_backward",
    "switchable_norm",
    "switchable_norm_backward",
    "SwitchableGrads",
    "SwitchableStats",
    "welford",
]
