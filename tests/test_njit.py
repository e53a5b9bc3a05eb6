"""numbanorm's public functions called from users' @njit code (numbanorm/_overloads.py): the same
results as the Python calls -- forward, stats, backward, running statistics updated in place --
and the same exceptions for bad values, in float32 and float64, channels first and last."""

import numpy as np
import pytest
from numba import njit, prange
from numba.core.errors import TypingError

import numbanorm as nn
from numbanorm import reference as ref

from conftest import assert_close

TOL = {np.float32: 2e-6, np.float64: 1e-13}
DTYPES = [np.float32, np.float64]


def _close(a, b, dtype, what):
    assert (a is None) == (b is None), what
    if a is not None:
        assert np.shape(a) == np.shape(b), f"{what}: shape {np.shape(a)} != {np.shape(b)}"
        assert_close(a, b, TOL[dtype] * 4, what=what)


def _same_grads(g, g0, dtype):
    assert type(g) is nn.Grads
    for name in ("input", "weight", "bias"):
        _close(getattr(g, name), getattr(g0, name), dtype, name)
        if getattr(g0, name) is not None:
            assert getattr(g, name).dtype == getattr(g0, name).dtype


def _same_stats(st, st0, dtype):
    assert type(st) is nn.NormStats
    _close(st.mean, st0.mean, dtype, "stats.mean")
    _close(st.rstd, st0.rstd, dtype, "stats.rstd")
    assert bool(st.batch_stats) == bool(st0.batch_stats) and bool(st.has_bias) == bool(st0.has_bias)
    assert st.eps == st0.eps


# -- layer norm and RMS norm ---------------------------------------------------------------------

@njit
def _layer(x, shape, w, b, dy):
    y, st = nn.layer_norm(x, shape, w, b, return_stats=True)
    return y, st, nn.layer_norm_backward(dy, x, st, shape, w)


@njit
def _layer_plain(x, shape, dy):
    y, st = nn.layer_norm(x, shape, eps=1e-3, return_stats=True)
    return y, st, nn.layer_norm_backward(dy, x, st, shape)


@njit
def _rms(x, shape, w, dy):
    y, st = nn.rms_norm(x, shape, w, return_stats=True)
    return y, st, nn.rms_norm_backward(dy, x, st, shape, w)


# CI time: every case compiles its own @njit function; each dtype runs in one of them
@pytest.mark.parametrize("shape,dtype", [((5,), np.float32), ((4, 5), np.float32), ((4, 5), np.float64)],
                         ids=["1d-float32", "2d-float32", "2d-float64"])
def test_row_norms_match_python(dtype, shape, rng):
    x = (rng.normal(size=(3,) + (4, 5)) * 2 + 50).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    w = rng.normal(size=shape).astype(dtype)
    b = rng.normal(size=shape).astype(dtype)
    arg = shape[0] if len(shape) == 1 else shape
    y, st, g = _layer(x, arg, w, b, dy)
    y0, st0 = nn.layer_norm(x, arg, w, b, return_stats=True)
    _close(y, y0, dtype, "layer y")
    assert y.dtype == dtype
    _same_stats(st, st0, dtype)
    _same_grads(g, nn.layer_norm_backward(dy, x, st0, arg, w), dtype)

    y, st, g = _layer_plain(x, arg, dy)
    y0, st0 = nn.layer_norm(x, arg, eps=1e-3, return_stats=True)
    _close(y, y0, dtype, "layer y (no params)")
    _same_stats(st, st0, dtype)
    _same_grads(g, nn.layer_norm_backward(dy, x, st0, arg), dtype)

    y, st, g = _rms(x, arg, w, dy)
    y0, st0 = nn.rms_norm(x, arg, w, return_stats=True)
    _close(y, y0, dtype, "rms y")
    _same_stats(st, st0, dtype)
    _same_grads(g, nn.rms_norm_backward(dy, x, st0, arg, w), dtype)


@njit
def _rows_into(x, w, b, out):
    for i in range(x.shape[0]):
        nn.layer_norm(x[i], x.shape[1], w, b, out=out[i])
    return out


@njit
def _rows_into_plain(x, out):
    for i in range(x.shape[0]):
        nn.layer_norm(x[i], x.shape[1], out=out[i])
        nn.rms_norm(out[i], x.shape[1], out=out[i])  # in place
    return out


