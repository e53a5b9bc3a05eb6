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
from typing import NamedTuple, Optional

import numpy as np

from . import _checks as chk
from . import _functional as F
from ._dispatch import dispatch
from ._plan import Plan


# -- argument helpers ---------------------------------------------------------------------------

def broadcast_param(name, value, shape, like_name="x"):
    """A float parameter that broadcasts to ``shape`` without enlarging it: (its own shape, the
    values as float64 with ``len(shape)`` dimensions)."""
    value = chk.float_array(name, value)
    try:
        fits = len(value.shape) <= len(shape) and np.broadcast_shapes(value.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name} must broadcast to {like_name}'s shape {tuple(shape)}, got shape {value.shape}")
    own = tuple(value.shape)
    return own, np.asarray(value, np.float64).reshape((1,) * (len(shape) - len(own)) + own)


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
def weighted_moments(x, axes, frequency_weights, keepdims=False, *, nan_policy="propagate"):
    """Weighted mean and (biased) variance of ``x`` over ``axes`` (``tf.nn.weighted_moments``).

    Parameters
    ----------
    x : array, float16/32/64
    axes : int or sequence of int
        Axes to reduce over (negative allowed).
    frequency_weights : array of real numbers >= 0
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
def sufficient_statistics(x, axes, shift=None, keepdims=False):
    """Sufficient statistics for the mean and variance of ``x`` over ``axes``
    (``tf.nn.sufficient_statistics``).

    Parameters
    ----------
    x : array, float16/32/64
    axes : int or sequence of int
    shift : array or None
        Broadcasts against ``x``; the data are shifted by it before summing.  A shift close to the
        mean makes `normalize_moments` accurate; None sums the raw values (and their squares,
        which lose the variance's digits for data with a large offset, as in TensorFlow).
    keepdims : bool

    Returns
    -------
    count : 0-d ndarray of x's dtype
        The number of values reduced, ``prod(x.shape[a] for a in axes)``.
    mean_ss, variance_ss : ndarray, x's dtype
        ``sum(x - shift)`` and ``sum((x - shift)**2)`` over ``axes`` (sums taken in float64).
    shift : ndarray of x's dtype, or None
        The shift, as given.
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
def normalize_moments(counts, mean_ss, variance_ss, shift):
    """Mean and variance from sufficient statistics (``tf.nn.normalize_moments``).

    Parameters
    ----------
    counts : number or array, > 0
    mean_ss, variance_ss : array
        The sums of `sufficient_statistics`; shapes broadcast together.
    shift : array or None
        The shift the sums were taken with.

    Returns
    -------
    mean, variance : ndarray, the dtype of ``mean_ss``
        ``mean = mean_ss/counts + shift`` and ``variance = variance_ss/counts - (mean_ss/counts)**2``
        (in float64, then cast), TensorFlow's formula.
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
    s1, s2 = F._eng().grad_sums(dy, xk, plan, center)
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
def moments_backward(grad_mean, grad_variance, x, axes):
    """Gradient with respect to ``x`` of `moments` (mean and biased variance over ``axes``).

    Parameters
    ----------
    grad_mean, grad_variance : array or None
        Gradients with respect to the mean and the variance, shaped like `moments`' results
        (with or without keepdims); None is zero.
    x : array, float16/32/64
    axes : int or sequence of int

    Returns
    -------
    ndarray of x's shape and dtype
        ``grad_mean/n + grad_variance*2*(x - mean)/n`` with ``n`` the number of values per
        statistic, what TensorFlow's autograd gives through ``tf.nn.moments``.
    """
    arr, xk = F._input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    gm = _grad_of_stat("grad_mean", grad_mean, arr.shape, axes)
    gv = _grad_of_stat("grad_variance", grad_variance, arr.shape, axes)
    n = math.prod(arr.shape[a] for a in axes)
    if arr.size == 0:
        return np.empty_like(arr)
    kept = [i not in axes for i in range(arr.ndim)]
    count, mean, _ = F._eng().moments(xk, kept)
    dx = F._eng().affine(xk, Plan.of(xk, kept), mean, 2.0 * gv / n, gm / n)
    return F._deliver(dx, arr.dtype, None)


class BatchNormalizationGrads(NamedTuple):
    """Gradients of `batch_normalization`, each in its argument's shape; None where the argument
    was None (``offset``, ``scale``)."""

    x: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    offset: Optional[np.ndarray] = None
    scale: Optional[np.ndarray] = None


@dispatch
def batch_normalization_backward(grad_output, x, mean, variance, offset, scale, variance_epsilon):
    """Gradients of `batch_normalization` (``tf.nn.batch_normalization``) with respect to every
    argument, ``mean`` and ``variance`` taken as independent inputs (as TensorFlow's autograd does;
    chain them into `moments_backward` for statistics computed from ``x``).

    Parameters
    ----------
    grad_output : array of x's shape and dtype
    x, mean, variance, offset, scale, variance_epsilon
        As given to `batch_normalization`; the parameters broadcast against ``x``, ``offset`` and
        ``scale`` may be None.

    Returns
    -------
    BatchNormalizationGrads(x, mean, variance, offset, scale)
        Each gradient in x's dtype; a parameter's summed over the axes it was broadcast along,
        in its own shape (None for a None ``offset``/``scale``).
    """
    arr, xk = F._input("x", x, 0)
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
        dx, _, _ = F._eng().input_grad(dy, xk, plan, m, scale_v * rstd, np.zeros(()), np.zeros(()))
    grads = {
        "mean": -s1 * scale_v * rstd,
        "variance": -0.5 * s2 * scale_v * rstd ** 3,
        "offset": s1,
        "scale": s2 * rstd,
    }
    out = {name: reduce_to(grads[name], own, ndim).astype(arr.dtype) for name, (own, _) in params.items()}
    return BatchNormalizationGrads(F._deliver(dx, arr.dtype, None), out["mean"], out["variance"],
                                   out.get("offset"), out.get("scale"))
