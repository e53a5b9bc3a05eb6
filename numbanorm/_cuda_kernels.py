"""Device functions shared by the CUDA pipelines (``_cuda_pipelines``) and the public building
blocks (``cuda_device``): Welford updates, Chan merges and block reductions in shared memory.

Each thread keeps a Welford state (or two sums) over a stride of its elements and the block merges
them with Chan's formula through shared memory (no warp shuffles, so the same code runs under
Numba's CUDA simulator).  Every accumulation is float64.
"""

from numba import cuda, float64

from ._config import CUDA_THREADS
from ._scalar import chan_merge

TPB = CUDA_THREADS  # threads per block, a power of two


_chan = cuda.jit(device=True)(chan_merge)


@cuda.jit(device=True)
def _welford(n, mu, q, v):
    """One value into a thread's Welford state (count, mean, M2)."""
    n += 1.0
    d = v - mu
    mu += d / n
    return n, mu, q + d * (v - mu)


@cuda.jit(device=True)
def _thread_state(v, start, stop, step):
    """Welford state of ``v[start:stop:step]`` (a 1-D view), four values at a time: their own
    mean and M2 over registers, merged by Chan's formula.  Per-value Welford spends a float64
    division on every element and waits on it before the next load; four at once keeps four
    loads in flight and divides once."""
    n = 0.0
    mu = 0.0
    q = 0.0
    i = start
    while i + 3 * step < stop:
        a = float64(v[i])
        b = float64(v[i + step])
        c = float64(v[i + 2 * step])
        d = float64(v[i + 3 * step])
        m = (a + b + c + d) * 0.25
        m2 = (a - m) * (a - m) + (b - m) * (b - m) + (c - m) * (c - m) + (d - m) * (d - m)
        n, mu, q = _chan(n, mu, q, 4.0, m, m2)
        i += 4 * step
    while i < stop:
        n, mu, q = _welford(n, mu, q, float64(v[i]))
        i += step
    return n, mu, q


@cuda.jit(device=True)
def _merge_states(sn, sm, sq, t, width, lane, stride):
    """Tree-merge the Welford states in shared slots ``lane + k*stride``, k < ``width`` (a power
    of two), into slot ``lane``; this thread holds k = ``t``.  One state per thread: one lane,
    stride 1; states of several lanes interleaved: the lane's slots ``stride`` apart."""
    s = width // 2
    while s > 0:
        if t < s:
            i = lane + t * stride
            j = i + s * stride
            n, m, q = _chan(sn[i], sm[i], sq[i], sn[j], sm[j], sq[j])
            sn[i] = n
            sm[i] = m
            sq[i] = q
        cuda.syncthreads()
        s //= 2


@cuda.jit(device=True)
def _sum_pairs(sh1, sh2, t, width, lane, stride):
    """Tree-sum two shared arrays over the slots of ``_merge_states`` into slot ``lane``."""
    s = width // 2
    while s > 0:
        if t < s:
            i = lane + t * stride
            sh1[i] += sh1[i + s * stride]
            sh2[i] += sh2[i + s * stride]
        cuda.syncthreads()
        s //= 2
