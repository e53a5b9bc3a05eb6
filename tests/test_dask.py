"""Dask arrays on a real distributed.LocalCluster (worker processes): uneven chunks, chunks along
the reduced axes; results equal the in-memory path."""

import numpy as np
import pytest

import numbanorm as nn

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import dask  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture
def arrays(rng):
    x = rng.normal(size=(7, 6, 10, 9)) * 2 + 5
    dy = rng.normal(size=x.shape)
    # uneven chunks, split along every axis, the reduced ones included
    return x, dy, da.from_array(x, chunks=((3, 4), (2, 4), (3, 7), (5, 4))), da.from_array(dy, chunks=(2, 3, 5, 9))


def _close(lazy, eager, tol=1e-12):
    got = np.asarray(dask.compute(lazy)[0])
    assert np.abs(got - eager).max() <= tol * max(1.0, np.abs(eager).max())


def test_moments_and_welford_any_axes(client, arrays):
    x, _, X, _ = arrays
    for axes in [(0,), (0, 2, 3), (1, 3), (-1,), (0, 1, 2, 3)]:
        m, v = nn.moments(X, axes)
        _close(m, x.mean(axis=axes))
        _close(v, x.var(axis=axes))
    state = nn.welford(X, (0, 2), keepdims=True)
    mean, var = state.finalize(ddof=1)
    _close(var, x.var(axis=(0, 2), ddof=1, keepdims=True))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_forward_backward_and_running_stats(client, arrays, rng, training):
    x, dy, X, DY = arrays
    w, b = rng.normal(size=6), rng.normal(size=6)
    rm, rv = rng.normal(size=6), rng.uniform(1, 2, 6)
    rm_eager, rv_eager = rm.copy(), rv.copy()
    Y, S = nn.batch_norm(X, rm, rv, w, b, training=training, momentum=0.3, return_stats=True)
    y, s = nn.batch_norm(x, rm_eager, rv_eager, w, b, training=training, momentum=0.3, return_stats=True)
    assert isinstance(Y, da.Array)
    _close(Y, y)
    assert np.allclose(rm, rm_eager, rtol=0, atol=1e-14) and np.allclose(rv, rv_eager, rtol=0, atol=1e-14)
    G = nn.batch_norm_backward(DY, X, S, w)
    g = nn.batch_norm_backward(dy, x, s, w)
    _close(G.input, g.input)
    _close(G.weight, g.weight)
    _close(G.bias, g.bias)


@pytest.mark.parametrize("ca", [1, -1])
@pytest.mark.parametrize("op", ["instance", "group", "layer", "rms"])
def test_per_group_ops_blockwise_and_rechunked(client, arrays, rng, op, ca):
    x, dy, X, DY = arrays
    if ca == -1:
        x, dy = np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ascontiguousarray(np.moveaxis(dy, 1, -1))
        X, DY = da.from_array(x, chunks=(3, 4, 5, 4)), da.from_array(dy, chunks=(7, 10, 9, 1))
    c = x.shape[ca]
    w, b = rng.normal(size=c), rng.normal(size=c)
    if op == "instance":
        Y, S = nn.instance_norm(X, None, None, w, b, channel_axis=ca, return_stats=True)
        y, s = nn.instance_norm(x, None, None, w, b, channel_axis=ca, return_stats=True)
        G, g = nn.instance_norm_backward(DY, X, S, w, channel_axis=ca), nn.instance_norm_backward(dy, x, s, w, channel_axis=ca)
    elif op == "group":
        Y, S = nn.group_norm(X, 3, w, b, channel_axis=ca, return_stats=True)
        y, s = nn.group_norm(x, 3, w, b, channel_axis=ca, return_stats=True)
        G, g = nn.group_norm_backward(DY, X, S, 3, w, channel_axis=ca), nn.group_norm_backward(dy, x, s, 3, w, channel_axis=ca)
    elif op == "layer":
        shape = x.shape[2:]
        lw, lb = rng.normal(size=shape), rng.normal(size=shape)
        Y, S = nn.layer_norm(X, shape, lw, lb, return_stats=True)
        y, s = nn.layer_norm(x, shape, lw, lb, return_stats=True)
        G, g = nn.layer_norm_backward(DY, X, S, shape, lw), nn.layer_norm_backward(dy, x, s, shape, lw)
    else:
        shape = x.shape[-1:]
        lw = rng.normal(size=shape)
        Y, S = nn.rms_norm(X, shape, lw, return_stats=True)
        y, s = nn.rms_norm(x, shape, lw, return_stats=True)
        G, g = nn.rms_norm_backward(DY, X, S, shape, lw), nn.rms_norm_backward(dy, x, s, shape, lw)
    _close(Y, y)
    _close(S.mean, s.mean)
    _close(S.rstd, s.rstd)
    _close(G.input, g.input, 1e-11)
    _close(G.weight, g.weight, 1e-11)
    if g.bias is not None:
        _close(G.bias, g.bias, 1e-11)


def test_instance_norm_running_stats_and_eval(client, arrays, rng):
    x, dy, X, DY = arrays
    rm, rv = np.zeros(6), np.ones(6)
    rm2, rv2 = np.zeros(6), np.ones(6)
    _close(nn.instance_norm(X, rm, rv, momentum=0.5), nn.instance_norm(x, rm2, rv2, momentum=0.5))
    assert np.allclose(rm, rm2, atol=1e-14) and np.allclose(rv, rv2, atol=1e-14)
    Y, S = nn.instance_norm(X, rm, rv, use_input_stats=False, return_stats=True)
    y, s = nn.instance_norm(x, rm, rv, use_input_stats=False, return_stats=True)
    _close(Y, y)
    _close(nn.instance_norm_backward(DY, X, S).input, nn.instance_norm_backward(dy, x, s).input)


def test_float32_chunks_and_bad_dask_input(client, rng):
    x = (1e4 + rng.normal(size=(8, 4, 16, 16))).astype(np.float32)
    X = da.from_array(x, chunks=(3, 4, 8, 16))
    _close(nn.batch_norm(X, None, None, training=True), nn.batch_norm(x, None, None, training=True), 1e-5)
    with pytest.raises(TypeError, match="out"):
        nn.group_norm(X, 2, out=np.empty(x.shape, np.float32))
    with pytest.raises(TypeError, match="grad_output"):
        nn.batch_norm_backward(np.ones(x.shape, np.float32), X, nn.batch_norm(X, None, None, training=True, return_stats=True)[1])
    with pytest.raises(TypeError, match="input"):
        nn.layer_norm(X.astype(np.int32), 16)
