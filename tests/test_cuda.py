"""The CUDA backend against the CPU results: every op, forward and backward, running statistics,
both layouts, float32 and float64.  In CI this runs under Numba's CUDA simulator on small shapes;
with NUMBANORM_TEST_GPU=1 on a real GPU."""

import numpy as np
import pytest

import numbanorm as nn

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda (the cuda extra) is not installed")
if not cuda.is_available():
    pytest.skip("no CUDA device and no simulator", allow_module_level=True)

TOL = {np.float64: 1e-12, np.float32: 2e-5}


def _dev(*arrays):
    return [cuda.to_device(np.ascontiguousarray(a)) for a in arrays]


def _host(a):
    return None if a is None else a.copy_to_host()


def _same(device, host, dtype, what):
    scale = max(1.0, np.abs(host).max())
    err = np.abs(_host(device).astype(np.float64) - host).max()
    assert err <= TOL[dtype] * scale * 10, f"{what}: {err}"


CASES = ["batch", "batch-eval", "instance", "group", "switchable", "layer", "rms"]


def _run(op, x, dy, w, b, rm, rv, ca):
    """(forward, grads) of ``op`` with whatever arrays are given (all host or all device)."""
    if op == "batch":
        y, st = nn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, channel_axis=ca, return_stats=True)
        return y, nn.batch_norm_backward(dy, x, st, w, channel_axis=ca)
    if op == "batch-eval":
        y, st = nn.batch_norm(x, rm, rv, w, b, training=False, channel_axis=ca, return_stats=True)
        return y, nn.batch_norm_backward(dy, x, st, w, channel_axis=ca)
    if op == "instance":
        y, st = nn.instance_norm(x, rm, rv, w, b, channel_axis=ca, return_stats=True)
        return y, nn.instance_norm_backward(dy, x, st, w, channel_axis=ca)
    if op == "group":
        y, st = nn.group_norm(x, 2, w, b, channel_axis=ca, return_stats=True)
        return y, nn.group_norm_backward(dy, x, st, 2, w, channel_axis=ca)
    if op == "switchable":
        logits = nn_logits(x)
        y, st = nn.switchable_norm(x, logits, logits, rm, rv, w, b, training=True, channel_axis=ca, return_stats=True)
        return y, nn.switchable_norm_backward(dy, x, st, logits, logits, w, channel_axis=ca)
    shape = x.shape[-2:]
    lw = _like(x, np.linspace(0.5, 1.5, int(np.prod(shape))).reshape(shape))
    if op == "layer":
        y, st = nn.layer_norm(x, shape, lw, lw, return_stats=True)
        return y, nn.layer_norm_backward(dy, x, st, shape, lw)
    y, st = nn.rms_norm(x, shape, lw, return_stats=True)
    return y, nn.rms_norm_backward(dy, x, st, shape, lw)


def _like(x, host):
    host = host.astype(x.dtype)
    return host if isinstance(x, np.ndarray) else cuda.to_device(host)


def nn_logits(x):
    return _like(x, np.array([0.3, -0.2, 0.1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ca", [1, -1])
@pytest.mark.parametrize("op", CASES)
def test_cuda_matches_cpu(op, ca, dtype):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 4, 5, 3)) * 2 + 1).astype(dtype)
    if ca == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    dy = rng.normal(size=x.shape).astype(dtype)
    w, b = rng.normal(size=4).astype(dtype), rng.normal(size=4).astype(dtype)
    rm, rv = rng.normal(size=4).astype(dtype), rng.uniform(0.5, 2, 4).astype(dtype)
    rm_d, rv_d = _dev(rm, rv)
    y_ref, g_ref = _run(op, x, dy, w, b, rm, rv, ca)
    y, g = _run(op, *_dev(x, dy, w, b), rm_d, rv_d, ca)
    _same(y, y_ref, dtype, "forward")
    for field in g_ref._fields:
        if getattr(g_ref, field) is None:
            assert getattr(g, field) is None, field
        else:
            _same(getattr(g, field), np.asarray(getattr(g_ref, field), np.float64), dtype, field)
    _same(rm_d, rm.astype(np.float64), dtype, "running_mean")  # updated in place on the device
    _same(rv_d, rv.astype(np.float64), dtype, "running_var")


