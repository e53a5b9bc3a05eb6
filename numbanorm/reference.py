"""Plain-NumPy references: the public API, name for name and signature for signature, written
for clarity, not speed.

Every function computes in float64 (or in the input's precision where it is wider, such as
``np.longdouble``, to judge float64 results) and returns that precision; forwards return the same
``NormStats``/``SwitchableStats`` and backwards the same ``Grads``/``SwitchableGrads`` as numbanorm,
so a reference backward can take a reference forward's stats.  Running statistics are updated in
place, as numbanorm does.  Arguments are not checked: these are the oracle of the tests and the
peer (and error yardstick) of ``python -m numbanorm bench``, not a second implementation of the
argument checks.
"""

import warnings

import numpy as np

from ._functional import Grads, Moments, NormStats, SwitchableGrads, SwitchableStats
from ._normalize import NormalizeStats
from ._tfstats import BatchNormalizationGrads


def _wide(a):
    """``a`` as an array of float64, or of its own dtype where that is wider (long double)."""
    a = np.asarray(a)
    return a.astype(np.result_type(a.dtype, np.float64))


def _mean_and_var(xg, axes):
    """Mean and biased variance over ``axes``, keepdims."""
    mean = xg.mean(axis=axes, keepdims=True)
    # one refinement step: NumPy's mean of 1e8 + N(0, 1) is off by several ulps of 1e8
    mean = mean + (xg - mean).mean(axis=axes, keepdims=True)
    return mean, ((xg - mean) ** 2).mean(axis=axes, keepdims=True)


def _rstd(var, eps):
    return 1.0 / np.sqrt(var + eps)


# -- batch / instance / group norm: statistics over groups of (sample, channel) cells ------------

def _grouped(a, channel_axis, groups, over_batch):
    """``a`` as (N, G, members) -- (1, C, N*spatial) for batch norm -- and the function that
    puts an array of that shape back in ``a``'s layout."""
    moved = np.moveaxis(a, channel_axis, 1)
    n, c = moved.shape[:2]
    cells = moved.reshape(n, c, -1)
    if over_batch:
        grouped = np.moveaxis(cells, 1, 0).reshape(1, c, -1)
        undo = lambda g: np.moveaxis(np.moveaxis(g.reshape(c, n, -1), 0, 1).reshape(moved.shape), 1, channel_axis)
    else:
        grouped = cells.reshape(n, groups, -1)
        undo = lambda g: np.moveaxis(g.reshape(moved.shape), 1, channel_axis)
    return grouped, undo


def _per_channel(p, x, channel_axis, default):
    """A (C,) parameter shaped to broadcast against ``x``; ``default`` where it is None."""
    shape = [1] * x.ndim
    shape[channel_axis] = x.shape[channel_axis]
    return np.full(shape, default) if p is None else _wide(p).reshape(shape)


def _track(running_mean, running_var, num_batches_tracked, mean, var, count, momentum, unbiased):
    """The running statistics' update by a batch's ``mean`` and biased ``var`` of ``count``
    values each: ``(1 - momentum)*old + momentum*new``, the variance made unbiased (n - 1) when
    ``unbiased``; ``momentum=None`` the cumulative average over ``num_batches_tracked``."""
    if running_mean is None:
        return
    if num_batches_tracked is not None:
        num_batches_tracked += 1
    if momentum is None:
        momentum = 1.0 / num_batches_tracked.reshape(-1)[0]
    new_var = var * count / (count - 1) if unbiased else var
    for running, new in ((running_mean, mean), (running_var, new_var)):
        running[...] = (1.0 - momentum) * running + momentum * new


def _grid_forward(x, channel_axis, groups, over_batch, weight, bias, eps, running=None):
    """``(y, mean, var)`` with per-group statistics of the input, or of ``running`` = (mean,
    var) per channel; ``mean``/``var`` shaped (1 or N, G)."""
    xg, undo = _grouped(x, channel_axis, groups, over_batch)
    if running is None:
        mean, var = _mean_and_var(xg, (2,))
    else:
        cells = (xg.shape[0], xg.shape[1], 1)
        mean, var = (np.broadcast_to(_wide(r).reshape(1, -1, 1), cells) for r in running)
    xhat = undo((xg - mean) * _rstd(var, eps))
    y = xhat * _per_channel(weight, x, channel_axis, 1.0) + _per_channel(bias, x, channel_axis, 0.0)
    return y, mean[..., 0], var[..., 0]


