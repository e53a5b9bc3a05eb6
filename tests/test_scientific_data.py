"""Data as scientists have it (issue #16 A): big-endian arrays, ndarray subclasses, masked arrays,
degenerate rows, and the Keras/Flax/ONNX running-variance convention."""

import warnings

import numpy as np
import pytest

import numbanorm as nn


def _calls(x4, x2, dtype):
    """(name, fn(conv)) for every public function: ``conv`` is applied to every array argument."""
    c = x4.shape[1]
    w, b = np.linspace(0.5, 1.5, c).astype(dtype), np.linspace(-1, 1, c).astype(dtype)
    w2, b2 = np.linspace(0.5, 1.5, x2.shape[1]).astype(dtype), np.linspace(-1, 1, x2.shape[1]).astype(dtype)
    logits = np.array([0.1, -0.2, 0.3], dtype)
    dy4 = np.cos(np.arange(x4.size)).reshape(x4.shape).astype(dtype)
    dy2 = np.cos(np.arange(x2.size)).reshape(x2.shape).astype(dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)

    def bn_bwd(v):
        _, st = nn.batch_norm(v(x4), None, None, v(w), v(b), training=True, return_stats=True)
        return nn.batch_norm_backward(v(dy4), v(x4), st, v(w))

    def in_bwd(v):
        _, st = nn.instance_norm(v(x4), weight=v(w), bias=v(b), return_stats=True)
        return nn.instance_norm_backward(v(dy4), v(x4), st, v(w))

    def gn_bwd(v):
        _, st = nn.group_norm(v(x4), 2, v(w), v(b), return_stats=True)
        return nn.group_norm_backward(v(dy4), v(x4), st, 2, v(w))

    def ln_bwd(v):
        _, st = nn.layer_norm(v(x2), x2.shape[1:], v(w2), v(b2), return_stats=True)
        return nn.layer_norm_backward(v(dy2), v(x2), st, x2.shape[1:], v(w2))

    def rms_bwd(v):
        _, st = nn.rms_norm(v(x2), x2.shape[1:], v(w2), return_stats=True)
        return nn.rms_norm_backward(v(dy2), v(x2), st, x2.shape[1:], v(w2))

    def sn_bwd(v):
        _, st = nn.switchable_norm(v(x4), v(logits), v(logits[::-1]), None, None, v(w), v(b), training=True,
                                   return_stats=True)
        return nn.switchable_norm_backward(v(dy4), v(x4), st, v(logits), v(logits[::-1]), v(w))

    def bn_running(v):
        m, s = v(rm.copy()), v(rv.copy())
        y = nn.batch_norm(v(x4), m, s, v(w), v(b), training=True)
        return y, m.astype(np.float64), s.astype(np.float64)  # updated in their own byte order

    return [
        ("moments", lambda v: nn.moments(v(x4), (0, 2, 3))),
        ("welford", lambda v: nn.welford(v(x4), (1, 3))),
        ("batch_normalization", lambda v: nn.batch_normalization(v(x4), v(rm[:, None, None]), v(rv[:, None, None]),
                                                                 v(b[:, None, None]), v(w[:, None, None]), 1e-3)),
        ("batch_norm", lambda v: nn.batch_norm(v(x4), None, None, v(w), v(b), training=True)),
        ("batch_norm running", bn_running),
        ("batch_norm eval", lambda v: nn.batch_norm(v(x4), v(rm), v(rv), v(w), v(b))),
        ("instance_norm", lambda v: nn.instance_norm(v(x4), weight=v(w), bias=v(b))),
        ("group_norm", lambda v: nn.group_norm(v(x4), 2, v(w), v(b))),
        ("group_norm nhwc", lambda v: nn.group_norm(v(x4.transpose(0, 2, 3, 1)), 2, v(w), v(b), channel_axis=-1)),
        ("layer_norm", lambda v: nn.layer_norm(v(x2), x2.shape[1:], v(w2), v(b2))),
        ("rms_norm", lambda v: nn.rms_norm(v(x2), x2.shape[1:], v(w2))),
        ("switchable_norm", lambda v: nn.switchable_norm(v(x4), v(logits), v(logits), None, None, v(w), v(b),
                                                         training=True)),
        ("batch_norm_backward", bn_bwd),
        ("instance_norm_backward", in_bwd),
        ("group_norm_backward", gn_bwd),
        ("layer_norm_backward", ln_bwd),
        ("rms_norm_backward", rms_bwd),
        ("switchable_norm_backward", sn_bwd),
        ("BatchNorm layer", lambda v: _layer(nn.BatchNorm(c, dtype=dtype), v(x4), v(dy4))),
        ("LayerNorm layer", lambda v: _layer(nn.LayerNorm(x2.shape[1:], dtype=dtype), v(x2), v(dy2))),
    ]


