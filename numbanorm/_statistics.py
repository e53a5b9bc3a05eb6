"""Statistics: `moments`, `batch_normalization`, and mergeable Welford states (`welford`,
`merge`)."""

from typing import Optional

import numpy as np
from numpy.typing import ArrayLike

from . import _checks as chk
from . import _engine
from ._plan import Plan
from ._arguments import dispatch
from ._types import Array, AxesLike, Moments
from ._arguments import _deliver, _input, _rstd


@dispatch
def moments(x: ArrayLike, axes: AxesLike, keepdims: bool = False, *,
            nan_policy: str = "propagate") -> tuple[Array, Array]:
    """Mean and (biased) variance of ``x`` over ``axes`` in one pass (``tf.nn.moments``).

    ``axes``: an integer or a sequence of distinct integers, negative allowed.  The results
    have x's dtype (computed in float64 from float32 chunk sums).  ``nan_policy="omit"`` takes
    the statistics of the values that are not NaN (NaN for a group without any).

    Parameters
    ----------
    x : array_like, float16/32/64
        Any layout and strides; a Dask array gives lazy Dask results.
    axes : int or sequence of int
        The axes to reduce.
    keepdims : bool
        Keep the reduced axes with length 1.
    nan_policy : {"propagate", "omit"}, keyword-only
        "propagate": a NaN spoils its group.  "omit": statistics of the values present.

    Returns
    -------
    mean, variance : ndarray
        Of x's dtype; the variance is biased (divided by the count).

    Raises
    ------
    TypeError
        If ``x`` is not of a float16/32/64 dtype, or ``axes`` is not an integer or a sequence
        of integers.
    ValueError
        If an axis is out of range or repeated, or ``x`` is empty.

    See Also
    --------
    welford : the same statistics as a mergeable `Moments` state, in float64.

    Notes
    -----
    The order is TensorFlow's ``(mean, variance)``; ``torch.var_mean(x, dims, correction=0)``
    returns ``(variance, mean)``.  Statistics are exact chunked sums merged with Chan's
    formula, never ``E[x^2] - E[x]^2``, so a large offset keeps its digits.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4))
    >>> mean, var = nn.moments(x, axes=(0, 2, 3))
    >>> mean.shape, bool(np.allclose(mean, x.mean(axis=(0, 2, 3)))), bool(np.allclose(var, x.var(axis=(0, 2, 3))))
    ((3,), True, True)
    >>> nn.moments(x, -1, keepdims=True)[1].shape
    (8, 3, 4, 1)

    A large offset does not cost the variance its digits:

    >>> big = (1e4 + np.arange(6, dtype=np.float32)).reshape(2, 3)
    >>> round(nn.moments(big, axes=(0, 1))[1].item(), 6), round(float(np.var(np.arange(6.0))), 6)
    (2.916667, 2.916667)
    """
    if nan_policy != "propagate":
        from ._tfstats import nan_policy_value, omit_moments

        nan_policy_value(nan_policy)
        return omit_moments(x, axes, keepdims)
    arr, xk = _input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    kept = [i not in axes for i in range(arr.ndim)]
    if arr.size == 0:
        raise ValueError(f"x must not be empty, got shape {arr.shape}")
    count, mean, m2 = _engine.CPU.moments(xk, kept)
    var = m2 / count
    if not keepdims:
        mean, var = mean.reshape([arr.shape[i] for i in range(arr.ndim) if kept[i]]), var.reshape(
            [arr.shape[i] for i in range(arr.ndim) if kept[i]])
    return mean.astype(arr.dtype), var.astype(arr.dtype)


@dispatch
def batch_normalization(x: ArrayLike, mean: ArrayLike, variance: ArrayLike, offset: Optional[ArrayLike],
                        scale: Optional[ArrayLike], variance_epsilon: float) -> Array:
    """``(x - mean) * scale / sqrt(variance + variance_epsilon) + offset`` with broadcasting
    (``tf.nn.batch_normalization``); ``offset``/``scale`` may be None.

    Parameters
    ----------
    x : array_like, float16/32/64
        Any layout and strides.
    mean, variance : array_like
        Float arrays that broadcast to x's shape (``keepdims=True`` results of `moments`, or
        arrays of the trailing dimensions, as NumPy broadcasts).
    offset, scale : array_like or None
        Float arrays that broadcast to x's shape; None: no shift, no scale.
    variance_epsilon : float >= 0
        Added to the variance inside the square root.

    Returns
    -------
    ndarray
        x's shape and dtype.

    Raises
    ------
    TypeError
        If ``x`` or a parameter is not a float16/32/64 array (``mean`` and ``variance`` may not
        be None), or ``variance_epsilon`` is not a real number.
    ValueError
        If a parameter does not broadcast to x's shape, or ``variance_epsilon`` is negative or
        not finite.

    See Also
    --------
    moments, batch_norm

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 5))
    >>> mean, var = nn.moments(x, axes=0)
    >>> y = nn.batch_normalization(x, mean, var, offset=None, scale=None, variance_epsilon=1e-3)
    >>> bool(np.allclose(y, (x - mean) / np.sqrt(var + 1e-3)))
    True
    """
    arr, xk = _input("x", x, 0)
    eps = chk.eps_value("variance_epsilon", variance_epsilon)
    params = {}
    for name, value in (("mean", mean), ("variance", variance), ("offset", offset), ("scale", scale)):
        if value is None and name in ("offset", "scale"):
            continue
        value = chk.float_array(name, value).astype(np.float64)
        try:
            fits = np.broadcast_shapes(value.shape, arr.shape) == arr.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{name} must broadcast to x's shape {arr.shape}, got shape {value.shape}")
        params[name] = value.reshape((1,) * (arr.ndim - value.ndim) + value.shape)
    alpha = _rstd(params["variance"], eps)
    if "scale" in params:
        alpha = alpha * params["scale"]
    beta = params.get("offset", np.zeros(()))
    kept = [any(p.shape[i] != 1 for p in params.values()) for i in range(arr.ndim)]
    plan = Plan.of(xk, kept)
    full = lambda a: np.broadcast_to(a, [arr.shape[i] if kept[i] else 1 for i in range(arr.ndim)])
    beta = beta.reshape((1,) * (arr.ndim - beta.ndim) + beta.shape)
    y = _engine.CPU.affine(xk, plan, full(params["mean"]), full(alpha), full(beta))
    return _deliver(y, arr.dtype, None)