def _grid_backward(grad_output, input, stats, weight, channel_axis, groups, over_batch):
    x, dy = _wide(input), _wide(grad_output)
    ca = channel_axis % x.ndim
    mean = np.reshape(stats.mean, (1, -1) if over_batch else np.shape(stats.mean))[..., None]
    rstd = np.reshape(stats.rstd, mean.shape)
    xg, undo = _grouped(x, ca, groups, over_batch)
    xhat_g = (xg - mean) * rstd
    dxhat_g, _ = _grouped(dy * _per_channel(weight, x, ca, 1.0), ca, groups, over_batch)
    if stats.batch_stats:  # the statistics depend on x
        dx_g = rstd * (dxhat_g - dxhat_g.mean(axis=2, keepdims=True)
                       - xhat_g * (dxhat_g * xhat_g).mean(axis=2, keepdims=True))
    else:  # running statistics are constants
        dx_g = rstd * dxhat_g
    others = tuple(i for i in range(x.ndim) if i != ca)
    grad_weight = None if weight is None else (dy * undo(xhat_g)).sum(axis=others)
    grad_bias = dy.sum(axis=others) if stats.has_bias else None
    return Grads(undo(dx_g), grad_weight, grad_bias)


def _result(y, stats, return_stats, out):
    if out is not None:
        out[...] = y
        y = out
    return (y, stats) if return_stats else y


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None,
               running_var_unbiased=True):
    x = _wide(input)
    ca = channel_axis % x.ndim
    c = x.shape[ca]
    if training:
        y, mean, var = _grid_forward(x, ca, c, True, weight, bias, eps)
        _track(running_mean, running_var, num_batches_tracked, mean[0], var[0], x.size // c, momentum,
               running_var_unbiased)
    else:
        y, mean, var = _grid_forward(x, ca, c, True, weight, bias, eps, (running_mean, running_var))
    stats = NormStats(mean[0], _rstd(var[0], eps), bool(training), bias is not None, eps)
    return _result(y, stats, return_stats, out)


def batch_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
    c = np.shape(input)[channel_axis]
    return _grid_backward(grad_output, input, stats, weight, channel_axis, c, True)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None,
                  running_var_unbiased=True):
    """The running statistics take the mean over samples of the instances' statistics."""
    x = _wide(input)
    ca = channel_axis % x.ndim
    c = x.shape[ca]
    if use_input_stats:
        y, mean, var = _grid_forward(x, ca, c, False, weight, bias, eps)
        _track(running_mean, running_var, num_batches_tracked, mean.mean(axis=0), var.mean(axis=0),
               x.size // (x.shape[0] * c), momentum, running_var_unbiased)
    else:
        y, mean, var = _grid_forward(x, ca, c, False, weight, bias, eps, (running_mean, running_var))
    stats = NormStats(np.array(mean), _rstd(var, eps), bool(use_input_stats), bias is not None, eps)
    return _result(y, stats, return_stats, out)


def instance_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
    c = np.shape(input)[channel_axis]
    return _grid_backward(grad_output, input, stats, weight, channel_axis, c, False)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, return_stats=False,
               out=None):
    x = _wide(input)
    y, mean, var = _grid_forward(x, channel_axis % x.ndim, num_groups, False, weight, bias, eps)
    return _result(y, NormStats(mean, _rstd(var, eps), True, bias is not None, eps), return_stats, out)


def group_norm_backward(grad_output, input, stats, num_groups, weight=None, *, channel_axis=1):
    return _grid_backward(grad_output, input, stats, weight, channel_axis, num_groups, False)


# -- layer / RMS norm: statistics over the trailing axes ------------------------------------------

def _trailing(x, normalized_shape):
    k = 1 if np.isscalar(normalized_shape) else len(normalized_shape)
    return tuple(range(x.ndim - k, x.ndim))


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, return_stats=False, out=None):
    x = _wide(input)
    axes = _trailing(x, normalized_shape)
    mean, var = _mean_and_var(x, axes)
    rstd = _rstd(var, eps)
    y = (x - mean) * rstd * (1.0 if weight is None else _wide(weight)) + (0.0 if bias is None else _wide(bias))
    lead = x.shape[:x.ndim - len(axes)]
    return _result(y, NormStats(mean.reshape(lead), rstd.reshape(lead), True, bias is not None, eps),
                   return_stats, out)


