"""CPU kernels: Numba ``@njit(parallel=True)`` loops over two canonical views.

Every normalization is planned in Python (see ``_plan.py``) onto one of two C-contiguous views:

* rows ``(R, L)``: statistics or coefficients per row, the reduction runs along contiguous
  memory (NCHW batch/instance/group norm, layer norm, RMS norm);
* cols ``(A, B, C)``: statistics or coefficients per ``(a, c)``, the reduction runs across
  the ``B`` rows while the vector loop runs along the contiguous ``C`` (channels-last).

Each view has four kernels: moments, affine apply, gradient sums and input gradient.  Work is
split into ``pieces`` along the reduced extent so that a few long rows still keep every thread
busy; partial results come back per piece and are merged by the caller.

Accuracy: inside a chunk that stays in L1 the mean and the sum of squared deviations are exact
two-pass sums in the input precision (these loops vectorise, and have no division per element);
the chunk results are then merged in float64 with Chan's formula.  The second pass also sums the
deviations, which corrects the chunk mean for its own rounding (the "corrected two-pass"
algorithm), so large offsets such as 1e4 + N(0, 1) in float32 keep their digits.

Elementwise passes subtract the centre before scaling, ``(x - mean) * a + b``, never
``x * a + (b - mean * a)``, which loses the digits that the offset occupies.  The centre is
passed as two numbers of the input precision, ``hi + lo`` (``lo`` the rounding error of ``hi``),
so float32 data are centred on a float64-accurate mean: ``(x - hi) - lo``.
"""

import numpy as np
from numba import njit, prange

from ._config import CACHE, FASTMATH

ROW_CHUNK = 1024  # elements of one row per exact chunk (4 KiB of float32: L1-resident)
COL_CHUNK = 4096  # elements per exact chunk of the cols view (rows * C)

_jit = dict(cache=CACHE, fastmath=FASTMATH)


