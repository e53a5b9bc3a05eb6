"""Dask twins of the functions of issue #16 (TensorFlow's statistics API, `normalize`), lazy.

* Weighted statistics are one tree reduction of per-chunk weighted states ``(W, mean, m2)``
  merged with Chan's formula, as `moments`: x and its broadcast weights travel stacked along a
  trailing axis of length 2.
* `normalize` takes its statistics from the same reduction as `moments` and normalizes
  blockwise with `batch_normalization`'s kernels; the backwards are Dask arithmetic in float64.
"""

import math

import dask.array as da
import numpy as np

from . import _checks as chk
from . import _functional as F
from . import _dask as D
from . import _normalize as N
from . import _tfstats as T


def _weights(name, value, x):
    """Weights as a float64 Dask array broadcast to x and chunked like it (values checked now
    for NumPy weights, per chunk for Dask ones)."""
    if isinstance(value, da.Array):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must have a real (integer, bool or floating) dtype, got dtype {value.dtype}")
        try:
            fits = value.ndim <= x.ndim and np.broadcast_shapes(value.shape, x.shape) == x.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{name} must broadcast to x's shape {x.shape}, got shape {value.shape}")
        w = value.astype(np.float64)
    else:
        w = da.from_array(T._weights(name, value, x.shape))
    return da.broadcast_to(w, x.shape).rechunk(x.chunks)


def _weighted_chunk(xw, axis=None, keepdims=None, computing_meta=False, **kwargs):
    if computing_meta:
        return np.empty((0,) * xw.ndim, D._STATE)
    w = xw[..., 1]
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0 (frequency weights)")
    total, mean, m2 = T.weighted_states(xw[..., 0], w, tuple(a for a in axis if a < xw.ndim - 1))
    return {"count": total[..., None], "mean": mean[..., None], "m2": m2[..., None]}


def _weighted_states(x, w, axes, keepdims):
    """(W, mean, m2) over ``axes`` as lazy float64 Dask arrays."""
    xw = da.stack([x.astype(np.float64), w], axis=-1).rechunk({x.ndim: 2})
    state = da.reduction(xw, _weighted_chunk, D._state_aggregate, combine=D._state_combine,
                         axis=tuple(axes) + (x.ndim,), keepdims=True, dtype=D._STATE, concatenate=False,
                         meta=np.empty((0,) * (x.ndim + 1), D._STATE))
    state = state[..., 0]
    if not keepdims:
        state = state.squeeze(axis=tuple(axes))
    return state["count"], state["mean"], state["m2"]


def _omit(x, w):
    """x with its NaN replaced by 0, the weights with 0 there, and the count of values present."""
    present = ~da.isnan(x)
    return da.where(present, x, 0), da.where(present, w, 0.0), present.astype(np.float64)


def _present_count(present, axes, keepdims):
    return present.sum(axis=axes, keepdims=keepdims)


def weighted_welford(x, axes, weights, keepdims=False, nan_policy="propagate"):
    x = D._dask_input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, x.ndim)
    w = da.ones(x.shape, chunks=x.chunks) if weights is None else _weights("weights", weights, x)
    if T.nan_policy_value(nan_policy) == "omit":
        x, w, _ = _omit(x, w)
    return F.Moments(*_weighted_states(x, w, axes, keepdims))


def omit_moments(x, axes, keepdims, nan_policy):
    x = D._dask_input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, x.ndim)
    T.nan_policy_value(nan_policy)
    if x.size == 0:
        raise ValueError(f"x must not be empty, got shape {x.shape}")
    xf, w, present = _omit(x, da.ones(x.shape, chunks=x.chunks))
    total, mean, m2 = _weighted_states(xf, w, axes, keepdims)
    none = total == 0
    return (da.where(none, np.nan, mean).astype(x.dtype),
            da.where(none, np.nan, m2 / da.where(none, 1.0, total)).astype(x.dtype))


def weighted_moments(x, axes, frequency_weights, keepdims=False, *, nan_policy="propagate"):
    x = D._dask_input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, x.ndim)
    w = _weights("frequency_weights", frequency_weights, x)
    omit = T.nan_policy_value(nan_policy) == "omit"
    if omit:
        x0 = x
        x, w, present = _omit(x, w)
    total, mean, m2 = _weighted_states(x, w, axes, keepdims)
    var = m2 / da.where(total > 0, total, 1.0)
    if omit:
        none = _present_count(present, axes, keepdims) == 0
        mean, var, x = da.where(none, np.nan, mean), da.where(none, np.nan, var), x0
    return mean.astype(x.dtype), var.astype(x.dtype)


def sufficient_statistics(x, axes, shift=None, keepdims=False):
    x = D._dask_input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, x.ndim)
    count = np.array(math.prod(x.shape[a] for a in axes), x.dtype)
    xd = x.astype(np.float64)
    if shift is not None:
        if not isinstance(shift, da.Array):
            T.broadcast_param("shift", shift, x.shape)
            shift = np.asarray(chk.float_array("shift", shift), x.dtype)
        xd = xd - shift
    return (count, xd.sum(axis=axes, keepdims=keepdims).astype(x.dtype),
            (xd * xd).sum(axis=axes, keepdims=keepdims).astype(x.dtype), shift)


def normalize_moments(counts, mean_ss, variance_ss, shift):
    n = counts if isinstance(counts, da.Array) else T._real_array("counts", counts)
    if not isinstance(n, da.Array) and not np.all(np.asarray(n) > 0):
        raise ValueError(f"counts must be > 0 (the number of values summed), got {np.min(n)}")
    shifted = mean_ss.astype(np.float64) / n
    mean = shifted if shift is None else shifted + shift
    variance = variance_ss.astype(np.float64) / n - shifted * shifted
    dtype = np.result_type(mean_ss.dtype, variance_ss.dtype)
    return mean.astype(dtype), variance.astype(dtype)