@njit
def _columns(x):
    y = np.empty_like(x)
    for j in range(x.shape[1]):
        y[:, j] = nn.layer_norm(x[:, j], x.shape[0])  # strided ('A' layout) rows
    return y


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_row_calls_with_out_and_strided_rows(dtype, rng):
    x = (rng.normal(size=(6, 16)) + 1e3).astype(dtype)
    w, b = rng.normal(size=16).astype(dtype), rng.normal(size=16).astype(dtype)
    out = np.full_like(x, np.nan)
    assert _rows_into(x, w, b, out) is out or np.shares_memory(_rows_into(x, w, b, out), out)
    _close(out, nn.layer_norm(x, 16, w, b), dtype, "rows")
    _close(_columns(x), nn.layer_norm(np.ascontiguousarray(x.T), 6).T, dtype, "columns")
    out = np.full_like(x, np.nan)
    _rows_into_plain(x, out)
    _close(out, nn.rms_norm(nn.layer_norm(x, 16), 16), dtype, "rows without parameters")


@njit(parallel=True)
def _prange_rows(x, w, b):
    y = np.empty_like(x)
    for i in prange(x.shape[0]):
        nn.layer_norm(x[i], x.shape[1], w, b, out=y[i])
    return y


def test_user_prange_loop_calls_layer_norm(rng):
    x = (rng.normal(size=(257, 64)) * 3 + 1e4).astype(np.float32)
    w, b = rng.normal(size=64).astype(np.float32), rng.normal(size=64).astype(np.float32)
    y = _prange_rows(x, w, b)
    _close(y, nn.layer_norm(x, 64, w, b), np.float32, "prange")
    # the offset's digits survive in float32, as on the Python path
    exact = ref.layer_norm(x, x.shape[-1], w, b)
    assert np.abs(y - exact).max() < 1e-5 * max(1.0, np.abs(exact).max())


# -- batch, instance and group norm ------------------------------------------------------------------

@njit
def _batch_train(x, rm, rv, w, b, dy, ca):
    y, st = nn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, channel_axis=ca, return_stats=True)
    return y, st, nn.batch_norm_backward(dy, x, st, w, channel_axis=ca)


@njit
def _batch_eval(x, rm, rv, w, b, dy, ca):
    y, st = nn.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-3, channel_axis=ca, return_stats=True)
    return y, st, nn.batch_norm_backward(dy, x, st, w, channel_axis=ca)


@njit
def _instance(x, rm, rv, w, b, dy, ca):
    y, st = nn.instance_norm(x, rm, rv, w, b, channel_axis=ca, return_stats=True)
    return y, st, nn.instance_norm_backward(dy, x, st, w, channel_axis=ca)


@njit
def _group(x, rm, rv, w, b, dy, ca):
    y, st = nn.group_norm(x, 2, w, b, channel_axis=ca, return_stats=True)
    return y, st, nn.group_norm_backward(dy, x, st, 2, w, channel_axis=ca)


@njit
def _batch_plain(x, rm, rv, w, b, dy, ca):  # no parameters, no running statistics
    y, st = nn.batch_norm(x, None, None, training=True, channel_axis=ca, return_stats=True)
    return y, st, nn.batch_norm_backward(dy, x, st, channel_axis=ca)


def _python(op, x, rm, rv, w, b, dy, ca):
    if op == "batch":
        y, st = nn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, channel_axis=ca, return_stats=True)
        return y, st, nn.batch_norm_backward(dy, x, st, w, channel_axis=ca)
    if op == "batch-eval":
        y, st = nn.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-3, channel_axis=ca, return_stats=True)
        return y, st, nn.batch_norm_backward(dy, x, st, w, channel_axis=ca)
    if op == "instance":
        y, st = nn.instance_norm(x, rm, rv, w, b, channel_axis=ca, return_stats=True)
        return y, st, nn.instance_norm_backward(dy, x, st, w, channel_axis=ca)
    if op == "group":
        y, st = nn.group_norm(x, 2, w, b, channel_axis=ca, return_stats=True)
        return y, st, nn.group_norm_backward(dy, x, st, 2, w, channel_axis=ca)
    y, st = nn.batch_norm(x, None, None, training=True, channel_axis=ca, return_stats=True)
    return y, st, nn.batch_norm_backward(dy, x, st, channel_axis=ca)


GRID = {"batch": _batch_train, "batch-eval": _batch_eval, "instance": _instance, "group": _group,
        "batch-plain": _batch_plain}


# every op in both layouts in float32, and in float64 channels-first (each case compiles a function)
@pytest.mark.parametrize("op,ca,dtype", [(op, ca, np.float32) for op in GRID for ca in (1, -1)]
                         + [("batch", 1, np.float64)])
