"""`normalize` over any axes with broadcasting parameters (issue #16 C): TensorFlow's three manual
normalizations on NHWC data, agreement with the named norms, hypothesis over axis sets and
parameter shapes, finite differences, accuracy on offset data."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numbanorm as nn
from numbanorm import reference as ref

from conftest import numeric_grad


def ref_normalize_backward(dy, x, axes, w=None, b_shape=None, eps=1e-5):
    """The reference's gradients of a forward with a bias of ``b_shape`` (None: no bias)."""
    _, stats = ref.normalize(x, axes, w, None if b_shape is None else np.zeros(b_shape), eps, return_stats=True)
    return ref.normalize_backward(dy, x, stats, axes, w)


def close(actual, expected, tol, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    err = float(np.abs(actual - expected).max(initial=0))
    assert err <= tol * scale, f"{what}: max error {err:.3g}"


# -- TensorFlow's manual-backprop normalizations on NHWC data ------------------------------------

TF_CASES = {  # name: (axes, weight shape, bias shape) on (N, H, W, C)
    "batch norm": ((0, 1, 2), (4,), (4,)),
    "layer norm, per-channel scale": ((1, 2, 3), (4,), (4,)),
    "instance norm": ((1, 2), (4,), (4,)),
    "layer norm, per-element scale": ((1, 2, 3), (3, 5, 4), None),
}


@pytest.mark.parametrize("case", list(TF_CASES))
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_tensorflow_manual_normalizations_on_nhwc(case, dtype, tol):
    axes, w_shape, b_shape = TF_CASES[case]
    rng = np.random.default_rng(11)
    x = (2 + rng.standard_normal((2, 3, 5, 4))).astype(dtype)
    w = rng.uniform(0.5, 1.5, w_shape).astype(dtype)
    b = None if b_shape is None else rng.standard_normal(b_shape).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, stats = nn.normalize(x, axes, w, b, eps=1e-3, return_stats=True)
    assert y.dtype == dtype and y.shape == x.shape
    close(y, ref.normalize(x, axes, w, b, 1e-3), tol, "forward")
    # TensorFlow: tf.nn.batch_normalization(x, *tf.nn.moments(x, axes, keepdims=True), b, w, eps)
    mean, var = nn.moments(x.astype(np.float64), axes, keepdims=True)
    close(y, nn.batch_normalization(x.astype(np.float64), mean, var, b, w, 1e-3), tol, "as moments+batch_normalization")
    grads = nn.normalize_backward(dy, x, stats, axes, w)
    dx, dw, db = ref_normalize_backward(dy, x, axes, w, b_shape, 1e-3)
    assert grads.input.dtype == dtype and grads.weight.shape == w.shape
    close(grads.input, dx, tol * 10, "dx")
    close(grads.weight, dw, tol * 10, "dweight")
    if b_shape is None:
        assert grads.bias is None
    else:
        assert grads.bias.shape == b.shape
        close(grads.bias, db, tol * 10, "dbias")
    if dtype == np.float64:  # finite differences of the float64 definition
        loss = lambda what: lambda a: (dy * ref.normalize(*{"x": (a, axes, w, b), "w": (x, axes, a, b),
                                                            "b": (x, axes, w, a)}[what], eps=1e-3)).sum()
        close(grads.input, numeric_grad(loss("x"), x), 1e-6, "dx vs finite differences")
        close(grads.weight, numeric_grad(loss("w"), w), 1e-6, "dweight vs finite differences")
        if b is not None:
            close(grads.bias, numeric_grad(loss("b"), b), 1e-6, "dbias vs finite differences")
        # and the chain TensorFlow's tape takes: batch_normalization_backward, then moments_backward
        g = nn.batch_normalization_backward(dy, x, mean, var, b, w, 1e-3)
        close(grads.input, g.x + nn.moments_backward(g.mean, g.variance, x, axes), 1e-12, "tape chain")


# -- agreement with the named norms -----------------------------------------------------------------

def test_normalize_is_the_named_norms():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 6, 5, 3)).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    wc, bc = w[:, None, None], b[:, None, None]
    pairs = [
        (nn.normalize(x, (0, 2, 3), wc, bc), nn.batch_norm(x, None, None, w, b, training=True)),
        (nn.normalize(x, (2, 3), wc, bc), nn.instance_norm(x, weight=w, bias=b)),
        (nn.normalize(x, (1, 2, 3)), nn.layer_norm(x, (6, 5, 3))),
        (nn.normalize(x, -1, np.arange(3.0), 1.0), nn.layer_norm(x, 3, np.arange(3, dtype=np.float32),
                                                             np.ones(3, np.float32))),
        (nn.normalize(x.reshape(4, 2, 3, 5, 3), (2, 3, 4)).reshape(x.shape), nn.group_norm(x, 2)),
    ]
    for i, (a, e) in enumerate(pairs):
        close(a, e, 5e-6, f"pair {i}")
    y, st = nn.batch_norm(x, None, None, w, b, training=True, return_stats=True)
    yn, stn = nn.normalize(x, (0, 2, 3), wc, bc, return_stats=True)
    # batch norm of so small an input sums in float64 (the small lane), normalize in float32 chunks
    exact = x.astype(np.float64).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(st.mean, exact, rtol=1e-12)
    np.testing.assert_allclose(stn.mean.ravel(), exact, rtol=0, atol=1e-7)
    np.testing.assert_allclose(stn.rstd.ravel(), st.rstd, rtol=1e-6)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    g, gn = nn.batch_norm_backward(dy, x, st, w), nn.normalize_backward(dy, x, stn, (0, 2, 3), wc)
    close(gn.input, g.input, 5e-6, "dx")
    close(gn.weight.ravel(), g.weight, 5e-5, "dw")
    close(gn.bias.ravel(), g.bias, 5e-5, "db")


