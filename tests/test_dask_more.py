"""Dask twins of issue #16's functions: lazy, any chunking (reduced axes chunked too), the NumPy
results.  Runs on Dask's threaded scheduler (tests/test_dask.py covers a LocalCluster)."""

import numpy as np
import pytest

import numbanorm as nn

da = pytest.importorskip("dask.array")


@pytest.fixture
def x():
    return 3 + np.random.default_rng(21).standard_normal((6, 5, 4, 3))


def _lazy(a):
    return da.from_array(a, chunks=(4, 2, 3, 2))


def _check(lazy, eager, rtol=1e-12, atol=1e-12):
    if eager is None:
        assert lazy is None
        return
    if isinstance(eager, tuple):
        assert len(lazy) == len(eager)
        for a, b in zip(lazy, eager):
            _check(a, b, rtol, atol)
        return
    assert isinstance(lazy, da.Array), type(lazy)
    got = lazy.compute()
    assert got.shape == np.shape(eager) and got.dtype == np.asarray(eager).dtype
    np.testing.assert_allclose(got, eager, rtol=rtol, atol=atol)


@pytest.mark.parametrize("axes", [(0,), (0, 1, 2), (1, 3), (0, 1, 2, 3)])
@pytest.mark.parametrize("wshape", [(), (6, 1, 1, 1), (5, 4, 1), (6, 5, 4, 3)])
def test_weighted_moments_and_welford_on_dask(x, axes, wshape):
    w = np.random.default_rng(1).uniform(0, 2, wshape)
    for keepdims in (False, True):
        _check(nn.weighted_moments(_lazy(x), axes, w, keepdims=keepdims), nn.weighted_moments(x, axes, w, keepdims))
        lazy = nn.welford(_lazy(x), axes, keepdims, weights=w)
        eager = nn.welford(x, axes, keepdims, weights=w)
        _check(tuple(lazy), tuple(eager), rtol=1e-11)
    dw = da.from_array(np.broadcast_to(w, x.shape), chunks=3)  # Dask weights, other chunks
    _check(nn.weighted_moments(_lazy(x), axes, dw), nn.weighted_moments(x, axes, w))


def test_dask_weights_are_checked_when_computed(x):
    bad = da.from_array(-np.ones(x.shape), chunks=3)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        nn.weighted_moments(_lazy(x), 0, bad)[0].compute()
    with pytest.raises(ValueError, match="frequency_weights must be finite and >= 0"):
        nn.weighted_moments(_lazy(x), 0, -np.ones(3))


def test_sufficient_statistics_normalize_moments_and_backwards_on_dask(x):
    rng = np.random.default_rng(2)
    axes = (0, 2)
    lazy = nn.sufficient_statistics(_lazy(x), axes, shift=3.0)
    eager = nn.sufficient_statistics(x, axes, shift=3.0)
    np.testing.assert_array_equal(lazy[0], eager[0])
    _check(lazy[1:3], eager[1:3])
    _check(nn.normalize_moments(lazy[0], lazy[1], lazy[2], lazy[3]),
           nn.normalize_moments(*eager))
    gm, gv = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    _check(nn.moments_backward(gm, gv, _lazy(x), axes), nn.moments_backward(gm, gv, x, axes))
    dy = rng.standard_normal(x.shape)
    args = (np.full((5, 1, 3), 3.0), np.ones((4, 1)) * 2, None, rng.standard_normal(3), 1e-3)
    _check(tuple(nn.batch_normalization_backward(_lazy(dy), _lazy(x), *args)),
           tuple(nn.batch_normalization_backward(dy, x, *args)))


@pytest.mark.parametrize("axes,wshape,bshape", [((0, 1, 2), (3,), (3,)), ((1, 2, 3), (3,), None),
                                                 ((1, 2), (4, 3), (1, 1, 3)), ((0, 3), None, None)])
def test_normalize_and_backward_on_dask(x, axes, wshape, bshape):
    rng = np.random.default_rng(3)
    w = None if wshape is None else rng.uniform(0.5, 1.5, wshape)
    b = None if bshape is None else rng.standard_normal(bshape)
    y, st = nn.normalize(_lazy(x), axes, w, b, return_stats=True)
    y0, st0 = nn.normalize(x, axes, w, b, return_stats=True)
    _check(y, y0)
    _check(st.rstd, st0.rstd)
    dy = rng.standard_normal(x.shape)
    _check(tuple(nn.normalize_backward(_lazy(dy), _lazy(x), st, axes, w)),
           tuple(nn.normalize_backward(dy, x, st0, axes, w)), rtol=1e-10, atol=1e-11)
    with pytest.raises(TypeError, match="out is not supported for Dask arrays"):
        nn.normalize(_lazy(x), axes, out=np.empty(x.shape))