def _row_backward(grad_output, input, stats, normalized_shape, weight, centered):
    x, dy = _wide(input), _wide(grad_output)
    axes = _trailing(x, normalized_shape)
    lead = tuple(range(x.ndim - len(axes)))
    keep = x.shape[:len(lead)] + (1,) * len(axes)
    mean, rstd = np.reshape(stats.mean, keep), np.reshape(stats.rstd, keep)
    xhat = (x - mean) * rstd
    dxhat = dy * (1.0 if weight is None else _wide(weight))
    mean_dxhat = dxhat.mean(axis=axes, keepdims=True) if centered else 0.0  # RMS norm has no centre
    dx = rstd * (dxhat - mean_dxhat - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    grad_weight = None if weight is None else (dy * xhat).sum(axis=lead)
    grad_bias = dy.sum(axis=lead) if stats.has_bias else None
    return Grads(dx, grad_weight, grad_bias)


def layer_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    return _row_backward(grad_output, input, stats, normalized_shape, weight, True)


def rms_norm(input, normalized_shape, weight=None, eps=None, *, return_stats=False, out=None):
    x = _wide(input)
    eps = np.finfo(np.asarray(input).dtype).eps if eps is None else eps
    axes = _trailing(x, normalized_shape)
    rstd = _rstd((x * x).mean(axis=axes, keepdims=True), eps)
    y = x * rstd * (1.0 if weight is None else _wide(weight))
    lead = x.shape[:x.ndim - len(axes)]
    return _result(y, NormStats(np.zeros(lead), rstd.reshape(lead), True, False, eps), return_stats, out)


def rms_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    return _row_backward(grad_output, input, stats, normalized_shape, weight, False)


# -- switchable norm: a softmax mixture of instance, layer and batch statistics --------------------

def _softmax(z):
    e = np.exp(_wide(z) - np.max(z))
    return e / e.sum()


def switchable_norm(input, mean_weight, var_weight, running_mean=None, running_var=None, weight=None, bias=None,
                    training=False, momentum=0.1, eps=1e-5, *, channel_axis=1, using_bn=True, return_stats=False,
                    out=None, num_batches_tracked=None, running_var_unbiased=True):
    x = _wide(input)
    ca = channel_axis % x.ndim
    cells = np.moveaxis(x, ca, 1).reshape(x.shape[0], x.shape[ca], -1)  # (N, C, spatial)
    n, c, _ = cells.shape
    instance, layer, batch = (tuple(a[..., 0] for a in _mean_and_var(cells, axes)) for axes in ((2,), (1, 2), (0, 2)))
    terms = [instance, layer]
    if using_bn:
        if training:
            mean_bn, var_bn = batch[0][0], batch[1][0]
            _track(running_mean, running_var, num_batches_tracked, mean_bn, var_bn, n * cells.shape[2], momentum,
                   running_var_unbiased)
        else:
            mean_bn, var_bn = _wide(running_mean), _wide(running_var)
        terms.append((mean_bn[None, :], var_bn[None, :]))
    means = np.stack([np.broadcast_to(m, (n, c)) for m, _ in terms])
    variances = np.stack([np.broadcast_to(v, (n, c)) for _, v in terms])
    mean = np.tensordot(_softmax(mean_weight), means, 1)
    rstd = _rstd(np.tensordot(_softmax(var_weight), variances, 1), eps)
    y = np.moveaxis(((cells - mean[..., None]) * rstd[..., None]).reshape(np.moveaxis(x, ca, 1).shape), 1, ca)
    y = y * _per_channel(weight, x, ca, 1.0) + _per_channel(bias, x, ca, 0.0)
    stats = SwitchableStats(mean, rstd, bool(training), bias is not None, means, variances)
    return _result(y, stats, return_stats, out)


def switchable_norm_backward(grad_output, input, stats, mean_weight, var_weight, weight=None, *, channel_axis=1):
    """By the chain rule through each term's statistic: term k's mean and variance are means
    over its group of cells (instance: the cell, layer: the sample, batch: the channel)."""
    x, dy = _wide(input), _wide(grad_output)
    ca = channel_axis % x.ndim
    to_cells = lambda a: np.moveaxis(a, ca, 1).reshape(x.shape[0], x.shape[ca], -1)
    cells, dy_cells = to_cells(x), to_cells(dy)
    n, c, spatial = cells.shape
    mix_mean, mix_var = _softmax(mean_weight), _softmax(var_weight)
    mean, rstd = stats.mean[..., None], stats.rstd[..., None]
    dxhat = dy_cells * (np.ones((c, 1)) if weight is None else _wide(weight)[:, None])
    d_mean = -(dxhat * rstd).sum(axis=2)  # dL/d(mixed mean), (N, C)
    d_var = -0.5 * (dxhat * (cells - mean) * rstd ** 3).sum(axis=2)  # dL/d(mixed variance)
    groups = [(), (1,), (0,)]  # the axes of (N, C) each term's statistic is shared over
    dx = dxhat * rstd
    for k in range(len(stats.means)):
        if k == 2 and not stats.batch_stats:
            continue  # running statistics are constants
        size = spatial * int(np.prod([(n, c)[a] for a in groups[k]]))
        d_mean_k = d_mean.sum(axis=groups[k], keepdims=True) * mix_mean[k]
        d_var_k = d_var.sum(axis=groups[k], keepdims=True) * mix_var[k]
        dx = dx + (d_mean_k[..., None] + 2.0 * d_var_k[..., None] * (cells - stats.means[k][..., None])) / size
    g_mean = np.array([(d_mean * m).sum() for m in stats.means])
    g_var = np.array([(d_var * v).sum() for v in stats.variances])
    others = (0, 2)
    y_hat = (cells - mean) * rstd
    return SwitchableGrads(
        np.moveaxis(dx.reshape(np.moveaxis(x, ca, 1).shape), 1, ca),
        None if weight is None else (dy_cells * y_hat).sum(axis=others),
        dy_cells.sum(axis=others) if stats.has_bias else None,
        mix_mean * (g_mean - mix_mean @ g_mean),  # softmax's Jacobian
        mix_var * (g_var - mix_var @ g_var))


# -- weight standardization ------------------------------------------------------------------------

def weight_standardization(weight, eps=1e-5):
    w = _wide(weight)
    mean, var = _mean_and_var(w, tuple(range(1, w.ndim)))
    return (w - mean) * _rstd(var, eps)


def weight_standardization_backward(grad_output, weight, eps=1e-5):
    w, dy = _wide(weight), _wide(grad_output)
    axes = tuple(range(1, w.ndim))
    mean, var = _mean_and_var(w, axes)
    rstd = _rstd(var, eps)
    what = (w - mean) * rstd
    return rstd * (dy - dy.mean(axis=axes, keepdims=True) - what * (dy * what).mean(axis=axes, keepdims=True))


# -- statistics -----------------------------------------------------------------------------------

def _axes(axes, ndim):
    return tuple(sorted(a % ndim for a in ((axes,) if np.isscalar(axes) else axes)))


def _squeezed(arrays, axes, keepdims):
    return arrays if keepdims else tuple(np.squeeze(a, axes) for a in arrays)


def moments(x, axes, keepdims=False, *, nan_policy="propagate"):
    x = _wide(x)
    axes = _axes(axes, x.ndim)
    if nan_policy == "omit":  # statistics of the values present; NaN where there are none
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's "mean of empty slice"
            mean = np.nanmean(x, axis=axes, keepdims=True)
            return _squeezed((mean, np.nanmean((x - mean) ** 2, axis=axes, keepdims=True)), axes, keepdims)
    return _squeezed(_mean_and_var(x, axes), axes, keepdims)


def moments_backward(grad_mean, grad_variance, x, axes):
    """Through ``mean = sum(x)/n`` and ``var = sum((x - mean)**2)/n``."""
    x = _wide(x)
    axes = _axes(axes, x.ndim)
    keep = [1 if i in axes else d for i, d in enumerate(x.shape)]
    n = np.prod([x.shape[a] for a in axes])
    mean, _ = _mean_and_var(x, axes)
    gm = 0.0 if grad_mean is None else _wide(grad_mean).reshape(keep)
    gv = 0.0 if grad_variance is None else _wide(grad_variance).reshape(keep)
    return gm / n + gv * 2.0 * (x - mean) / n


def weighted_moments(x, axes, frequency_weights, keepdims=False, *, nan_policy="propagate"):
    """``sum(w x)/sum(w)`` and ``sum(w (x - mean)**2)/sum(w)``; 0 where ``sum(w) == 0``, as
    TensorFlow's ``div_no_nan``.  "omit" leaves out the NaN values and their weights."""
    x = _wide(x)
    axes = _axes(axes, x.ndim)
    w = np.broadcast_to(_wide(frequency_weights), x.shape)
    if nan_policy == "omit":
        w = np.where(np.isnan(x), 0.0, w)
        x = np.where(np.isnan(x), 0.0, x)
    total = w.sum(axis=axes, keepdims=True)
    safe = np.where(total > 0, total, 1.0)
    mean = (w * x).sum(axis=axes, keepdims=True) / safe
    mean = mean + (w * (x - mean)).sum(axis=axes, keepdims=True) / safe  # one refinement step
    var = (w * (x - mean) ** 2).sum(axis=axes, keepdims=True) / safe
    return _squeezed((np.where(total > 0, mean, 0.0), np.where(total > 0, var, 0.0)), axes, keepdims)


def sufficient_statistics(x, axes, shift=None, keepdims=False):
    x = _wide(x)
    axes = _axes(axes, x.ndim)
    d = x if shift is None else x - _wide(shift)
    count = np.array(np.prod([x.shape[a] for a in axes]), np.float64)
    return count, d.sum(axis=axes, keepdims=keepdims), (d * d).sum(axis=axes, keepdims=keepdims), shift


def normalize_moments(counts, mean_ss, variance_ss, shift):
    shifted_mean = _wide(mean_ss) / _wide(counts)
    mean = shifted_mean if shift is None else shifted_mean + _wide(shift)
    return mean, _wide(variance_ss) / _wide(counts) - shifted_mean ** 2


def batch_normalization(x, mean, variance, offset, scale, variance_epsilon):
    y = (_wide(x) - _wide(mean)) / np.sqrt(_wide(variance) + variance_epsilon)
    if scale is not None:
        y = y * _wide(scale)
    return y if offset is None else y + _wide(offset)


def _sum_to(g, shape):
    """``g`` summed down to the shape of an operand that was broadcast to it."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(i for i, d in enumerate(shape) if d == 1), keepdims=True).reshape(shape)


def batch_normalization_backward(grad_output, x, mean, variance, offset, scale, variance_epsilon):
    """``mean`` and ``variance`` as independent inputs, as TensorFlow's autograd takes them."""
    x, dy = _wide(x), _wide(grad_output)
    mean, variance = _wide(mean), _wide(variance)
    rstd = 1.0 / np.sqrt(variance + variance_epsilon)
    s = 1.0 if scale is None else _wide(scale)
    return BatchNormalizationGrads(
        dy * s * rstd,
        _sum_to(-dy * s * rstd, np.shape(mean)),
        _sum_to(-0.5 * dy * s * (x - mean) * rstd ** 3, np.shape(variance)),
        None if offset is None else _sum_to(dy, np.shape(offset)),
        None if scale is None else _sum_to(dy * (x - mean) * rstd, np.shape(scale)))


# -- normalization over any axes --------------------------------------------------------------------

def normalize(x, axes, weight=None, bias=None, eps=1e-5, *, return_stats=False, out=None, nan_policy="propagate"):
    x = _wide(x)
    axes = _axes(axes, x.ndim)
    mean, var = moments(x, axes, keepdims=True, nan_policy=nan_policy)
    rstd = _rstd(var, eps)
    y = (x - mean) * rstd * (1.0 if weight is None else _wide(weight)) + (0.0 if bias is None else _wide(bias))
    stats = NormalizeStats(mean, rstd, True, bias is not None, eps, None if bias is None else np.shape(bias),
                           nan_policy)
    return _result(y, stats, return_stats, out)


def normalize_backward(grad_output, input, stats, axes, weight=None):
    """As layer norm's, over ``axes``; with "omit" the NaN inputs take no part (gradient 0)."""
    x, dy = _wide(input), _wide(grad_output)
    axes = _axes(axes, x.ndim)
    present = ~np.isnan(x) if stats.nan_policy == "omit" else np.ones(x.shape, bool)
    n = present.sum(axis=axes, keepdims=True)
    xhat = np.where(present, (x - stats.mean) * stats.rstd, 0.0)
    dy = np.where(present, dy, 0.0)
    dxhat = dy * (1.0 if weight is None else _wide(weight))
    dx = stats.rstd * (dxhat - dxhat.sum(axis=axes, keepdims=True) / n
                       - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True) / n)
    return Grads(np.where(present, dx, 0.0),
                 None if weight is None else _sum_to(dy * xhat, np.shape(weight)),
                 _sum_to(dy, stats.bias_shape) if stats.has_bias else None)


def welford(x, axes, keepdims=False, *, weights=None, nan_policy="propagate"):
    """The count is the number of values (the sum of their weights, with ``weights``)."""
    x = _wide(x)
    axes = _axes(axes, x.ndim)
    w = np.ones(x.shape) if weights is None else np.broadcast_to(_wide(weights), x.shape)
    if nan_policy == "omit":
        w = np.where(np.isnan(x), 0.0, w)
    count = w.sum(axis=axes, keepdims=True)
    if x.size == 0:
        mean, var = np.zeros(count.shape), np.zeros(count.shape)
    else:
        mean, var = weighted_moments(x, axes, w, keepdims=True, nan_policy=nan_policy)
    return Moments(*_squeezed((count, mean, var * count), axes, keepdims))


def merge(a, b):
    count = a.count + b.count
    safe = np.where(count > 0, count, 1)
    mean = np.where(count > 0, (a.count * a.mean + b.count * b.mean) / safe, 0.0)
    m2 = a.m2 + b.m2 + (b.mean - a.mean) ** 2 * a.count * b.count / safe
    return Moments(count, mean, m2)
