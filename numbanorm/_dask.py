"""Dask backend: the public functions on Dask arrays, returning lazy Dask arrays.

Chunks run the NumPy (CPU) path of the same functions, so every block is computed by the same
kernels as an in-memory array.

* Statistics (`moments`, `welford`, batch norm's batch statistics) are a ``dask.array.reduction``
  whose chunk states are Welford ``(count, mean, m2)`` merged with Chan's formula in a tree:
  one pass over the data, any chunking, reduced axes chunked too.
* Batch norm then normalizes blockwise with those per-channel statistics.  With running
  statistics to update in place, the statistics are computed right away (one pass) and the
  normalization stays lazy.
* Instance, group, layer and RMS norm are blockwise when each group lies inside one chunk;
  otherwise the array is first rechunked so that it does (the spatial axes, the channel axis of
  group norm when its chunks split a group, the normalized axes) -- never a wrong answer.
* Backwards: blockwise for the per-group ops (each block recomputes its groups' statistics,
  which are then exact for the block), and a per-channel reduction plus a blockwise pass for
  batch norm.  Parameter gradients are Dask sums over the blocks.
"""

import functools

import dask
import dask.array as da
import numpy as np
from dask.array.core import _concatenate2
from dask.utils import deepmap

from . import _arguments
from . import _checks as chk
from . import _functional as F
from ._engine import merge_axes

_STATE = np.dtype([("count", "f8"), ("mean", "f8"), ("m2", "f8")])


def _dask_input(name, value, min_ndim):
    if not isinstance(value, da.Array):
        raise TypeError(f"{name} must be a Dask array like the input, got {chk._describe(value)}")
    if isinstance(getattr(value, "_meta", None), np.ma.MaskedArray):
        chk.refuse_masked(name, value._meta)
    if value.dtype.type not in chk.FLOATS:
        raise TypeError(f"{name} must have dtype float16, float32 or float64, got dtype {value.dtype}")
    if value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {value.shape}")
    return value


def _no_out(out):
    if out is not None:
        raise TypeError("out is not supported for Dask arrays (the result is lazy); use dask.array.store")


# -- statistics -------------------------------------------------------------------------------------

def _state_chunk(x, axis=None, keepdims=None, computing_meta=False, **kwargs):
    if computing_meta:
        return np.empty((0,) * x.ndim, _STATE)
    state = F.welford(x, axis, keepdims=True)
    return {"count": state.count, "mean": state.mean, "m2": state.m2}


def _state_merge(pairs, axis):
    parts = {key: _concatenate2(deepmap(lambda p: p[key], pairs), axes=axis) for key in ("count", "mean", "m2")}
    count, mean, m2 = merge_axes(parts["count"], parts["mean"], parts["m2"], axis)
    return {"count": count, "mean": mean, "m2": m2}


def _state_combine(pairs, axis=None, keepdims=None, **kwargs):
    return _state_merge(pairs, axis)


def _state_aggregate(pairs, axis=None, keepdims=None, **kwargs):
    merged = _state_merge(pairs, axis)
    out = np.empty(merged["mean"].shape, _STATE)
    for key in ("count", "mean", "m2"):
        out[key] = merged[key]
    if not keepdims:
        out = out.squeeze(axis=axis)
    return out


def _states(x, axes, keepdims):
    """(count, mean, m2) over ``axes`` as lazy float64 Dask arrays, from one tree reduction."""
    state = da.reduction(x, _state_chunk, _state_aggregate, combine=_state_combine, axis=axes,
                         keepdims=keepdims, dtype=_STATE, concatenate=False,
                         meta=np.empty((0,) * (x.ndim if keepdims else x.ndim - len(axes)), _STATE))
    return state["count"], state["mean"], state["m2"]


def welford(x, axes, keepdims=False, *, weights=None, nan_policy="propagate"):
    if weights is not None or nan_policy != "propagate":
        from ._dask_more import weighted_welford

        return weighted_welford(x, axes, weights, keepdims, nan_policy)
    x = _dask_input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, x.ndim)
    return F.Moments(*_states(x, axes, keepdims))


