"""numbanorm.cuda_device: device functions called from a user's own kernels (under Numba's CUDA
simulator in CI, on a GPU with NUMBANORM_TEST_GPU=1)."""

import numpy as np
import pytest

import numbanorm as nn

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda (the cuda extra) is not installed")
if not cuda.is_available():
    pytest.skip("no CUDA device and no simulator", allow_module_level=True)

from numba import float64  # noqa: E402

from numbanorm import _config  # noqa: E402
from numbanorm.cuda_device import (  # noqa: E402
    block_mean_rstd,
    block_row_moments,
    chan_merge,
    thread_moments,
    welford_update,
)

THREADS = _config.CUDA_THREADS  # small under the simulator (conftest), where threads are Python threads


@cuda.jit
def _layer_norm_rows(x, eps, y, stats):
    scratch = cuda.shared.array((3, THREADS), float64)
    r = cuda.blockIdx.x
    mean, rstd = block_mean_rstd(x[r], eps, scratch)
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        y[r, j] = (x[r, j] - mean) * rstd
    n, mu, q = block_row_moments(x[r], scratch)  # the scratch is reusable at once
    if cuda.threadIdx.x == 0:
        stats[r, 0] = n
        stats[r, 1] = mu
        stats[r, 2] = q


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [THREADS, THREADS - 3], ids=["pow2", "odd"])
def test_block_mean_rstd_normalizes_rows_like_layer_norm(dtype, threads):
    x = (np.random.default_rng(0).normal(size=(3, 37)) * 2 + 100).astype(dtype)
    y = cuda.device_array(x.shape, dtype)
    stats = cuda.device_array((3, 3))
    _layer_norm_rows[x.shape[0], threads](cuda.to_device(x), 1e-5, y, stats)
    expect = nn.layer_norm(x, 37)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    assert np.abs(y.copy_to_host() - expect).max() < tol * 10
    st = stats.copy_to_host()
    ref = nn.welford(x, 1)
    np.testing.assert_allclose(st[:, 0], ref.count)
    np.testing.assert_allclose(st[:, 1], ref.mean, rtol=1e-12 if dtype == np.float64 else 1e-7)
    np.testing.assert_allclose(st[:, 2], ref.m2, rtol=1e-9 if dtype == np.float64 else 1e-5)


@cuda.jit
def _per_thread_then_merge(x, states):
    """Each thread: Welford over its stride; thread 0 then merges all states with Chan's formula."""
    t = cuda.threadIdx.x
    n = 0.0
    mu = 0.0
    q = 0.0
    for i in range(t, x.shape[0], cuda.blockDim.x):
        n, mu, q = welford_update(n, mu, q, float64(x[i]))
    states[t, 0] = n
    states[t, 1] = mu
    states[t, 2] = q
    cuda.syncthreads()
    if t == 0:
        for k in range(1, cuda.blockDim.x):
            n, mu, q = chan_merge(n, mu, q, states[k, 0], states[k, 1], states[k, 2])
        states[0, 0] = n
        states[0, 1] = mu
        states[0, 2] = q
        n, mu, q = thread_moments(x, 0, x.shape[0], 1)  # the whole array by one thread
        states[1, 0] = n
        states[1, 1] = mu
        states[1, 2] = q


def test_welford_update_chan_merge_and_thread_moments():
    x = np.random.default_rng(1).normal(size=50) + 1e4
    states = cuda.device_array((8, 3))
    _per_thread_then_merge[1, 8](cuda.to_device(x), states)
    st = states.copy_to_host()
    ref = nn.welford(x, 0)
    for row in (0, 1):
        assert st[row, 0] == ref.count
        np.testing.assert_allclose(st[row, 1], ref.mean, rtol=1e-14)
        np.testing.assert_allclose(st[row, 2], ref.m2, rtol=1e-10)
    # the states are numbanorm.Moments fields: they merge with numbanorm.merge on the host
    half = nn.merge(nn.Moments(*map(np.float64, st[0])), nn.welford(x, 0))
    np.testing.assert_allclose(half.m2, 2 * ref.m2 + 0.0, rtol=1e-10)
