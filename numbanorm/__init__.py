"""numbanorm: normalization layers and their statistics for NumPy, compiled with Numba.

Forward and hand-derived backward of batch, instance, layer, group, RMS and switchable
normalization and weight standardization, normalization over any set of axes (`normalize`), plus
one-pass mergeable statistics (`moments`, `batch_normalization`, `welford`/`merge`) and
TensorFlow's statistics API, on float16/32/64 arrays of any layout.  NumPy arrays run on the CPU,
CUDA arrays on the GPU, Dask arrays lazily on a cluster.  The layer classes (`BatchNorm`,
`LayerNorm`, ...) keep parameters, running statistics and gradients for hand-written training
loops.

Examples
--------
>>> import numpy as np
>>> import numbanorm as nn
>>> x = np.random.default_rng(0).standard_normal((4, 8, 5, 5)).astype(np.float32)
>>> y, stats = nn.group_norm(x, 4, return_stats=True)
>>> grads = nn.group_norm_backward(np.ones_like(y), x, stats, 4)
>>> grads.input.shape, grads.input.dtype
((4, 8, 5, 5), dtype('float32'))
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
from . import _overloads  # noqa: F401  (the public functions inside @njit code; compiles nothing)

__version__ = "0.1.0"

__all__ = [
    "BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm", "SwitchableNorm",
    *_functions,
    "BatchNormalizationGrads", "batch_normalization_backward", "moments_backward", "normalize_moments",
    "sufficient_statistics", "weighted_moments",
    "NormalizeStats", "normalize", "normalize_backward",
]
