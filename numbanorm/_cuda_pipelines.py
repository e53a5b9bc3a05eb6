"""The CUDA device: each op family's whole data path on the GPU, with no host round trip.

The front (``_cuda``) checks the arguments and plans the layout; a ``Device`` then runs the
family's pipeline -- statistics -> per-group coefficients -> apply (+ running-statistics update),
and backward sums -> coefficients -> input gradient + weight/bias gradients -- entirely in
kernels.  Nothing inside a call copies between host and device or synchronizes: per-group
finalization (merging the pieces' Welford states, mean/rstd, the affine coefficients, the
running-statistics update) is done by the *last block* of a reduction (a ``threadfence`` then a
self-resetting ``atomic.inc`` ticket per group, as PyTorch's channels-last batch norm and
NVIDIA's threadFenceReduction sample); scalars (eps, momentum, counts) are kernel arguments.

Layouts.  Every C-contiguous input is seen as a flat array with a 3-D geometry ``(A, C, S)``:
``A`` the product of the axes before the channel axis, ``C`` the channels, ``S`` the product of
the axes after it.  Statistics groups are (sample, group of ``cg`` consecutive channels): a
sample is a block of ``apn`` consecutive ``a`` (``apn = A`` merges all of them, batch norm).  A
group's elements are ``apn`` runs of ``cg*S`` contiguous values, so reductions read runs.

Launches per call (see ``tests/test_cuda_pipelines.py``): layer/RMS norm forward 1, backward 1 (+1
with weight or bias gradients); batch/instance/group norm forward 2 (eval-mode batch norm 1),
backward 2; moments 1.
"""

import math

import numpy as np
from numba import cuda, float64
from numba.core import config as _numba_config

from ._config import CUDA_LAUNCH, CUDA_LAUNCH_MODES, CUDA_THREADS
from ._cuda_kernels import _chan, _merge_states, _sum_pairs, _welford

TPB = CUDA_THREADS
MAX_BLOCKS = 4096  # grid-stride elementwise loops need no more
TARGET_BLOCKS = 1024  # reductions: enough (group, piece) blocks to fill a GPU
SIMULATOR = bool(getattr(_numba_config, "ENABLE_CUDASIM", False))
# How ``Device.launch`` hands a kernel its arguments: read at every launch, so that
# tools/gpu_host_time.py can measure the modes side by side in one process.
LAUNCH = CUDA_LAUNCH


# -- device helpers -----------------------------------------------------------------------------

@cuda.jit(device=True)
def _span(piece, pieces, total):
    """Elements ``start:stop`` of piece ``piece`` of ``pieces`` over ``total``."""
    return (total * piece) // pieces, (total * (piece + 1)) // pieces


@cuda.jit(device=True)
def _element(e, base, run, stride):
    """Flat index of a group's element ``e``: runs of ``run`` contiguous values ``stride`` apart."""
    k = e // run
    return base + k * stride + (e - k * run)


@cuda.jit(device=True)
def _rsqrt(v):
    if v > 0.0:
        return 1.0 / math.sqrt(v)
    if v == 0.0:
        return math.inf
    return math.nan


@cuda.jit(device=True)
def _last_block(counter, index, blocks, flag):
    """Thread 0: threadfence, take a ticket of ``counter[index]`` (self-resetting after ``blocks``
    tickets); every thread returns whether this block took the last one.  The barrier first:
    every thread has read the previous ticket's flag and done its writes."""
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        cuda.threadfence()
        ticket = cuda.atomic.inc(counter, index, blocks - 1)
        flag[0] = 1 if ticket == blocks - 1 else 0
    cuda.syncthreads()
    return flag[0] == 1


@cuda.jit(device=True)
def _piece_state(n, mu, q, partial, group, p, pieces, counter):
    """Every thread of a (group, piece) block with its Welford state: the block's merged state
    becomes the piece's partial; returns whether this block is the group's last (which then
    merges the pieces with ``_merged_pieces``)."""
    t = cuda.threadIdx.x
    sn = cuda.shared.array(TPB, float64)
    sm = cuda.shared.array(TPB, float64)
    sq = cuda.shared.array(TPB, float64)
    flag = cuda.shared.array(1, np.int32)
    sn[t] = n
    sm[t] = mu
    sq[t] = q
    cuda.syncthreads()
    _merge_states(sn, sm, sq, t, TPB, 0, 1)
    if t == 0:
        k = group * pieces + p
        partial[0, k] = sn[0]
        partial[1, k] = sm[0]
        partial[2, k] = sq[0]
    return _last_block(counter, group, pieces, flag)


@cuda.jit(device=True)
def _merged_pieces(partial, group, pieces):
    n = 0.0
    mu = 0.0
    q = 0.0
    for k in range(group * pieces, group * pieces + pieces):
        n, mu, q = _chan(n, mu, q, partial[0, k], partial[1, k], partial[2, k])
    return n, mu, q


@cuda.jit(device=True)
def _piece_sums(s1, s2, partial, group, p, pieces, counter):
    """``_piece_state`` for two sums per thread: the block's totals become the piece's partials."""
    t = cuda.threadIdx.x
    sh1 = cuda.shared.array(TPB, float64)
    sh2 = cuda.shared.array(TPB, float64)
    flag = cuda.shared.array(1, np.int32)
    sh1[t] = s1
    sh2[t] = s2
    cuda.syncthreads()
    _sum_pairs(sh1, sh2, t, TPB, 0, 1)
    if t == 0:
        k = group * pieces + p
        partial[0, k] = sh1[0]
        partial[1, k] = sh2[0]
    return _last_block(counter, group, pieces, flag)


@cuda.jit(device=True)
def _summed_pieces(partial, group, pieces):
    s1 = 0.0
    s2 = 0.0
    for k in range(group * pieces, group * pieces + pieces):
        s1 += partial[0, k]
        s2 += partial[1, k]
    return s1, s2


# -- grid norms: statistics, finalized by the last block ---------------------------------------------