def test_grid_norms_match_python(op, ca, dtype, rng):
    x = (rng.normal(size=(3, 4, 5, 3)) * 2 + 10).astype(dtype)
    if ca == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    dy = rng.normal(size=x.shape).astype(dtype)
    w, b = rng.normal(size=4).astype(dtype), rng.normal(size=4).astype(dtype)
    rm, rv = rng.normal(size=4).astype(dtype), rng.uniform(0.5, 2, 4).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, st, g = GRID[op](x, rm, rv, w, b, dy, ca)
    y0, st0, g0 = _python(op, x, rm0, rv0, w, b, dy, ca)
    _close(y, y0, dtype, "y")
    assert y.dtype == dtype
    _same_stats(st, st0, dtype)
    _same_grads(g, g0, dtype)
    _close(rm, rm0, dtype, "running_mean")  # updated in place alike (or left alone alike)
    _close(rv, rv0, dtype, "running_var")


def test_grid_norms_any_channel_axis_and_layout(rng):
    x = rng.normal(size=(2, 3, 4, 5)) + 3
    xf = np.asfortranarray(x)
    dy = rng.normal(size=x.shape)
    w, b = rng.normal(size=4), rng.normal(size=4)
    for arr in (x, xf, x[:, ::-1]):  # C, Fortran order, negative strides: the same results
        y, st, g = _group(arr, None, None, w, b, dy, 2)
        y0, st0, g0 = _python("group", arr, None, None, w, b, dy, 2)
        _close(y, y0, np.float64, "y")
        _same_stats(st, st0, np.float64)
        _same_grads(g, g0, np.float64)


@njit
def _cumulative(xs, rm, rv, nbt):
    for i in range(xs.shape[0]):
        nn.batch_norm(xs[i], rm, rv, training=True, momentum=None, num_batches_tracked=nbt)


@njit
def _instance_cumulative(xs, rm, rv, nbt):
    for i in range(xs.shape[0]):
        nn.instance_norm(xs[i], rm, rv, momentum=None, channel_axis=-1, num_batches_tracked=nbt)


@pytest.mark.parametrize("dtype", [np.float64])
def test_momentum_none_is_the_cumulative_average(dtype, rng):
    xs = rng.normal(size=(4, 6, 3, 5)).astype(dtype)
    for fn, kw in ((_cumulative, {}), (_instance_cumulative, {"channel_axis": -1})):
        c = 3 if fn is _cumulative else 5
        rm, rv, nbt = np.zeros(c, dtype), np.ones(c, dtype), np.zeros(1, np.int64)
        rm0, rv0, nbt0 = rm.copy(), rv.copy(), nbt.copy()
        fn(xs, rm, rv, nbt)
        for x in xs:
            if fn is _cumulative:
                nn.batch_norm(x, rm0, rv0, training=True, momentum=None, num_batches_tracked=nbt0)
            else:
                nn.instance_norm(x, rm0, rv0, momentum=None, num_batches_tracked=nbt0, **kw)
        assert nbt[0] == nbt0[0] == 4
        _close(rm, rm0, dtype, "running_mean")
        _close(rv, rv0, dtype, "running_var")


# -- statistics ----------------------------------------------------------------------------------

@njit
def _moments(x, axes):
    return nn.moments(x, axes), nn.moments(x, axes, keepdims=True), nn.welford(x, axes)


# every axis set in float32, two in float64 (each case compiles a function)
@pytest.mark.parametrize("axes,dtype", [(axes, np.float32) for axes in [(0, 2), (-1, 1), (1, 2)]]
                         + [((0, 2), np.float64)], ids=str)
def test_moments_and_welford_match_python(axes, dtype, rng):
    x = (rng.normal(size=(4, 3, 5)) + 1e3).astype(dtype)
    (m, v), (mk, vk), st = _moments(x, axes)
    m0, v0 = nn.moments(x, axes)
    _close(m, m0, dtype, "mean")
    _close(v, v0, dtype, "var")
    assert m.dtype == v.dtype == dtype
    mk0, vk0 = nn.moments(x, axes, keepdims=True)
    _close(mk, mk0, dtype, "mean keepdims")
    _close(vk, vk0, dtype, "var keepdims")
    st0 = nn.welford(x, axes)
    assert type(st) is nn.Moments
    for name in ("count", "mean", "m2"):
        _close(getattr(st, name), getattr(st0, name), dtype, name)


@njit
def _merged(a, b):
    return nn.merge(nn.welford(a, 0), nn.welford(b, 0))