def _layer(layer, x, dy):
    return layer(x), layer.backward(dy), layer.grads


def _flat(result):
    """Every array in a (nested) result, as float64."""
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in _flat(r)]
    if isinstance(result, dict):
        return [a for k in sorted(result) for a in _flat(result[k])]
    if result is None or isinstance(result, (bool, float)):
        return []
    return [np.asarray(result)]


def _same(actual, expected, what):
    a, e = _flat(actual), _flat(expected)
    assert len(a) == len(e), what
    for u, v in zip(a, e):
        assert u.shape == v.shape, what
        assert u.dtype.isnative, f"{what}: a result in non-native byte order"
        np.testing.assert_array_equal(u.astype(np.float64), v.astype(np.float64), err_msg=what)


def _data(dtype):
    rng = np.random.default_rng(16)
    return rng.standard_normal((3, 4, 5, 6)).astype(dtype), (3 + rng.standard_normal((7, 12))).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_big_endian_arrays_give_the_native_results_on_every_public_function(dtype):
    x4, x2 = _data(dtype)
    big = lambda a: a.astype(np.dtype(dtype).newbyteorder(">"))
    for name, call in _calls(x4, x2, dtype):
        _same(call(big), call(lambda a: a), name)


def test_big_endian_out_and_running_stats_are_written_in_their_own_byte_order():
    x4, x2 = _data(np.float32)
    out = np.empty(x2.shape, ">f4")
    y = nn.layer_norm(x2.astype(">f4"), 12, out=out)
    assert y is out and out.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(out, nn.layer_norm(x2, 12))
    rm, rv = np.zeros(4, ">f8"), np.ones(4, ">f8")
    nn.batch_norm(x4, rm, rv, training=True)
    rm0, rv0 = np.zeros(4), np.ones(4)
    nn.batch_norm(x4, rm0, rv0, training=True)
    assert rm.dtype == np.dtype(">f8")
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_ndarray_subclasses_are_read_as_plain_arrays(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 5))
    mm = np.memmap(tmp_path / "x.dat", dtype=np.float64, mode="w+", shape=x.shape)
    mm[...] = x
    for sub in (np.asmatrix(x), mm):
        for got, want in zip(nn.moments(sub, 0), nn.moments(x, 0)):
            assert type(got) is np.ndarray
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(nn.layer_norm(sub, 5), nn.layer_norm(x, 5))
        np.testing.assert_array_equal(nn.batch_norm(sub, None, None, training=True),
                                      nn.batch_norm(x, None, None, training=True))


# -- masked arrays: refused on every path, naming the argument, nothing written --------------------

def _masked(a):
    return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))


@pytest.mark.parametrize("ndim", [2, 4])
@pytest.mark.parametrize("channel_axis", [1, -1])
def test_masked_arrays_are_refused_naming_the_argument(ndim, channel_axis):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3) if ndim == 2 else (4, 3, 5, 5))
    if ndim == 4 and channel_axis == -1:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    c = x.shape[channel_axis]
    w, b, rm, rv = np.ones(c), np.zeros(c), np.zeros(c), np.ones(c)
    dy = np.ones_like(x)
    ca = dict(channel_axis=channel_axis)
    _, st = nn.batch_norm(x, None, None, w, b, training=True, return_stats=True, **ca)
    _, lst = nn.layer_norm(x, x.shape[-1], return_stats=True)
    m = _masked
    cases = [
        ("input", lambda: nn.batch_norm(m(x), rm, rv, w, b, training=True, **ca)),
        ("weight", lambda: nn.batch_norm(x, rm, rv, m(w), b, training=True, **ca)),
        ("bias", lambda: nn.batch_norm(x, rm, rv, w, m(b), training=True, **ca)),
        ("running_var", lambda: nn.batch_norm(x, rm, m(rv), w, b, training=True, **ca)),
        ("running_mean", lambda: nn.batch_norm(x, m(rm), rv, w, b, training=False, **ca)),
        ("out", lambda: nn.batch_norm(x, rm, rv, w, b, training=True, out=m(np.empty_like(x)), **ca)),
        ("grad_output", lambda: nn.batch_norm_backward(m(dy), x, st, w, **ca)),
        ("input", lambda: nn.batch_norm_backward(dy, m(x), st, w, **ca)),
        ("input", lambda: nn.instance_norm(m(x), rm, rv, **ca)) if ndim == 4 else None,
        ("input", lambda: nn.group_norm(m(x), 1, w, b, **ca)),
        ("input", lambda: nn.switchable_norm(m(x), np.ones(3), np.ones(3), rm, rv, training=True, **ca)),
        ("mean_weight", lambda: nn.switchable_norm(x, m(np.ones(3)), np.ones(3), rm, rv, training=True, **ca)),
        ("input", lambda: nn.layer_norm(m(x), x.shape[-1])),
        ("weight", lambda: nn.layer_norm(x, x.shape[-1], m(np.ones(x.shape[-1])))),
        ("input", lambda: nn.rms_norm(m(x), x.shape[-1])),
        ("grad_output", lambda: nn.layer_norm_backward(m(dy), x, lst, x.shape[-1])),
        ("x", lambda: nn.moments(m(x), 0)),
        ("x", lambda: nn.welford(m(x), 0)),
        ("x", lambda: nn.batch_normalization(m(x), 0.0, 1.0, None, None, 1e-3)),
        ("variance", lambda: nn.batch_normalization(x, 0.0, m(np.ones(x.shape[-1])), None, None, 1e-3)),
    ]
    before = [a.copy() for a in (x, rm, rv, w, b)]
    for name, call in filter(None, cases):
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert message.startswith(name + " ") and "masked array" in message, message
    for a, a0 in zip((x, rm, rv, w, b), before):
        np.testing.assert_array_equal(a, a0)


