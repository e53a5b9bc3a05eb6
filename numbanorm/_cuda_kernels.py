"""CUDA kernels: the ``_cpu`` kernels' siblings, with the same names and arguments.

Views and tasks are those of ``_cpu``: rows ``(R, L)`` and cols ``(A, B, C)``, split into
``pieces`` along the reduced extent.  Reductions give one thread block per (row, piece) -- or per
(a, piece, tile of 32 channels) for cols, threads along the channels so that loads coalesce --
where each thread keeps a Welford state (or two sums) over a grid-stride of the elements and the
block merges them with Chan's formula through shared memory (no warp shuffles, so the same code
runs under Numba's CUDA simulator).  Elementwise passes are grid-stride loops over the whole view.
Layer norm's weight and bias gradients are partial column sums per block of rows, added up on the
host -- no contended atomics.  A launch takes its per-row or per-channel coefficients as one
stacked array (``coef[k]``) and gives back its partial results as one (``states[k]``): Numba's
host-side cost is per copy, not per byte.

Every accumulation is float64; the elementwise passes compute in the input precision with the
centre split as ``hi + lo``, as on the CPU.
"""

import math
import sys

import numpy as np
from numba import cuda, float64

from ._config import CUDA_THREADS
from ._cpu import chan_merge, piece

TPB = CUDA_THREADS  # threads per block, a power of two
COL_X = min(32, TPB)  # cols kernels: threads along channels ...
COL_Y = TPB // COL_X  # ... and along rows
MAX_BLOCKS = 4096  # grid-stride loops need no more


