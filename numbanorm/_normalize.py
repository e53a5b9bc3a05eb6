"""`normalize`: statistics over any set of axes, parameters of any broadcasting shape.

The statistics come from the engine's moments over the kept axes (the axes not in ``axes``).  The
normalization and the backward's elementwise pass run on a second plan whose kept axes are the
union of those and the axes the weight or bias vary along, so a per-channel scale of a layer norm
over ``(H, W, C)`` is one coefficient per (sample, channel): ``y = (x - mean)*(rstd*w) + b`` with the
mean carried to float64 accuracy, as in the named norms.
"""

import math
from typing import NamedTuple, Optional

import numpy as np

from . import _checks as chk
from . import _functional as F
from ._plan import Plan
from ._dispatch import dispatch
from ._tfstats import _host_only, broadcast_param, nan_policy_value, omit_states, reduce_to


class NormalizeStats(NamedTuple):
    """What `normalize` keeps for `normalize_backward` (float64).

    mean, rstd
        Keepdims-shaped: x's shape with length 1 along ``axes``.
    batch_stats
        Always True (the statistics come from the input).
    has_bias, eps
        As the forward had them.
    bias_shape
        The bias's own shape (the backward returns its gradient in it), None without a bias.
    nan_policy
        The forward's: with "omit" the backward, too, leaves out the NaN inputs.
    """

    mean: np.ndarray
    rstd: np.ndarray
    batch_stats: bool = True
    has_bias: bool = False
    eps: float = 1e-5
    bias_shape: Optional[tuple] = None
    nan_policy: str = "propagate"


def _param(name, value, shape, dtype, like_name):
    """(own shape, values in ``dtype`` with x's number of dimensions), or (None, None)."""
    if value is None:
        return None, None
    own, full = broadcast_param(name, value, shape, like_name)
    return own, full.astype(dtype)


def _union_kept(shape, axes, *own_shapes):
    """Kept axes of the elementwise plan: the statistics' and every axis a parameter (of its own
    shape, or None) varies along."""
    ndim = len(shape)
    full = [(1,) * (ndim - len(s)) + tuple(s) for s in own_shapes if s is not None]
    return [i not in axes or any(s[i] != 1 for s in full) for i in range(ndim)]


def _check_axes(arr, axes):
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    if any(arr.shape[a] == 0 for a in axes):
        raise ValueError(f"axes {axes} must not include an axis of length 0 (input of shape {arr.shape}): "
                         "there would be no values to take statistics of")
    return axes


@dispatch
def normalize(x, axes, weight=None, bias=None, eps=1e-5, *, return_stats=False, out=None, nan_policy="propagate"):
    """Normalize ``x`` by its mean and (biased) variance over ``axes``:
    ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Batch norm is ``axes`` = every axis but the channel axis, layer norm the trailing axes,
    instance norm the spatial axes -- and any other set, with parameters of any shape: a layer
    norm over ``(H, W, C)`` with a per-channel scale, TensorFlow's
    ``tf.nn.batch_normalization(x, *tf.nn.moments(x, axes, keepdims=True), bias, weight, eps)``.

    Parameters
    ----------
    x : array, float16/32/64
    axes : int or sequence of int
        The axes the statistics are taken over (negative allowed; none of length 0).
    weight, bias : array or None
        Broadcast against ``x`` (NumPy's rules; any shape that broadcasts to ``x.shape``).
    eps : float >= 0
        Added to the variance inside the square root.
    return_stats : bool, keyword-only
        Also return a `NormalizeStats` for `normalize_backward`.
    out : ndarray, optional
        Where to write the result (x's shape and dtype).
    nan_policy : {"propagate", "omit"}, keyword-only
        "omit": statistics of the values that are not NaN (NaN where a group has none); NaN
        inputs stay NaN in the output.

    Returns
    -------
    y, or ``(y, stats)`` with ``return_stats=True``.
    """
    arr, xk = F._input("x", x, 0)
    axes = _check_axes(arr, axes)
    w_shape, w = _param("weight", weight, arr.shape, xk.dtype, "x")
    b_shape, b = _param("bias", bias, arr.shape, xk.dtype, "x")
    eps = chk.eps_value("eps", eps)
    out = chk.out_array(out, arr.shape, arr.dtype)
    policy = nan_policy_value(nan_policy)
    kept = [i not in axes for i in range(arr.ndim)]
    keep = tuple(1 if i in axes else d for i, d in enumerate(arr.shape))
    if arr.size == 0:
        y = np.empty_like(arr) if out is None else out
        stats = NormalizeStats(np.zeros(keep), np.zeros(keep), True, b is not None, eps, b_shape, policy)
        return (y, stats) if return_stats else y
    if policy == "omit":
        _host_only("normalize with nan_policy='omit'", arr)
        count, mean, m2, present = omit_states(xk, np.ones((1,) * arr.ndim), axes)
        none = present == 0  # a group of NaN only: NaN statistics
        mean, m2, count = np.where(none, np.nan, mean), np.where(none, np.nan, m2), np.where(none, 1.0, count)
    else:
        count, mean, m2 = F._eng().moments(xk, kept)
    rstd = F._rstd(m2 / count, eps)
    plan = Plan.of(xk, _union_kept(arr.shape, axes, w_shape, b_shape))
    alpha = rstd if w is None else rstd * w.astype(np.float64)
    beta = np.zeros(()) if b is None else b
    direct_out = out if out is not None and out.dtype == xk.dtype else None
    y = F._deliver(F._eng().affine(xk, plan, mean, alpha, beta, out=direct_out), arr.dtype, out)
    stats = NormalizeStats(np.asarray(mean, np.float64).reshape(keep), np.asarray(rstd).reshape(keep), True,
                           b is not None, eps, b_shape, policy)
    return (y, stats) if return_stats else y