def test_cuda_statistics_and_batch_normalization():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 6)) + 5
    (X,) = _dev(x)
    m, v = nn.moments(X, (0, 2))
    _same(m, x.mean((0, 2)), np.float64, "mean")
    _same(v, x.var((0, 2)), np.float64, "var")
    state = nn.welford(X, (0, 2))
    _same(state.m2, x.var((0, 2)) * 24, np.float64, "m2")
    mean, var = _dev(x.mean((0, 2))[:, None], x.var((0, 2))[:, None])
    y = nn.batch_normalization(X, mean, var, None, None, 1e-3)
    _same(y, (x - x.mean((0, 2))[:, None]) / np.sqrt(x.var((0, 2))[:, None] + 1e-3), np.float64, "bn")


def test_cuda_out_argument_is_written_in_place():
    x = np.random.default_rng(2).normal(size=(4, 6)).astype(np.float32)
    X, OUT = _dev(x, np.zeros_like(x))
    y = nn.layer_norm(X, 6, out=OUT)
    assert y is OUT
    _same(OUT, nn.layer_norm(x, 6).astype(np.float64), np.float32, "out")


def test_cuda_argument_rules():
    x = np.random.default_rng(3).normal(size=(2, 4, 3))
    X, W = _dev(x, np.ones(4))
    with pytest.raises(TypeError, match="weight is a host array"):
        nn.batch_norm(X, None, None, np.ones(4), training=True)
    with pytest.raises(TypeError, match="weight is a cuda array but input is a NumPy array"):
        nn.group_norm(x, 2, W)
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        nn.layer_norm(cuda.to_device(x.astype(np.int32)), 3)
    strided = cuda.to_device(np.ascontiguousarray(np.repeat(x, 2, axis=-1)))[:, :, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        nn.layer_norm(strided, 3)


@pytest.mark.parametrize("ca", [1, -1])
@pytest.mark.parametrize("op", CASES)
def test_cuda_float16_matches_the_cpu_float16(op, ca):
    """Half-precision data computes in float32 (float64 accumulations) on both devices and is
    rounded to float16 on the store: the results agree to float16's rounding, dtypes included."""
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(3, 4, 5, 3)) * 2 + 1).astype(np.float16)
    if ca == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    dy = rng.normal(size=x.shape).astype(np.float16)
    w, b = rng.normal(size=4).astype(np.float16), rng.normal(size=4).astype(np.float16)
    rm, rv = rng.normal(size=4).astype(np.float16), rng.uniform(0.5, 2, 4).astype(np.float16)
    rm_d, rv_d = _dev(rm, rv)
    y_ref, g_ref = _run(op, x, dy, w, b, rm, rv, ca)
    y, g = _run(op, *_dev(x, dy, w, b), rm_d, rv_d, ca)
    assert _host(y).dtype == y_ref.dtype == np.float16
    np.testing.assert_allclose(_host(y).astype(np.float64), y_ref, rtol=2e-3, atol=2e-3)
    for field in g_ref._fields:
        want = getattr(g_ref, field)
        if want is None:
            assert getattr(g, field) is None, field
            continue
        got = _host(getattr(g, field))
        assert got.dtype == np.asarray(want).dtype, field
        scale = max(1.0, float(np.abs(np.asarray(want, np.float64)).max()))
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=0, atol=3e-3 * scale, err_msg=field)
    np.testing.assert_allclose(_host(rm_d).astype(np.float64), rm, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(_host(rv_d).astype(np.float64), rv, rtol=2e-3, atol=2e-3)


def test_cuda_float16_statistics_match_the_cpu():
    x = (np.random.default_rng(5).normal(size=(4, 3, 6)) + 5).astype(np.float16)
    (X,) = _dev(x)
    for axes in [(0, 2), (1,), (0, 1, 2)]:
        for got, want in zip(nn.moments(X, axes), nn.moments(x, axes)):
            assert _host(got).dtype == want.dtype == np.float16
            np.testing.assert_allclose(_host(got).astype(np.float64), want, rtol=2e-3, atol=2e-3)
    y, st = nn.normalize(X, (0, 2), return_stats=True)
    y_ref, st_ref = nn.normalize(x, (0, 2), return_stats=True)
    assert _host(y).dtype == np.float16
    np.testing.assert_allclose(_host(y).astype(np.float64), y_ref, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(_host(st.rstd), st_ref.rstd, rtol=1e-6)
