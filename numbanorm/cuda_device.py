"""Building blocks for your own ``@cuda.jit`` kernels: numbanorm's statistics as device functions.

Importing this module needs ``numba-cuda`` (``pip install "numbanorm[cuda]"``); ``import
numbanorm`` does not import it.  Everything here is a ``@cuda.jit(device=True)`` function, called
from inside a kernel; all of it runs under Numba's CUDA simulator (no warp shuffles).

States are ``(count, mean, m2)`` float64 triples -- m2 the sum of squared deviations from the
mean -- exactly the `numbanorm.Moments` fields, so partial results from a kernel merge with
`numbanorm.merge` on the host, and the other way round.

``welford_update(count, mean, m2, value) -> (count, mean, m2)``
    One value into a state (Welford's update, in float64).
``chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b) -> (count, mean, m2)``
    The state of the union of two disjoint samples (Chan et al.); an empty state (count 0)
    merges as nothing.  numbanorm's CPU and CUDA kernels merge with this same function.
``thread_moments(values, start, stop, step) -> (count, mean, m2)``
    The state of ``values[start:stop:step]`` (a 1-D array or view), four values at a time merged
    with Chan's formula, as numbanorm's CUDA kernels do per thread.
``block_row_moments(row, scratch) -> (count, mean, m2)``
    The state of a whole row, computed by the calling thread block: each thread takes a stride
    of the row, then the block merges the threads' states by a tree in shared memory.
``block_mean_rstd(row, eps, scratch) -> (mean, rstd)``
    The row's mean and ``1 / sqrt(var + eps)`` (biased variance), computed by the block.

The block functions must be called by **every thread of a one-dimensional block** (they
synchronise it), with ``scratch`` a shared float64 array of shape ``(3, n)``, ``n >= blockDim.x``
(``cuda.shared.array((3, 256), numba.float64)``); every thread gets the result, and
``scratch`` may be reused straight away (the functions synchronise again before returning).
Any block size works, a power of two or not.

Example: layer norm of each row of ``x`` by one block per row::

    import math
    from numba import cuda, float64
    from numbanorm.cuda_device import block_mean_rstd

    THREADS = 128

    @cuda.jit
    def layer_norm_rows(x, eps, y):
        scratch = cuda.shared.array((3, THREADS), float64)
        r = cuda.blockIdx.x
        mean, rstd = block_mean_rstd(x[r], eps, scratch)
        for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            y[r, j] = (x[r, j] - mean) * rstd

    layer_norm_rows[x.shape[0], THREADS](x, 1e-5, y)
"""

import math

from numba import cuda

from ._cuda_kernels import _chan, _thread_state, _welford

__all__ = ["welford_update", "chan_merge", "thread_moments", "block_row_moments", "block_mean_rstd"]

welford_update = _welford
chan_merge = _chan
thread_moments = _thread_state


@cuda.jit(device=True)
def block_row_moments(row, scratch):
    """(count, mean, m2) of ``row`` by the calling block; see the module docstring."""
    t = cuda.threadIdx.x
    width = cuda.blockDim.x
    n, mu, q = _thread_state(row, t, row.shape[0], width)
    scratch[0, t] = n
    scratch[1, t] = mu
    scratch[2, t] = q
    cuda.syncthreads()
    s = 1
    while s < width:  # the smallest power of two >= width, halved: a tree that takes any width
        s *= 2
    s //= 2
    while s > 0:
        if t < s and t + s < width:
            j = t + s
            n, mu, q = _chan(scratch[0, t], scratch[1, t], scratch[2, t], scratch[0, j], scratch[1, j],
                             scratch[2, j])
            scratch[0, t] = n
            scratch[1, t] = mu
            scratch[2, t] = q
        cuda.syncthreads()
        s //= 2
    n = scratch[0, 0]
    mu = scratch[1, 0]
    q = scratch[2, 0]
    cuda.syncthreads()  # every thread has read slot 0: the scratch may be reused
    return n, mu, q


@cuda.jit(device=True)
def block_mean_rstd(row, eps, scratch):
    """(mean, 1/sqrt(var + eps)) of a non-empty ``row`` by the calling block (biased variance)."""
    n, mu, q = block_row_moments(row, scratch)
    return mu, 1.0 / math.sqrt(q / n + eps)