def test_masked_arrays_are_refused_even_when_nothing_is_masked_or_everything_is():
    for mask in (False, True):
        with pytest.raises(TypeError, match="x must be a plain array, got a masked array"):
            nn.moments(np.ma.masked_array(np.ones((3, 4)), mask=mask), 1)


def test_masked_dask_arrays_are_refused_up_front():
    da = pytest.importorskip("dask.array")
    x = da.ma.masked_less(da.from_array(np.arange(12.0).reshape(3, 4), chunks=2), 3)
    with pytest.raises(TypeError, match="input must be a plain array, got a masked array"):
        nn.layer_norm(x, 4)
    with pytest.raises(TypeError, match="x must be a plain array, got a masked array"):
        nn.moments(x, 0)


# -- degenerate rows -----------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [nn.layer_norm, nn.rms_norm])
def test_empty_normalized_axes_are_a_value_error_naming_normalized_shape(fn):
    for shape, normalized in (((3, 0), (0,)), ((2, 3, 0), (3, 0)), ((2, 0, 4), (0, 4))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=r"normalized_shape .* must not contain 0"):
                fn(np.ones(shape, np.float32), normalized)


@pytest.mark.parametrize("rows", [3, 400, 40_000])  # the engine, the small lane, the parallel row kernel
@pytest.mark.parametrize("layout", ["c", "transposed"])
def test_constant_rows_with_eps_zero_give_nan_and_infinite_rstd_without_warnings(rows, layout):
    x = np.full((rows, 8), 2.5, np.float32)
    x[0] = np.arange(8)  # a row that is not constant stays finite
    if layout == "transposed":
        x = np.asfortranarray(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, stats = nn.layer_norm(x, 8, np.ones(8, np.float32), np.zeros(8, np.float32), eps=0.0, return_stats=True)
        y_rms = nn.rms_norm(np.zeros_like(x), 8, eps=0.0)
        y_bn = nn.batch_norm(np.ones((4, 3, 2)), None, None, training=True, eps=0.0)
        y_gn = nn.group_norm(np.ones((4, 3, 2)), 3, eps=0.0)
    assert np.isnan(y[1:]).all() and np.isfinite(y[0]).all()
    assert np.isinf(stats.rstd[1:]).all() and np.isfinite(stats.rstd[0])
    assert np.isnan(y_rms).all() and np.isnan(y_bn).all() and np.isnan(y_gn).all()


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_constant_groups_with_eps_zero_give_nan_in_the_parallel_kernels(channel_axis):
    """Large enough for the parallel kernels (fused rows and slabs, the planned moments and affine):
    eps = 0 on a constant group divides by zero there, which must give NaN as in NumPy, not a
    ZeroDivisionError out of a parallel region."""
    x = np.full((8, 16, 32, 32), 2.5, np.float32)
    x = np.moveaxis(x, 1, -1).copy() if channel_axis == -1 else x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs = [nn.group_norm(x, 4, eps=0.0, channel_axis=channel_axis),
                nn.instance_norm(x, eps=0.0, channel_axis=channel_axis),
                nn.batch_norm(x, None, None, training=True, eps=0.0, channel_axis=channel_axis)]
    for y in outs:
        assert y.shape == x.shape and np.isnan(y).all()


def test_every_cpu_kernel_names_its_error_model():
    """A Numba function that leaves its error model unset inherits its first caller's, and keeps
    that compilation: the same kernel would raise or give NaN, and test every division or not,
    depending on which call compiled it first."""
    from numba.core.registry import CPUDispatcher

    from numbanorm import _cpu, _serial

    kernels = {f"{m.__name__}.{name}": f for m in (_cpu, _serial) for name, f in vars(m).items()
               if isinstance(f, CPUDispatcher) and f.__module__ == m.__name__}
    assert len(kernels) > 40
    unset = sorted(name for name, f in kernels.items() if f.targetoptions.get("error_model") != "numpy")
    assert unset == []


# -- running variance: PyTorch's unbiased or Keras/Flax/ONNX's biased ----------------------------

def _keras_update(moving_mean, moving_var, x, axes, m):
    """Keras BatchNormalization's documented update: ``moving = moving*m + batch*(1 - m)`` with
    the biased batch variance (Flax and ONNX store the same)."""
    mean = x.mean(axis=axes, dtype=np.float64)
    var = x.var(axis=axes, dtype=np.float64)
    return moving_mean * m + mean * (1 - m), moving_var * m + var * (1 - m)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_running_var_unbiased_false_follows_keras(channel_axis):
    rng = np.random.default_rng(5)
    m = 0.99
    mm, mv = np.zeros(4), np.ones(4)
    rm, rv = np.zeros(4), np.ones(4)
    for step in range(3):
        x = 2.0 + rng.standard_normal((8, 4, 3, 3) if channel_axis == 1 else (8, 3, 3, 4))
        axes = tuple(i for i in range(4) if i != channel_axis % 4)
        mm, mv = _keras_update(mm, mv, x, axes, m)
        nn.batch_norm(x, rm, rv, training=True, momentum=1 - m, channel_axis=channel_axis,
                      running_var_unbiased=False)
    np.testing.assert_allclose(rm, mm, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(rv, mv, rtol=1e-14)


def test_running_var_unbiased_on_every_tracked_op_and_layer():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3, 4, 2))
    n_bn, n_in = x.size // 3, 8
    var_bn = x.var(axis=(0, 2, 3))
    var_in = x.var(axis=(2, 3)).mean(axis=0)
    for unbiased in (True, False):
        for run, var, n in (
            (lambda rm, rv: nn.batch_norm(x, rm, rv, training=True, momentum=1.0, running_var_unbiased=unbiased),
             var_bn, n_bn),
            (lambda rm, rv: nn.instance_norm(x, rm, rv, momentum=1.0, running_var_unbiased=unbiased), var_in, n_in),
            (lambda rm, rv: nn.switchable_norm(x, np.ones(3), np.ones(3), rm, rv, training=True, momentum=1.0,
                                               running_var_unbiased=unbiased), var_bn, n_bn),
        ):
            rm, rv = np.zeros(3), np.ones(3)
            run(rm, rv)
            np.testing.assert_allclose(rv, var * (n / (n - 1) if unbiased else 1), rtol=1e-13)
        for layer, var, n in ((nn.BatchNorm(3, momentum=1.0, dtype=np.float64, running_var_unbiased=unbiased),
                               var_bn, n_bn),
                              (nn.InstanceNorm(3, momentum=1.0, track_running_stats=True, dtype=np.float64,
                                               running_var_unbiased=unbiased), var_in, n_in),
                              (nn.SwitchableNorm(3, momentum=1.0, dtype=np.float64, running_var_unbiased=unbiased),
                               var_bn, n_bn)):
            layer(x)
            np.testing.assert_allclose(layer.buffers["running_var"], var * (n / (n - 1) if unbiased else 1),
                                       rtol=1e-13)


