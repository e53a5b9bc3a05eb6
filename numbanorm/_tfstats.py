"""TensorFlow's statistics API (``tf.nn.weighted_moments``, ``sufficient_statistics``,
``normalize_moments``), weighted Welford states, and the backwards of `moments` and
`batch_normalization` (what TensorFlow's autograd gives for them).

Weighted statistics are computed in float64 by the corrected two-pass method: a first mean
``m0 = sum(w*x)/sum(w)``, then ``s1 = sum(w*(x - m0))`` and ``s2 = sum(w*(x - m0)**2)``, giving
``mean = m0 + s1/W`` and ``m2 = s2 - s1**2/W``.  That is as exact as Welford's or West's
one-pass recurrence (no ``E[x^2] - E[x]^2``) without a division per element; states of separate
blocks are merged with Chan's formula (`merge`), which holds for real-valued counts (sums of
weights) unchanged.

The backwards use the engine: per-(kept cell) sums ``sum(dy)`` and ``sum(dy*(x - mean))`` with the
mean carried to float64 accuracy, then small-array arithmetic, then one elementwise pass.
"""

import math
import numbers
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _arguments
from . import _checks as chk
from . import _engine
from . import _functional as F
from ._types import Array, AxesLike
from ._plan import Plan

if TYPE_CHECKING:
    _F = TypeVar("_F", bound=Callable[..., Any])

    @overload
    def dispatch(fn: _F) -> _F: ...
    @overload
    def dispatch(*, route_by: str) -> Callable[[_F], _F]: ...
    def dispatch(fn: Any = None, *, route_by: Optional[str] = None) -> Any:
        """``_dispatch.dispatch`` wraps with ``functools.wraps``: the signature stays the function's."""
        return fn
else:
    from ._dispatch import dispatch


# -- argument helpers ---------------------------------------------------------------------------

def broadcast_param(name, value, shape, like_name="x", dtype=np.float64):
    """A float parameter that broadcasts to ``shape`` without enlarging it: (its own shape, the
    values in ``dtype`` with ``len(shape)`` dimensions)."""
    value = chk.float_array(name, value)
    # NumPy's rule, unrolled (np.broadcast_shapes costs microseconds a call)
    fits = len(value.shape) <= len(shape) and all(v == 1 or v == s for v, s in zip(value.shape[::-1], shape[::-1]))
    if not fits:
        raise ValueError(f"{name} must broadcast to {like_name}'s shape {tuple(shape)}, got shape {value.shape}")
    own = tuple(value.shape)
    return own, np.asarray(value, dtype).reshape((1,) * (len(shape) - len(own)) + own)