def moments(x, axes, keepdims=False, *, nan_policy="propagate"):
    if nan_policy != "propagate":
        from ._dask_more import omit_moments

        return omit_moments(x, axes, keepdims, nan_policy)
    x = _dask_input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, x.ndim)
    if x.size == 0:
        raise ValueError(f"x must not be empty, got shape {x.shape}")
    count, mean, m2 = _states(x, axes, keepdims)
    return mean.astype(x.dtype), (m2 / count).astype(x.dtype)


def batch_normalization(x, mean, variance, offset, scale, variance_epsilon):
    x = _dask_input("x", x, 0)
    return da.map_blocks(F.batch_normalization, x, *_broadcast_params(x, mean, variance, offset, scale),
                         variance_epsilon, dtype=x.dtype)


def _broadcast_params(x, *params):
    """Parameters that broadcast against x, as Dask arrays chunked like x where they vary."""
    out = []
    for p in params:
        if p is None:
            out.append(None)
            continue
        p = p if isinstance(p, da.Array) else np.asarray(p)
        p = p.reshape((1,) * (x.ndim - p.ndim) + p.shape)
        chunks = tuple(x.chunks[i] if p.shape[i] != 1 else (1,) for i in range(x.ndim))
        out.append(p.rechunk(chunks) if isinstance(p, da.Array) else da.from_array(p, chunks=chunks))
    return out


def _channel_shape(x, ch):
    shape = [1] * x.ndim
    shape[ch] = x.shape[ch]
    return tuple(shape)


# -- batch norm: a global reduction, then blockwise --------------------------------------------------