@dispatch
def normalize_backward(grad_output, input, stats, axes, weight=None):
    """Gradients of `normalize` given its `NormalizeStats`.

    Parameters
    ----------
    grad_output : array of input's shape and dtype
    input : the forward's ``x``
    stats : NormalizeStats
    axes : the forward's ``axes``
    weight : the forward's ``weight`` (or None)

    Returns
    -------
    Grads(input, weight, bias)
        ``weight``/``bias`` gradients summed over the axes they were broadcast along, in their own
        shapes (None where the forward had none), in the input's dtype.
    """
    arr, xk, dy = F._backward_inputs(grad_output, input, 0)
    axes = _check_axes(arr, axes)
    w_shape, w = _param("weight", weight, arr.shape, xk.dtype, "input")
    keep = tuple(1 if i in axes else d for i, d in enumerate(arr.shape))
    if not (hasattr(stats, "mean") and hasattr(stats, "rstd")):
        raise TypeError(f"stats must be the NormalizeStats returned by normalize with return_stats=True, "
                        f"got {chk._describe(stats)}")
    mean = chk.float_array("stats.mean", stats.mean).astype(np.float64)
    rstd = chk.float_array("stats.rstd", stats.rstd).astype(np.float64)
    for name, a in (("stats.mean", mean), ("stats.rstd", rstd)):
        if a.shape != keep:
            raise ValueError(f"{name} must have shape {keep} (input's shape with 1 along axes {axes}), "
                             f"got shape {a.shape}")
    has_bias = bool(getattr(stats, "has_bias", False))
    b_shape = getattr(stats, "bias_shape", None)
    b_shape = tuple(b_shape) if b_shape is not None else (() if has_bias else None)
    if arr.size == 0:
        zeros = lambda own: None if own is None else np.zeros(own, arr.dtype)
        return F.Grads(np.empty_like(arr), zeros(w_shape), zeros(b_shape) if has_bias else None)
    if getattr(stats, "nan_policy", "propagate") == "omit":
        return _omit_backward(arr, xk, dy, axes, mean, rstd, w, w_shape, b_shape if has_bias else None)
    kept_u = _union_kept(arr.shape, axes, w_shape, b_shape)
    plan = Plan.of(xk, kept_u)
    s1, s2 = F._eng().grad_sums(dy, xk, plan, mean)
    # per union cell: sum(dy) and sum(dy*(x - mean)); the weight is constant on each cell
    wf = np.ones((1,) * arr.ndim) if w is None else w.astype(np.float64)
    inner = tuple(i for i in axes if kept_u[i])  # reduced axes the weight varies along
    sum_g = (wf * s1).sum(axis=inner, keepdims=True) if inner else wf * s1  # sum(dy*w) per statistic
    sum_g_xhat = (wf * s2 * rstd).sum(axis=inner, keepdims=True) if inner else wf * s2 * rstd
    n = math.prod(arr.shape[a] for a in axes)
    # dx = rstd*(dy*w - mean(dy*w) - xhat*mean(dy*w*xhat)), xhat = (x - mean)*rstd
    dx, _, _ = F._eng().input_grad(dy, xk, plan, mean, rstd * wf, -rstd * rstd * sum_g_xhat / n, -rstd * sum_g / n)
    grad_weight = None if w is None else reduce_to(s2 * rstd, w_shape, arr.ndim).astype(arr.dtype)
    grad_bias = reduce_to(s1, b_shape, arr.ndim).astype(arr.dtype) if has_bias else None
    return F._grads(arr, dx, grad_weight, grad_bias)


def _omit_backward(arr, xk, dy, axes, mean, rstd, w, w_shape, b_shape):
    """The backward of ``nan_policy="omit"``: each statistic is over its present (non-NaN) values
    only, so the sums are too; a NaN input gets gradient 0 and its ``grad_output`` is left out."""
    present = ~np.isnan(xk)
    n = present.sum(axis=axes, keepdims=True)
    xhat = np.where(present, (xk.astype(np.float64) - mean) * rstd, 0.0)
    dyf = np.where(present, dy, 0.0)
    g = dyf if w is None else dyf * w.astype(np.float64)
    safe = np.where(n > 0, n, 1)
    dx = rstd * (g - g.sum(axis=axes, keepdims=True) / safe - xhat * (g * xhat).sum(axis=axes, keepdims=True) / safe)
    dx = np.where(present, dx, 0.0)
    grad_weight = None if w is None else reduce_to(dyf * xhat, w_shape, arr.ndim).astype(arr.dtype)
    grad_bias = None if b_shape is None else reduce_to(dyf, b_shape, arr.ndim).astype(arr.dtype)
    return F.Grads(dx.astype(arr.dtype), grad_weight, grad_bias)