def reduce_to(g, own, ndim):
    """``g`` (``ndim`` dimensions) summed over the axes that a parameter of shape ``own`` was
    broadcast along, in the parameter's shape: the gradient of a broadcast parameter."""
    target = (1,) * (ndim - len(own)) + tuple(own)
    g = np.asarray(g, np.float64)
    axes = tuple(i for i in range(ndim) if target[i] == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return np.broadcast_to(g, target).reshape(own)


def _weights(name, value, shape):
    """Frequency weights: real numbers >= 0 (integer counts and bools included) that broadcast to
    ``shape``; as float64 with ``len(shape)`` dimensions."""
    chk.refuse_masked(name, value)
    if value is None or isinstance(value, (str, bytes, dict)):
        raise TypeError(f"{name} must be an array of real numbers >= 0, got {chk._describe(value)}")
    w = np.asarray(value)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a real (integer, bool or floating) dtype, got dtype {w.dtype}")
    try:
        fits = w.ndim <= len(shape) and np.broadcast_shapes(w.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name} must broadcast to x's shape {tuple(shape)}, got shape {w.shape}")
    w = w.astype(np.float64).reshape((1,) * (len(shape) - w.ndim) + w.shape)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        bad = w[~(np.isfinite(w) & (w >= 0))].reshape(-1)[0]
        raise ValueError(f"{name} must be finite and >= 0 (frequency weights), got a weight {bad}")
    return w


def _keep_shape(shape, axes):
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _squeeze(a, shape, axes, keepdims):
    return a if keepdims else np.reshape(a, [d for i, d in enumerate(shape) if i not in axes])


# -- weighted statistics -------------------------------------------------------------------------

def weighted_states(x, w, axes):
    """(W, mean, m2) of ``x`` over ``axes`` with broadcastable float64 weights ``w``, keepdims-shaped
    float64: the corrected two-pass method (see the module's docstring).  Where the weights sum to
    0 the state is (0, 0, 0), which merges as nothing."""
    shape = x.shape
    keep = _keep_shape(shape, axes)
    # the sum of the broadcast weights without broadcasting them: w's own axes summed, the rest counted
    own = tuple(a for a in axes if w.shape[a] != 1)
    repeat = math.prod(shape[a] for a in axes if w.shape[a] == 1)
    total = np.broadcast_to((w.sum(axis=own, keepdims=True) if own else w) * float(repeat), keep)
    if x.size == 0:
        return np.array(total), np.zeros(keep), np.zeros(keep)
    xd = np.asarray(x, np.float64)
    safe = np.where(total > 0, total, 1.0)
    m0 = (w * xd).sum(axis=axes, keepdims=True) / safe
    d = xd - m0
    wd = w * d
    s1 = wd.sum(axis=axes, keepdims=True)
    wd *= d
    s2 = wd.sum(axis=axes, keepdims=True)
    empty = total <= 0
    mean = np.where(empty, 0.0, m0 + s1 / safe)
    m2 = np.where(empty, 0.0, np.maximum(s2 - s1 * s1 / safe, 0.0))
    return np.array(total), mean, m2


NAN_POLICIES = ("propagate", "omit")


def nan_policy_value(value):
    """``"propagate"`` (NaN in, NaN statistics out) or ``"omit"`` (statistics of the values present)."""
    if not isinstance(value, str) or value not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be 'propagate' or 'omit', got {chk._describe(value)}")
    return value


def _host_only(what, x):
    """Refuse a CUDA array on a path that computes with NumPy on the host."""
    if chk.is_device_array(x):  # reached through the CUDA backend of moments/welford
        raise NotImplementedError(f"{what} does not take CUDA arrays yet: copy x to the host (a NumPy array) first")


def omit_states(arr, w, axes):
    """`weighted_states` over the values that are not NaN, and how many there are per group:
    (W, mean, m2, present), keepdims-shaped float64."""
    present = ~np.isnan(arr)
    total, mean, m2 = weighted_states(np.where(present, arr, 0.0), np.where(present, w, 0.0), axes)
    return total, mean, m2, present.sum(axis=axes, keepdims=True)


def weighted_welford(x, axes, weights, keepdims=False, nan_policy="propagate"):
    """`welford` with ``weights`` (None: 1 each): a `Moments` whose count is the sum of the
    weights; with ``nan_policy="omit"`` of the values that are not NaN (a group without any is
    the empty state, count 0, which merges as nothing)."""
    _host_only("welford with weights or nan_policy='omit'", x)
    arr = chk.float_array("x", x)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    w = np.ones((1,) * arr.ndim) if weights is None else _weights("weights", weights, arr.shape)
    if nan_policy_value(nan_policy) == "omit":
        total, mean, m2, _ = omit_states(arr, w, axes)
    else:
        total, mean, m2 = weighted_states(arr, w, axes)
    return F.Moments(*(_squeeze(a, arr.shape, axes, keepdims) for a in (total, mean, m2)))


def omit_moments(x, axes, keepdims=False):
    """`moments` over the values that are not NaN; NaN where a group has none."""
    _host_only("moments with nan_policy='omit'", x)
    arr = chk.float_array("x", x)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    if arr.size == 0:
        raise ValueError(f"x must not be empty, got shape {arr.shape}")
    total, mean, m2, present = omit_states(arr, np.ones((1,) * arr.ndim), axes)
    none = present == 0
    mean = np.where(none, np.nan, mean)
    var = np.where(none, np.nan, m2 / np.where(none, 1.0, total))
    return tuple(_squeeze(a, arr.shape, axes, keepdims).astype(arr.dtype) for a in (mean, var))


@dispatch
def weighted_moments(x: ArrayLike, axes: AxesLike, frequency_weights: ArrayLike, keepdims: bool = False, *,
                     nan_policy: str = "propagate") -> tuple[Array, Array]:
    """Weighted mean and (biased) variance of ``x`` over ``axes`` (``tf.nn.weighted_moments``).

    Parameters
    ----------
    x : array_like, float16/32/64
        Any layout and strides; a Dask array gives lazy Dask results.
    axes : int or sequence of int
        Axes to reduce over (negative allowed).
    frequency_weights : array_like of real numbers >= 0
        Broadcasts against ``x`` (any shape that broadcasts to ``x.shape``: per sample, per
        element, ...); integer counts, bools and floats are taken.
    keepdims : bool
        Keep the reduced axes with length 1.
    nan_policy : {"propagate", "omit"}, keyword-only
        "omit" takes the statistics of the values that are not NaN (with their weights); a
        group without any gets NaN statistics.

    Returns
    -------
    mean, variance : ndarray, x's dtype
        ``mean = sum(w*x)/sum(w)`` and ``variance = sum(w*(x - mean)**2)/sum(w)``, computed in
        float64 by the corrected two-pass method (never ``E[x^2] - E[x]^2``).  Where the weights
        sum to 0 both are 0, as TensorFlow's ``div_no_nan`` gives.

    Raises
    ------
    TypeError
        If ``x`` is not of a float16/32/64 dtype; ``axes`` is not an integer or a sequence of
        integers; ``frequency_weights`` is None, a string, or of a non-real dtype (complex,
        object); ``x`` or the weights are a masked array; the arrays of the call live in
        different places.
    ValueError
        If an axis is out of range or repeated; ``frequency_weights`` does not broadcast to
        x's shape, or has a negative or non-finite weight; ``nan_policy`` is neither
        "propagate" nor "omit".
    NotImplementedError
        If ``x`` is a CUDA array (the TensorFlow statistics API computes on the host: copy it
        to a NumPy array first).

    See Also
    --------
    moments : the unweighted statistics.
    welford : the same statistics as a mergeable `Moments` state (``weights=``).

    Notes
    -----
    ``tf.nn.weighted_moments(x, axes, frequency_weights, keepdims)``, with TensorFlow's
    conventions: the variance is biased (divided by the sum of the weights, not by that sum
    minus 1), and the weights are frequencies -- an integer weight ``k`` counts its value ``k``
    times.  TensorFlow computes float16 input in float32 and sums ``w*x`` directly; here
    everything is float64, with the corrected two-pass method of the module: a first mean,
    then the weighted sums of the deviations from it.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    >>> mean, var = nn.weighted_moments(x, axes=1, frequency_weights=np.array([1, 0, 2, 1]))
    >>> mean.tolist(), var.tolist()
    ([2.75, 27.5], [1.1875, 118.75])

    Integer weights are repetitions:

    >>> repeated = np.repeat(x, [1, 0, 2, 1], axis=1)
    >>> bool(np.allclose(mean, repeated.mean(axis=1))), bool(np.allclose(var, repeated.var(axis=1)))
    (True, True)

    Zero total weight gives zeros, NaN values can be left out:

    >>> nn.weighted_moments(x, 1, np.zeros(4))
    (array([0., 0.]), array([0., 0.]))
    >>> nn.weighted_moments(np.array([[1.0, np.nan, 3.0]]), 1, np.ones(3), nan_policy="omit")
    (array([2.]), array([1.]))
    """
    arr = chk.float_array("x", x)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    w = _weights("frequency_weights", frequency_weights, arr.shape)
    if nan_policy_value(nan_policy) == "omit":
        total, mean, m2, present = omit_states(arr, w, axes)
        mean = np.where(present == 0, np.nan, mean)
        m2 = np.where(present == 0, np.nan, m2)
    else:
        total, mean, m2 = weighted_states(arr, w, axes)
    var = m2 / np.where(total > 0, total, 1.0)
    return tuple(_squeeze(a, arr.shape, axes, keepdims).astype(arr.dtype) for a in (mean, var))


@dispatch
def sufficient_statistics(x: ArrayLike, axes: AxesLike, shift: Optional[ArrayLike] = None,
                          keepdims: bool = False) -> tuple[Array, Array, Array, Optional[Array]]:
    """Sufficient statistics for the mean and variance of ``x`` over ``axes``
    (``tf.nn.sufficient_statistics``).

    Parameters
    ----------
    x : array_like, float16/32/64
        Any layout and strides; a Dask array gives lazy Dask results.
    axes : int or sequence of int
        Axes to reduce over (negative allowed).
    shift : array_like or None
        Broadcasts against ``x``; the data are shifted by it before summing.  A shift close to the
        mean makes `normalize_moments` accurate; None sums the raw values (and their squares,
        which lose the variance's digits for data with a large offset, as in TensorFlow).
    keepdims : bool
        Keep the reduced axes with length 1.

    Returns
    -------
    count : 0-d ndarray of x's dtype
        The number of values reduced, ``prod(x.shape[a] for a in axes)``.
    mean_ss, variance_ss : ndarray, x's dtype
        ``sum(x - shift)`` and ``sum((x - shift)**2)`` over ``axes`` (sums taken in float64).
    shift : ndarray of x's dtype, or None
        The shift, as given.

    Raises
    ------
    TypeError
        If ``x`` or ``shift`` is not of a float16/32/64 dtype, or ``axes`` is not an integer or
        a sequence of integers; if the arrays of the call live in different places.
    ValueError
        If an axis is out of range or repeated, or ``shift`` does not broadcast to x's shape.
    NotImplementedError
        If ``x`` is a CUDA array (copy it to a NumPy array first).

    See Also
    --------
    normalize_moments : the mean and variance from these sums.
    welford : mergeable statistics that need no shift.

    Notes
    -----
    ``tf.nn.sufficient_statistics(x, axes, shift, keepdims)``: the same four results, the sums
    in x's dtype (here summed in float64, then cast).  The sums and counts of several blocks
    taken with one shift add up, and `normalize_moments` turns the totals into the mean and
    variance; for data far from zero pass a ``shift`` near the mean (a value of the data will
    do), or use `welford`, whose states merge without losing digits.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.arange(6.0).reshape(2, 3)
    >>> nn.sufficient_statistics(x, axes=1)
    (array(3.), array([ 3., 12.]), array([ 5., 50.]), None)

    With a shift (here of the statistics' shape, so it also broadcasts in `normalize_moments`):

    >>> count, mean_ss, variance_ss, shift = nn.sufficient_statistics(x, axes=0, shift=x[0])
    >>> count, mean_ss, variance_ss, shift
    (array(2.), array([3., 3., 3.]), array([9., 9., 9.]), array([0., 1., 2.]))
    """
    arr = chk.float_array("x", x)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    count = np.array(math.prod(arr.shape[a] for a in axes), arr.dtype)
    xd = np.asarray(arr, np.float64)
    if shift is not None:
        _, s = broadcast_param("shift", shift, arr.shape)
        xd = xd - s
        shift = np.asarray(chk.float_array("shift", shift), arr.dtype)
    mean_ss = xd.sum(axis=axes, keepdims=keepdims)
    variance_ss = np.square(xd).sum(axis=axes, keepdims=keepdims)
    return count, mean_ss.astype(arr.dtype), variance_ss.astype(arr.dtype), shift


def _real_array(name, value):
    """A float array, or a Python/NumPy real number (TensorFlow's counts are plain numbers too)."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return np.asarray(value, np.float64)
    return chk.float_array(name, value)


@dispatch(route_by="mean_ss")
def normalize_moments(counts: ArrayLike, mean_ss: ArrayLike, variance_ss: ArrayLike,
                      shift: Optional[ArrayLike]) -> tuple[Array, Array]:
    """Mean and variance from sufficient statistics (``tf.nn.normalize_moments``).

    Parameters
    ----------
    counts : real number or array_like of float16/32/64, > 0
        The number of values behind each sum (the ``count`` of `sufficient_statistics`).
    mean_ss, variance_ss : array_like, float16/32/64
        The sums of `sufficient_statistics`; shapes broadcast together.
    shift : array_like or None
        The shift the sums were taken with.

    Returns
    -------
    mean, variance : ndarray, the dtype of ``mean_ss``
        ``mean = mean_ss/counts + shift`` and ``variance = variance_ss/counts - (mean_ss/counts)**2``
        (in float64, then cast), TensorFlow's formula.

    Raises
    ------
    TypeError
        If ``counts`` is neither a real number (a bool is refused) nor a float16/32/64 array
        (an integer array is refused), or ``mean_ss``, ``variance_ss`` or ``shift`` is not a
        float16/32/64 array; if the arrays of the call live in different places.
    ValueError
        If a count is not > 0, or ``counts``, ``mean_ss``, ``variance_ss`` and ``shift`` do not
        broadcast together.
    NotImplementedError
        If ``mean_ss`` is a CUDA array (copy the sums to NumPy arrays first).

    See Also
    --------
    sufficient_statistics, moments

    Notes
    -----
    ``tf.nn.normalize_moments(counts, mean_ss, variance_ss, shift)``: the variance is biased
    (divided by ``counts``) and comes from ``E[d^2] - E[d]^2`` of the shifted data ``d = x -
    shift``, so it keeps its digits only when the shift is close to the mean.  The call is routed
    by ``mean_ss`` (``counts`` is often a plain number).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((100, 3)) + 1e4
    >>> mean, var = nn.normalize_moments(*nn.sufficient_statistics(x, axes=0, shift=x[0]))
    >>> bool(np.allclose(mean, x.mean(axis=0))), bool(np.allclose(var, x.var(axis=0)))
    (True, True)
    >>> nn.normalize_moments(4, np.array([2.0]), np.array([6.0]), None)
    (array([0.5]), array([1.25]))

    Without a shift, float32 data with a large offset lose the variance's digits (as in
    TensorFlow); a shift near the mean keeps them:

    >>> x32 = x.astype(np.float32)
    >>> _, var_raw = nn.normalize_moments(*nn.sufficient_statistics(x32, axes=0))
    >>> _, var_shifted = nn.normalize_moments(*nn.sufficient_statistics(x32, axes=0, shift=x32[0]))
    >>> bool(np.allclose(var_raw, x.var(axis=0), rtol=1e-3)), bool(np.allclose(var_shifted, x.var(axis=0), rtol=1e-3))
    (False, True)
    """
    n = _real_array("counts", counts).astype(np.float64)
    if not np.all(n > 0):
        raise ValueError(f"counts must be > 0 (the number of values summed), got {n.min() if n.size else n}")
    m = chk.float_array("mean_ss", mean_ss)
    v = chk.float_array("variance_ss", variance_ss)
    s = None if shift is None else chk.float_array("shift", shift).astype(np.float64)
    try:
        np.broadcast_shapes(n.shape, m.shape, v.shape, () if s is None else s.shape)
    except ValueError:
        raise ValueError(f"counts, mean_ss, variance_ss and shift must broadcast together, got shapes {n.shape}, "
                         f"{m.shape}, {v.shape} and {None if s is None else s.shape}") from None
    shifted = m.astype(np.float64) / n
    mean = shifted if s is None else shifted + s
    variance = v.astype(np.float64) / n - shifted * shifted
    dtype = np.result_type(m.dtype, v.dtype)
    return mean.astype(dtype), variance.astype(dtype)


# -- backwards of moments and batch_normalization ---------------------------------------------------

def _sums(dy, xk, kept, center):
    """``sum(dy)`` and ``sum(dy*(x - center))`` over the axes not ``kept``, keepdims-shaped float64;
    and the plan (over ``kept``) that computed them."""
    plan = Plan.of(xk, kept)
    s1, s2 = _engine.CPU.grad_sums(dy, xk, plan, center)
    rest = tuple(i for i in range(xk.ndim) if not kept[i] and i not in plan.reduced_axes)
    if rest:
        s1, s2 = s1.sum(axis=rest, keepdims=True), s2.sum(axis=rest, keepdims=True)
    return s1, s2, plan


def _grad_of_stat(name, value, shape, axes):
    """A gradient with respect to a statistic over ``axes``: None (zero), or an array of the
    statistic's shape with or without keepdims; float64 keepdims-shaped."""
    keep = _keep_shape(shape, axes)
    if value is None:
        return np.zeros(keep)
    value = chk.float_array(name, value)
    squeezed = tuple(d for i, d in enumerate(shape) if i not in axes)
    if value.shape not in (keep, squeezed):
        raise ValueError(f"{name} must have the shape of the moments, {squeezed} (or {keep} with keepdims), "
                         f"got shape {value.shape}")
    return np.asarray(value, np.float64).reshape(keep)