@cuda.jit
def _grid_stats(x, C, S, apn, G, P, partial, counter, mean, var, rstd, coef, w, b, eps, mode,
                running_mean, running_var, nbt, momentum, bessel):
    """Block (group gi, piece p): Welford over the piece; the group's last block merges the
    pieces into mean/var/rstd and, when ``coef`` is wanted (``mode`` & 1), writes the affine
    coefficients (hi, lo, alpha, beta) of the group's (sample, channel) cells; the last group
    (``mode`` & 2) updates the running statistics, averaged over samples, and ``nbt`` (``mode``
    & 4; ``momentum < 0``: the cumulative average 1/nbt)."""
    gi = cuda.blockIdx.x // P
    p = cuda.blockIdx.x - gi * P
    t = cuda.threadIdx.x
    cg = C // G
    n_s = gi // G
    g = gi - n_s * G
    run = cg * S
    base = n_s * apn * C * S + g * cg * S
    start, stop = _span(p, P, apn * run)
    n = 0.0
    mu = 0.0
    q = 0.0
    for e in range(start + t, stop, TPB):
        n, mu, q = _welford(n, mu, q, float64(x[_element(e, base, run, C * S)]))
    if not _piece_state(n, mu, q, partial, gi, p, P, counter):
        return
    if t == 0:
        n, mu, q = _merged_pieces(partial, gi, P)
        v = q / n
        r = _rsqrt(v + eps)
        mean[gi] = mu
        var[gi] = v
        rstd[gi] = r
    cuda.syncthreads()
    if mode & 1:
        mu = mean[gi]
        r = rstd[gi]
        for j in range(t, cg, TPB):
            c = g * cg + j
            cell = n_s * C + c
            coef[0, cell] = mu
            coef[1, cell] = mu - float64(coef[0, cell])
            coef[2, cell] = r * w[c] if mode & 8 else r
            coef[3, cell] = b[c] if mode & 16 else 0.0
    if not mode & 2:
        return
    groups = cuda.gridDim.x // P
    flag = cuda.shared.array(1, np.int32)
    if not _last_block(counter, groups, groups, flag):
        return
    samples = groups // G
    m = momentum
    if mode & 4:
        if t == 0:
            nbt[0] += 1
        cuda.syncthreads()
        if m < 0.0:
            m = 1.0 / float64(nbt[0])
    elif m < 0.0:
        m = 1.0
    for c in range(t, G, TPB):
        sm_ = 0.0
        sv = 0.0
        for s in range(samples):
            sm_ += mean[s * G + c]
            sv += var[s * G + c]
        running_mean[c] = (1.0 - m) * float64(running_mean[c]) + m * (sm_ / samples)
        running_var[c] = (1.0 - m) * float64(running_var[c]) + m * (sv * bessel / samples)


