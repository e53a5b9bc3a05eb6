"""nan_policy="omit" (issue #16 D): statistics of the values present, NaN kept in the output, an
all-NaN group giving NaN statistics, and a backward over the present values."""

import warnings

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import reference


@pytest.fixture
def x():
    rng = np.random.default_rng(31)
    a = 5 + rng.standard_normal((4, 6, 5))
    a[rng.uniform(size=a.shape) < 0.2] = np.nan
    a[2, 3, :] = np.nan  # a whole group along the last axis
    return a


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("axes", [(2,), (0, 2), (1,), (0, 1, 2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_moments_omit_is_nanmean_nanvar(x, axes, dtype):
    x = x.astype(dtype)
    mean, var = _quiet(nn.moments, x, axes, nan_policy="omit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rmean, rvar = np.nanmean(x.astype(np.float64), axis=axes), np.nanvar(x.astype(np.float64), axis=axes)
    assert mean.dtype == dtype
    np.testing.assert_allclose(mean, rmean, rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(var, rvar, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert np.array_equal(np.isnan(mean), np.isnan(rmean))
    propagated = nn.moments(x, axes)[0]
    assert np.array_equal(np.isnan(propagated), np.isnan(x).any(axis=axes))


def test_welford_omit_counts_the_values_present_and_merges(x):
    state = _quiet(nn.welford, x, 2, nan_policy="omit")
    np.testing.assert_array_equal(state.count, (~np.isnan(x)).sum(axis=2))
    assert state.count[2, 3] == 0 and state.mean[2, 3] == 0 and state.m2[2, 3] == 0  # merges as nothing
    merged = nn.merge(nn.welford(x[..., :2], 2, nan_policy="omit"), nn.welford(x[..., 2:], 2, nan_policy="omit"))
    for a, b in zip(merged, state):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    weighted = nn.welford(x, 2, weights=np.arange(5.0), nan_policy="omit")
    assert np.all(weighted.count <= 10)


def test_weighted_moments_omit(x):
    w = np.random.default_rng(2).uniform(0.5, 2, (1, 6, 5))
    mean, var = _quiet(nn.weighted_moments, x, (0, 2), w, nan_policy="omit")
    present = ~np.isnan(x)
    wb = np.where(present, np.broadcast_to(w, x.shape), 0)
    xf = np.where(present, x, 0)
    rmean = (wb * xf).sum(axis=(0, 2)) / wb.sum(axis=(0, 2))
    rvar = (wb * (xf - rmean[:, None]) ** 2).sum(axis=(0, 2)) / wb.sum(axis=(0, 2))
    np.testing.assert_allclose(mean, rmean, rtol=1e-13)
    np.testing.assert_allclose(var, rvar, rtol=1e-12)
    mean, var = nn.weighted_moments(x, 2, 1.0, nan_policy="omit")
    assert np.isnan(mean[2, 3]) and np.isnan(var[2, 3]) and np.isfinite(mean[0, 0])


def test_bad_nan_policy_is_refused():
    for fn in (lambda p: nn.moments(np.ones(3), 0, nan_policy=p), lambda p: nn.welford(np.ones(3), 0, nan_policy=p),
               lambda p: nn.weighted_moments(np.ones(3), 0, 1.0, nan_policy=p),
               lambda p: nn.normalize(np.ones(3), 0, nan_policy=p)):
        with pytest.raises(ValueError, match="nan_policy must be 'propagate' or 'omit', got str 'raise'"):
            fn("raise")


@pytest.mark.parametrize("axes", [(2,), (0, 2), (1, 2)])
def test_normalize_omit_forward_and_backward(x, axes):
    rng = np.random.default_rng(3)
    w, b = rng.uniform(0.5, 1.5, (6, 1)), rng.standard_normal(5)
    eps = 1e-3
    y, st = _quiet(nn.normalize, x, axes, w, b, eps, return_stats=True, nan_policy="omit")
    expected = reference.normalize(x, axes, w, b, eps, nan_policy="omit")
    assert np.array_equal(np.isnan(y), np.isnan(expected)) and np.array_equal(np.isnan(y), np.isnan(x))
    np.testing.assert_allclose(y[~np.isnan(y)], expected[~np.isnan(expected)], rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    g = _quiet(nn.normalize_backward, dy, x, st, axes, w)
    assert np.all(g.input[np.isnan(x)] == 0)
    present = ~np.isnan(x)

    def loss(a, what):  # the loss over the outputs that are numbers, as a function of the present values
        xs, ws, bs = (a, w, b) if what == "x" else (x, a, b) if what == "w" else (x, w, a)
        out = reference.normalize(xs, axes, ws, bs, eps, nan_policy="omit")
        return np.where(present, dy * out, 0).sum()

    h = 1e-6
    for what, value, grad in (("x", x, g.input), ("w", w, g.weight), ("b", b, g.bias)):
        num = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            if what == "x" and not present[i]:
                continue
            up, down = value.copy(), value.copy()
            up[i] += h
            down[i] -= h
            num[i] = (loss(up, what) - loss(down, what)) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-6, err_msg=what)


def test_normalize_omit_all_nan_group_has_nan_statistics(x):
    y, st = _quiet(nn.normalize, x, 2, return_stats=True, nan_policy="omit")
    assert np.isnan(st.mean[2, 3, 0]) and np.isnan(st.rstd[2, 3, 0]) and np.isnan(y[2, 3]).all()
    assert np.isfinite(st.rstd[0, 0, 0])


def test_nan_policy_on_dask(x):
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(x, chunks=(3, 4, 2))
    for got, want in zip(nn.moments(lazy, (0, 2), nan_policy="omit"), nn.moments(x, (0, 2), nan_policy="omit")):
        np.testing.assert_allclose(got.compute(), want, rtol=1e-12)
    for got, want in zip(nn.welford(lazy, 2, nan_policy="omit"), nn.welford(x, 2, nan_policy="omit")):
        np.testing.assert_allclose(got.compute(), want, rtol=1e-12, atol=1e-12)
    for got, want in zip(nn.weighted_moments(lazy, 2, 2.0, nan_policy="omit"),
                         nn.weighted_moments(x, 2, 2.0, nan_policy="omit")):
        np.testing.assert_allclose(got.compute(), want, rtol=1e-12)
    y, st = nn.normalize(lazy, 2, return_stats=True, nan_policy="omit")
    np.testing.assert_allclose(y.compute(), nn.normalize(x, 2, nan_policy="omit"), rtol=1e-12)
    with pytest.raises(NotImplementedError, match="nan_policy='omit'"):
        nn.normalize_backward(lazy, lazy, st, 2)