@dispatch(route_by="x")
def moments_backward(grad_mean: Optional[ArrayLike], grad_variance: Optional[ArrayLike], x: ArrayLike,
                     axes: AxesLike) -> Array:
    """Gradient with respect to ``x`` of `moments` (mean and biased variance over ``axes``).

    Parameters
    ----------
    grad_mean, grad_variance : array_like or None
        Gradients with respect to the mean and the variance, shaped like `moments`' results
        (with or without keepdims); None is zero.
    x : array_like, float16/32/64
        The input of `moments`; any layout and strides.
    axes : int or sequence of int
        The axes of `moments`.

    Returns
    -------
    ndarray of x's shape and dtype
        ``grad_mean/n + grad_variance*2*(x - mean)/n`` with ``n`` the number of values per
        statistic, what TensorFlow's autograd gives through ``tf.nn.moments``.

    Raises
    ------
    TypeError
        If ``x``, ``grad_mean`` or ``grad_variance`` is not of a float16/32/64 dtype, or
        ``axes`` is not an integer or a sequence of integers; if the arrays of the call live in
        different places.
    ValueError
        If an axis is out of range or repeated, or ``grad_mean`` or ``grad_variance`` does not
        have the shape of the moments (with or without keepdims).
    NotImplementedError
        If ``x`` is a CUDA array (copy it to a NumPy array first).

    See Also
    --------
    moments, batch_normalization_backward, normalize_backward

    Notes
    -----
    The call is routed by ``x`` (the gradients may be None).  The mean is recomputed from ``x``
    by the kernels of `moments` and the elementwise pass runs in the input precision, the
    mean carried to float64 accuracy.  Chained after `batch_normalization_backward`, it gives
    the gradient of a normalization by ``tf.nn.moments`` and ``tf.nn.batch_normalization``
    written by hand (see there).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((6, 3)) + 2
    >>> grad_mean, grad_variance = np.ones(3), np.full(3, 0.5)
    >>> dx = nn.moments_backward(grad_mean, grad_variance, x, axes=0)
    >>> dx.shape, bool(np.allclose(dx, grad_mean / 6 + grad_variance * 2 * (x - x.mean(axis=0)) / 6))
    ((6, 3), True)
    >>> nn.moments_backward(np.ones((1, 3)), None, x, axes=0)[0].round(4)
    array([0.1667, 0.1667, 0.1667])
    """
    arr, xk = _arguments._input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    gm = _grad_of_stat("grad_mean", grad_mean, arr.shape, axes)
    gv = _grad_of_stat("grad_variance", grad_variance, arr.shape, axes)
    n = math.prod(arr.shape[a] for a in axes)
    if arr.size == 0:
        return np.empty_like(arr)
    kept = [i not in axes for i in range(arr.ndim)]
    count, mean, _ = _engine.CPU.moments(xk, kept)
    dx = _engine.CPU.affine(xk, Plan.of(xk, kept), mean, 2.0 * gv / n, gm / n)
    return _arguments._deliver(dx, arr.dtype, None)