def _keep(shape, axes):
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _grad_of_stat(name, value, shape, axes):
    keep = _keep(shape, axes)
    if value is None:
        return np.zeros(keep)
    squeezed = tuple(d for i, d in enumerate(shape) if i not in axes)
    if tuple(value.shape) not in (keep, squeezed):
        raise ValueError(f"{name} must have the shape of the moments, {squeezed} (or {keep} with keepdims), "
                         f"got shape {value.shape}")
    return value.astype(np.float64).reshape(keep)


def moments_backward(grad_mean, grad_variance, x, axes):
    x = D._dask_input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, x.ndim)
    gm = _grad_of_stat("grad_mean", grad_mean, x.shape, axes)
    gv = _grad_of_stat("grad_variance", grad_variance, x.shape, axes)
    n = math.prod(x.shape[a] for a in axes)
    _, mean, _ = D._states(x, axes, True)
    return (gm / n + gv * (2.0 / n) * (x.astype(np.float64) - mean)).astype(x.dtype)


def _sum_to(g, own, ndim):
    target = (1,) * (ndim - len(own)) + tuple(own)
    axes = tuple(i for i in range(ndim) if target[i] == 1 and g.shape[i] != 1)
    return (g.sum(axis=axes, keepdims=True) if axes else g).reshape(own)


def batch_normalization_backward(grad_output, x, mean, variance, offset, scale, variance_epsilon):
    x = D._dask_input("x", x, 0)
    dy = D._dask_input("grad_output", grad_output, 0)
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ValueError(f"grad_output must have the shape and dtype of x {x.shape} {x.dtype}, "
                         f"got {dy.shape} {dy.dtype}")
    eps = chk.eps_value("variance_epsilon", variance_epsilon)
    params = {}
    for name, value in (("mean", mean), ("variance", variance), ("offset", offset), ("scale", scale)):
        if value is None and name in ("offset", "scale"):
            continue
        params[name] = T.broadcast_param(name, value, x.shape)
    ndim = x.ndim
    m = params["mean"][1]
    rstd = 1.0 / np.sqrt(params["variance"][1] + eps)
    s = params["scale"][1] if "scale" in params else np.ones((1,) * ndim)
    dyd = dy.astype(np.float64)
    centred = x.astype(np.float64) - m
    grads = {"mean": -dyd * (s * rstd), "variance": -0.5 * dyd * centred * (s * rstd ** 3),
             "offset": dyd, "scale": dyd * centred * rstd}
    out = {name: _sum_to(grads[name], own, ndim).astype(x.dtype) for name, (own, _) in params.items()}
    return T.BatchNormalizationGrads((dyd * (s * rstd)).astype(x.dtype), out["mean"], out["variance"],
                                     out.get("offset"), out.get("scale"))


def normalize(x, axes, weight=None, bias=None, eps=1e-5, *, return_stats=False, out=None, nan_policy="propagate"):
    x = D._dask_input("x", x, 0)
    axes = N._check_axes(x, axes)
    cdt = chk.compute_dtype(x.dtype)
    w_shape, w = N._param("weight", weight, x.shape, cdt, "x")
    b_shape, b = N._param("bias", bias, x.shape, cdt, "x")
    eps = chk.eps_value("eps", eps)
    D._no_out(out)
    policy = T.nan_policy_value(nan_policy)
    if policy == "omit":
        mean, var = omit_moments(x, axes, True, policy)
        mean, var = mean.astype(np.float64), var.astype(np.float64)
    else:
        count, mean, m2 = D._states(x, axes, True)
        var = m2 / count
    params = D._broadcast_params(x, mean, var, b, w)
    y = da.map_blocks(F.batch_normalization, x, *params, eps, dtype=x.dtype)
    if not return_stats:
        return y
    return y, N.NormalizeStats(mean, 1.0 / (var + eps) ** 0.5, True, b is not None, eps, b_shape, policy)


def normalize_backward(grad_output, input, stats, axes, weight=None):
    x = D._dask_input("input", input, 0)
    dy = D._dask_input("grad_output", grad_output, 0)
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ValueError(f"grad_output must have the shape and dtype of input {x.shape} {x.dtype}, "
                         f"got {dy.shape} {dy.dtype}")
    axes = N._check_axes(x, axes)
    w_shape, w = N._param("weight", weight, x.shape, np.float64, "input")
    if getattr(stats, "nan_policy", "propagate") != "propagate":
        raise NotImplementedError("normalize_backward of a forward with nan_policy='omit' does not take Dask "
                                  "arrays yet; compute the arrays first")
    keep = _keep(x.shape, axes)
    mean, rstd = stats.mean, stats.rstd
    if tuple(mean.shape) != keep or tuple(rstd.shape) != keep:
        raise ValueError(f"stats.mean must have shape {keep} (input's shape with 1 along axes {axes}), "
                         f"got shape {mean.shape}")
    xhat = (x.astype(np.float64) - mean) * rstd
    dyd = dy.astype(np.float64)
    g = dyd if w is None else dyd * w
    dx = rstd * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    grad_weight = None if w is None else _sum_to(dyd * xhat, w_shape, x.ndim).astype(x.dtype)
    has_bias = bool(getattr(stats, "has_bias", False))
    b_shape = getattr(stats, "bias_shape", None) or ()
    grad_bias = _sum_to(dyd, tuple(b_shape), x.ndim).astype(x.dtype) if has_bias else None
    return F.Grads(dx.astype(x.dtype), grad_weight, grad_bias)