@pytest.mark.parametrize("layout", ["c", "fortran", "transposed", "negative", "strided"])
def test_normalize_any_layout(layout):
    rng = np.random.default_rng(13)
    base = rng.standard_normal((6, 8, 10))
    x = {"c": base, "fortran": np.asfortranarray(base), "transposed": base.transpose(2, 0, 1).copy().transpose(1, 2, 0),
         "negative": base[::-1, :, ::-1], "strided": rng.standard_normal((6, 16, 10))[:, ::2]}[layout]
    w = rng.standard_normal((8, 1))
    b = rng.standard_normal(10)
    dy = rng.standard_normal(x.shape)
    for axes in ((0,), (1, 2), (0, 2), (0, 1, 2)):
        y, st = nn.normalize(x, axes, w, b, return_stats=True)
        close(y, ref.normalize(x, axes, w, b), 1e-12, f"{layout} {axes}")
        g = nn.normalize_backward(dy, x, st, axes, w)
        dx, dw, db = ref_normalize_backward(dy, x, axes, w, b.shape)
        close(g.input, dx, 1e-11, f"dx {layout} {axes}")
        close(g.weight, dw, 1e-11, f"dw {layout} {axes}")
        close(g.bias, db, 1e-11, f"db {layout} {axes}")


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data())
def test_normalize_property_random_axes_and_parameter_shapes(shape, data):
    ndim = len(shape)
    axes = tuple(data.draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=ndim,
                                    unique_by=lambda a: a % ndim)))

    def param_shape():
        if not data.draw(st.booleans()):
            return None
        full = tuple(d if data.draw(st.booleans()) else 1 for d in shape)
        return full[data.draw(st.integers(0, ndim)):]

    w_shape, b_shape = param_shape(), param_shape()
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    w = None if w_shape is None else rng.uniform(0.5, 1.5, w_shape).astype(dtype)
    b = None if b_shape is None else rng.standard_normal(b_shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, st_ = nn.normalize(x, axes, w, b, eps=1e-2, return_stats=True)
    tol = 1e-12 if dtype == np.float64 else 3e-5
    close(y, ref.normalize(x, axes, w, b, 1e-2), tol, "forward")
    g = nn.normalize_backward(dy, x, st_, axes, w)
    dx, dw, db = ref_normalize_backward(dy, x, axes, w, b_shape, 1e-2)
    close(g.input, dx, tol * 10, "dx")
    if w is None:
        assert g.weight is None
    else:
        assert g.weight.shape == w.shape
        close(g.weight, dw, tol * 10, "dw")
    if b is None:
        assert g.bias is None
    else:
        assert g.bias.shape == b.shape
        close(g.bias, db, tol * 10, "db")


# -- accuracy, dtypes, out, errors ---------------------------------------------------------------

def test_normalize_on_offset_float32_is_as_accurate_as_layer_norm():
    rng = np.random.default_rng(14)
    x = (1e4 + rng.standard_normal((16, 28, 28, 32))).astype(np.float32)
    exact = ref.layer_norm(x.astype(np.longdouble), x.shape[1:])
    err_normalize = float(np.abs(nn.normalize(x, (1, 2, 3)) - exact).max())
    err_layer = float(np.abs(nn.layer_norm(x, (28, 28, 32)) - exact).max())
    assert err_normalize <= max(2 * err_layer, 2e-6), (err_normalize, err_layer)
    # a per-channel scale over the same axes keeps it
    w = rng.uniform(0.5, 1.5, 32).astype(np.float32)
    err_scaled = float(np.abs(nn.normalize(x, (1, 2, 3), w) - exact * w).max())
    assert err_scaled <= 3e-6, err_scaled


def test_normalize_float16_out_and_empty():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((4, 6)).astype(np.float16)
    y = nn.normalize(x, 1)
    assert y.dtype == np.float16
    close(y, ref.normalize(x, 1), 2e-3)
    out = np.empty((4, 6), np.float64)
    x64 = x.astype(np.float64)
    assert nn.normalize(x64, 0, out=out) is out
    close(out, ref.normalize(x64, 0), 1e-13)
    y, st = nn.normalize(np.ones((0, 3)), 1, np.ones(3), np.zeros(3), return_stats=True)
    assert y.shape == (0, 3)
    g = nn.normalize_backward(np.ones((0, 3)), np.ones((0, 3)), st, 1, np.ones(3))
    assert g.input.shape == (0, 3) and np.all(g.weight == 0) and np.all(g.bias == 0)


@pytest.mark.parametrize("call,exc,words", [
    (lambda x: nn.normalize(x, 0, np.ones(3)), ValueError, ["weight", "broadcast", "(4, 5)", "(3,)"]),
    (lambda x: nn.normalize(x, 0, None, np.ones((2, 4, 5))), ValueError, ["bias", "broadcast"]),
    (lambda x: nn.normalize(x, 2), ValueError, ["axes"]),
    (lambda x: nn.normalize(x, (0, 0)), ValueError, ["axes", "repeat"]),
    (lambda x: nn.normalize(np.ones((4, 0)), 1), ValueError, ["axes", "length 0"]),
    (lambda x: nn.normalize(x.astype(int), 0), TypeError, ["x", "dtype"]),
    (lambda x: nn.normalize(x, 0, eps=-1.0), ValueError, ["eps"]),
    (lambda x: nn.normalize(x, 0, out=np.empty((4, 5), np.float32)), TypeError, ["out", "dtype"]),
    (lambda x: nn.normalize_backward(x, x, nn.normalize(x, 1, return_stats=True)[1], 0), ValueError,
     ["stats.mean", "(1, 5)", "(4, 1)"]),
    (lambda x: nn.normalize_backward(x, x, (1, 2), 0), TypeError, ["stats", "NormalizeStats"]),
    (lambda x: nn.normalize_backward(x[:2], x, nn.normalize(x, 0, return_stats=True)[1], 0), ValueError,
     ["grad_output", "shape"]),
])
def test_normalize_bad_arguments_are_refused_clearly(call, exc, words):
    x = np.random.default_rng(0).standard_normal((4, 5))
    before = x.copy()
    with pytest.raises(exc) as info:
        call(x)
    for word in words:
        assert word in str(info.value), str(info.value)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("axes", [(0, 2), (1, 2, 3)])
def test_normalize_on_cuda_arrays_equals_the_cpu(axes):
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda (the cuda extra) is not installed")
    rng = np.random.default_rng(11)
    x, dy = rng.normal(2.0, 3.0, (3, 4, 5, 6)), rng.normal(size=(3, 4, 5, 6))
    w, b = rng.normal(size=(1, 4, 1, 6)), rng.normal(size=(4, 1, 1))
    y, stats = nn.normalize(x, axes, w, b, return_stats=True)
    grads = nn.normalize_backward(dy, x, stats, axes, w)
    X, DY, W, B = (cuda.to_device(a) for a in (x, dy, w, b))
    y_dev, stats_dev = nn.normalize(X, axes, W, B, return_stats=True)
    np.testing.assert_allclose(y_dev.copy_to_host(), y, atol=1e-12)
    for got, expected in zip(nn.normalize_backward(DY, X, stats_dev, axes, W), grads):
        np.testing.assert_allclose(got.copy_to_host(), expected, atol=1e-11)