@njit(inline="always", **_jit)
def _chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) states; safe when either count is zero."""
    n = n_a + n_b
    if n_b == 0.0:
        return n_a, mean_a, m2_a
    delta = mean_b - mean_a
    frac = n_b / n
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


@njit(inline="always", **_jit)
def _span(extent, pieces, p):
    step = (extent + pieces - 1) // pieces
    lo = min(extent, p * step)
    return lo, min(extent, lo + step)


@njit(**_jit)
def _row_span_moments(v, lo, hi):
    n = 0.0
    mean = 0.0
    m2 = 0.0
    zero = v.dtype.type(0)
    for c0 in range(lo, hi, ROW_CHUNK):
        c1 = min(c0 + ROW_CHUNK, hi)
        k = c1 - c0
        s = zero
        for i in range(c0, c1):
            s += v[i]
        guess = s / k
        dev = zero
        sq = zero
        for i in range(c0, c1):
            d = v[i] - guess
            dev += d
            sq += d * d
        chunk_mean = np.float64(guess) + np.float64(dev) / k
        chunk_m2 = np.float64(sq) - np.float64(dev) * np.float64(dev) / k
        n, mean, m2 = _chan_merge(n, mean, m2, np.float64(k), chunk_mean, max(chunk_m2, 0.0))
    return n, mean, m2


@njit(parallel=True, **_jit)
def row_moments(x, pieces, count, mean, m2):
    """Per-(row, piece) Welford states of ``x`` (R, L) into float64 arrays of shape (R, pieces)."""
    rows, length = x.shape
    for task in prange(rows * pieces):
        r = task // pieces
        p = task - r * pieces
        lo, hi = _span(length, pieces, p)
        count[r, p], mean[r, p], m2[r, p] = _row_span_moments(x[r], lo, hi)


@njit(parallel=True, **_jit)
def col_moments(x, pieces, count, mean, m2):
    """Per-(a, piece, c) states of ``x`` (A, B, C) reduced over B, into float64 (A, pieces, C)."""
    outer, length, width = x.shape
    block = max(1, COL_CHUNK // width)
    for task in prange(outer * pieces):
        a = task // pieces
        p = task - a * pieces
        lo, hi = _span(length, pieces, p)
        s = np.empty(width, x.dtype)
        dev = np.empty(width, x.dtype)
        sq = np.empty(width, x.dtype)
        n = 0.0
        for c in range(width):
            mean[a, p, c] = 0.0
            m2[a, p, c] = 0.0
        for b0 in range(lo, hi, block):
            b1 = min(b0 + block, hi)
            k = b1 - b0
            s[:] = 0
            for b in range(b0, b1):
                for c in range(width):
                    s[c] += x[a, b, c]
            for c in range(width):
                s[c] = s[c] / k
            dev[:] = 0
            sq[:] = 0
            for b in range(b0, b1):
                for c in range(width):
                    d = x[a, b, c] - s[c]
                    dev[c] += d
                    sq[c] += d * d
            frac = k / (n + k)
            for c in range(width):
                chunk_mean = np.float64(s[c]) + np.float64(dev[c]) / k
                chunk_m2 = max(np.float64(sq[c]) - np.float64(dev[c]) * np.float64(dev[c]) / k, 0.0)
                delta = chunk_mean - mean[a, p, c]
                mean[a, p, c] += delta * frac
                m2[a, p, c] += chunk_m2 + delta * delta * n * frac
            n += k
        for c in range(width):
            count[a, p, c] = n


@njit(parallel=True, **_jit)
def row_affine(x, hi, lo, alpha, beta, weight, bias, pieces, out):
    """``out = ((x - center[r])*alpha[r] + beta[r])``, then ``* weight[l] + bias[l]`` if given."""
    rows, length = x.shape
    for task in prange(rows * pieces):
        r = task // pieces
        p = task - r * pieces
        lo_i, hi_i = _span(length, pieces, p)
        h = hi[r]
        l = lo[r]
        a = alpha[r]
        b = beta[r]
        if weight is None:
            for i in range(lo_i, hi_i):
                out[r, i] = ((x[r, i] - h) - l) * a + b
        else:
            for i in range(lo_i, hi_i):
                out[r, i] = (((x[r, i] - h) - l) * a + b) * weight[i] + bias[i]


@njit(parallel=True, **_jit)
def col_affine(x, hi, lo, alpha, beta, pieces, out):
    """``out[a, b, c] = (x[a, b, c] - center[a, c])*alpha[a, c] + beta[a, c]``."""
    outer, length, width = x.shape
    for task in prange(outer * pieces):
        a = task // pieces
        p = task - a * pieces
        lo_b, hi_b = _span(length, pieces, p)
        h = hi[a]
        l = lo[a]
        s = alpha[a]
        t = beta[a]
        for b in range(lo_b, hi_b):
            for c in range(width):
                out[a, b, c] = ((x[a, b, c] - h[c]) - l[c]) * s[c] + t[c]


@njit(parallel=True, **_jit)
def row_grad_sums(dy, x, hi, lo, weight, pieces, sum_dy, sum_dy_xc):
    """Per-(row, piece) ``sum(dy*w)`` and ``sum(dy*w*(x - center[r]))`` into float64 (R, pieces)."""
    rows, length = x.shape
    zero = x.dtype.type(0)
    for task in prange(rows * pieces):
        r = task // pieces
        p = task - r * pieces
        lo_i, hi_i = _span(length, pieces, p)
        h = hi[r]
        l = lo[r]
        t1 = 0.0
        t2 = 0.0
        for c0 in range(lo_i, hi_i, ROW_CHUNK):
            c1 = min(c0 + ROW_CHUNK, hi_i)
            s1 = zero
            s2 = zero
            if weight is None:
                for i in range(c0, c1):
                    g = dy[r, i]
                    s1 += g
                    s2 += g * ((x[r, i] - h) - l)
            else:
                for i in range(c0, c1):
                    g = dy[r, i] * weight[i]
                    s1 += g
                    s2 += g * ((x[r, i] - h) - l)
            t1 += s1
            t2 += s2
        sum_dy[r, p] = t1
        sum_dy_xc[r, p] = t2


@njit(parallel=True, **_jit)
def col_grad_sums(dy, x, hi, lo, pieces, sum_dy, sum_dy_xc):
    """Per-(a, piece, c) ``sum(dy)`` and ``sum(dy*(x - center[a, c]))`` into float64 (A, pieces, C)."""
    outer, length, width = x.shape
    block = max(1, COL_CHUNK // width)
    for task in prange(outer * pieces):
        a = task // pieces
        p = task - a * pieces
        lo_b, hi_b = _span(length, pieces, p)
        h = hi[a]
        l = lo[a]
        s1 = np.empty(width, x.dtype)
        s2 = np.empty(width, x.dtype)
        for c in range(width):
            sum_dy[a, p, c] = 0.0
            sum_dy_xc[a, p, c] = 0.0
        for b0 in range(lo_b, hi_b, block):
            b1 = min(b0 + block, hi_b)
            s1[:] = 0
            s2[:] = 0
            for b in range(b0, b1):
                for c in range(width):
                    g = dy[a, b, c]
                    s1[c] += g
                    s2[c] += g * ((x[a, b, c] - h[c]) - l[c])
            for c in range(width):
                sum_dy[a, p, c] += s1[c]
                sum_dy_xc[a, p, c] += s2[c]


@njit(parallel=True, **_jit)
def row_input_grad(dy, x, hi, lo, ka, kb, kc, weight, pieces, out, weight_grad, bias_grad):
    """``out = dy*w*ka[r] + (x - center[r])*kb[r] + kc[r]`` per row.

    With ``weight`` given (layer norm), ``ka`` is the row's rstd and the weight/bias gradient
    partial sums ``sum_r dy*(x-center)*ka`` and ``sum_r dy`` are fused into the same pass, while
    x and dy are in cache, one float64 buffer row per task (``weight_grad``, ``bias_grad`` of
    shape (pieces, L)); ``pieces`` then counts blocks of whole rows, not pieces of one row.
    """
    rows, length = x.shape
    if weight is None:
        for task in prange(rows * pieces):
            r = task // pieces
            p = task - r * pieces
            lo_i, hi_i = _span(length, pieces, p)
            h = hi[r]
            l = lo[r]
            a = ka[r]
            b = kb[r]
            c = kc[r]
            for i in range(lo_i, hi_i):
                out[r, i] = dy[r, i] * a + ((x[r, i] - h) - l) * b + c
    else:
        for task in prange(pieces):
            lo_r, hi_r = _span(rows, pieces, task)
            wg = weight_grad[task]
            bg = bias_grad[task]
            wg[:] = 0
            bg[:] = 0
            for r in range(lo_r, hi_r):
                h = hi[r]
                l = lo[r]
                a = ka[r]
                b = kb[r]
                c = kc[r]
                for i in range(length):
                    g = dy[r, i]
                    xc = (x[r, i] - h) - l
                    out[r, i] = g * weight[i] * a + xc * b + c
                    wg[i] += g * xc * a
                    bg[i] += g


@njit(parallel=True, **_jit)
def col_input_grad(dy, x, hi, lo, ka, kb, kc, pieces, out):
    """``out[a, b, c] = dy*ka[a, c] + (x - center[a, c])*kb[a, c] + kc[a, c]``."""
    outer, length, width = x.shape
    for task in prange(outer * pieces):
        a = task // pieces
        p = task - a * pieces
        lo_b, hi_b = _span(length, pieces, p)
        h = hi[a]
        l = lo[a]
        s = ka[a]
        t = kb[a]
        u = kc[a]
        for b in range(lo_b, hi_b):
            for c in range(width):
                out[a, b, c] = dy[a, b, c] * s[c] + ((x[a, b, c] - h[c]) - l[c]) * t[c] + u[c]