class BatchNormalizationGrads(NamedTuple):
    """Gradients of `batch_normalization`, each in its argument's shape; None where the argument
    was None (``offset``, ``scale``).

    Returned by `batch_normalization_backward`.

    Attributes
    ----------
    x : ndarray
        The gradient with respect to ``x``, ``mean`` and ``variance`` held fixed: x's shape and
        dtype.
    mean, variance : ndarray
        The gradients with respect to ``mean`` and ``variance`` (in their shapes): feed them to
        `moments_backward` when the statistics were computed from ``x``.
    offset, scale : ndarray or None
        The gradients with respect to ``offset`` and ``scale``, or None where they were None.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 3))
    >>> mean, var = nn.moments(x, axes=0)
    >>> g = nn.batch_normalization_backward(np.ones_like(x), x, mean, var, np.zeros(3), None, 1e-3)
    >>> g._fields
    ('x', 'mean', 'variance', 'offset', 'scale')
    >>> g.x.shape, g.mean.shape, g.offset.tolist(), g.scale
    ((8, 3), (3,), [8.0, 8.0, 8.0], None)
    """

    x: Array
    mean: Array
    variance: Array
    offset: Optional[Array] = None
    scale: Optional[Array] = None


@dispatch
def batch_normalization_backward(grad_output: ArrayLike, x: ArrayLike, mean: ArrayLike, variance: ArrayLike,
                                 offset: Optional[ArrayLike], scale: Optional[ArrayLike],
                                 variance_epsilon: float) -> BatchNormalizationGrads:
    """Gradients of `batch_normalization` (``tf.nn.batch_normalization``) with respect to every
    argument, ``mean`` and ``variance`` taken as independent inputs (as TensorFlow's autograd does;
    chain them into `moments_backward` for statistics computed from ``x``).

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: x's shape and dtype.
    x : array_like, float16/32/64
        As given to `batch_normalization`.
    mean, variance : array_like
        As given to `batch_normalization`: float arrays that broadcast to x's shape.
    offset, scale : array_like or None
        As given to `batch_normalization`; None: no shift, no scale (and no gradient).
    variance_epsilon : float >= 0
        As given to `batch_normalization`.

    Returns
    -------
    BatchNormalizationGrads(x, mean, variance, offset, scale)
        Each gradient in x's dtype; a parameter's summed over the axes it was broadcast along,
        in its own shape (None for a None ``offset``/``scale``).

    Raises
    ------
    TypeError
        If ``x``, ``grad_output`` or a parameter is not of a float16/32/64 dtype (``mean`` and
        ``variance`` may not be None), ``grad_output`` has another dtype than ``x``, or
        ``variance_epsilon`` is not a real number; if the arrays of the call live in different
        places.
    ValueError
        If ``grad_output`` has another shape than ``x``, a parameter does not broadcast to x's
        shape, or ``variance_epsilon`` is negative or not finite.
    NotImplementedError
        If ``grad_output`` is a CUDA array (copy the arrays to NumPy first).

    See Also
    --------
    batch_normalization, moments_backward, normalize_backward

    Notes
    -----
    With ``rstd = 1/sqrt(variance + variance_epsilon)`` and ``s = scale`` (1 when None), summed
    over the axes each parameter was broadcast along: ``dx = dy*s*rstd``,
    ``dmean = -sum(dy)*s*rstd``, ``dvariance = -sum(dy*(x - mean))*s*rstd**3/2``,
    ``doffset = sum(dy)`` and ``dscale = sum(dy*(x - mean))*rstd``.  TensorFlow's manual
    normalization, ``tf.nn.batch_normalization(x, *tf.nn.moments(x, axes, keepdims=True), ...)``,
    backpropagates as ``g.x + moments_backward(g.mean, g.variance, x, axes)``; `normalize` and
    `normalize_backward` do both steps in one call each.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 3))
    >>> dy = np.random.default_rng(1).standard_normal(x.shape)
    >>> mean, var = nn.moments(x, axes=0)
    >>> g = nn.batch_normalization_backward(dy, x, mean, var, np.zeros(3), np.ones(3), 1e-3)
    >>> bool(np.allclose(g.offset, dy.sum(axis=0))), bool(np.allclose(g.mean, -dy.sum(axis=0) / np.sqrt(var + 1e-3)))
    (True, True)

    Through the statistics too, as TensorFlow's autograd of ``tf.nn.moments`` then
    ``tf.nn.batch_normalization``:

    >>> dx = g.x + nn.moments_backward(g.mean, g.variance, x, axes=0)
    >>> _, stats = nn.normalize(x, 0, np.ones(3), eps=1e-3, return_stats=True)
    >>> bool(np.allclose(dx, nn.normalize_backward(dy, x, stats, 0, np.ones(3)).input))
    True
    """
    arr, xk = _arguments._input("x", x, 0)
    dy = chk.same_array("grad_output", grad_output, arr, "x")
    dy = dy.astype(np.float32) if dy.dtype == np.float16 else dy
    eps = chk.eps_value("variance_epsilon", variance_epsilon)
    params = {}
    for name, value in (("mean", mean), ("variance", variance), ("offset", offset), ("scale", scale)):
        if value is None and name in ("offset", "scale"):
            continue
        params[name] = broadcast_param(name, value, arr.shape)
    ndim = arr.ndim
    kept = [any(p.shape[i] != 1 for _, p in params.values()) for i in range(ndim)]
    m = params["mean"][1]
    rstd = 1.0 / np.sqrt(params["variance"][1] + eps)
    scale_v = params["scale"][1] if "scale" in params else np.ones((1,) * ndim)
    if arr.size == 0:
        s1 = s2 = np.zeros([d if k else 1 for d, k in zip(arr.shape, kept)])
        dx = np.empty_like(arr)
    else:
        s1, s2, plan = _sums(dy, xk, kept, m)
        dx, _, _ = _engine.CPU.input_grad(dy, xk, plan, m, scale_v * rstd, np.zeros(()), np.zeros(()))
    grads = {
        "mean": -s1 * scale_v * rstd,
        "variance": -0.5 * s2 * scale_v * rstd ** 3,
        "offset": s1,
        "scale": s2 * rstd,
    }
    out = {name: reduce_to(grads[name], own, ndim).astype(arr.dtype) for name, (own, _) in params.items()}
    return BatchNormalizationGrads(_arguments._deliver(dx, arr.dtype, None), out["mean"], out["variance"],
                                   out.get("offset"), out.get("scale"))