_chan = cuda.jit(device=True)(chan_merge)
_piece = cuda.jit(device=True)(piece)


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
    of two), into slot ``lane``; this thread holds k = ``t``.  Rows kernels: one lane, stride 1;
    cols kernels: a lane per channel, the row threads ``stride`` = COL_X apart."""
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


@cuda.jit(device=True)
def _col_block(pieces, extent):
    """A cols reduction thread's place: its block's outer index ``a`` and piece ``p`` (rows
    ``start:stop`` of ``extent``), and the thread's ``tx`` along a tile of COL_X channels -- its
    channel ``c`` -- and ``ty`` along the rows."""
    a, p, start, stop = _piece(cuda.blockIdx.x, pieces, extent)
    tx = cuda.threadIdx.x
    return a, p, start, stop, tx, cuda.threadIdx.y, cuda.blockIdx.y * COL_X + tx


@cuda.jit
def _row_moments(x, pieces, states):
    r, p, start, stop = _piece(cuda.blockIdx.x, pieces, x.shape[1])
    t = cuda.threadIdx.x
    n, mu, q = _thread_state(x[r], start + t, stop, TPB)
    sn = cuda.shared.array(TPB, float64)
    sm = cuda.shared.array(TPB, float64)
    sq = cuda.shared.array(TPB, float64)
    sn[t] = n
    sm[t] = mu
    sq[t] = q
    cuda.syncthreads()
    _merge_states(sn, sm, sq, t, TPB, 0, 1)
    if t == 0:
        states[0, r, p] = sn[0]
        states[1, r, p] = sm[0]
        states[2, r, p] = sq[0]


@cuda.jit
def _col_moments(x, pieces, states):
    a, p, start, stop, tx, ty, c = _col_block(pieces, x.shape[1])
    n = 0.0
    mu = 0.0
    q = 0.0
    if c < x.shape[2]:
        n, mu, q = _thread_state(x[a, :, c], start + ty, stop, COL_Y)
    sn = cuda.shared.array(TPB, float64)
    sm = cuda.shared.array(TPB, float64)
    sq = cuda.shared.array(TPB, float64)
    slot = ty * COL_X + tx
    sn[slot] = n
    sm[slot] = mu
    sq[slot] = q
    cuda.syncthreads()
    _merge_states(sn, sm, sq, ty, COL_Y, tx, COL_X)
    if ty == 0 and c < x.shape[2]:
        states[0, a, p, c] = sn[tx]
        states[1, a, p, c] = sm[tx]
        states[2, a, p, c] = sq[tx]


@cuda.jit
def _row_affine(x, coef, params, has_weight, out):
    hi, lo, alpha, beta = coef[0], coef[1], coef[2], coef[3]
    weight, bias = params[0], params[1]
    rows, length = x.shape
    for i in range(cuda.grid(1), rows * length, cuda.gridsize(1)):
        r = i // length
        j = i - r * length
        v = ((x[r, j] - hi[r]) - lo[r]) * alpha[r] + beta[r]
        if has_weight:
            v = v * weight[j] + bias[j]
        out[r, j] = v


@cuda.jit(device=True)
def _cell(i, length, width):
    """Flat index ``i`` of a C-contiguous (outer, length, width) cols view -> (a, b, c)."""
    a = i // (length * width)
    rest = i - a * length * width
    b = rest // width
    return a, b, rest - b * width


@cuda.jit
def _col_affine(x, coef, out):
    hi, lo, alpha, beta = coef[0], coef[1], coef[2], coef[3]
    outer, length, width = x.shape
    for i in range(cuda.grid(1), outer * length * width, cuda.gridsize(1)):
        a, b, c = _cell(i, length, width)
        out[a, b, c] = ((x[a, b, c] - hi[a, c]) - lo[a, c]) * alpha[a, c] + beta[a, c]


@cuda.jit
def _row_grad_sums(dy, x, coef, params, has_weight, pieces, sums):
    hi, lo, weight = coef[0], coef[1], params[0]
    r, p, start, stop = _piece(cuda.blockIdx.x, pieces, x.shape[1])
    t = cuda.threadIdx.x
    s1 = 0.0
    s2 = 0.0
    for i in range(start + t, stop, TPB):
        g = float64(dy[r, i])
        if has_weight:
            g *= weight[i]
        s1 += g
        s2 += g * float64((x[r, i] - hi[r]) - lo[r])
    sh1 = cuda.shared.array(TPB, float64)
    sh2 = cuda.shared.array(TPB, float64)
    sh1[t] = s1
    sh2[t] = s2
    cuda.syncthreads()
    _sum_pairs(sh1, sh2, t, TPB, 0, 1)
    if t == 0:
        sums[0, r, p] = sh1[0]
        sums[1, r, p] = sh2[0]


@cuda.jit
def _col_grad_sums(dy, x, coef, pieces, sums):
    hi, lo = coef[0], coef[1]
    a, p, start, stop, tx, ty, c = _col_block(pieces, x.shape[1])
    s1 = 0.0
    s2 = 0.0
    if c < x.shape[2]:
        for b in range(start + ty, stop, COL_Y):
            g = float64(dy[a, b, c])
            s1 += g
            s2 += g * float64((x[a, b, c] - hi[a, c]) - lo[a, c])
    sh1 = cuda.shared.array(TPB, float64)
    sh2 = cuda.shared.array(TPB, float64)
    slot = ty * COL_X + tx
    sh1[slot] = s1
    sh2[slot] = s2
    cuda.syncthreads()
    _sum_pairs(sh1, sh2, ty, COL_Y, tx, COL_X)
    if ty == 0 and c < x.shape[2]:
        sums[0, a, p, c] = sh1[tx]
        sums[1, a, p, c] = sh2[tx]


@cuda.jit
def _row_input_grad(dy, x, coef, params, has_weight, out):
    hi, lo, ka, kb, kc, weight = coef[0], coef[1], coef[2], coef[3], coef[4], params[0]
    rows, length = x.shape
    for i in range(cuda.grid(1), rows * length, cuda.gridsize(1)):
        r = i // length
        j = i - r * length
        g = dy[r, j]
        if has_weight:
            g = g * weight[j]
        out[r, j] = g * ka[r] + ((x[r, j] - hi[r]) - lo[r]) * kb[r] + kc[r]


@cuda.jit
def _row_param_grads(dy, x, coef, blocks, grads):
    """Per block of rows, column sums ``sum(dy*(x - centre)*ka)`` and ``sum(dy)`` in float64 (a
    thread's sum runs down one column, so the CPU's input-precision partial sums would save no
    memory traffic here)."""
    hi, lo, ka = coef[0], coef[1], coef[2]
    block = cuda.blockIdx.x
    j = cuda.blockIdx.y * TPB + cuda.threadIdx.x
    rows, length = x.shape
    if j < length:
        _, _, first, last = _piece(block, blocks, rows)
        s1 = 0.0
        s2 = 0.0
        for r in range(first, last):
            g = float64(dy[r, j])
            s1 += g * float64((x[r, j] - hi[r]) - lo[r]) * ka[r]
            s2 += g
        grads[0, block, j] = s1
        grads[1, block, j] = s2


@cuda.jit
def _col_input_grad(dy, x, coef, out):
    hi, lo, ka, kb, kc = coef[0], coef[1], coef[2], coef[3], coef[4]
    outer, length, width = x.shape
    for i in range(cuda.grid(1), outer * length * width, cuda.gridsize(1)):
        a, b, c = _cell(i, length, width)
        out[a, b, c] = dy[a, b, c] * ka[a, c] + ((x[a, b, c] - hi[a, c]) - lo[a, c]) * kb[a, c] + kc[a, c]


# -- launchers with the ``_cpu`` kernels' signatures ----------------------------------------------

def _grid(n):
    return max(1, min(MAX_BLOCKS, math.ceil(n / TPB)))


# A Numba-CUDA host-to-device copy costs host time whatever its size, more than a device-to-host
# copy or an allocation, so each launch sends its per-row or per-channel coefficients as one
# stacked array and brings its partial results back as one.

def _upload(*arrays):
    """Host arrays of one shape -> one device array stacked along a new first axis."""
    return cuda.to_device(np.ascontiguousarray(np.stack(arrays)))


def _download(stacked, *hosts):
    """One device-to-host copy of ``stacked`` into the host arrays ``hosts``, one per first index."""
    values = stacked.copy_to_host()
    for k, host in enumerate(hosts):
        host[...] = values[k]


def _scratch(count, like):
    """A float64 device array for ``count`` partial results shaped like the host array ``like``."""
    return cuda.device_array((count,) + like.shape, np.float64)


_absent = {}


def _params(dtype, *arrays):
    """Row parameters (layer norm's weight, bias) stacked on the device, or a stand-in when absent
    (kernels take no None)."""
    if arrays[0] is not None:
        return _upload(*arrays)
    key = (np.dtype(dtype), len(arrays))
    if key not in _absent:
        _absent[key] = cuda.to_device(np.ones((len(arrays), 1), key[0]))
    return _absent[key]


def row_moments(x, pieces, count, mean, m2):
    states = _scratch(3, count)
    _row_moments[x.shape[0] * pieces, TPB](x, pieces, states)
    _download(states, count, mean, m2)


def col_moments(x, pieces, count, mean, m2):
    states = _scratch(3, count)
    _col_moments[(x.shape[0] * pieces, math.ceil(x.shape[2] / COL_X)), (COL_X, COL_Y)](x, pieces, states)
    _download(states, count, mean, m2)


def row_affine(x, hi, lo, alpha, beta, weight, bias, pieces, out):
    params = _params(x.dtype, weight, bias)
    _row_affine[_grid(x.size), TPB](x, _upload(hi, lo, alpha, beta), params, weight is not None, out)


def col_affine(x, hi, lo, alpha, beta, pieces, out):
    _col_affine[_grid(x.size), TPB](x, _upload(hi, lo, alpha, beta), out)


def row_grad_sums(dy, x, hi, lo, weight, pieces, sum_dy, sum_dy_xc):
    sums = _scratch(2, sum_dy)
    params = _params(x.dtype, weight)
    _row_grad_sums[x.shape[0] * pieces, TPB](dy, x, _upload(hi, lo), params, weight is not None, pieces, sums)
    _download(sums, sum_dy, sum_dy_xc)


def col_grad_sums(dy, x, hi, lo, pieces, sum_dy, sum_dy_xc):
    sums = _scratch(2, sum_dy)
    grid = (x.shape[0] * pieces, math.ceil(x.shape[2] / COL_X))
    _col_grad_sums[grid, (COL_X, COL_Y)](dy, x, _upload(hi, lo), pieces, sums)
    _download(sums, sum_dy, sum_dy_xc)


def row_input_grad(dy, x, hi, lo, ka, kb, kc, pieces, out):
    coef = _upload(hi, lo, ka, kb, kc)
    _row_input_grad[_grid(x.size), TPB](dy, x, coef, _params(x.dtype, None), False, out)


def row_input_grad_params(dy, x, hi, lo, ka, kb, kc, weight, blocks, out, weight_grad, bias_grad, scratch):
    coef = _upload(hi, lo, ka, kb, kc)
    _row_input_grad[_grid(x.size), TPB](dy, x, coef, _params(x.dtype, weight), True, out)
    grads = _scratch(2, weight_grad)  # the weight/bias gradient pieces: one partial row per block of rows
    _row_param_grads[(blocks, math.ceil(x.shape[1] / TPB)), TPB](dy, x, coef, blocks, grads)
    _download(grads, weight_grad, bias_grad)


def col_input_grad(dy, x, hi, lo, ka, kb, kc, pieces, out):
    _col_input_grad[_grid(x.size), TPB](dy, x, _upload(hi, lo, ka, kb, kc), out)


class CUDADevice:
    """Numba device arrays (C-contiguous, so a plan's view is a reshape) and these kernels."""

    kernels = sys.modules[__name__]

    @staticmethod
    def view(plan, a):
        return a.reshape(plan.view_shape)

    @staticmethod
    def result(plan, dtype, out, x):
        if out is not None:
            return out.reshape(plan.view_shape), out
        buf = cuda.device_array(plan.view_shape, dtype)
        return buf, buf.reshape(plan.shape)

    @staticmethod
    def finish(user, out):
        return user

    @staticmethod
    def pieces(plan):
        # enough blocks to fill a GPU (a few hundred), each with a few elements per thread
        outer, length = plan.view_shape[0], plan.view_shape[1]
        return int(max(1, min(math.ceil(512 / max(outer, 1)), length // (4 * TPB))))

    @staticmethod
    def row_blocks(rows):
        return max(1, min(rows, 256))