def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None,
               running_var_unbiased=True):
    x = _dask_input("input", input, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    cdt = chk.compute_dtype(x.dtype)
    weight = chk.parameter("weight", weight, (c,), cdt)
    bias = chk.parameter("bias", bias, (c,), cdt)
    eps = chk.eps_value("eps", eps)
    momentum = chk.momentum_value(momentum)
    unbiased = chk.flag("running_var_unbiased", running_var_unbiased)
    _no_out(out)
    if training:
        rm, rv = _arguments._running_pair(running_mean, running_var, c)
        nbt = _arguments._batch_counter(num_batches_tracked, momentum is None and rm is not None)
        if x.size // c < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")
        count, mean, m2 = _states(x, tuple(i for i in range(x.ndim) if i != ch), False)
        var = m2 / count
        if rm is not None:  # running statistics are NumPy arrays updated now: compute the statistics
            count, mean, var = dask.compute(count, mean, var)
            if nbt is not None:
                nbt += 1
            _arguments._update_running(rm, mean, momentum, nbt)
            _arguments._update_running(rv, var * _arguments._bessel(count, unbiased), momentum, nbt)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False, got None")
        mean = chk.parameter("running_mean", running_mean, (c,), np.float64)
        var = chk.parameter("running_var", running_var, (c,), np.float64)
    rstd = 1.0 / (var + eps) ** 0.5
    shape = _channel_shape(x, ch)
    params = [a.reshape(shape) if a is not None else None for a in (mean, var, bias, weight)]
    y = da.map_blocks(F.batch_normalization, x, *_broadcast_params(x, *params), eps, dtype=x.dtype)
    stats = F.NormStats(mean, rstd, bool(training), bias is not None, eps)
    return (y, stats) if return_stats else y


def batch_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
    x = _dask_input("input", input, 2)
    dy = _dask_input("grad_output", grad_output, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ValueError(f"grad_output must have the shape and dtype of input {x.shape} {x.dtype}, "
                         f"got {dy.shape} {dy.dtype}")
    weight = chk.parameter("weight", weight, (c,), np.float64)
    w = np.ones(c) if weight is None else weight
    shape = _channel_shape(x, ch)
    axes = tuple(i for i in range(x.ndim) if i != ch)
    mean, rstd = stats.mean, stats.rstd
    centred = x.astype(np.float64) - (mean.reshape(shape) if isinstance(mean, da.Array) else np.reshape(mean, shape))
    sum_dy = dy.astype(np.float64).sum(axis=axes)
    sum_dy_xc = (dy.astype(np.float64) * centred).sum(axis=axes)
    ka = rstd * w
    if stats.batch_stats:
        per_channel = x.size / c
        kb = -rstd ** 3 * w * sum_dy_xc / per_channel
        kc = -rstd * w * sum_dy / per_channel
    else:
        kb = kc = np.zeros(c)
    r = lambda a: a.reshape(shape)
    dx = (dy * r(ka) + centred * r(kb) + r(kc)).astype(x.dtype)
    grad_weight = None if weight is None else (sum_dy_xc * rstd).astype(x.dtype)
    grad_bias = sum_dy.astype(x.dtype) if stats.has_bias else None
    return F.Grads(dx, grad_weight, grad_bias)


# -- per-group ops: blockwise over chunks that hold whole groups -------------------------------------

def _whole(x, axes, channel_axis=None, members=1):
    """x rechunked so that ``axes`` are one chunk each and the channel chunks hold whole groups
    of ``members`` channels."""
    chunks = {a: -1 for a in axes}
    if channel_axis is not None and any(size % members for size in x.chunks[channel_axis]):
        chunks[channel_axis] = -1
    return x.rechunk(chunks) if chunks else x


def _param_block(param, block_info, ch):
    """The slice of a per-channel parameter that belongs to this block."""
    if param is None:
        return None
    start, stop = block_info[None]["array-location"][ch]
    return param[start:stop]


def _group_forward(x, ch, spatial, members, call):
    """Blockwise ``call(block, part)`` of a per-group op; ``part(p)`` is the block's slice of a
    per-channel array ``p``."""
    x = _whole(x, spatial, ch, members)

    def block(xb, block_info=None):
        return call(xb, lambda p: _param_block(p, block_info, ch))

    return da.map_blocks(block, x, dtype=x.dtype)


def _grid_param_grads(dy, xhat, ch, weight, has_bias):
    axes = tuple(i for i in range(dy.ndim) if i != ch)
    grad_weight = None if weight is None else (dy.astype(np.float64) * xhat).sum(axis=axes).astype(dy.dtype)
    grad_bias = dy.astype(np.float64).sum(axis=axes).astype(dy.dtype) if has_bias else None
    return grad_weight, grad_bias


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, channel_axis=1, return_stats=False, out=None,
                  num_batches_tracked=None, running_var_unbiased=True):
    x = _dask_input("input", input, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    weight, bias = _arguments._grid_affine_params(weight, bias, c, chk.compute_dtype(x.dtype))
    _no_out(out)
    eps = chk.eps_value("eps", eps)
    momentum = chk.momentum_value(momentum)
    unbiased = chk.flag("running_var_unbiased", running_var_unbiased)
    spatial = [i for i in range(1, x.ndim) if i != ch]
    if use_input_stats:
        rm, rv = _arguments._running_pair(running_mean, running_var, c)
        nbt = _arguments._batch_counter(num_batches_tracked, momentum is None and rm is not None)
        if rm is not None:  # the running update needs every instance's statistics now: one pass
            count, mean, m2 = dask.compute(*_states(_whole(x, spatial), tuple(spatial), True))
            _running_from_instances(rm, rv, count, mean, m2, ch, momentum, nbt, unbiased)
        stats = _lazy_stats(x, ch, c, eps, bias is not None) if return_stats else None
        rm = rv = None
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when use_input_stats=False, got None")
        rm = chk.parameter("running_mean", running_mean, (c,), np.float64)
        rv = chk.parameter("running_var", running_var, (c,), np.float64)
        n = x.shape[0]
        stats = F.NormStats(np.broadcast_to(rm, (n, c)), np.broadcast_to(1.0 / np.sqrt(rv + eps), (n, c)),
                            False, bias is not None, eps)
    call = lambda xb, part: F.instance_norm(xb, part(rm), part(rv), part(weight), part(bias), use_input_stats,
                                           eps=eps, channel_axis=ch)
    y = _group_forward(x, ch, spatial, 1, call)
    return (y, stats) if return_stats else y


def _running_from_instances(running_mean, running_var, count, mean, m2, ch, momentum, nbt, unbiased=True):
    n_axes = tuple(i for i in range(mean.ndim) if i not in (0, ch))
    mean = mean.squeeze(axis=n_axes).reshape(mean.shape[0], -1)
    stored = (m2 / count * _arguments._bessel(count, unbiased)).squeeze(axis=n_axes).reshape(mean.shape)
    if nbt is not None:
        nbt += 1
    _arguments._update_running(running_mean, mean.mean(axis=0), momentum, nbt)
    _arguments._update_running(running_var, stored.mean(axis=0), momentum, nbt)


def _lazy_stats(x, ch, groups, eps, has_bias):
    """NormStats of a per-group op as lazy Dask arrays ((N, C) or (N, G)); the backward does
    not need them -- each block recomputes its own statistics."""
    n = x.shape[0]
    moved = da.moveaxis(x, ch, 1)
    flat = moved.rechunk({i: -1 for i in range(1, x.ndim)}).reshape((n, -1))  # merge, then split:
    moved = flat.reshape((n, groups, flat.shape[1] // groups))  # Dask reshapes one way at a time
    count, mean, m2 = _states(moved, (2,), False)
    return F.NormStats(mean, 1.0 / (m2 / count + eps) ** 0.5, True, has_bias, eps)


def instance_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
    return _group_backward(grad_output, input, stats, weight, channel_axis, None)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, return_stats=False,
               out=None):
    x = _dask_input("input", input, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    groups = _arguments._num_groups(num_groups, c)
    weight, bias = _arguments._grid_affine_params(weight, bias, c, chk.compute_dtype(x.dtype))
    eps = chk.eps_value("eps", eps)
    _no_out(out)
    spatial = [i for i in range(1, x.ndim) if i != ch]
    call = lambda xb, part: F.group_norm(xb, xb.shape[ch] // (c // groups), part(weight), part(bias), eps,
                                         channel_axis=ch)
    y = _group_forward(x, ch, spatial, c // groups, call)
    return (y, _lazy_stats(x, ch, groups, eps, bias is not None)) if return_stats else y


def group_norm_backward(grad_output, input, stats, num_groups, weight=None, *, channel_axis=1):
    return _group_backward(grad_output, input, stats, weight, channel_axis, num_groups)


def _group_backward(grad_output, input, stats, weight, channel_axis, num_groups):
    """Instance norm (``num_groups`` None) or group norm backward, blockwise."""
    x = _dask_input("input", input, 2)
    dy = _dask_input("grad_output", grad_output, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    members = 1 if num_groups is None else c // _arguments._num_groups(num_groups, c)
    weight = chk.parameter("weight", weight, (c,), chk.compute_dtype(x.dtype))
    spatial = [i for i in range(1, x.ndim) if i != ch]
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ValueError(f"grad_output must have the shape and dtype of input {x.shape} {x.dtype}, "
                         f"got {dy.shape} {dy.dtype}")
    eps = stats.eps
    has_bias = getattr(stats, "has_bias", False)
    if not getattr(stats, "batch_stats", True):  # running statistics: constants, dx = dy*w*rstd
        shape = [1] * x.ndim
        shape[0], shape[ch] = x.shape[0], c
        w = np.ones(c) if weight is None else weight.astype(np.float64)
        rstd = np.asarray(stats.rstd, np.float64)
        dx = (dy * (rstd * w).reshape(shape)).astype(x.dtype)
        xhat = (x - np.asarray(stats.mean).reshape(shape)) * rstd.reshape(shape)
        return F.Grads(dx, *_grid_param_grads(dy, xhat, ch, weight, has_bias))
    x, dy = _whole(x, spatial, ch, members), _whole(dy, spatial, ch, members)
    dy = dy.rechunk(x.chunks)

    def normalized(xb):
        if num_groups is None:
            return F.instance_norm(xb, channel_axis=ch, eps=eps, return_stats=True)
        return F.group_norm(xb, xb.shape[ch] // members, channel_axis=ch, eps=eps, return_stats=True)

    def block(dyb, xb, block_info=None):
        wb = _param_block(weight, block_info, ch)
        _, st = normalized(xb)
        if num_groups is None:
            return F.instance_norm_backward(dyb, xb, st, wb, channel_axis=ch).input
        return F.group_norm_backward(dyb, xb, st, xb.shape[ch] // members, wb, channel_axis=ch).input

    dx = da.map_blocks(block, dy, x, dtype=x.dtype)
    xhat = da.map_blocks(lambda xb: normalized(xb)[0], x, dtype=x.dtype) if weight is not None else None
    return F.Grads(dx, *_grid_param_grads(dy, xhat, ch, weight, has_bias))


# -- layer and RMS norm: blockwise over whole rows ---------------------------------------------------

def _row_forward(input, normalized_shape, weight, bias, eps, out, return_stats, centered):
    x = _dask_input("input", input, 1)
    shape = chk.normalized_shape_of(normalized_shape, x.shape)
    k = len(shape)
    eps = chk.eps_value("eps", np.finfo(x.dtype).eps if eps is None else eps)
    _no_out(out)
    x = _whole(x, range(x.ndim - k, x.ndim))
    if centered:
        call = functools.partial(F.layer_norm, normalized_shape=shape, weight=weight, bias=bias, eps=eps)
    else:
        call = functools.partial(F.rms_norm, normalized_shape=shape, weight=weight, eps=eps)
    y = da.map_blocks(lambda xb: call(xb), x, dtype=x.dtype)
    if not return_stats:
        return y
    count, mean, m2 = _states(x, tuple(range(x.ndim - k, x.ndim)), False)
    spread = m2 / count if centered else m2 / count + mean * mean
    mean = mean if centered else da.zeros_like(mean)
    return y, F.NormStats(mean, 1.0 / (spread + eps) ** 0.5, True, bias is not None, eps)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, return_stats=False, out=None):
    return _row_forward(input, normalized_shape, weight, bias, eps, out, return_stats, True)


def rms_norm(input, normalized_shape, weight=None, eps=None, *, return_stats=False, out=None):
    return _row_forward(input, normalized_shape, weight, None, eps, out, return_stats, False)


def _row_backward(grad_output, input, stats, normalized_shape, weight, centered):
    x = _dask_input("input", input, 1)
    dy = _dask_input("grad_output", grad_output, 1)
    shape = chk.normalized_shape_of(normalized_shape, x.shape)
    k = len(shape)
    trailing = range(x.ndim - k, x.ndim)
    x = _whole(x, trailing)
    dy = _whole(dy, trailing).rechunk(x.chunks)
    forward, backward = (F.layer_norm, F.layer_norm_backward) if centered else (F.rms_norm, F.rms_norm_backward)
    eps = stats.eps

    def block(dyb, xb):
        _, st = forward(xb, shape, eps=eps, return_stats=True)
        return backward(dyb, xb, st, shape, weight).input

    dx = da.map_blocks(block, dy, x, dtype=x.dtype)
    lead = tuple(range(x.ndim - k))
    grad_weight = grad_bias = None
    if weight is not None:
        xhat = da.map_blocks(lambda xb: forward(xb, shape, eps=eps), x, dtype=x.dtype)
        grad_weight = (dy.astype(np.float64) * xhat).sum(axis=lead).astype(x.dtype)
    if getattr(stats, "has_bias", False):
        grad_bias = dy.astype(np.float64).sum(axis=lead).astype(x.dtype)
    return F.Grads(dx, grad_weight, grad_bias)


def layer_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    return _row_backward(grad_output, input, stats, normalized_shape, weight, True)


def rms_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    return _row_backward(grad_output, input, stats, normalized_shape, weight, False)


# the functions of issue #16 (TensorFlow's statistics API, normalize): numbanorm/_dask_more.py
from ._dask_more import (  # noqa: E402
    batch_normalization_backward,
    moments_backward,
    normalize,
    normalize_backward,
    normalize_moments,
    sufficient_statistics,
    weighted_moments,
)