@cuda.jit
def _grid_apply(x, C, S, apn, coef, out):
    """``y = ((x - hi) - lo)*alpha + beta`` with the coefficients of the (sample, channel) cell."""
    cs = C * S
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        a = i // cs
        c = (i - a * cs) // S
        cell = (a // apn) * C + c
        out[i] = ((x[i] - coef[0, cell]) - coef[1, cell]) * coef[2, cell] + coef[3, cell]


@cuda.jit
def _grid_apply_running(x, C, S, apn, rm, rv, w, b, eps, mode, out, mean, rstd):
    """One launch for normalizing with the running statistics (eval-mode batch norm,
    ``use_input_stats=False``): the coefficients per element in float64; the first threads also
    write the stats (``mean``/``rstd`` per cell)."""
    cs = C * S
    cells = mean.shape[0]
    for i in range(cuda.grid(1), max(x.shape[0], cells), cuda.gridsize(1)):
        if i < cells:
            c = i % C
            mean[i] = rm[c]
            rstd[i] = _rsqrt(float64(rv[c]) + eps)
        if i < x.shape[0]:
            a = i // cs
            c = (i - a * cs) // S
            r = _rsqrt(float64(rv[c]) + eps)
            alpha = r * w[c] if mode & 8 else r
            beta = float64(b[c]) if mode & 16 else 0.0
            out[i] = (float64(x[i]) - float64(rm[c])) * alpha + beta


# -- grid norms backward: per-cell sums, coefficients by the last block, then the input gradient ---

@cuda.jit
def _grid_sums(dy, x, C, S, apn, G, P, mean, rstd, w, mode, partial, counter, cellsum, coef, group_sums,
               grad_weight, grad_bias, per_group):
    """Block (cell = (sample, channel), piece p): ``sum(dy)`` and ``sum(dy*(x - mean))``; the
    cell's last block adds the pieces; the last cell's block computes every cell's input
    gradient coefficients (hi, lo, ka, kb, kc) -- ``mode`` & 1: batch statistics -- and the
    weight (``mode`` & 8) and bias (``mode`` & 16) gradients."""
    cell = cuda.blockIdx.x // P
    p = cuda.blockIdx.x - cell * P
    t = cuda.threadIdx.x
    cg = C // G
    n_s = cell // C
    c = cell - n_s * C
    gi = n_s * G + c // cg
    base = n_s * apn * C * S + c * S
    start, stop = _span(p, P, apn * S)
    flag = cuda.shared.array(1, np.int32)
    if t == 0:
        coef[0, cell] = mean[gi]
        coef[1, cell] = mean[gi] - float64(coef[0, cell])
    cuda.syncthreads()
    hi = coef[0, cell]
    lo = coef[1, cell]
    s1 = 0.0
    s2 = 0.0
    for e in range(start + t, stop, TPB):
        i = _element(e, base, S, C * S)
        g = float64(dy[i])
        s1 += g
        s2 += g * float64((x[i] - hi) - lo)
    if not _piece_sums(s1, s2, partial, cell, p, P, counter):
        return
    if t == 0:
        s1, s2 = _summed_pieces(partial, cell, P)
        cellsum[0, cell] = s1
        cellsum[1, cell] = s2
    cells = cuda.gridDim.x // P
    if not _last_block(counter, cells, cells, flag):
        return
    groups = rstd.shape[0]
    for gi in range(t, groups, TPB):  # group means of w*dy and w*dy*xhat
        n_s = gi // G
        g = gi - n_s * G
        r = rstd[gi]
        a1 = 0.0
        a2 = 0.0
        for c in range(g * cg, g * cg + cg):
            scale = float64(w[c]) if mode & 8 else 1.0
            a1 += scale * cellsum[0, n_s * C + c]
            a2 += scale * cellsum[1, n_s * C + c]
        group_sums[0, gi] = a1 / per_group
        group_sums[1, gi] = a2 * r / per_group
    cuda.syncthreads()
    for cell in range(t, cells, TPB):
        n_s = cell // C
        c = cell - n_s * C
        gi = n_s * G + c // cg
        r = rstd[gi]
        coef[2, cell] = r * w[c] if mode & 8 else r
        if mode & 1:
            coef[3, cell] = -r * r * group_sums[1, gi]
            coef[4, cell] = -r * group_sums[0, gi]
        else:
            coef[3, cell] = 0.0
            coef[4, cell] = 0.0
    samples = cells // C
    for c in range(t, C, TPB):
        gw = 0.0
        gb = 0.0
        for s in range(samples):
            gb += cellsum[0, s * C + c]
            gw += cellsum[1, s * C + c] * rstd[s * G + c // cg]
        if mode & 8:
            grad_weight[c] = gw
        if mode & 16:
            grad_bias[c] = gb


@cuda.jit
def _grid_input_grad(dy, x, C, S, apn, coef, out):
    cs = C * S
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        a = i // cs
        c = (i - a * cs) // S
        cell = (a // apn) * C + c
        out[i] = dy[i] * coef[2, cell] + ((x[i] - coef[0, cell]) - coef[1, cell]) * coef[3, cell] + coef[4, cell]


# -- layer / RMS norm: one block per row ----------------------------------------------------------

@cuda.jit
def _row_forward(x, L, w, b, mode, eps, coef, out, mean, rstd):
    """Block r: the row's Welford state, mean/rstd (RMS norm: ``mode`` & 1 unset, the centre 0 and
    the spread the mean square), then the row normalized (``mode`` & 8: ``*w + b``) unless only
    the statistics are wanted (``mode`` & 32)."""
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    row = r * L
    n = 0.0
    mu = 0.0
    q = 0.0
    for j in range(t, L, TPB):
        n, mu, q = _welford(n, mu, q, float64(x[row + j]))
    sn = cuda.shared.array(TPB, float64)
    sm = cuda.shared.array(TPB, float64)
    sq = cuda.shared.array(TPB, float64)
    sn[t] = n
    sm[t] = mu
    sq[t] = q
    cuda.syncthreads()
    _merge_states(sn, sm, sq, t, TPB, 0, 1)
    if t == 0:
        spread = sq[0] / sn[0]
        centre = sm[0]
        if not mode & 1:
            spread += centre * centre
            centre = 0.0
        rs = _rsqrt(spread + eps)
        mean[r] = centre
        rstd[r] = rs
        coef[0, r] = centre
        coef[1, r] = centre - float64(coef[0, r])
        coef[2, r] = rs
    if mode & 32:
        return
    cuda.syncthreads()
    hi = coef[0, r]
    lo = coef[1, r]
    alpha = coef[2, r]
    for j in range(t, L, TPB):
        v = ((x[row + j] - hi) - lo) * alpha
        if mode & 8:
            v = v * w[j]
        if mode & 16:
            v = v + b[j]
        out[row + j] = v


@cuda.jit
def _row_backward(dy, x, L, mean, rstd, w, mode, coef, out):
    """Block r: ``sum(w*dy)`` and ``sum(w*dy*(x - centre))`` over the row, the coefficients,
    then ``dx = w*dy*ka + (x - centre)*kb + kc`` (``mode`` & 1: layer norm's mean term)."""
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    row = r * L
    if t == 0:
        coef[0, r] = mean[r]
        coef[1, r] = mean[r] - float64(coef[0, r])
    cuda.syncthreads()
    hi = coef[0, r]
    lo = coef[1, r]
    s1 = 0.0
    s2 = 0.0
    for j in range(t, L, TPB):
        g = float64(dy[row + j])
        if mode & 8:
            g *= float64(w[j])
        s1 += g
        s2 += g * float64((x[row + j] - hi) - lo)
    sh1 = cuda.shared.array(TPB, float64)
    sh2 = cuda.shared.array(TPB, float64)
    sh1[t] = s1
    sh2[t] = s2
    cuda.syncthreads()
    _sum_pairs(sh1, sh2, t, TPB, 0, 1)
    if t == 0:
        rs = rstd[r]
        coef[2, r] = rs
        coef[3, r] = -rs * rs * (sh2[0] * rs / L)
        coef[4, r] = -rs * (sh1[0] / L) if mode & 1 else 0.0
    cuda.syncthreads()
    ka = coef[2, r]
    kb = coef[3, r]
    kc = coef[4, r]
    for j in range(t, L, TPB):
        g = dy[row + j] * ka  # first by a coefficient: float16 data computes in its float32
        if mode & 8:
            g = g * w[j]
        out[row + j] = g + ((x[row + j] - hi) - lo) * kb + kc


@cuda.jit
def _row_param_grads(dy, x, R, L, coef, RB, partial, counter, grad_weight, grad_bias, mode):
    """Block (row block rb, tile of TPB columns): column sums of ``dy*(x - centre)*rstd`` and
    ``dy`` over the rows of rb; the tile's last block adds the row blocks' sums (``mode`` & 8:
    the weight gradient, & 16: the bias gradient)."""
    rb = cuda.blockIdx.x
    tile = cuda.blockIdx.y
    t = cuda.threadIdx.x
    j = tile * TPB + t
    flag = cuda.shared.array(1, np.int32)
    first, last = _span(rb, RB, R)
    if j < L:
        s1 = 0.0
        s2 = 0.0
        for r in range(first, last):
            g = float64(dy[r * L + j])
            s1 += g * float64((x[r * L + j] - coef[0, r]) - coef[1, r]) * coef[2, r]
            s2 += g
        partial[0, rb, j] = s1
        partial[1, rb, j] = s2
        cuda.threadfence()
    cuda.syncthreads()
    if not _last_block(counter, tile, RB, flag):
        return
    if j < L:
        s1 = 0.0
        s2 = 0.0
        for k in range(RB):
            s1 += partial[0, k, j]
            s2 += partial[1, k, j]
        if mode & 8:
            grad_weight[j] = s1
        if mode & 16:
            grad_bias[j] = s2


# -- any layout: groups and broadcast parameters described by shapes and element strides ----------
#
# A grouping of a C-contiguous input is two shapes of its rank: ``gshape`` (1 along the reduced
# axes) numbers the groups in C order -- the flat index of a keepdims-shaped result -- and
# ``rshape`` (1 along the kept axes) numbers a group's elements.  Every other operand (statistics,
# parameters) is addressed by element strides over the input's axes, 0 along the axes it is
# broadcast over.  Shapes and strides are tuples (kernel scalars), so no index array is copied.

@cuda.jit(device=True)
def _offsets(i, shape, s1, s2, s3, s4):
    """Offsets in four operands of strides ``s1``..``s4`` of the C-order index ``i`` of ``shape``."""
    o1 = 0
    o2 = 0
    o3 = 0
    o4 = 0
    for d in range(len(shape) - 1, -1, -1):
        k = i % shape[d]
        i //= shape[d]
        o1 += k * s1[d]
        o2 += k * s2[d]
        o3 += k * s3[d]
        o4 += k * s4[d]
    return o1, o2, o3, o4


@cuda.jit
def _strided_stats(x, gshape, rshape, xs, P, partial, counter, eps, mode, count, mean, spread, rstd):
    """Block (group gi, piece p): Welford over the piece; the group's last block merges the pieces
    and writes the group's mean, ``spread`` (the biased variance, or M2 with ``mode`` & 2),
    ``count`` (``mode`` & 1) and ``rstd`` (``mode`` & 4)."""
    gi = cuda.blockIdx.x // P
    p = cuda.blockIdx.x - gi * P
    t = cuda.threadIdx.x
    base, _, _, _ = _offsets(gi, gshape, xs, xs, xs, xs)
    per_group = 1
    for d in range(len(rshape)):
        per_group *= rshape[d]
    start, stop = _span(p, P, per_group)
    n = 0.0
    mu = 0.0
    q = 0.0
    for e in range(start + t, stop, TPB):
        o, _, _, _ = _offsets(e, rshape, xs, xs, xs, xs)
        n, mu, q = _welford(n, mu, q, float64(x[base + o]))
    if not _piece_state(n, mu, q, partial, gi, p, P, counter):
        return
    if t == 0:
        n, mu, q = _merged_pieces(partial, gi, P)
        v = q / n if n > 0.0 else math.nan
        mean[gi] = mu
        spread[gi] = q if mode & 2 else v
        if mode & 1:
            count[gi] = n
        if mode & 4:
            rstd[gi] = _rsqrt(v + eps)


@cuda.jit
def _strided_sums(dy, x, gshape, rshape, xs, ss, ws, P, mean, rstd, w, mode, partial, counter, per_group, out1,
                  out2):
    """Block (group gi, piece p): ``s1 = sum(g)`` and ``s2 = sum(g*xc)``, ``g = dy`` (times the
    weight, ``mode`` & 8) and ``xc = x - mean`` (times rstd, ``mode`` & 2), the statistics and
    the weight at their strides.  The group's last block writes, with ``mode`` & 1 (groups are
    the statistics' own), the input-gradient coefficients ``out1 = -rstd**3*s2/n`` and ``out2 =
    -rstd*s1/n``; otherwise the parameter gradients ``out1 = s2`` (``mode`` & 16) and ``out2 =
    s1`` (``mode`` & 32)."""
    gi = cuda.blockIdx.x // P
    p = cuda.blockIdx.x - gi * P
    t = cuda.threadIdx.x
    bx, bs, bw, _ = _offsets(gi, gshape, xs, ss, ws, ws)
    elements = 1
    for d in range(len(rshape)):
        elements *= rshape[d]
    start, stop = _span(p, P, elements)
    s1 = 0.0
    s2 = 0.0
    for e in range(start + t, stop, TPB):
        ox, os_, ow, _ = _offsets(e, rshape, xs, ss, ws, ws)
        i = bx + ox
        si = bs + os_
        g = float64(dy[i])
        if mode & 8:
            g *= float64(w[bw + ow])
        xc = float64(x[i]) - float64(mean[si])
        if mode & 2:
            xc *= float64(rstd[si])
        s1 += g
        s2 += g * xc
    if not _piece_sums(s1, s2, partial, gi, p, P, counter):
        return
    if t == 0:
        s1, s2 = _summed_pieces(partial, gi, P)
        if mode & 1:
            r = float64(rstd[gi])
            out1[gi] = -r * r * r * s2 / per_group
            out2[gi] = -r * s1 / per_group
        else:
            if mode & 16:
                out1[gi] = s2
            if mode & 32:
                out2[gi] = s1


@cuda.jit
def _broadcast_affine(x, shape, ms, as_, ws, bs, mean, scale, w, b, eps, mode, out):
    """``y = (x - mean)*alpha*w + b`` over a C-contiguous ``x`` of ``shape``, every other operand
    at its strides: ``alpha = scale``, or ``1/sqrt(scale + eps)`` with ``mode`` & 1 (a
    variance); ``mode`` & 8: a weight, & 16: a bias.  In float64, stored in out's dtype."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        om, oa, ow, ob = _offsets(i, shape, ms, as_, ws, bs)
        a = float64(scale[oa])
        if mode & 1:
            a = _rsqrt(a + eps)
        if mode & 8:
            a *= float64(w[ow])
        v = (float64(x[i]) - float64(mean[om])) * a
        if mode & 16:
            v += float64(b[ob])
        out[i] = v


@cuda.jit
def _broadcast_input_grad(dy, x, shape, ss, ws, mean, rstd, w, kb, kc, mode, out):
    """``dx = dy*w*rstd + (x - mean)*kb + kc``, the statistics and coefficients at ``ss``, the
    weight (``mode`` & 8) at ``ws``."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        o, ow, _, _ = _offsets(i, shape, ss, ws, ss, ss)
        g = float64(dy[i])
        if mode & 8:
            g *= float64(w[ow])
        out[i] = g * rstd[o] + (float64(x[i]) - mean[o]) * kb[o] + kc[o]


# -- switchable norm: instance statistics merged into layer and batch terms, mixed, on the device --

@cuda.jit(device=True)
def _softmax3(z, terms):
    """Softmax of the ``terms`` (2 or 3) logits ``z``, the third 0 when there are two."""
    top = float64(z[0])
    for k in range(1, terms):
        top = max(top, float64(z[k]))
    e0 = math.exp(float64(z[0]) - top)
    e1 = math.exp(float64(z[1]) - top)
    e2 = math.exp(float64(z[2]) - top) if terms == 3 else 0.0
    s = e0 + e1 + e2
    return e0 / s, e1 / s, e2 / s


@cuda.jit
def _switchable_mix(N, C, terms, mean_in, var_in, mean_logits, var_logits, ln, bn, eps, mode, w, b,
                    running_mean, running_var, nbt, momentum, bessel, means, variances, mean, rstd, coef):
    """One block: the layer (per sample, over channels) and batch (per channel, over samples)
    terms merged from the instance statistics (equal counts: Chan's formula is the mean of the
    means and of ``var + (mean - merged)**2``), or the batch term from the running statistics
    (``mode`` & 1 unset); each cell's terms, the mixtures, rstd and the affine coefficients
    (hi, lo, alpha, beta) for ``_grid_apply``; then the running statistics (``mode`` & 2; & 4: a
    device ``nbt``, momentum < 0: the cumulative average)."""
    t = cuda.threadIdx.x
    pm0, pm1, pm2 = _softmax3(mean_logits, terms)
    pv0, pv1, pv2 = _softmax3(var_logits, terms)
    for n in range(t, N, TPB):
        m = 0.0
        for c in range(C):
            m += mean_in[n * C + c]
        m /= C
        v = 0.0
        for c in range(C):
            d = mean_in[n * C + c] - m
            v += var_in[n * C + c] + d * d
        ln[0, n] = m
        ln[1, n] = v / C
    if terms == 3:
        for c in range(t, C, TPB):
            if mode & 1:
                m = 0.0
                for n in range(N):
                    m += mean_in[n * C + c]
                m /= N
                v = 0.0
                for n in range(N):
                    d = mean_in[n * C + c] - m
                    v += var_in[n * C + c] + d * d
                bn[0, c] = m
                bn[1, c] = v / N
            else:
                bn[0, c] = running_mean[c]
                bn[1, c] = running_var[c]
    cuda.syncthreads()
    for cell in range(t, N * C, TPB):
        n = cell // C
        c = cell - n * C
        m0 = mean_in[cell]
        v0 = var_in[cell]
        m1 = ln[0, n]
        v1 = ln[1, n]
        means[0, cell] = m0
        means[1, cell] = m1
        variances[0, cell] = v0
        variances[1, cell] = v1
        mu = pm0 * m0 + pm1 * m1
        var = pv0 * v0 + pv1 * v1
        if terms == 3:
            means[2, cell] = bn[0, c]
            variances[2, cell] = bn[1, c]
            mu += pm2 * bn[0, c]
            var += pv2 * bn[1, c]
        r = _rsqrt(var + eps)
        mean[cell] = mu
        rstd[cell] = r
        coef[0, cell] = mu
        coef[1, cell] = mu - float64(coef[0, cell])
        coef[2, cell] = r * w[c] if mode & 8 else r
        coef[3, cell] = b[c] if mode & 16 else 0.0
    if not mode & 2:
        return
    m = momentum
    if mode & 4:
        if t == 0:
            nbt[0] += 1
        cuda.syncthreads()
        if m < 0.0:
            m = 1.0 / float64(nbt[0])
    elif m < 0.0:
        m = 1.0
    for c in range(t, C, TPB):
        running_mean[c] = (1.0 - m) * float64(running_mean[c]) + m * bn[0, c]
        running_var[c] = (1.0 - m) * float64(running_var[c]) + m * bn[1, c] * bessel


@cuda.jit
def _switchable_grads(N, C, spatial, terms, mode, cellsum, mean, rstd, means, variances, w, mean_logits,
                      var_logits, dstat, rows, cols, coef, grad_mean_logits, grad_var_logits):
    """One block, after ``_grid_sums`` left each cell's ``sum(dy)`` and ``sum(dy*(x - mean))``:
    dL/dmean and dL/dvar per cell, summed per sample (layer term) and per channel (batch term,
    ``mode`` & 1: from the batch), the input-gradient coefficients (hi, lo, ka, kb, kc) around
    the instance mean for ``_grid_input_grad``, and the logits' gradients through the softmax
    Jacobian (``mode`` & 8: a weight)."""
    t = cuda.threadIdx.x
    pm0, pm1, pm2 = _softmax3(mean_logits, terms)
    pv0, pv1, pv2 = _softmax3(var_logits, terms)
    cells = N * C
    for cell in range(t, cells, TPB):
        c = cell % C
        r = rstd[cell]
        wc = float64(w[c]) if mode & 8 else 1.0
        dstat[0, cell] = -r * wc * cellsum[0, cell]
        dstat[1, cell] = -0.5 * r * r * r * wc * cellsum[1, cell]
    cuda.syncthreads()
    for n in range(t, N, TPB):
        a = 0.0
        v = 0.0
        for c in range(C):
            a += dstat[0, n * C + c]
            v += dstat[1, n * C + c]
        rows[0, n] = a
        rows[1, n] = v
    for c in range(t, C, TPB):
        a = 0.0
        v = 0.0
        for n in range(N):
            a += dstat[0, n * C + c]
            v += dstat[1, n * C + c]
        cols[0, c] = a
        cols[1, c] = v
    cuda.syncthreads()
    sizes1 = float64(C * spatial)
    sizes2 = float64(N * spatial)
    acc = cuda.shared.array((6, TPB), float64)
    for k in range(6):
        acc[k, t] = 0.0
    for cell in range(t, cells, TPB):
        n = cell // C
        c = cell - n * C
        centre = means[0, cell]
        kb0 = pv0 * 2.0 * dstat[1, cell] / spatial
        kb1 = pv1 * 2.0 * rows[1, n] / sizes1
        kb = kb0 + kb1
        kc = pm0 * dstat[0, cell] / spatial + pm1 * rows[0, n] / sizes1 + kb1 * (centre - means[1, cell])
        if terms == 3 and mode & 1:
            kb2 = pv2 * 2.0 * cols[1, c] / sizes2
            kb += kb2
            kc += pm2 * cols[0, c] / sizes2 + kb2 * (centre - means[2, cell])
        r = rstd[cell]
        coef[0, cell] = centre
        coef[1, cell] = centre - float64(coef[0, cell])
        coef[2, cell] = r * w[c] if mode & 8 else r
        coef[3, cell] = kb
        coef[4, cell] = kc
        mu = mean[cell]
        var = pv0 * variances[0, cell] + pv1 * variances[1, cell]
        if terms == 3:
            var += pv2 * variances[2, cell]
        dm = dstat[0, cell]
        dv = dstat[1, cell]
        acc[0, t] += dm * (means[0, cell] - mu)
        acc[1, t] += dm * (means[1, cell] - mu)
        acc[3, t] += dv * (variances[0, cell] - var)
        acc[4, t] += dv * (variances[1, cell] - var)
        if terms == 3:
            acc[2, t] += dm * (means[2, cell] - mu)
            acc[5, t] += dv * (variances[2, cell] - var)
    cuda.syncthreads()
    s = TPB // 2
    while s > 0:
        if t < s:
            for k in range(6):
                acc[k, t] += acc[k, t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0:
        gm = pm0 * acc[0, 0] + pm1 * acc[1, 0] + pm2 * acc[2, 0]
        gv = pv0 * acc[3, 0] + pv1 * acc[4, 0] + pv2 * acc[5, 0]
        grad_mean_logits[0] = pm0 * (acc[0, 0] - gm)
        grad_mean_logits[1] = pm1 * (acc[1, 0] - gm)
        grad_var_logits[0] = pv0 * (acc[3, 0] - gv)
        grad_var_logits[1] = pv1 * (acc[4, 0] - gv)
        if terms == 3:
            grad_mean_logits[2] = pm2 * (acc[2, 0] - gm)
            grad_var_logits[2] = pv2 * (acc[5, 0] - gv)


# -- the device -------------------------------------------------------------------------------------

def _compute(dtype):
    """The coefficients' dtype, which the elementwise passes compute in: float16 data is loaded
    into float32 arithmetic (``x - coef`` promotes) and rounded to float16 on the store."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def _blocks(n):
    return max(1, min(MAX_BLOCKS, -(-n // TPB)))


def _arg_type(value):
    """A launch argument's Numba type, as ``Device.launch``'s key: a device array's (cached)
    ``_numba_type_``, a scalar's Python type, a tuple's element types."""
    kind = type(value)
    if kind is int or kind is float:
        return kind
    if kind is tuple:
        return (tuple, *map(type, value))
    return getattr(value, "_numba_type_", kind)


def _pieces(groups, per_group):
    """Pieces per group for a reduction: enough blocks in all, a few elements per thread each."""
    return int(max(1, min(-(-TARGET_BLOCKS // max(groups, 1)), per_group // (4 * TPB))))


class Device:
    """A CUDA device's pipelines, on Numba device arrays (flat, C order) and kernel scalars.

    Scratch buffers (partial states, tickets, coefficients) are cached per role on this device
    and grown when needed (not per stream: a call captured into a CUDA graph on a side stream
    must find them allocated by the warm-up; calls on two streams at once would share them); ticket counters start at zero once and reset themselves, so a call
    allocates only its results (in the input's library, see ``_cuda``) and copies nothing."""

    def __init__(self):
        self._scratch = {}
        self._absent = {}
        self._configured = {}
        self._specialized = {}

    # -- buffers --------------------------------------------------------------------------
    def scratch(self, role, shape, dtype, stream=0):
        key = (role, np.dtype(dtype), len(shape))
        buf = self._scratch.get(key)
        if buf is None or any(have < want for have, want in zip(buf.shape, shape)):
            grown = tuple(max(s, 2 * (buf.shape[i] if buf is not None else 0)) for i, s in enumerate(shape))
            buf = cuda.device_array(grown, dtype, stream=stream)
            self._scratch[key] = buf
        return buf

    def counter(self, size, stream=0):
        """Ticket counters, zero between calls (allocated and zeroed once, then self-resetting)."""
        key = "counter"
        buf = self._scratch.get(key)
        if buf is None or buf.shape[0] < size:
            buf = cuda.to_device(np.zeros(max(size, 1024), np.uint32), stream=stream)
            self._scratch[key] = buf
        return buf

    def absent(self, dtype):
        """A one-element stand-in for an absent array argument (kernels take no None)."""
        key = np.dtype(dtype)
        if key not in self._absent:
            self._absent[key] = cuda.device_array(1, key)
        return self._absent[key]

    # -- launching --------------------------------------------------------------------------
    def launch(self, kernel, grid, block, stream, *args):
        """Launch ``kernel`` on ``stream``, its arguments handed over as ``LAUNCH`` says.

        * "typed": the lazy dispatcher types every argument at every launch (Numba's C typing,
          which for a device array goes through its ``_numba_type_``) and looks up the overload.
        * "specialized" (default): the kernel is compiled once per (kernel, argument types) with
          an explicit signature -- ``kernel.specialize(*args)``, kept here -- and that
          single-signature dispatcher launches without typing or overload lookup.  The key is
          each argument's Numba type (a device array's cached ``_numba_type_``: dtype, ndim and
          layout; a scalar's Python type; a tuple's element types), the same types
          ``specialize`` compiles for, so a key never meets a kernel of other types.
        * "direct": the specialization's one compiled kernel (``overloads``, numba-cuda's private
          ``_Kernel``) launched by its own ``launch`` with the configured object's normalized
          dims and stream, which skips the dispatcher's ``call`` (argument push, launch-config
          checks, callbacks).

        Raw-pointer arguments (``CPointer`` + ``carray``, one parameter per array) would need
        kernels of their own; tools/gpu_host_time.py measures them on a toy kernel beside these.
        Which mode is cheapest is a host-time question that only a GPU answers (the issue asks
        for the variants measured side by side), hence the switch.  In the simulator
        ``specialize`` returns the kernel itself and there is no compiled kernel, so "direct"
        runs as "specialized"; configuring there mutates the kernel object, so nothing
        configured is kept.  On a GPU the configured objects are kept per (kernel, grid, block,
        stream) rather than in numba-cuda's one 128-entry LRU shared by all kernels."""
        mode = LAUNCH
        if mode != "typed":
            key = (kernel, tuple(map(_arg_type, args)))
            specialized = self._specialized.get(key)
            if specialized is None:
                if len(self._specialized) > 4096:
                    self._specialized.clear()
                specialized = self._specialized[key] = kernel.specialize(*args)
            kernel = specialized
        if SIMULATOR:
            kernel[grid, block, stream](*args)
            return
        configured = self._configured.get((kernel, grid, block, stream, mode))
        if configured is None:
            configured = self._configure(kernel, grid, block, stream, mode)
        if mode == "direct":
            compiled, config = configured
            compiled.launch(args, config.griddim, config.blockdim, config.stream, config.sharedmem)
        else:
            configured(*args)

    def _configure(self, kernel, grid, block, stream, mode):
        """GPU only: the configured launch object (with "direct", the compiled kernel beside it)."""
        if mode not in CUDA_LAUNCH_MODES:
            raise ValueError(f"LAUNCH must be one of {', '.join(CUDA_LAUNCH_MODES)}, got {mode!r}")
        if len(self._configured) > 4096:
            self._configured.clear()
        configured = kernel[grid, block, stream]
        if mode == "direct":
            configured = (next(iter(kernel.overloads.values())), configured)
        self._configured[(kernel, grid, block, stream, mode)] = configured
        return configured

    # -- pipelines --------------------------------------------------------------------------
    def grid_forward(self, x, out, geometry, weight, bias, eps, mean, var, rstd, stream=0, running=None):
        """Batch statistics per group, the affine coefficients and the running update in one
        launch (the last blocks finalize), then the normalizing pass: 2 launches.

        ``geometry`` = (A, C, S, apn, G); ``mean``/``var``/``rstd`` (groups,) float64 results;
        ``running`` = (running_mean, running_var, nbt or None, momentum (< 0: cumulative),
        bessel) or None."""
        A, C, S, apn, G = geometry
        groups = (A // apn) * G
        per_group = apn * (C // G) * S
        P = _pieces(groups, per_group)
        partial = self.scratch("partial3", (3, groups * P), np.float64, stream)
        counter = self.counter(groups + 1, stream)
        cells = (A // apn) * C
        coef = self.scratch("coef4", (4, cells), _compute(x.dtype), stream)
        f64 = self.absent(np.float64)
        mode = 1 | (8 if weight is not None else 0) | (16 if bias is not None else 0)
        if running is not None:
            rm, rv, nbt, momentum, bessel = running
            mode |= 2 | (4 if nbt is not None else 0)
        else:
            rm = rv = f64
            nbt, momentum, bessel = None, 0.0, 1.0
        w = weight if weight is not None else f64
        b = bias if bias is not None else f64
        nbt = nbt if nbt is not None else self.absent(np.int64)
        self.launch(_grid_stats, groups * P, TPB, stream, x, C, S, apn, G, P, partial, counter, mean, var, rstd,
                    coef, w, b, eps, mode, rm, rv, nbt, float(momentum), float(bessel))
        self.launch(_grid_apply, _blocks(x.shape[0]), TPB, stream, x, C, S, apn, coef, out)

    def grid_forward_running(self, x, out, geometry, weight, bias, eps, rm, rv, mean, rstd, stream=0):
        """Normalize with running statistics: 1 launch."""
        A, C, S, apn, G = geometry
        f64 = self.absent(np.float64)
        mode = (8 if weight is not None else 0) | (16 if bias is not None else 0)
        self.launch(_grid_apply_running, _blocks(max(x.shape[0], mean.shape[0])), TPB, stream, x, C, S, apn, rm, rv,
                    weight if weight is not None else f64, bias if bias is not None else f64, eps, mode, out,
                    mean, rstd)

    def grid_backward(self, dy, x, out, geometry, mean, rstd, weight, batch_stats, grad_weight, grad_bias,
                      stream=0):
        """Per-(sample, channel) sums, finalized into the coefficients and the weight/bias
        gradients by the last block, then the input gradient: 2 launches."""
        A, C, S, apn, G = geometry
        cells = (A // apn) * C
        per_cell = apn * S
        P = _pieces(cells, per_cell)
        partial = self.scratch("partial2", (2, cells * P), np.float64, stream)
        cellsum = self.scratch("cellsum", (2, cells), np.float64, stream)
        group_sums = self.scratch("groupsums", (2, rstd.shape[0]), np.float64, stream)
        counter = self.counter(cells + 1, stream)
        coef = self.scratch("coef5", (5, cells), _compute(x.dtype), stream)
        f64 = self.absent(np.float64)
        mode = (1 if batch_stats else 0) | (8 if weight is not None else 0)
        mode |= 16 if grad_bias is not None else 0
        self.launch(_grid_sums, cells * P, TPB, stream, dy, x, C, S, apn, G, P, mean, rstd,
                    weight if weight is not None else f64, mode, partial, counter, cellsum, coef, group_sums,
                    grad_weight if grad_weight is not None else f64, grad_bias if grad_bias is not None else f64,
                    float(apn * (C // G) * S))
        self.launch(_grid_input_grad, _blocks(x.shape[0]), TPB, stream, dy, x, C, S, apn, coef, out)

    def moments(self, x, geometry, mean, var, stream=0):
        """Mean and biased variance per (sample, channel) cell of ``geometry`` (G = C): 1 launch."""
        A, C, S, apn, G = geometry
        groups = (A // apn) * G
        P = _pieces(groups, apn * (C // G) * S)
        partial = self.scratch("partial3", (3, groups * P), np.float64, stream)
        counter = self.counter(groups + 1, stream)
        rstd = self.scratch("rstd", (groups,), np.float64, stream)
        f64 = self.absent(np.float64)
        self.launch(_grid_stats, groups * P, TPB, stream, x, C, S, apn, G, P, partial, counter, mean, var, rstd,
                    f64, f64, f64, 0.0, 0, f64, f64, self.absent(np.int64), 0.0, 1.0)

    def row_forward(self, x, out, rows, length, weight, bias, eps, centered, mean, rstd, stream=0):
        """Layer norm (``centered``) or RMS norm of each row (``out`` None: the statistics only):
        1 launch."""
        coef = self.scratch("coef5", (5, rows), _compute(x.dtype), stream)
        f64 = self.absent(np.float64)
        mode = (1 if centered else 0) | (8 if weight is not None else 0) | (16 if bias is not None else 0)
        mode |= 32 if out is None else 0
        self.launch(_row_forward, rows, TPB, stream, x, length, weight if weight is not None else f64,
                    bias if bias is not None else f64, mode, eps, coef, out if out is not None else x, mean, rstd)

    def row_backward(self, dy, x, out, rows, length, mean, rstd, weight, centered, grad_weight, grad_bias,
                     stream=0):
        """The input gradient per row (1 launch), then the weight/bias gradients as column sums
        over blocks of rows, added by each column tile's last block (1 more launch, only when
        wanted)."""
        coef = self.scratch("coef5", (5, rows), _compute(x.dtype), stream)
        f64 = self.absent(np.float64)
        mode = (1 if centered else 0) | (8 if weight is not None else 0)
        self.launch(_row_backward, rows, TPB, stream, dy, x, length, mean, rstd,
                    weight if weight is not None else f64, mode, coef, out)
        if grad_weight is None and grad_bias is None:
            return
        RB = int(max(1, min(rows, 256)))
        tiles = -(-length // TPB)
        partial = self.scratch("colpartial", (2, RB, length), np.float64, stream)
        counter = self.counter(tiles, stream)
        mode = (8 if grad_weight is not None else 0) | (16 if grad_bias is not None else 0)
        self.launch(_row_param_grads, (RB, tiles), TPB, stream, dy, x, rows, length, coef, RB, partial, counter,
                    grad_weight if grad_weight is not None else f64, grad_bias if grad_bias is not None else f64,
                    mode)

    def strided_stats(self, x, grouping, eps, mean, spread, rstd=None, count=None, m2=False, stream=0):
        """Mean and biased variance (M2 with ``m2``), the count and ``1/sqrt(var + eps)`` when
        given, per group of ``grouping`` = (gshape, rshape, x strides): 1 launch."""
        gshape, rshape, xs = grouping
        groups, per_group = math.prod(gshape), math.prod(rshape)
        P = _pieces(groups, per_group)
        partial = self.scratch("partial3", (3, groups * P), np.float64, stream)
        counter = self.counter(groups, stream)
        f64 = self.absent(np.float64)
        mode = (1 if count is not None else 0) | (2 if m2 else 0) | (4 if rstd is not None else 0)
        self.launch(_strided_stats, groups * P, TPB, stream, x, gshape, rshape, xs, P, partial, counter, float(eps),
                    mode, count if count is not None else f64, mean, spread, rstd if rstd is not None else f64)

    def strided_sums(self, dy, x, grouping, stat_strides, weight_strides, mean, rstd, weight, out1, out2,
                     coefficients, scaled, stream=0):
        """Two sums per group of ``grouping`` (see ``_strided_sums``): the input-gradient
        coefficients of each statistic (``coefficients``) or the parameter gradients: 1 launch."""
        gshape, rshape, xs = grouping
        groups, per_group = math.prod(gshape), math.prod(rshape)
        P = _pieces(groups, per_group)
        partial = self.scratch("partial2", (2, groups * P), np.float64, stream)
        counter = self.counter(groups, stream)
        f64 = self.absent(np.float64)
        mode = (1 if coefficients else 0) | (2 if scaled else 0) | (8 if weight is not None else 0)
        mode |= (16 if out1 is not None else 0) | (32 if out2 is not None else 0)
        self.launch(_strided_sums, groups * P, TPB, stream, dy, x, gshape, rshape, xs, stat_strides, weight_strides,
                    P, mean, rstd, weight if weight is not None else f64, mode, partial, counter, float(per_group),
                    out1 if out1 is not None else f64, out2 if out2 is not None else f64)

    def broadcast_affine(self, x, out, shape, mean, scale, weight, bias, strides, eps, scale_is_variance,
                         stream=0):
        """``(x - mean)*scale*weight + bias`` with each operand at its strides (``strides`` =
        mean, scale, weight, bias): 1 launch."""
        f64 = self.absent(np.float64)
        mode = (1 if scale_is_variance else 0) | (8 if weight is not None else 0) | (16 if bias is not None else 0)
        self.launch(_broadcast_affine, _blocks(x.shape[0]), TPB, stream, x, shape, *strides, mean, scale,
                    weight if weight is not None else f64, bias if bias is not None else f64, float(eps), mode, out)

    def broadcast_input_grad(self, dy, x, out, shape, stat_strides, weight_strides, mean, rstd, weight, kb, kc,
                             stream=0):
        f64 = self.absent(np.float64)
        self.launch(_broadcast_input_grad, _blocks(x.shape[0]), TPB, stream, dy, x, shape, stat_strides,
                    weight_strides, mean, rstd, weight if weight is not None else f64, kb, kc,
                    8 if weight is not None else 0, out)

    def switchable_forward(self, x, out, geometry, mean_logits, var_logits, terms, weight, bias, eps, means,
                           variances, mean, rstd, stream=0, running=None, eval_running=None):
        """Instance statistics (1 launch), their merge into the layer and batch terms, the
        mixtures and the running update in one block (1 launch), then the normalizing pass: 3
        launches.  ``running`` as ``grid_forward``'s; ``eval_running`` = (running_mean,
        running_var) for a batch term from the running statistics."""
        A, C, S, apn, G = geometry
        N = A // apn
        cells = N * C
        in_mean = self.scratch("sw_mean", (cells,), np.float64, stream)
        in_var = self.scratch("sw_var", (cells,), np.float64, stream)
        self.moments(x, geometry, in_mean, in_var, stream)
        ln = self.scratch("sw_rows", (2, N), np.float64, stream)
        bn = self.scratch("sw_cols", (2, C), np.float64, stream)
        coef = self.scratch("coef4", (4, cells), _compute(x.dtype), stream)
        f64 = self.absent(np.float64)
        mode = (8 if weight is not None else 0) | (16 if bias is not None else 0)
        rm = rv = f64
        nbt, momentum, bessel = None, 0.0, 1.0
        if eval_running is not None:
            rm, rv = eval_running
        else:
            mode |= 1
        if running is not None:
            rm, rv, nbt, momentum, bessel = running
            mode |= 2 | (4 if nbt is not None else 0)
        self.launch(_switchable_mix, 1, TPB, stream, N, C, terms, in_mean, in_var, mean_logits, var_logits, ln, bn,
                    float(eps), mode, weight if weight is not None else f64, bias if bias is not None else f64, rm,
                    rv, nbt if nbt is not None else self.absent(np.int64), float(momentum), float(bessel), means,
                    variances, mean, rstd, coef)
        self.launch(_grid_apply, _blocks(x.shape[0]), TPB, stream, x, C, S, apn, coef, out)

    def switchable_backward(self, dy, x, out, geometry, mean, rstd, means, variances, mean_logits, var_logits,
                            terms, weight, batch_stats, grad_weight, grad_bias, grad_mean_logits, grad_var_logits,
                            stream=0):
        """Per-cell sums with the weight/bias gradients (``_grid_sums``, 1 launch), the mixture's
        coefficients and the logits' gradients in one block (1 launch), then the input gradient
        (1 launch): 3 launches."""
        A, C, S, apn, G = geometry
        N = A // apn
        cells = N * C
        P = _pieces(cells, apn * S)
        partial = self.scratch("partial2", (2, cells * P), np.float64, stream)
        cellsum = self.scratch("cellsum", (2, cells), np.float64, stream)
        group_sums = self.scratch("groupsums", (2, cells), np.float64, stream)
        counter = self.counter(cells + 1, stream)
        coef = self.scratch("coef5", (5, cells), _compute(x.dtype), stream)
        f64 = self.absent(np.float64)
        w = weight if weight is not None else f64
        mode = (8 if weight is not None else 0) | (16 if grad_bias is not None else 0)
        self.launch(_grid_sums, cells * P, TPB, stream, dy, x, C, S, apn, C, P, mean, rstd, w, mode, partial, counter,
                    cellsum, coef, group_sums, grad_weight if grad_weight is not None else f64,
                    grad_bias if grad_bias is not None else f64, float(apn * S))
        dstat = self.scratch("sw_dstat", (2, cells), np.float64, stream)
        rows = self.scratch("sw_rows", (2, N), np.float64, stream)
        cols = self.scratch("sw_cols", (2, C), np.float64, stream)
        mode = (1 if batch_stats else 0) | (8 if weight is not None else 0)
        self.launch(_switchable_grads, 1, TPB, stream, N, C, S * apn, terms, mode, cellsum, mean, rstd, means,
                    variances, w, mean_logits, var_logits, dstat, rows, cols, coef, grad_mean_logits,
                    grad_var_logits)
        self.launch(_grid_input_grad, _blocks(x.shape[0]), TPB, stream, dy, x, C, S, apn, coef, out)

_DEVICE: list = []


def device():
    """The CUDA device (one per process; scratch is kept per stream)."""
    if not _DEVICE:
        _DEVICE.append(Device())
    return _DEVICE[0]