def test_merge_in_njit_equals_the_whole(rng):
    a, b = rng.normal(size=(7, 3)) + 5, rng.normal(size=(11, 3)) - 2
    st = _merged(a, b)
    whole = nn.welford(np.concatenate([a, b]), 0)
    assert type(st) is nn.Moments
    for name in ("count", "mean", "m2"):
        _close(getattr(st, name), getattr(whole, name), np.float64, name)
    empty = _merged(np.empty((0, 3)), b)  # an empty block merges as nothing
    _close(empty.m2, nn.welford(b, 0).m2, np.float64, "empty merge")


@njit
def _bn(x, mean, var, offset, scale):
    return nn.batch_normalization(x, mean, var, offset, scale, 1e-3), nn.batch_normalization(x, mean, var, None,
                                                                                                 None, 1e-3)


@pytest.mark.parametrize("dtype", [np.float32])
def test_batch_normalization_matches_python(dtype, rng):
    x = (rng.normal(size=(4, 3, 5)) + 100).astype(dtype)
    mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1)) + 0.5
    offset, scale = rng.normal(size=(3, 1)).astype(dtype), rng.normal(size=5).astype(dtype)
    y, y_plain = _bn(x, mean, var, offset, scale)
    _close(y, nn.batch_normalization(x, mean, var, offset, scale, 1e-3), dtype, "y")
    _close(y_plain, nn.batch_normalization(x, mean, var, None, None, 1e-3), dtype, "y plain")
    assert y.dtype == y_plain.dtype == dtype


@njit
def _statistics_grads(dy, x, mean, var, offset, scale, grad_mean, grad_var):
    return (nn.batch_normalization_backward(dy, x, mean, var, offset, scale, 1e-3),
            nn.moments_backward(grad_mean, grad_var, x, (0, 2)))


@pytest.mark.parametrize("dtype", [np.float32])
def test_statistics_backwards_match_python(dtype, rng):
    """batch_normalization_backward (parameters of several broadcasting shapes) and
    moments_backward (squeezed gradients and None) equal the Python calls, and refuse a
    gradient of the wrong shape with the Python message."""
    x = (rng.normal(size=(4, 3, 5)) + 100).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    mean, var = nn.moments(x, (0, 2), keepdims=True)
    offset, scale = rng.normal(size=5).astype(dtype), rng.normal(size=(3, 1)).astype(dtype)
    grad_mean = rng.normal(size=3).astype(dtype)
    g, dx = _statistics_grads(dy, x, mean, var, offset, scale, grad_mean, None)
    g0 = nn.batch_normalization_backward(dy, x, mean, var, offset, scale, 1e-3)
    assert type(g) is type(g0)
    for name in g0._fields:
        _close(getattr(g, name), getattr(g0, name), dtype, name)
        assert getattr(g, name).dtype == dtype, name
    _close(dx, nn.moments_backward(grad_mean, None, x, (0, 2)), dtype, "moments dx")
    with pytest.raises(ValueError, match=r"grad_mean must have the shape of the moments, \(3,\) \(or \(1, 3, 1\) "
                                         r"with keepdims\), got shape \(4,\)") as compiled:
        _statistics_grads(dy, x, mean, var, offset, scale, np.ones(4, dtype), None)
    with pytest.raises(ValueError) as python:
        nn.moments_backward(np.ones(4, dtype), None, x, (0, 2))
    assert str(compiled.value) == str(python.value)


@njit
def _standardized(w, dy):
    return nn.weight_standardization(w), nn.weight_standardization_backward(dy, w, 1e-3)


def test_weight_standardization_matches_python(rng):
    w = (rng.normal(size=(8, 3, 3, 3)) + 5).astype(np.float32)
    dy = rng.normal(size=w.shape).astype(np.float32)
    ws, dw = _standardized(w, dy)
    _close(ws, nn.weight_standardization(w), np.float32, "standardized")
    _close(dw, nn.weight_standardization_backward(dy, w, 1e-3), np.float32, "gradient")
    assert ws.dtype == dw.dtype == np.float32
    for bad_w, bad_dy in ((np.ones((3, 0, 1, 1), np.float32),) * 2,
                          (np.ones((3, 2, 1, 1), np.float32), np.ones((3, 3, 1, 1), np.float32))):
        with pytest.raises(ValueError) as compiled:
            _standardized(bad_w, bad_dy)
        with pytest.raises(ValueError) as python:
            nn.weight_standardization(bad_w)
            nn.weight_standardization_backward(bad_dy, bad_w, 1e-3)
        assert str(compiled.value) == str(python.value)


