"""Plain-NumPy float64 references: the definitions, written for clarity, not speed.

The oracle of the tests and the peer (and error yardstick) of `python -m numbanorm bench`.
"""

import numpy as np


def _to_nc(a, channel_axis, precision=np.float64):
    """(N, C, rest) copy of ``a`` in ``precision`` with its channel axis second."""
    a = np.moveaxis(np.asarray(a, dtype=precision), channel_axis, 1)
    return a.reshape(a.shape[0], a.shape[1], -1)


def _from_nc(a, shape, channel_axis):
    moved = list(np.moveaxis(np.empty(shape), channel_axis, 1).shape)
    return np.moveaxis(a.reshape(moved), 1, channel_axis)


def _norm(xg, axes, eps):
    mean = xg.mean(axis=axes, keepdims=True)
    # one refinement step: NumPy's mean of 1e8 + N(0, 1) is off by several ulps of 1e8
    mean = mean + (xg - mean).mean(axis=axes, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=axes, keepdims=True)
    return mean, 1.0 / np.sqrt(var + eps)


def _grouped(x, kind, groups, channel_axis, precision=np.float64):
    """x as (N, G, members) (or (1, C, members) for batch norm), and a function undoing it."""
    xnc = _to_nc(x, channel_axis, precision)
    n, c, s = xnc.shape
    if kind == "batch":
        g = np.moveaxis(xnc, 1, 0).reshape(1, c, n * s)
        undo = lambda a: _from_nc(np.moveaxis(a.reshape(c, n, s), 0, 1), x.shape, channel_axis)
    else:
        groups = c if kind == "instance" else groups
        g = xnc.reshape(n, groups, (c // groups) * s)
        undo = lambda a: _from_nc(a.reshape(n, c, s), x.shape, channel_axis)
    return g, undo


def _channel_param(p, x, channel_axis, default):
    shape = [1] * x.ndim
    shape[channel_axis] = x.shape[channel_axis]
    return (np.full(shape, default) if p is None else np.asarray(p, np.float64).reshape(shape))


def grid_forward(x, kind, weight=None, bias=None, eps=1e-5, groups=None, channel_axis=1,
                 mean=None, var=None, precision=np.float64):
    """Batch/instance/group norm; ``mean``/``var`` (C,) given means running statistics.
    ``precision=np.longdouble`` computes past float64 (to judge float64 results)."""
    if mean is not None:
        m = _channel_param(mean, x, channel_axis, 0)
        rstd = 1.0 / np.sqrt(_channel_param(var, x, channel_axis, 0) + eps)
        xhat = (np.asarray(x, precision) - m) * rstd
    else:
        g, undo = _grouped(x, kind, groups, channel_axis, precision)
        m, rstd = _norm(g, (2,), eps)
        xhat = undo((g - m) * rstd)
    return xhat * _channel_param(weight, x, channel_axis, 1) + _channel_param(bias, x, channel_axis, 0)


def grid_backward(dy, x, kind, weight=None, eps=1e-5, groups=None, channel_axis=1, mean=None, var=None):
    """(dx, dweight, dbias) of grid_forward; running statistics are constants."""
    w = _channel_param(weight, x, channel_axis, 1)
    dy = np.asarray(dy, np.float64)
    axes = tuple(i for i in range(x.ndim) if i != channel_axis % x.ndim)
    if mean is not None:
        rstd = 1.0 / np.sqrt(_channel_param(var, x, channel_axis, 0) + eps)
        xhat = (np.asarray(x, np.float64) - _channel_param(mean, x, channel_axis, 0)) * rstd
        dx = dy * w * rstd
    else:
        g, undo = _grouped(x, kind, groups, channel_axis)
        m, rstd = _norm(g, (2,), eps)
        xhat_g = (g - m) * rstd
        dxhat_g, _ = _grouped(dy * w, kind, groups, channel_axis)
        dx = undo(rstd * (dxhat_g - dxhat_g.mean(axis=2, keepdims=True)
                          - xhat_g * (dxhat_g * xhat_g).mean(axis=2, keepdims=True)))
        xhat = undo(xhat_g)
    return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


def layer_forward(x, k, weight=None, bias=None, eps=1e-5, precision=np.float64):
    x = np.asarray(x, precision)
    axes = tuple(range(x.ndim - k, x.ndim))
    m, rstd = _norm(x, axes, eps)
    w = 1.0 if weight is None else np.asarray(weight, np.float64)
    b = 0.0 if bias is None else np.asarray(bias, np.float64)
    return (x - m) * rstd * w + b


def layer_backward(dy, x, k, weight=None, eps=1e-5):
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    axes = tuple(range(x.ndim - k, x.ndim))
    lead = tuple(range(x.ndim - k))
    m, rstd = _norm(x, axes, eps)
    xhat = (x - m) * rstd
    w = 1.0 if weight is None else np.asarray(weight, np.float64)
    dxhat = dy * w
    dx = rstd * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


def rms_forward(x, k, weight=None, eps=None):
    x = np.asarray(x, np.float64)
    eps = np.finfo(np.float64).eps if eps is None else eps
    axes = tuple(range(x.ndim - k, x.ndim))
    r = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    return x * r * (1.0 if weight is None else np.asarray(weight, np.float64))


def rms_backward(dy, x, k, weight=None, eps=None):
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    eps = np.finfo(np.float64).eps if eps is None else eps
    axes = tuple(range(x.ndim - k, x.ndim))
    r = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    xhat = x * r
    dxhat = dy * (1.0 if weight is None else np.asarray(weight, np.float64))
    dx = r * (dxhat - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=tuple(range(x.ndim - k)))


def switchable_forward(x, mean_logits, var_logits, weight=None, bias=None, eps=1e-5, channel_axis=1,
                       running_mean=None, running_var=None):
    """Switchable norm by its definition; ``running_*`` given replace the batch term (eval)."""
    xnc = _to_nc(x, channel_axis)  # (N, C, S)
    softmax = lambda z: np.exp(z - np.max(z)) / np.exp(z - np.max(z)).sum()
    a, b = softmax(np.asarray(mean_logits, np.float64)), softmax(np.asarray(var_logits, np.float64))
    stats = [(xnc.mean(axis=2, keepdims=True), xnc.var(axis=2, keepdims=True)),
             (xnc.mean(axis=(1, 2), keepdims=True), xnc.var(axis=(1, 2), keepdims=True))]
    if len(a) == 3:
        if running_mean is None:
            stats.append((xnc.mean(axis=(0, 2), keepdims=True), xnc.var(axis=(0, 2), keepdims=True)))
        else:
            stats.append((np.asarray(running_mean, np.float64)[None, :, None],
                          np.asarray(running_var, np.float64)[None, :, None]))
    mean = sum(ak * m for ak, (m, _) in zip(a, stats))
    var = sum(bk * v for bk, (_, v) in zip(b, stats))
    y = _from_nc((xnc - mean) / np.sqrt(var + eps), x.shape, channel_axis)
    return y * _channel_param(weight, x, channel_axis % x.ndim, 1) + _channel_param(bias, x, channel_axis % x.ndim, 0)