@dispatch
def welford(x: ArrayLike, axes: AxesLike, keepdims: bool = False, *, weights: Optional[ArrayLike] = None,
            nan_policy: str = "propagate") -> Moments:
    """The `Moments` of ``x`` over ``axes`` (one pass, the kernels of `moments`).

    Merge states of blocks, files, streams or MPI ranks with `merge`; an empty block gives count
    0, which merges as nothing.  ``weights`` (frequency weights >= 0 broadcasting against x, see
    `weighted_moments`) make the count the sum of the weights; such states merge the same way.
    ``nan_policy="omit"`` counts only the values that are not NaN (count 0 where none are).

    Parameters
    ----------
    x : array_like, float16/32/64
        Any layout and strides; may be empty.  A Dask array gives a state of Dask arrays.
    axes : int or sequence of int
        The axes to reduce.
    keepdims : bool
        Keep the reduced axes with length 1.
    weights : array_like or None, keyword-only
        Frequency weights >= 0 that broadcast against ``x``.
    nan_policy : {"propagate", "omit"}, keyword-only
        "omit": the NaN values are left out of the state.

    Returns
    -------
    Moments
        ``count``, ``mean`` and ``m2`` in float64, of the kept axes' shape.

    Raises
    ------
    TypeError
        If ``x`` is not of a float16/32/64 dtype, or ``axes`` is not an integer or a sequence
        of integers.
    ValueError
        If an axis is out of range or repeated.

    See Also
    --------
    merge, Moments.finalize, moments

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((1000, 4))
    >>> state = nn.welford(x[:300], axes=0)
    >>> state = nn.merge(state, nn.welford(x[300:], axes=0))
    >>> mean, var = state.finalize()
    >>> bool(np.allclose(mean, x.mean(axis=0))), bool(np.allclose(var, x.var(axis=0)))
    (True, True)
    """
    if weights is not None or nan_policy != "propagate":
        from ._tfstats import weighted_welford

        return weighted_welford(x, axes, weights, keepdims, nan_policy)
    arr, xk = _input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    kept = [i not in axes for i in range(arr.ndim)]
    shape = [arr.shape[i] if kept[i] else 1 for i in range(arr.ndim)]
    if arr.size == 0:
        count, mean, m2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    else:
        count, mean, m2 = _engine.CPU.moments(xk, kept)
    if not keepdims:
        out_shape = [arr.shape[i] for i in range(arr.ndim) if kept[i]]
        count, mean, m2 = (a.reshape(out_shape) for a in (count, mean, m2))
    return Moments(np.asarray(count, np.float64), mean, m2)


def merge(a: Moments, b: Moments) -> Moments:
    """Chan's formula: the `Moments` of the union of two disjoint samples.  Safe when a count is
    zero; shapes broadcast.

    Parameters
    ----------
    a, b : Moments
        Two states (anything with ``count``, ``mean`` and ``m2``), NumPy or Dask.

    Returns
    -------
    Moments
        The state of both samples together.

    Raises
    ------
    TypeError
        If ``a`` or ``b`` has no ``count``, ``mean`` and ``m2``.

    See Also
    --------
    welford

    Notes
    -----
    ``n = n_a + n_b``, ``mean = mean_a + delta * n_b / n``, ``m2 = m2_a + m2_b + delta**2 *
    n_a * n_b / n`` with ``delta = mean_b - mean_a`` (Chan, Golub and LeVeque).  The result
    does not depend on how the data were split, up to rounding.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> empty = nn.welford(np.empty((0, 3)), axes=0)
    >>> full = nn.welford(np.ones((4, 3)), axes=0)
    >>> nn.merge(empty, full).count.tolist()
    [4.0, 4.0, 4.0]
    """
    for name, m in (("a", a), ("b", b)):
        if not (hasattr(m, "count") and hasattr(m, "mean") and hasattr(m, "m2")):
            raise TypeError(f"{name} must be a Moments (count, mean, m2), got {chk._describe(m)}")
    n = a.count + b.count
    frac = np.where(n > 0, b.count / np.where(n > 0, n, 1), 0.0)
    delta = b.mean - a.mean
    return Moments(n, a.mean + delta * frac, a.m2 + b.m2 + delta * delta * a.count * frac)