@njit
def _bn_and_grads(dy, x, mean, var, scale):
    return (nn.batch_normalization(x, mean, var, None, scale, 1e-3),
            nn.batch_normalization_backward(dy, x, mean, var, None, scale, 1e-3))


def test_batch_normalization_scale_of_more_dimensions_than_the_variance(rng):
    """A per-element scale beside per-feature statistics: their product has more dimensions than
    the variance, which compiled code once failed to type (a variable given two array types)."""
    x = rng.normal(size=(4, 3, 5))
    dy, scale = rng.normal(size=x.shape), rng.normal(size=(3, 5))
    mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1))
    y, g = _bn_and_grads(dy, x, mean, var, scale)
    _close(y, nn.batch_normalization(x, mean, var, None, scale, 1e-3), np.float64, "y")
    g0 = nn.batch_normalization_backward(dy, x, mean, var, None, scale, 1e-3)
    for name in g0._fields:
        _close(getattr(g, name), getattr(g0, name), np.float64, name)


# -- errors ------------------------------------------------------------------------------------------

@njit
def _ln_eps(x, eps):
    return nn.layer_norm(x, x.shape[-1], eps=eps)


@njit
def _ln_shape(x, shape):
    return nn.layer_norm(x, shape)


@njit
def _gn(x, groups, ca):
    return nn.group_norm(x, groups, channel_axis=ca)


@njit
def _bn_weight(x, w):
    return nn.batch_norm(x, None, None, w, training=True)


@njit
def _bn_eval_without_running(x):
    return nn.batch_norm(x, None, None)


@njit
def _bn_cumulative_without_counter(x, rm, rv):
    return nn.batch_norm(x, rm, rv, training=True, momentum=None)


@njit
def _ln_backward_bad_dy(dy, x):
    y, st = nn.layer_norm(x, x.shape[-1], return_stats=True)
    return nn.layer_norm_backward(dy, x, st, x.shape[-1])


@njit
def _moments_axes(x, axes):
    return nn.moments(x, axes)


def test_bad_values_raise_the_python_exceptions(rng):
    x = rng.normal(size=(2, 4, 3))
    cases = [
        (lambda: _ln_eps(x, -1.0), "eps must be finite and >= 0"),
        (lambda: _ln_shape(x, (4, 4)), r"normalized_shape \(4, 4\) must be non-empty and match the trailing "
                                       r"dimensions of input of shape \(2, 4, 3\)"),
        (lambda: _gn(x, 3, 1), "num_groups must be a positive divisor of the number of channels 4, got 3"),
        (lambda: _gn(x, 2, 0), r"channel_axis must be an axis other than the batch axis 0 of an array with 3 "
                               r"dimensions \(from -2 to 2\), got 0"),
        (lambda: _bn_weight(x, np.ones(3)), r"weight must have shape \(4,\), got shape \(3,\)"),
        (lambda: _bn_weight(x[:1, :, :1], np.ones(4)), "Expected more than 1 value per channel when training"),
        (lambda: _bn_eval_without_running(x), "running_mean and running_var are required when training=False"),
        (lambda: _bn_cumulative_without_counter(x, np.zeros(4), np.ones(4)),
         "num_batches_tracked must be given when momentum is None"),
        (lambda: _ln_backward_bad_dy(np.ones((2, 4, 2)), np.ones((2, 4, 3))),
         r"grad_output must have the shape of input \(2, 4, 3\), got shape \(2, 4, 2\)"),
        (lambda: _moments_axes(x, (0, 0)), "axes must not repeat an axis"),
        (lambda: _moments_axes(x, (0, 3)), "axes must be an axis of an array with 3 dimensions"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    # the same calls from Python raise the same type with (at least) the same message
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        nn.layer_norm(x, 3, eps=-1.0)
    with pytest.raises(ValueError, match="num_groups must be a positive divisor of the number of channels 4, got 3"):
        nn.group_norm(x, 3)


@njit
def _ints(x):
    return nn.layer_norm(x, x.shape[-1])


@njit
def _runtime_flag(x, flag):
    return nn.layer_norm(x, x.shape[-1], return_stats=flag)


def test_type_errors_are_reported_at_compile_time():
    with pytest.raises(TypingError, match="input must have dtype float32 or float64"):
        _ints(np.ones((2, 3), np.int64))
    with pytest.raises(TypingError, match="return_stats must be a compile-time constant"):
        _runtime_flag(np.ones((2, 3)), True)
