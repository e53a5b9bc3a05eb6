"""The public functions and result types, gathered from their family modules.

* ``_grid_norms``: batch, instance and group norm; ``_switchable``: switchable norm;
  ``_row_norms``: layer norm, RMS norm, weight standardization; ``_statistics``: moments,
  batch_normalization, welford, merge -- each a front that checks and plans, then hands the data
  path to the CPU device (``_cpu_pipelines``);
* ``_types``: the result types and the signatures' type aliases; ``_arguments``: the argument
  handling those fronts share.

``numbanorm`` re-exports these; the ``@njit`` overloads, the registry and the backends refer to
the functions through this module.
"""

from ._grid_norms import (
    batch_norm, batch_norm_backward, group_norm, group_norm_backward, instance_norm, instance_norm_backward,
)
from ._row_norms import (
    layer_norm, layer_norm_backward, rms_norm, rms_norm_backward, weight_standardization,
    weight_standardization_backward,
)
from ._statistics import batch_normalization, merge, moments, welford
from ._switchable import switchable_norm, switchable_norm_backward
from ._types import AxesLike, Grads, InPlace, Moments, NormStats, ShapeLike, SwitchableGrads, SwitchableStats

__all__ = [
    "Grads", "Moments", "NormStats", "SwitchableGrads", "SwitchableStats",
    "batch_norm", "batch_norm_backward", "batch_normalization", "group_norm", "group_norm_backward",
    "instance_norm", "instance_norm_backward", "layer_norm", "layer_norm_backward", "merge", "moments",
    "rms_norm", "rms_norm_backward", "switchable_norm", "switchable_norm_backward",
    "weight_standardization", "weight_standardization_backward", "welford",
]
_ALIASES = (AxesLike, InPlace, ShapeLike)  # the signatures' type aliases, for the documentation's cross-references
