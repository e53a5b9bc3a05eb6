"""The public result types and the type aliases of the public signatures."""

from typing import Any, NamedTuple, Optional, Protocol, Sequence, Union

import numpy as np
from numpy.typing import NDArray



#: An array of the input's family: a NumPy array for NumPy (and array-like) input; Dask and CUDA
#: inputs return a Dask array or an array of the input's CUDA family (not described statically).
Array = NDArray[Any]


class _CUDAArray(Protocol):
    """A CUDA array (Numba device array, CuPy array, PyTorch CUDA tensor): what the CUDA backend takes."""

    @property
    def __cuda_array_interface__(self) -> Any: ...


#: An array written in place (running statistics, ``out``): a NumPy array, or a CUDA array when
#: the input is one.
InPlace = Union[NDArray[Any], _CUDAArray]


#: ``normalized_shape``: the trailing dimensions of a layer or RMS norm.
ShapeLike = Union[int, Sequence[int]]


#: ``axes`` of `moments` and `welford`.
AxesLike = Union[int, Sequence[int]]


class NormStats(NamedTuple):
    """What a forward keeps for its backward (float64, whatever the input's dtype).

    Returned by the forwards called with ``return_stats=True`` (`batch_norm`, `instance_norm`,
    `group_norm`, `layer_norm`, `rms_norm`) and passed to the matching backward.

    Attributes
    ----------
    mean, rstd : ndarray of float64
        Per group: ``(C,)`` for batch norm, ``(N, C)`` for instance norm, ``(N, G)`` for group
        norm, the leading shape of the input for layer norm and RMS norm (whose ``mean`` is
        zero).  ``rstd`` is ``1 / sqrt(var + eps)``.
    batch_stats : bool
        True when the statistics came from the input (training); False when running
        statistics were used, which the backward then treats as constants.
    has_bias : bool
        Whether the forward had a bias, so the backward returns its gradient.
    eps : float
        The forward's eps (backends that recompute statistics blockwise need it).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> y, stats = nn.instance_norm(x, return_stats=True)
    >>> stats.mean.shape, stats.rstd.dtype, stats.batch_stats, stats.has_bias
    ((4, 3), dtype('float64'), True, False)
    """

    mean: NDArray[np.float64]
    rstd: NDArray[np.float64]
    batch_stats: bool = True
    has_bias: bool = False
    eps: float = 1e-5


class Grads(NamedTuple):
    """Gradients of a normalization; ``weight``/``bias`` are None where the forward had none.

    Returned by `batch_norm_backward`, `instance_norm_backward`, `group_norm_backward`,
    `layer_norm_backward` and `rms_norm_backward`.

    Attributes
    ----------
    input : ndarray
        The gradient with respect to the input: its shape and dtype.
    weight : ndarray or None
        The gradient with respect to ``weight`` (its shape), or None when no weight was given.
    bias : ndarray or None
        The gradient with respect to ``bias``, or None when the forward had no bias
        (``stats.has_bias`` is False; always None for RMS norm).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 6))
    >>> y, stats = nn.layer_norm(x, 6, np.ones(6), np.zeros(6), return_stats=True)
    >>> g = nn.layer_norm_backward(np.ones_like(y), x, stats, 6, np.ones(6))
    >>> g.input.shape, g.weight.shape, g.bias.tolist()
    ((4, 6), (6,), [4.0, 4.0, 4.0, 4.0, 4.0, 4.0])
    """

    input: Array
    weight: Optional[Array] = None
    bias: Optional[Array] = None


class SwitchableStats(NamedTuple):
    """What `switchable_norm` keeps for its backward (float64).

    Attributes
    ----------
    mean, rstd : ndarray of float64
        The mixed statistics per (sample, channel), ``(N, C)``.
    batch_stats : bool
        Whether the batch term came from the input (training) or running statistics.
    has_bias : bool
        Whether the forward had a bias, so the backward returns its gradient.
    means, variances : ndarray of float64
        Each term's biased statistics broadcast to ``(K, N, C)``, in the order instance, layer,
        batch (K = 3, or 2 with ``using_bn=False``).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> y, stats = nn.switchable_norm(x, np.zeros(3), np.zeros(3), training=True, return_stats=True)
    >>> stats.mean.shape, stats.means.shape, stats.batch_stats
    ((4, 3), (3, 4, 3), True)
    """

    mean: NDArray[np.float64]
    rstd: NDArray[np.float64]
    batch_stats: bool
    has_bias: bool
    means: NDArray[np.float64]
    variances: NDArray[np.float64]


class SwitchableGrads(NamedTuple):
    """Gradients of switchable norm, the mixture logits included.

    Attributes
    ----------
    input : ndarray
        The input gradient: the input's shape and dtype.
    weight, bias : ndarray or None
        ``(C,)``; None where the forward had no weight or bias.
    mean_weight, var_weight : ndarray of float64
        The gradients with respect to the mixture logits, of the logits' shape.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> y, stats = nn.switchable_norm(x, np.zeros(2), np.zeros(2), using_bn=False, return_stats=True)
    >>> g = nn.switchable_norm_backward(np.ones_like(y), x, stats, np.zeros(2), np.zeros(2))
    >>> g._fields
    ('input', 'weight', 'bias', 'mean_weight', 'var_weight')
    >>> g.var_weight.shape, g.bias
    ((2,), None)
    """

    input: Array
    weight: Optional[Array]
    bias: Optional[Array]
    mean_weight: NDArray[np.float64]
    var_weight: NDArray[np.float64]


class Moments(NamedTuple):
    """A mergeable Welford state: per-element ``count``, ``mean`` and ``m2`` (the sum of squared
    deviations from the mean), float64 arrays of one shape (Dask arrays for Dask input).

    Returned by `welford`, combined by `merge`, turned into ``(mean, variance)`` by `finalize`.

    Attributes
    ----------
    count : ndarray of float64
        The number of values behind each element (0 for an empty block).
    mean : ndarray of float64
        Their mean.
    m2 : ndarray of float64
        The sum of their squared deviations from ``mean``.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> state = nn.welford(np.arange(10.0), axes=0)
    >>> float(state.count), float(state.mean), float(state.m2)
    (10.0, 4.5, 82.5)
    """

    count: NDArray[np.float64]  # type: ignore[assignment]  # the field shadows tuple.count, by design
    mean: NDArray[np.float64]
    m2: NDArray[np.float64]

    def finalize(self, ddof: int = 0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(mean, variance)`` with ``m2 / (count - ddof)``; NaN where that has no value left.

        Parameters
        ----------
        ddof : int
            Delta degrees of freedom: 0 for the biased variance (`moments`, the normalizing
            variance), 1 for the unbiased one (PyTorch's running variance).

        Returns
        -------
        mean, variance : ndarray of float64
            The state's shape; the variance is NaN where ``count - ddof <= 0``.

        Examples
        --------
        >>> import numpy as np
        >>> import numbanorm as nn
        >>> mean, var = nn.welford(np.arange(10.0), axes=0).finalize(ddof=1)
        >>> float(mean), round(float(var), 6)
        (4.5, 9.166667)
        """
        dof = self.count - ddof
        return self.mean, np.where(dof > 0, self.m2 / np.where(dof > 0, dof, 1), np.nan)