def test_running_var_unbiased_must_be_a_bool_and_nothing_is_written_otherwise():
    x = np.random.default_rng(0).standard_normal((4, 3, 2))
    rm, rv = np.zeros(3), np.ones(3)
    for fn in (lambda **k: nn.batch_norm(x, rm, rv, training=True, **k),
               lambda **k: nn.instance_norm(x, rm, rv, **k),
               lambda **k: nn.switchable_norm(x, np.ones(3), np.ones(3), rm, rv, training=True, **k)):
        with pytest.raises(TypeError, match="running_var_unbiased must be True or False, got str 'no'"):
            fn(running_var_unbiased="no")
    assert np.all(rm == 0) and np.all(rv == 1)


def test_running_var_unbiased_on_dask():
    da = pytest.importorskip("dask.array")
    x = np.random.default_rng(7).standard_normal((6, 3, 4))
    for unbiased in (True, False):
        for fn in (lambda a, rm, rv: nn.batch_norm(a, rm, rv, training=True, running_var_unbiased=unbiased),
                   lambda a, rm, rv: nn.instance_norm(a, rm, rv, running_var_unbiased=unbiased)):
            rm, rv = np.zeros(3), np.ones(3)
            rm0, rv0 = np.zeros(3), np.ones(3)
            fn(da.from_array(x, chunks=(2, 3, 4)), rm, rv)
            fn(x, rm0, rv0)
            np.testing.assert_allclose(rv, rv0, rtol=1e-13)
            np.testing.assert_allclose(rm, rm0, rtol=1e-13, atol=1e-15)
