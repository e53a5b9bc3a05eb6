"""CPU kernels: Numba ``@njit(parallel=True)`` loops over two canonical views.

Every normalization is planned in Python (see ``_plan.py``) onto one of two C-contiguous views:

* rows ``(R, L)``: statistics or coefficients per row, the reduction runs along contiguous
  memory (NCHW batch/instance/group norm, layer norm, RMS norm);
* cols ``(A, B, C)``: statistics or coefficients per ``(a, c)``, the reduction runs across
  the ``B`` rows while the vector loop runs along the contiguous ``C`` (channels-last).

Each view has four kernels: moments, affine apply, gradient sums and input gradient (rows: with
or without layer norm's weight, whose gradient that pass also sums).  Work is
split into ``pieces`` along the reduced extent so that a few long rows still keep every thread
busy; partial results come back per piece and are merged by the caller.  Between the passes,
small serial loops (``merge_groups``, ``grid_coefficients``, ``grid_backward_coefficients``) turn
those partial results into the next pass's coefficients on the host, for every device.

Accuracy: a chunk that stays in L1 sums its deviations from a centre, and their squares, in the
input precision (these loops vectorise, and have no division per element).  The centre is the
previous chunk's mean, which neighbouring data rarely move far from; a chunk whose mean lies
further from it than the chunk's spread (the first chunk, drifting data, an outlier) takes a
second pass around its own mean, the "corrected two-pass" algorithm, whose deviation sum corrects
that mean for its own rounding.  Short rows (at most ROW_CHUNK) take one pass: float32 rows sum
their deviations from their first element in float64, exactly but for the sums' rounding, and
float64 rows theirs from the previous rows' mean when it lies within the row's spread, else from
their plain sum (see ``normalize_rows``).  The chunk results are merged in float64
with Chan's formula, so large offsets such as 1e4 + N(0, 1) in float32 keep their digits.

Elementwise passes subtract the centre before scaling, ``(x - mean) * a + b``, never
``x * a + (b - mean * a)``, which loses the digits that the offset occupies.  The centre is
passed as two numbers of the input precision, ``hi + lo`` (``lo`` the rounding error of ``hi``),
so float32 data are centred on a float64-accurate mean: ``(x - hi) - lo``.
"""

import platform

import numba
import numpy as np
from llvmlite import ir
from numba import literal_unroll, njit, prange, types
from numba.core import cgutils
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

from ._config import CACHE, ELEMENTWISE_FASTMATH, REDUCE_FASTMATH
from ._scalar import chan_merge, piece

ROW_CHUNK = 1024  # elements of one row per exact chunk (4 KiB of float32: L1-resident)
ROW_TILE = 8  # short rows whose statistics are taken together, pass by pass (see normalize_rows)
COL_CHUNK = 4096  # elements per exact chunk of the cols view (rows * C)
# ... and at most this many rows: each column's sums run down the rows one add after another in
# the input precision, so few channels (C = 2 and a row count too prime to fold) would otherwise
# sum 2048 float32 values in one chain (variance error 1.3e-5 on -1000 + 0.01 N(0, 1))
COL_CHUNK_ROWS = 256
FLUSH_ROWS = 32  # rows of layer-norm weight/bias gradient summed in the input precision
STREAM_ALIGN = 64  # bytes of one streamed vector, and the alignment its store needs
STREAM_BYTES = 8 << 20  # outputs at least this large are stored past the caches (see ``_streams``)
# ... and a row norm's input gradient only in rows at least this long: shorter rows gained nothing
# (256 float32 elements) or lost (128), the vector loop's start and the parameter terms' separate
# loop costing more per row than the stores save
STREAM_GRAD_ROW_BYTES = 2048
FUSED_ROW_BYTES = 1 << 20  # rows up to this size stay in L2 between the fused row kernels' two passes
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")

# Every kernel names its error model.  A function that leaves it unset inherits its caller's, and
# Numba keeps (in memory and on disk) the first compilation of each signature, whoever called it:
# the same kernel would be compiled with or without Python's checks depending on which call came
# first -- code that differs in speed (the checks add a test and a branch to every division) and
# in results (a float division by zero, eps = 0 on a constant row, raising ZeroDivisionError
# inside a parallel region instead of giving inf/NaN as NumPy does).
_numpy_errors = dict(cache=CACHE, error_model="numpy")  # the grid drivers and their serial steps
_jit = dict(_numpy_errors, fastmath=REDUCE_FASTMATH)  # kernels that reduce
_ew = dict(_numpy_errors, fastmath=ELEMENTWISE_FASTMATH)  # kernels that write elementwise


# The scalar helpers shared with the CUDA kernels live in _scalar.py; Numba's cache does not see
# that file, so its hash is kept here (checked by tests/test_scalar.py): editing it edits this file.
SCALAR_SHA256 = "f8641d116536acdc0652ba5ff0608b1160cd89ef8f4d183129927d2bca44cffb"


@njit(cache=False, error_model="numpy")  # it reads a runtime pointer, which Numba's disk cache cannot keep
def thread_count():
    """``numba.get_num_threads()`` for Python callers without the two locks the Python function
    takes per call; still thread-local."""
    return numba.get_num_threads()


_chan_merge = njit(inline="always", **_jit)(chan_merge)
_piece = njit(inline="always", **_jit)(piece)


@njit(**_jit)
def _plain_sum(v):
    """The first pass of the exact chunk statistics: the sum, in the input precision."""
    s = v.dtype.type(0)
    for i in range(v.shape[0]):
        s += v[i]
    return s


@njit(inline="always", **_jit)
def _corrected(k, guess, dev, sq, base):
    """(mean - base, M2) from the deviation sums around ``guess`` of k values: the sum of
    deviations corrects the guess for its own rounding (the "corrected two-pass" algorithm).
    The mean comes as an offset from ``base``, a float64 near it, so that it keeps digits below
    float64's resolution of ``base`` (see ``_span_moments``)."""
    inv_k = 1.0 / k
    dev64 = np.float64(dev)
    return (np.float64(guess) - base) + dev64 * inv_k, max(np.float64(sq) - dev64 * dev64 * inv_k, 0.0)


@njit(**_jit)
def _shifted_sums(chunk, shift):
    """``sum(x - shift)`` and ``sum((x - shift)**2)`` of ``chunk``, in the input precision."""
    dev = chunk.dtype.type(0)
    sq = chunk.dtype.type(0)
    for i in range(chunk.shape[0]):
        d = chunk[i] - shift
        dev += d
        sq += d * d
    return dev, sq


@njit(inline="always", **_jit)
def _moved(k, dev, sq):
    """Whether a chunk's mean lies further from the shift of its deviation sums than its spread:
    ``M2 = sq - dev**2 / k`` would then cancel more than one bit."""
    return 2.0 * np.float64(dev) * np.float64(dev) > k * np.float64(sq)


@njit(inline="always", **_jit)
def _near(k, dev, sq):
    """Whether a row's mean lies within its spread of the shift of its deviation sums, so that
    ``M2 = sq - dev**2 / k`` cancels at most one bit, and the sums are finite (False on NaN)."""
    return np.float64(sq) < np.inf and not _moved(k, dev, sq)


@njit(**_jit)
def _span_moments(v):
    """(count, base, offset, M2) of a contiguous 1-D span, the mean being ``base + offset``,
    chunk by chunk, merged with Chan's formula.

    A chunk takes one pass, its deviation sums around the previous chunk's mean: neighbouring
    chunks of a span have nearly the same mean.  A chunk whose mean moved further than its
    spread (the first chunk, data that drift, an outlier) takes a second pass around its own
    mean from L1, the exact corrected two-pass sum.  The chunk means are merged as offsets from
    the first chunk's mean (``base``): merging 1e8-sized float64 means would round each step's
    mean to float64 (a few ulps of 1e8 after tens of chunks), the small offsets keep every digit."""
    total = v.shape[0]
    n = 0.0
    mean = 0.0
    m2 = 0.0
    if total == 0:
        return n, 0.0, mean, m2  # an empty piece: merges as nothing
    dtype = v.dtype.type
    guess = v[0]
    base = 0.0
    for c0 in range(0, total, ROW_CHUNK):
        chunk = v[c0:c0 + ROW_CHUNK]
        k = chunk.shape[0]
        dev, sq = _shifted_sums(chunk, guess)
        if _moved(k, dev, sq):
            guess += dev / dtype(k)
            dev, sq = _shifted_sums(chunk, guess)
        if c0 == 0:
            base = np.float64(guess)
        chunk_mean, chunk_m2 = _corrected(k, guess, dev, sq, base)
        n, mean, m2 = _chan_merge(n, mean, m2, np.float64(k), chunk_mean, chunk_m2)
        guess = dtype(base + chunk_mean)
    return n, base, mean, m2


@njit(**_numpy_errors)
def merge_groups(count, mean, m2, group_of, n_out, mean_out, m2_out):
    """Merge (K, P, W) float64 states -- K outer indices, P pieces, W columns -- into groups,
    ``group_of[k, w]`` naming the group of every piece of (k, w) (Chan's formula for many parts)
    -- (G,) results.  The kernels' states come as they are: rows as (R, P, 1), cols as (A, P, W)
    with folded copies of a channel in several columns.

    The merged mean weighs the means' offsets from the group's first non-empty mean
    (``count*mean`` of 1e8-sized means would round away the digits that tell them apart); the
    merged M2 is the sum of the M2s plus the spread of the means around the merged mean."""
    groups = n_out.shape[0]
    first = np.zeros(groups)
    seen = np.zeros(groups, np.bool_)
    shift = np.zeros(groups)
    n_out[:] = 0.0
    outer, parts, width = count.shape
    for k in range(outer):
        for p in range(parts):
            for w in range(width):
                g = group_of[k, w]
                n = count[k, p, w]
                if n > 0:
                    if not seen[g]:
                        first[g] = mean[k, p, w]
                        seen[g] = True
                    n_out[g] += n
                    shift[g] += n * (mean[k, p, w] - first[g])
    for g in range(groups):
        mean_out[g] = first[g] + shift[g] / (n_out[g] if n_out[g] > 0 else 1.0)
        m2_out[g] = 0.0
    for k in range(outer):
        for p in range(parts):
            for w in range(width):
                n = count[k, p, w]
                if n > 0:
                    g = group_of[k, w]
                    d = mean[k, p, w] - mean_out[g]
                    m2_out[g] += m2[k, p, w] + n * d * d


@njit(**_numpy_errors)
def grid_coefficients(samples, channels, members, mean, rstd, weight, bias, coef):
    """The affine pass's coefficients from per-group statistics: at kernel outer position i,
    lying on sample ``samples[i]`` and channel ``channels[i]`` (group ``channel // members``),
    ``coef[:, i]`` = (hi, lo, alpha, beta) with ``hi + lo`` the group mean (see ``_split``),
    ``alpha = rstd * weight[c]`` and ``beta = bias[c]``.  ``mean``/``rstd`` are (1 or N, G).

    One compiled loop instead of a dozen NumPy calls on tiny arrays (expand to channels, scale,
    reorder, split, cast): those cost more than the kernels on small tensors."""
    dtype = coef.dtype.type
    per_sample = mean.shape[0] > 1
    for i in range(samples.shape[0]):
        c = channels[i]
        s = samples[i] if per_sample else 0
        g = c // members
        m = mean[s, g]
        hi = dtype(m)
        coef[0, i] = hi
        coef[1, i] = dtype(m - np.float64(hi))
        if weight is None:
            coef[2, i] = dtype(rstd[s, g])
        else:
            coef[2, i] = dtype(rstd[s, g] * weight[c])
        if bias is None:
            coef[3, i] = dtype(0)
        else:
            coef[3, i] = bias[c]


@njit(**_numpy_errors)
def grid_backward_coefficients(sums, samples, channels, members, per_group, rstd, weight, batch_stats, coef,
                               grad_weight, grad_bias):
    """The input gradient's coefficients from the gradient sums the kernels left, ``sums`` =
    (2, K, P, W) pieces of ``sum(dy)`` and ``sum(dy*(x - mean))`` at each outer position, which
    lies on sample ``samples[i]`` and channel ``channels[i]`` (flat position i = k*W + w).

    Writes ``coef[2:5]`` = (ka, kb, kc) for ``dx = dy*ka + (x - mean)*kb + kc`` -- with batch
    statistics ``dx = rstd*(w*dy - mean_g(w*dy) - xhat*mean_g(w*dy*xhat))``, ``per_group``
    values in a group; with running ones ``dx = rstd*w*dy`` -- and the per-channel gradients
    ``grad_weight = sum(dy*xhat)``, ``grad_bias = sum(dy)`` (float64, (C,))."""
    dtype = coef.dtype.type
    rows, groups = rstd.shape
    per_sample = rows > 1
    _, outer, parts, width = sums.shape
    mean_wdy = np.zeros((rows, groups))
    mean_wdy_xhat = np.zeros((rows, groups))
    grad_weight[:] = 0.0
    grad_bias[:] = 0.0
    for k in range(outer):
        for w in range(width):
            i = k * width + w
            c = channels[i]
            s = samples[i] if per_sample else 0
            g = c // members
            dy_sum = 0.0
            dyx_sum = 0.0
            for p in range(parts):
                dy_sum += sums[0, k, p, w]
                dyx_sum += sums[1, k, p, w]
            scale = 1.0 if weight is None else np.float64(weight[c])
            grad_bias[c] += dy_sum
            grad_weight[c] += dyx_sum * rstd[s, g]
            mean_wdy[s, g] += scale * dy_sum / per_group
            mean_wdy_xhat[s, g] += scale * dyx_sum * rstd[s, g] / per_group
    for i in range(samples.shape[0]):
        c = channels[i]
        s = samples[i] if per_sample else 0
        g = c // members
        r = rstd[s, g]
        coef[2, i] = dtype(r if weight is None else r * weight[c])
        if batch_stats:
            coef[3, i] = dtype(-r * r * mean_wdy_xhat[s, g])
            coef[4, i] = dtype(-r * mean_wdy[s, g])
        else:
            coef[3, i] = dtype(0)
            coef[4, i] = dtype(0)


@njit(parallel=True, **_jit)
def row_moments(x, pieces, count, mean, m2):
    """Per-(row, piece) Welford states of ``x`` (R, L) into float64 arrays of shape (R, pieces)."""
    rows, length = x.shape
    for task in prange(rows * pieces):
        r, p, start, stop = _piece(task, pieces, length)
        n, base, offset, q = _span_moments(x[r, start:stop])
        count[r, p], mean[r, p], m2[r, p] = n, base + offset, q


@njit(parallel=True, **_ew)
def row_affine(x, hi, lo, alpha, beta, weight, bias, pieces, out):
    """``out = ((x - center[r])*alpha[r] + beta[r])``, then ``* weight[l] + bias[l]`` if given."""
    rows, length = x.shape
    for task in prange(rows * pieces):
        r, p, start, stop = _piece(task, pieces, length)
        xs = x[r, start:stop]
        ys = out[r, start:stop]
        h = hi[r]
        l = lo[r]
        a = alpha[r]
        b = beta[r]
        if weight is None:
            for i in range(xs.shape[0]):
                ys[i] = ((xs[i] - h) - l) * a + b
        else:
            ws = weight[start:stop]
            bs = bias[start:stop]
            for i in range(xs.shape[0]):
                ys[i] = (((xs[i] - h) - l) * a + b) * ws[i] + bs[i]


@njit(parallel=True, **_jit)
def row_grad_sums(dy, x, hi, lo, weight, pieces, sum_dy, sum_dy_xc):
    """Per-(row, piece) ``sum(dy*w)`` and ``sum(dy*w*(x - center[r]))`` into float64 (R, pieces)."""
    rows, length = x.shape
    for task in prange(rows * pieces):
        r, p, start, stop = _piece(task, pieces, length)
        ws = None if weight is None else weight[start:stop]
        t1, t2 = _weighted_dot_sums(dy[r, start:stop], x[r, start:stop], ws, hi[r], lo[r])
        sum_dy[r, p] = t1
        sum_dy_xc[r, p] = t2


@njit(parallel=True, **_ew)
def row_input_grad(dy, x, hi, lo, ka, kb, kc, pieces, out):
    """``out = dy*ka[r] + (x - center[r])*kb[r] + kc[r]`` per row."""
    rows, length = x.shape
    for task in prange(rows * pieces):
        r, p, start, stop = _piece(task, pieces, length)
        xs = x[r, start:stop]
        gs = dy[r, start:stop]
        ys = out[r, start:stop]
        h = hi[r]
        l = lo[r]
        a = ka[r]
        b = kb[r]
        c = kc[r]
        for i in range(xs.shape[0]):
            ys[i] = gs[i] * a + ((xs[i] - h) - l) * b + c


@njit(inline="always", **_ew)
def _flush_param_grads(r, first, last, part_dy, part_dyx, acc_dy, acc_dyx):
    """Layer norm's weight and bias gradients, one numerical policy on every path: a block's rows
    are summed in the input precision, and every FLUSH_ROWS rows (and at the block's end) that
    partial sum is added into the float64 accumulators.  Per-element float64 accumulation would
    cost a conversion and a wide load/store per value."""
    if (r - first) % FLUSH_ROWS == FLUSH_ROWS - 1 or r == last - 1:
        for i in range(part_dy.shape[0]):
            acc_dy[i] += part_dy[i]
            acc_dyx[i] += part_dyx[i]
        part_dy[:] = 0
        part_dyx[:] = 0


@njit(inline="always", **_ew)
def _start_param_grads(acc_dy, acc_dyx, scratch):
    """A block's float64 accumulators zeroed, and its input-precision partial sums (``scratch``
    (2, L), handed in by the caller: buffers allocated inside the parallel loop came back
    unzeroed on a first call with Numba 0.68)."""
    acc_dy[:] = 0.0
    acc_dyx[:] = 0.0
    part_dy = scratch[0]
    part_dyx = scratch[1]
    part_dy[:] = 0
    part_dyx[:] = 0
    return part_dy, part_dyx


@njit(parallel=True, **_ew)
def row_input_grad_params(dy, x, hi, lo, ka, kb, kc, weight, blocks, out, weight_grad, bias_grad, scratch):
    """``out = dy*w*ka[r] + (x - center[r])*kb[r] + kc[r]`` per row (layer norm, ``ka`` the row's
    rstd), ``blocks`` tasks taking runs of rows, and in the same pass, while x and dy are in
    cache, the weight and bias gradients' partial sums ``sum_r dy*(x - center)*ka`` and
    ``sum_r dy``: one float64 row per block in ``weight_grad``/``bias_grad`` (blocks, L)."""
    rows = x.shape[0]
    for task in prange(blocks):
        _, _, first, last = _piece(task, blocks, rows)
        part_dy, part_dyx = _start_param_grads(bias_grad[task], weight_grad[task], scratch[task])
        for r in range(first, last):
            xs = x[r]
            gs = dy[r]
            ys = out[r]
            h = hi[r]
            l = lo[r]
            a = ka[r]
            b = kb[r]
            _input_grad_and_param_terms(gs, xs, weight, h, l, a, b, kc[r], ys, part_dy, part_dyx)
            _flush_param_grads(r, first, last, part_dy, part_dyx, bias_grad[task], weight_grad[task])


@njit(inline="always", **_ew)
def _input_grad_and_param_terms(gs, xs, weight, h, l, a, b, c, ys, part_dy, part_dyx):
    """A row's ``dx = dy*w*a + (x - (h + l))*b + c`` into ``ys`` and, in the same loop, its weight
    and bias gradient terms ``dy*(x - centre)*a`` and ``dy`` added to the partial sums."""
    for i in range(xs.shape[0]):
        g = gs[i]
        xc = (xs[i] - h) - l
        ys[i] = g * weight[i] * a + xc * b + c
        part_dy[i] += g
        part_dyx[i] += g * xc * a


@njit(inline="always", **_ew)
def _param_terms(gs, xs, h, l, a, part_dy, part_dyx):
    """``_input_grad_and_param_terms``'s parameter terms alone (its input gradient streamed)."""
    for i in range(xs.shape[0]):
        g = gs[i]
        part_dy[i] += g
        part_dyx[i] += g * ((xs[i] - h) - l) * a


# -- fused row kernels: a whole statistics row is normalized while it is still in cache ----------
#
# Layer norm rows and the (sample, group) rows of NCHW instance/group norm are short enough to stay
# in L1/L2 between the statistics and the elementwise pass, so memory is read once.  Parameters
# are ``W``/``B`` of shape (K, L // seg): row r uses ``W[r % K]``, constant over segments of
# ``seg`` elements (a channel's spatial extent); ``seg == 1`` is layer norm's per-element weight.


@njit(inline="always", **_jit)
def _split(base, offset, dtype):
    """The float64 ``base + offset`` as ``hi + lo`` of ``dtype``, lo holding what hi rounded off
    (for float64 input, digits below float64's resolution of the mean survive in lo)."""
    hi = dtype(base + offset)
    return hi, dtype((base - np.float64(hi)) + offset)


@njit(parallel=True, **_ew)
def row_normalize(x, weight, bias, seg, eps, centered, blocks, out, stats):
    """``out = (x - mean_r) / sqrt(var_r + eps) * W + B`` per row, the row's (biased) statistics
    computed first and returned in ``stats`` (3, R) float64: mean, var and rstd (one array: on
    the 16 K-64 K element calls this kernel serves, each argument's unboxing counts).  ``blocks``
    tasks take runs of rows (see ``normalize_rows``)."""
    rows = x.shape[0]
    for task in prange(blocks):
        _, _, first, last = _piece(task, blocks, rows)
        normalize_rows(x, weight, bias, seg, eps, centered, first, last, out, stats[0], stats[1], stats[2])


@njit(**_ew)
def row_normalize_viewed(x, rows, weight, bias, kinds, seg, eps, centered, blocks, out, stats):
    """`row_normalize` on ``x`` and ``out`` (C-contiguous, of any shape) seen as ``rows`` rows, and
    ``weight``/``bias`` (any shape) as ``kinds`` rows of theirs: the small lane's one call from
    Python for the views it would otherwise make there, each a measurable part of a call on
    16 K elements.  A strided parameter is copied (it has C or L // seg values)."""
    length = x.size // rows
    row_normalize(x.reshape((rows, length)), np.ascontiguousarray(weight).reshape((kinds, weight.size // kinds)),
                  np.ascontiguousarray(bias).reshape((kinds, bias.size // kinds)), seg, eps, centered, blocks,
                  out.reshape((rows, length)), stats)


@njit(**_ew)
def normalize_rows(x, weight, bias, seg, eps, centered, first, last, out, mean, var, rstd):
    """``row_normalize``'s rows ``first:last``, in this thread (the serial drivers take them all).
    Row r takes ``weight[r % K]``/``bias[r % K]`` of (K, L // seg), each value applied to ``seg``
    consecutive elements.

    ``centered=False`` is RMS norm: the centre is 0 and ``var`` the mean square, which is
    ``var + mean**2`` of the row -- a sum of two non-negative terms, no cancellation.

    Rows of at most ROW_CHUNK take one pass for their statistics.  float32 rows sum their
    deviations from their own first element in float64 (`_wide_shifted_sums`), each row on its
    own: no row waits for another's mean.  float64 rows are taken ROW_TILE at a time, pass by
    pass, their deviations summed around the previous tile's last mean: a row's statistics are
    then a chain of dependent steps -- deviations, M2, rstd -- and the rows of a tile give the
    core independent chains to overlap."""
    length = x.shape[1]
    dtype = x.dtype.type
    streamed = _streams_rows(out, seg)
    if not 0 < length <= ROW_CHUNK:
        for r in range(first, last):
            n, base, offset, m2 = _span_moments(x[r])
            inv, h, l = _row_scale(r, base, offset, m2 / n, centered, eps, mean, var, rstd, dtype)
            if streamed:
                _row_affine_streamed(x[r], h, l, inv, weight[r % weight.shape[0]], bias[r % bias.shape[0]], seg,
                                     out[r])
            else:
                _row_affine(x[r], h, l, inv, weight[r % weight.shape[0]], bias[r % bias.shape[0]], seg, out[r])
        if streamed:
            _store_fence()
        return
    if x.itemsize == 4:
        # a loop for each kind of store, not a test in one loop: with both bodies in the loop,
        # the plain one ran about a fifth slower on 128-element rows
        if streamed:
            for r in range(first, last):
                inv, h, l = _wide_row_scale(x[r], r, centered, eps, mean, var, rstd)
                _row_affine_streamed(x[r], h, l, inv, weight[r % weight.shape[0]], bias[r % bias.shape[0]], seg,
                                     out[r])
            _store_fence()
        else:
            for r in range(first, last):
                inv, h, l = _wide_row_scale(x[r], r, centered, eps, mean, var, rstd)
                _row_affine(x[r], h, l, inv, weight[r % weight.shape[0]], bias[r % bias.shape[0]], seg, out[r])
        return
    # one allocation (a small call's allocations are a measurable part of it): the tile's rstd
    # and centres
    tile = np.empty((3, ROW_TILE))
    # float64 rows sum their deviations around the previous tile's last mean in one pass; a row
    # whose mean lies further from it than the row's spread (see ``_near``) takes its plain sum
    # first.  Where it lies within, ``M2 = sq - dev**2 / n`` cancels at most one bit, which
    # float64's 53 bits can spare for the pass it saves.
    shift = x[first, 0]
    for t0 in range(first, last, ROW_TILE):
        t1 = min(t0 + ROW_TILE, last)
        for r in range(t0, t1):
            g = shift
            dev, sq = _shifted_sums(x[r], g)
            if not _near(length, dev, sq):
                g = _plain_sum(x[r]) / dtype(length)
                dev, sq = _shifted_sums(x[r], g)
            base = np.float64(g)
            offset, m2 = _corrected(length, g, dev, sq, base)
            tile[0, r - t0], tile[1, r - t0], tile[2, r - t0] = _row_scale(r, base, offset, m2 / length, centered, eps,
                                                                            mean, var, rstd, dtype)
        shift = dtype(tile[1, t1 - 1 - t0])
        if streamed:
            for r in range(t0, t1):
                _row_affine_streamed(x[r], dtype(tile[1, r - t0]), dtype(tile[2, r - t0]), tile[0, r - t0],
                                     weight[r % weight.shape[0]], bias[r % bias.shape[0]], seg, out[r])
        else:
            for r in range(t0, t1):
                _row_affine(x[r], dtype(tile[1, r - t0]), dtype(tile[2, r - t0]), tile[0, r - t0],
                            weight[r % weight.shape[0]], bias[r % bias.shape[0]], seg, out[r])
    if streamed:
        _store_fence()


@njit(**_jit)
def _wide_shifted_sums(v, shift):
    """``sum(x - shift)`` and ``sum((x - shift)**2)`` of a float32 span, in float64.

    Each deviation of two float32 values is exact in float64, and so is its square (48
    significant bits), so only the sums round, at float64's precision.  With ``shift`` an
    element of the span, ``(shift - mean)**2`` is one term of M2, so ``dev**2 / n`` is at most
    ``n*M2``: ``M2 = sq - dev**2 / n`` cancels at most log2(n + 1) bits, 11 of float64's 53 on
    a ROW_CHUNK row, and keeps far more than float32's 24."""
    centre = np.float64(shift)
    dev = 0.0
    sq = 0.0
    for i in range(v.shape[0]):
        d = np.float64(v[i]) - centre
        dev += d
        sq += d * d
    return dev, sq


@njit(inline="always", **_ew)
def _wide_row_scale(xs, r, centered, eps, mean, var, rstd):
    """`_row_scale` of a float32 row of at most ROW_CHUNK elements, from its one-pass
    `_wide_shifted_sums` around its first element."""
    n = xs.shape[0]
    dev, sq = _wide_shifted_sums(xs, xs[0])
    offset = dev / n
    return _row_scale(r, np.float64(xs[0]), offset, max(sq - dev * offset, 0.0) / n, centered, eps, mean, var, rstd,
                      xs.dtype.type)


@njit(inline="always", **_ew)
def _row_scale(r, base, offset, spread, centered, eps, mean, var, rstd, dtype):
    """Row r's statistics into ``mean``/``var`` (unless None)/``rstd``; returns (rstd, hi, lo),
    the centre ``hi + lo`` in the input precision (see ``_split``)."""
    if not centered:
        spread += (base + offset) * (base + offset)
        base = offset = 0.0
    inv = 1.0 / np.sqrt(spread + eps)
    mean[r] = base + offset
    if var is not None:
        var[r] = spread
    rstd[r] = inv
    h, l = _split(base, offset, dtype)
    return inv, h, l


@njit(inline="always", **_ew)
def _row_affine(xs, h, l, inv, w, b, seg, ys):
    """``ys = (xs - (h + l))*inv*w + b``, each value of ``w``/``b`` over ``seg`` consecutive elements."""
    dtype = xs.dtype.type
    if seg == 1:
        s = dtype(inv)
        for i in range(xs.shape[0]):
            ys[i] = ((xs[i] - h) - l) * s * w[i] + b[i]
    else:
        for j in range(w.shape[0]):
            a = dtype(inv * w[j])
            t = b[j]
            xj = xs[j * seg:(j + 1) * seg]
            yj = ys[j * seg:(j + 1) * seg]
            for i in range(seg):
                yj[i] = ((xj[i] - h) - l) * a + t


@njit(inline="always", **_ew)
def _row_affine_streamed(xs, h, l, inv, w, b, seg, ys):
    """``_row_affine`` with non-temporal stores, into a row of an output that ``_streams_rows``."""
    dtype = xs.dtype.type
    lanes = STREAM_ALIGN // ys.itemsize
    if seg == 1:
        s = dtype(inv)
        for i in range(0, xs.shape[0], lanes):
            _scaled_affine_vector_streamed(xs, h, l, s, w, b, ys, 0, i)
    else:
        for j in range(w.shape[0]):
            a = dtype(inv * w[j])
            t = b[j]
            for i in range(j * seg, (j + 1) * seg, lanes):
                _affine_vector_streamed(xs, h, l, a, t, ys, 0, i)


@njit(**_jit)
def _weighted_dot_sums(dy, x, weight, hi, lo):
    """``sum(dy*w)`` and ``sum(dy*w*(x - centre))`` of a contiguous span, chunked, in float64
    (the centre's low part applied per chunk, see ``_chunk_dot_sums``)."""
    zero = x.dtype.type(0)
    s1 = 0.0
    s2 = 0.0
    for c0 in range(0, x.shape[0], ROW_CHUNK):
        xs = x[c0:c0 + ROW_CHUNK]
        gs = dy[c0:c0 + ROW_CHUNK]
        t1 = zero
        t2 = zero
        if weight is None:
            for i in range(xs.shape[0]):
                g = gs[i]
                t1 += g
                t2 += g * (xs[i] - hi)
        else:
            ws = weight[c0:c0 + ROW_CHUNK]
            for i in range(xs.shape[0]):
                g = gs[i] * ws[i]
                t1 += g
                t2 += g * (xs[i] - hi)
        s1 += t1
        s2 += _less_low(t2, t1, lo)
    return s1, s2


@njit(inline="always", **_jit)
def _chunk_end(start, seg):
    """The end of the chunk of a segmented row that starts at ``start``: ROW_CHUNK elements, or
    fewer at a segment's end (chunks never straddle segments)."""
    return min(start + ROW_CHUNK, (start // seg + 1) * seg)


@njit(inline="always", **_jit)
def _less_low(sum_dy_xhi, sum_dy, lo):
    """``sum(dy*(x - hi - lo))`` in float64 from ``sum(dy*(x - hi))`` and ``sum(dy)``.

    The reductions are compiled with ``reassoc`` (what splits them into vector lanes), which
    lets LLVM fold ``(x - hi) - lo`` into ``x - (hi + lo)``, and ``hi + lo`` rounds back to
    ``hi`` in the input precision: the centre's low part would be lost.  Subtracting
    ``lo * sum(dy)`` once, outside the loop and in float64, keeps it."""
    return np.float64(sum_dy_xhi) - np.float64(lo) * np.float64(sum_dy)


@njit(**_jit)
def _chunk_dot_sums(dy, x, hi, lo):
    """``sum(dy)`` (input precision) and ``sum(dy*(x - centre))`` (float64) of one chunk."""
    t1 = x.dtype.type(0)
    t2 = x.dtype.type(0)
    for i in range(x.shape[0]):
        g = dy[i]
        t1 += g
        t2 += g * (x[i] - hi)
    return t1, _less_low(t2, t1, lo)


@njit(inline="always", **_jit)
def _add_chunk_sums(dy, x, start, stop, seg, hi, lo, seg_dy, seg_dy_xc):
    """Add the chunk [start, stop) of a segmented row to its segment's float64 sums."""
    t1, t2 = _chunk_dot_sums(dy[start:stop], x[start:stop], hi, lo)
    seg_dy[start // seg] += t1
    seg_dy_xc[start // seg] += t2


@njit(**_ew)
def _segment_input_grad(dy, x, out, a, hi, lo, kb, kc):
    for i in range(x.shape[0]):
        out[i] = dy[i] * a + ((x[i] - hi) - lo) * kb + kc


@njit(parallel=True, **_ew)
def segment_normalize_backward(dy, x, weight, seg, mean, rstd, blocks, out, seg_dy, seg_dy_xhat):
    """Input gradient of ``row_normalize`` on segmented rows (NCHW instance/group norm: a row is
    a (sample, group), a segment a channel's ``seg`` values), ``blocks`` tasks taking runs of
    rows, with each row's two reductions ``sum(dy*W)`` and ``sum(dy*W*xhat)`` done while the row
    is in cache.  Per-segment sums of ``dy`` and ``dy*xhat`` (the bias and weight gradient pieces)
    go to ``seg_dy``/``seg_dy_xhat`` (rows, L // seg).

    The rows are pipelined: while a row's gradient is written chunk by chunk, the next row's sums
    are taken over the same chunk, so the stream that reads the next row runs beside the one that
    writes this one instead of after it.  Its sums take one chunk at a time (``_chunk_dot_sums``):
    through ``_weighted_dot_sums`` the same loop lost the gain."""
    rows, length = x.shape
    kinds = weight.shape[0]
    dtype = x.dtype.type
    for task in prange(blocks):
        _, _, first, last = _piece(task, blocks, rows)
        if first < last:  # the first row's sums; each later row's come with the row before
            seg_dy[first, :] = 0.0
            seg_dy_xhat[first, :] = 0.0
            h, l = _split(mean[first], 0.0, dtype)
            c0 = 0
            while c0 < length:
                c1 = _chunk_end(c0, seg)
                _add_chunk_sums(dy[first], x[first], c0, c1, seg, h, l, seg_dy[first], seg_dy_xhat[first])
                c0 = c1
        for r in range(first, last):
            w = weight[r % kinds]
            inv = rstd[r]
            sd = seg_dy[r]
            sx = seg_dy_xhat[r]
            s1 = 0.0
            s2 = 0.0
            for j in range(w.shape[0]):
                s1 += sd[j] * w[j]
                s2 += sx[j] * w[j]
                sx[j] *= inv
            # dx = rstd*(w*dy - mean(w*dy) - xhat*mean(w*dy*xhat))
            kb = dtype(-inv * inv * inv * s2 / length)
            kc = dtype(-inv * s1 / length)
            h, l = _split(mean[r], 0.0, dtype)
            ahead = r + 1 < last
            if ahead:
                seg_dy[r + 1, :] = 0.0
                seg_dy_xhat[r + 1, :] = 0.0
                hn, ln = _split(mean[r + 1], 0.0, dtype)
            c0 = 0
            while c0 < length:
                c1 = _chunk_end(c0, seg)
                a = dtype(inv * w[c0 // seg])
                _segment_input_grad(dy[r, c0:c1], x[r, c0:c1], out[r, c0:c1], a, h, l, kb, kc)
                if ahead:
                    _add_chunk_sums(dy[r + 1], x[r + 1], c0, c1, seg, hn, ln, seg_dy[r + 1], seg_dy_xhat[r + 1])
                c0 = c1


@njit(parallel=True, **_ew)
def row_normalize_backward(dy, x, weight, mean, rstd, centered, recompute, eps, param_grads, blocks, out, sum_dy,
                           sum_dy_xhat, scratch):
    """Input gradient of ``row_normalize`` for layer norm (``centered``) or RMS norm rows with a
    per-element ``weight`` (L,), ``blocks`` tasks taking runs of rows (see
    ``normalize_rows_backward``).
    With ``param_grads`` the weight and bias gradients' partial sums go to one float64 row per
    block, ``sum_dy``/``sum_dy_xhat`` (blocks, L) (``scratch`` (blocks, 2, L) of the input dtype)."""
    rows = x.shape[0]
    for task in prange(blocks):
        _, _, first, last = _piece(task, blocks, rows)
        normalize_rows_backward(dy, x, weight, mean, rstd, centered, recompute, eps, param_grads, first, last, out,
                                sum_dy[task], sum_dy_xhat[task], scratch[task])


@njit(**_ew)
def normalize_rows_backward(dy, x, weight, mean, rstd, centered, recompute, eps, param_grads, first, last, out,
                            sum_dy, sum_dy_xhat, scratch):
    """``row_normalize_backward``'s rows ``first:last``, in this thread (the serial drivers take
    them all): each row's two reductions ``sum(dy*w)`` and ``sum(dy*w*xhat)`` done while the row
    is in cache.  With ``recompute`` (layer norm only) each row's statistics are taken first, in
    cache too, into ``mean``/``rstd`` (a forward that kept none: weight standardization).  With
    ``param_grads`` the rows' weight and bias gradients ``sum(dy*xhat)``/``sum(dy)`` go to the
    float64 (L,) ``sum_dy_xhat``/``sum_dy`` by the policy of ``_flush_param_grads`` (``scratch``
    (2, L) of the input dtype); without (a forward with neither parameter) they are left untouched."""
    length = x.shape[1]
    dtype = x.dtype.type
    streamed = _streams(out) and length * out.itemsize >= STREAM_GRAD_ROW_BYTES
    lanes = STREAM_ALIGN // out.itemsize
    part_dy, part_dyx = _start_param_grads(sum_dy, sum_dy_xhat, scratch)
    for r in range(first, last):
        xs = x[r]
        gs = dy[r]
        ys = out[r]
        if recompute:  # layer-norm rows
            n, base, offset, m2 = _span_moments(xs)
            mean[r] = base + offset
            rstd[r] = 1.0 / np.sqrt(m2 / n + eps)
        h, l = _split(mean[r], 0.0, dtype)
        inv = rstd[r]
        s1, s2 = _weighted_dot_sums(gs, xs, weight, h, l)
        # dx = rstd*(w*dy - mean(w*dy) - xhat*mean(w*dy*xhat)); RMS norm has no mean(w*dy) term
        kb = dtype(-inv * inv * inv * s2 / length)
        kc = dtype(-inv * s1 / length) if centered else dtype(0)
        a = dtype(inv)
        if streamed:  # the row is in L1: its parameter terms take a loop of their own
            for i in range(0, length, lanes):
                _row_input_grad_vector_streamed(gs, weight, a, xs, h, l, kb, kc, ys, 0, i)
            if param_grads:
                _param_terms(gs, xs, h, l, a, part_dy, part_dyx)
        elif not param_grads:
            for i in range(length):
                ys[i] = gs[i] * weight[i] * a + ((xs[i] - h) - l) * kb + kc
        else:
            _input_grad_and_param_terms(gs, xs, weight, h, l, a, kb, kc, ys, part_dy, part_dyx)
        if param_grads:
            _flush_param_grads(r, first, last, part_dy, part_dyx, sum_dy, sum_dy_xhat)
    if streamed:
        _store_fence()


# -- cols view: per-slab helpers and the kernels built from them --------------------------------
#
# A slab is ``x[a, start:stop]``, a C-contiguous (rows, C) block; every loop runs along C, so it
# vectorises across channels.  Rows are taken in blocks of about COL_CHUNK elements, small enough
# that a chunk's second pass, where it takes one, re-reads the block from L1.


def _vector_registers():
    """(bytes, count) of the vector registers compiled code may use: the host's, or those of the
    features NUMBA_CPU_FEATURES names."""
    features = numba.config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    features = set(features.split(","))
    if "+avx512f" in features:
        return 64, 32
    if "+avx" in features:
        return 32, 16
    return 16, 32 if platform.machine().lower() in ("aarch64", "arm64") else 16


_REGISTER_BYTES, _REGISTERS = _vector_registers()
# registers a column-sum strip (``_register_sums``) holds per vector of columns: two sums, a 1-D
# operand and four loaded values -- seven, so four vectors where there are 32 registers
REGISTER_VECTORS = max(1, _REGISTERS // 7)


class _FloatOps:
    """Vector arithmetic for the intrinsics' formulas, with the fast-math ``flags`` of the loops
    they stand in for (so that an elementwise one gives its loop's bits)."""

    def __init__(self, builder, flags):
        self.builder = builder
        self.flags = tuple(sorted(flags))

    def add(self, a, b):
        return self.builder.fadd(a, b, flags=self.flags)

    def sub(self, a, b):
        return self.builder.fsub(a, b, flags=self.flags)

    def mul(self, a, b):
        return self.builder.fmul(a, b, flags=self.flags)


def _pairwise(add, values):
    """``values`` summed as a balanced tree."""
    while len(values) > 1:
        values = [add(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)] + values[len(values) & ~1:]
    return values[0]


def _register_sums(formula, arguments):
    """Signature and code of an intrinsic ``f(*operands, first, second)`` that sums the pair
    ``formula(ops, *operands)`` down the rows of its 2-D operands into the 1-D ``first`` and
    ``second``, per column, for rows that ``_fits_registers``.  A 2-D operand gives each row's
    elements, a 1-D operand the same elements for every row.

    Why an intrinsic: LLVM keeps a loop's per-column sums in memory (a load and a store of each
    per row, the number of columns being known only at run time).  Here they are SSA values, a
    few vector registers wide (the last one masked to the row's end), which stay in registers.
    The rows come four loaded values a step (four rows of one 2-D operand, two of two), summed
    pairwise before they join the sums, and are loaded in address order: read from L3 or
    memory, a slab's statistics then take about half the time of a loop over eight rows a step,
    whose loads hop between rows.  A wider row taken in strips, one pass over the chunk each,
    measured no faster from memory than the loops (the gradient sums slower), so it keeps them."""
    dtype = arguments[0].dtype
    if any(a.dtype != dtype for a in arguments):
        return None  # one vector type for every array: no match, a typing error
    lanes = _REGISTER_BYTES * 8 // dtype.bitwidth
    operands = len(arguments) - 2
    matrices = [k for k in range(operands) if arguments[k].ndim == 2]
    step = max(1, 4 // len(matrices))

    def codegen(context, builder, signature, args):
        scalar = context.get_value_type(dtype)
        vector = ir.VectorType(scalar, lanes)
        ops = _FloatOps(builder, REDUCE_FASTMATH)
        arrays = [context.make_array(kind)(context, builder, value) for kind, value in zip(signature.args, args)]
        rows, width = cgutils.unpack_tuple(builder, arrays[matrices[0]].shape)
        intp = rows.type
        i32 = ir.IntType(32)
        align = i32(dtype.bitwidth // 8)
        mask_type = ir.VectorType(ir.IntType(1), lanes)
        masked_load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector.as_pointer(), i32, mask_type, vector]),
            f"llvm.masked.load.v{lanes}{dtype.name[0]}{dtype.bitwidth}.p0")
        masked_store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vector, vector.as_pointer(), i32, mask_type]),
            f"llvm.masked.store.v{lanes}{dtype.name[0]}{dtype.bitwidth}.p0")
        zero = ir.Constant(vector, [ir.Constant(scalar, 0.0)] * lanes)

        def const(value):
            return ir.Constant(intp, value)

        def strip(vectors):
            last = vectors - 1
            lane_cols = ir.Constant(ir.VectorType(intp, lanes), [last * lanes + i for i in range(lanes)])
            mask = builder.icmp_signed("<", lane_cols, _splat(builder, ir.VectorType(intp, lanes), width))

            def address(k, index):
                item = cgutils.get_item_pointer(context, builder, signature.args[k], arrays[k], index, wraparound=False)
                return builder.bitcast(item, vector.as_pointer())

            def load(k, row, j):
                index = [const(j * lanes)] if row is None else [row, const(j * lanes)]
                if j < last:
                    return builder.load(address(k, index), align=align.constant)
                return builder.call(masked_load, [address(k, index), align, mask, zero])

            fixed = {k: [load(k, None, j) for j in range(vectors)] for k in range(operands) if k not in matrices}
            sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(2)]

            def add_rows(first_row, count):
                terms = [[formula(ops, *(fixed[k][j] if k in fixed else load(k, builder.add(first_row, const(i)), j)
                                         for k in range(operands))) for j in range(vectors)] for i in range(count)]
                for j in range(vectors):
                    for which in range(2):
                        total = _pairwise(ops.add, [terms[i][j][which] for i in range(count)])
                        builder.store(ops.add(builder.load(sums[which][j]), total), sums[which][j])

            whole = builder.and_(rows, const(-step))
            with cgutils.for_range_slice(builder, const(0), whole, const(step), intp) as (b, _):
                add_rows(b, step)
            with cgutils.for_range_slice(builder, whole, rows, const(1), intp) as (b, _):
                add_rows(b, 1)
            for which in range(2):
                for j in range(vectors):
                    total = builder.load(sums[which][j])
                    pointer = address(operands + which, [const(j * lanes)])
                    if j < last:
                        builder.store(total, pointer, align=align.constant)
                    else:
                        builder.call(masked_store, [total, pointer, align, mask])

        vectors = builder.sdiv(builder.add(width, const(lanes - 1)), const(lanes))
        done = builder.append_basic_block("register_sums.done")
        switch = builder.switch(vectors, done)
        for count in range(1, REGISTER_VECTORS + 1):
            block = builder.append_basic_block(f"register_sums.{count}")
            switch.add_case(const(count), block)
            builder.position_at_end(block)
            strip(count)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return types.void(*arguments), codegen


@njit(**_jit)
def _fits_registers(width, *arrays):
    """Whether ``_register_sums`` takes rows of ``width`` of these arrays: rows of at most
    REGISTER_VECTORS registers, their columns side by side (its vectors load them so)."""
    fits = width * arrays[0].itemsize <= REGISTER_VECTORS * _REGISTER_BYTES
    for a in literal_unroll(arrays):
        fits &= a.strides[-1] == a.itemsize
    return fits


def _deviations(ops, x, shift):
    d = ops.sub(x, shift)
    return d, ops.mul(d, d)


@intrinsic
def _register_shifted_sums(typingctx, chunk, shift, dev, sq):
    """``_slab_shifted_sums`` for rows that ``_fits_registers`` (see ``_register_sums``)."""
    return _register_sums(_deviations, (chunk, shift, dev, sq))


@intrinsic
def _register_dot_sums(typingctx, dy, chunk, centre, sum_dy, sum_dy_xc):
    """Per-column ``sum_dy = sum(dy)`` and ``sum_dy_xc = sum(dy*(x - centre))`` over the chunk's
    rows, in the input precision, for rows that ``_fits_registers`` (see ``_register_sums``)."""
    return _register_sums(lambda ops, g, x, c: (g, ops.mul(g, ops.sub(x, c))), (dy, chunk, centre, sum_dy, sum_dy_xc))


@njit(**_jit)
def _slab_shifted_sums(chunk, shift, dev, sq):
    """Per-column ``dev = sum(x - shift)`` and ``sq = sum((x - shift)**2)`` over the chunk's rows,
    in the input precision: in registers for rows that fit (``_register_sums``), else rows eight
    at a time (the per-column accumulators then live in memory, and each row added alone would
    cost a load and a store of them)."""
    k, width = chunk.shape
    if _fits_registers(width, chunk, shift, dev, sq):
        _register_shifted_sums(chunk, shift, dev, sq)
        return
    octets = k & ~7
    dev[:] = 0
    sq[:] = 0
    for b in range(0, octets, 8):
        r0, r1, r2, r3 = chunk[b], chunk[b + 1], chunk[b + 2], chunk[b + 3]
        r4, r5, r6, r7 = chunk[b + 4], chunk[b + 5], chunk[b + 6], chunk[b + 7]
        for c in range(width):
            g = shift[c]
            d0, d1, d2, d3 = r0[c] - g, r1[c] - g, r2[c] - g, r3[c] - g
            d4, d5, d6, d7 = r4[c] - g, r5[c] - g, r6[c] - g, r7[c] - g
            dev[c] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
            sq[c] += ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)) + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7))
    for b in range(octets, k):
        row = chunk[b]
        for c in range(width):
            d = row[c] - shift[c]
            dev[c] += d
            sq[c] += d * d


# the most threads a parallel region can have: a constant, so the kernels that size their per-thread
# scratch by it stay cacheable (``numba.get_num_threads()`` reads a runtime pointer)
_THREADS = int(getattr(numba.config, "NUMBA_NUM_THREADS"))  # set from the environment at import: no static type


@njit(inline="always", **_jit)
def _slab_scratch(scratch, rows, width, elements, dtype):
    """A slab's (rows, width) accumulator rows.  A slab of fewer than COL_CHUNK ``elements`` takes
    this thread's rows of ``scratch`` (threads, rows, width), allocated once per kernel: allocated
    per task, plans with many small slabs would spend their time in the allocator (and, threads
    contending for it, more).  A larger slab gets its own, which it amortizes."""
    tid = numba.get_thread_id()
    if elements < COL_CHUNK and tid < scratch.shape[0]:
        return scratch[tid]
    return np.empty((rows, width), dtype)


@njit(**_jit)
def _slab_moments(xs, mean, m2, scratch):
    """Per-column (mean, M2) of the slab into float64 ``mean``/``m2`` (C,); returns the count.
    ``scratch`` (3, C) of the slab's dtype holds the chunk sums (see `_slab_scratch`).

    Chunks of about COL_CHUNK elements, merged with Chan's formula.  A chunk takes one pass,
    its deviation sums around the previous chunk's mean: neighbouring chunks of a column have
    nearly the same mean, and ``M2 = sq - dev**2 / k`` then cancels at most one bit.  A chunk
    whose mean moved further from that shift (the first chunk, data that drift) takes a second
    pass around its own mean from L1, which is the exact corrected two-pass sum."""
    length, width = xs.shape
    block = max(8, min(COL_CHUNK // width, COL_CHUNK_ROWS) & ~7)
    guess, dev, sq = scratch[0], scratch[1], scratch[2]
    mean[:] = 0.0
    m2[:] = 0.0
    n = 0.0
    if length == 0:
        return n  # an empty piece: merges as nothing
    guess[:] = xs[0]
    for b0 in range(0, length, block):
        chunk = xs[b0:b0 + block]
        k = chunk.shape[0]
        _slab_shifted_sums(chunk, guess, dev, sq)
        moved = False
        for c in range(width):
            moved |= _moved(k, dev[c], sq[c])
        if moved:
            for c in range(width):
                guess[c] += dev[c] / k
            _slab_shifted_sums(chunk, guess, dev, sq)
        frac = k / (n + k)
        for c in range(width):
            chunk_mean, chunk_m2 = _corrected(k, guess[c], dev[c], sq[c], 0.0)
            delta = chunk_mean - mean[c]
            mean[c] += delta * frac
            m2[c] += chunk_m2 + delta * delta * n * frac
            guess[c] = chunk_mean
        n += k
    return n


@njit(**_jit)
def _slab_dot_sums(dy, xs, hi, lo, sum_dy, sum_dy_xc, scratch):
    """Add per-column ``sum(dy)`` and ``sum(dy*(x - centre))`` of the slab to float64 (C,) sums
    (the centre's low part applied per chunk, see ``_less_low``); ``scratch`` (2, C) of the
    slab's dtype holds the chunk sums, taken in registers where the row fits (``_register_sums``).

    Wider rows take one row at a time: taking four leaves LLVM nine arrays to check for overlap
    with the two it writes, more than it will, and the loop ran unvectorized at half the speed.
    Chunks of at most COL_CHUNK_ROWS / 4 rows keep each column's chain of input-precision adds
    as short as four-row sums over COL_CHUNK_ROWS would."""
    length, width = xs.shape
    block = max(4, min(COL_CHUNK // width, COL_CHUNK_ROWS // 4))
    in_registers = _fits_registers(width, dy, xs, hi, scratch)
    s1, s2 = scratch[0], scratch[1]
    for b0 in range(0, length, block):
        b1 = min(b0 + block, length)
        if in_registers:
            _register_dot_sums(dy[b0:b1], xs[b0:b1], hi, s1, s2)
        else:
            s1[:] = 0
            s2[:] = 0
            for b in range(b0, b1):
                xr = xs[b]
                gr = dy[b]
                for c in range(width):
                    g = gr[c]
                    s1[c] += g
                    s2[c] += g * (xr[c] - hi[c])
        for c in range(width):
            sum_dy[c] += s1[c]
            sum_dy_xc[c] += _less_low(s2[c], s1[c], lo[c])


@njit(**_ew)
def _slab_affine(xs, hi, lo, alpha, beta, ys):
    for b in range(xs.shape[0]):
        xr = xs[b]
        yr = ys[b]
        for c in range(xs.shape[1]):
            yr[c] = ((xr[c] - hi[c]) - lo[c]) * alpha[c] + beta[c]


def _streamed_vector(formula, arguments):
    """Signature and code of an intrinsic ``f(*operands, ys, row, col)`` that computes one
    STREAM_ALIGN-byte vector of ``ys`` by ``formula(ops, *vectors)`` and stores it non-temporally.
    Each operand, and ``ys``, gives the vector at its own rank: a 2-D array its elements
    ``[row, col:col + k]``, a 1-D array ``[col:col + k]`` (``row`` unused), a number that number
    in every lane.  The vector of ``ys`` must start on a STREAM_ALIGN boundary."""
    dtype = arguments[-3].dtype
    if any(getattr(a, "dtype", a) != dtype for a in arguments[:-2]):
        return None  # one vector type for every operand: no match, a typing error
    lanes = STREAM_ALIGN * 8 // dtype.bitwidth

    def codegen(context, builder, signature, args):
        vector = ir.VectorType(context.get_value_type(dtype), lanes)
        row, col = args[-2], args[-1]

        def address(k):
            kind = signature.args[k]
            array = context.make_array(kind)(context, builder, args[k])
            index = [row, col] if kind.ndim == 2 else [col]
            item = cgutils.get_item_pointer(context, builder, kind, array, index, wraparound=False)
            return builder.bitcast(item, vector.as_pointer())

        def operand(k):
            if not isinstance(signature.args[k], types.Array):
                return _splat(builder, vector, args[k])
            return builder.load(address(k), align=dtype.bitwidth // 8)

        result = formula(_FloatOps(builder, ELEMENTWISE_FASTMATH), *(operand(k) for k in range(len(args) - 3)))
        store = builder.store(result, address(len(args) - 3), align=STREAM_ALIGN)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(*arguments), codegen


def _splat(builder, vector, value):
    """``value`` in every lane of ``vector``."""
    undefined = ir.Constant(vector, ir.Undefined)
    first = builder.insert_element(undefined, value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector.count), [0] * vector.count)
    return builder.shuffle_vector(first, undefined, zeros)


def _affine(ops, x, hi, lo, alpha, beta):
    return ops.add(ops.mul(ops.sub(ops.sub(x, hi), lo), alpha), beta)


@intrinsic
def _affine_vector_streamed(typingctx, xs, hi, lo, alpha, beta, ys, row, col):
    """``((x - hi) - lo)*alpha + beta`` for one vector, streamed (see ``_streamed_vector``): the
    arithmetic of ``_slab_affine`` (columns' coefficients) and of ``_row_affine`` (a segment's)."""
    return _streamed_vector(_affine, (xs, hi, lo, alpha, beta, ys, row, col))


@intrinsic
def _scaled_affine_vector_streamed(typingctx, xs, hi, lo, scale, weight, bias, ys, row, col):
    """``((x - hi) - lo)*scale*weight + bias`` for one vector, streamed: ``_row_affine``'s
    per-element case."""
    return _streamed_vector(
        lambda ops, x, h, l, s, w, b: ops.add(ops.mul(ops.mul(ops.sub(ops.sub(x, h), l), s), w), b),
        (xs, hi, lo, scale, weight, bias, ys, row, col))


@intrinsic
def _row_input_grad_vector_streamed(typingctx, dy, weight, scale, xs, hi, lo, kb, kc, ys, row, col):
    """``dy*weight*scale + ((x - hi) - lo)*kb + kc`` for one vector, streamed: a layer or RMS norm
    row's input gradient (``normalize_rows_backward``)."""
    def formula(ops, g, w, a, x, h, l, b, c):
        return ops.add(ops.add(ops.mul(ops.mul(g, w), a), ops.mul(ops.sub(ops.sub(x, h), l), b)), c)

    return _streamed_vector(formula, (dy, weight, scale, xs, hi, lo, kb, kc, ys, row, col))


@intrinsic
def _input_grad_vector_streamed(typingctx, dy, xs, hi, lo, ka, kb, kc, ys, row, col):
    """``_slab_input_grad``'s arithmetic for one vector, streamed."""
    return _streamed_vector(
        lambda ops, g, x, h, l, a, b, c: ops.add(ops.add(ops.mul(g, a), ops.mul(ops.sub(ops.sub(x, h), l), b)), c),
        (dy, xs, hi, lo, ka, kb, kc, ys, row, col))


@intrinsic
def _store_fence(typingctx):
    """Order the non-temporal stores before everything after, so the thread that joins this one
    sees them: they are weakly ordered, and x86 documents SFENCE as what orders them (LLVM's
    portable fence becomes a locked instruction there)."""
    def codegen(context, builder, signature, args):
        if _X86:
            sfence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                    "llvm.x86.sse.sfence")
            builder.call(sfence, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(inline="always", **_ew)
def _streams(out):
    """Whether the affine passes store ``out``, a C-contiguous (..., C) array, past the caches.

    A fused slab is read twice, for its statistics and for the affine pass.  Ordinary stores
    allocate the output's lines in L2 (reading them from memory first), evicting the input that
    the affine pass is about to re-read; non-temporal stores write whole lines straight to
    memory, so the slab stays cached for its second read, and a pass over separate arrays saves
    the reads.  Only for outputs larger than the caches (STREAM_BYTES): a smaller result is
    better left cached for its consumer.  Rows must be whole vectors, each on a vector boundary
    (they may be strided)."""
    if (out.size * out.itemsize < STREAM_BYTES or out.strides[-1] != out.itemsize
            or out.shape[-1] * out.itemsize % STREAM_ALIGN != 0):
        return False
    aligned = out.ctypes.data % STREAM_ALIGN == 0
    for k in range(out.ndim - 1):
        aligned &= out.strides[k] % STREAM_ALIGN == 0
    return aligned


@njit(inline="always", **_ew)
def _streams_rows(out, seg):
    """``_streams`` for the rows view (R, L) of a row kernel whose weights change every ``seg``
    elements: each segment must start on a vector boundary too."""
    return _streams(out) and (seg == 1 or seg * out.itemsize % STREAM_ALIGN == 0)


@njit(**_ew)
def _slab_affine_streamed(xs, hi, lo, alpha, beta, ys):
    """``_slab_affine`` with non-temporal stores; ``ys`` a slab of an output that ``_streams``."""
    lanes = STREAM_ALIGN // ys.itemsize
    for b in range(xs.shape[0]):
        for c in range(0, xs.shape[1], lanes):
            _affine_vector_streamed(xs, hi, lo, alpha, beta, ys, b, c)
    _store_fence()


@njit(**_ew)
def _slab_input_grad_streamed(dy, xs, hi, lo, ka, kb, kc, ys):
    """``_slab_input_grad`` with non-temporal stores; ``ys`` as for ``_slab_affine_streamed``."""
    lanes = STREAM_ALIGN // ys.itemsize
    for b in range(xs.shape[0]):
        for c in range(0, xs.shape[1], lanes):
            _input_grad_vector_streamed(dy, xs, hi, lo, ka, kb, kc, ys, b, c)
    _store_fence()


@njit(**_ew)
def _slab_input_grad(dy, xs, hi, lo, ka, kb, kc, ys):
    for b in range(xs.shape[0]):
        xr = xs[b]
        gr = dy[b]
        yr = ys[b]
        for c in range(xs.shape[1]):
            yr[c] = gr[c] * ka[c] + ((xr[c] - hi[c]) - lo[c]) * kb[c] + kc[c]


@njit(parallel=True, **_jit)
def col_moments(x, pieces, count, mean, m2):
    """Per-(a, piece, c) states of ``x`` (A, B, C) reduced over B, into float64 (A, pieces, C)."""
    outer, length, width = x.shape
    scratch = np.empty((_THREADS, 3, width), x.dtype)
    for task in prange(outer * pieces):
        a, p, start, stop = _piece(task, pieces, length)
        mine = _slab_scratch(scratch, 3, width, (stop - start) * width, x.dtype)
        count[a, p, :] = _slab_moments(x[a, start:stop], mean[a, p], m2[a, p], mine)


@njit(parallel=True, **_ew)
def col_affine(x, hi, lo, alpha, beta, pieces, out):
    """``out[a, b, c] = (x[a, b, c] - center[a, c])*alpha[a, c] + beta[a, c]``."""
    outer, length, width = x.shape
    streamed = _streams(out)
    for task in prange(outer * pieces):
        a, p, start, stop = _piece(task, pieces, length)
        if streamed:
            _slab_affine_streamed(x[a, start:stop], hi[a], lo[a], alpha[a], beta[a], out[a, start:stop])
        else:
            _slab_affine(x[a, start:stop], hi[a], lo[a], alpha[a], beta[a], out[a, start:stop])


@njit(parallel=True, **_jit)
def col_grad_sums(dy, x, hi, lo, pieces, sum_dy, sum_dy_xc):
    """Per-(a, piece, c) ``sum(dy)`` and ``sum(dy*(x - center[a, c]))`` into float64 (A, pieces, C)."""
    outer, length, width = x.shape
    scratch = np.empty((_THREADS, 2, width), x.dtype)
    for task in prange(outer * pieces):
        a, p, start, stop = _piece(task, pieces, length)
        sum_dy[a, p, :] = 0.0
        sum_dy_xc[a, p, :] = 0.0
        _slab_dot_sums(dy[a, start:stop], x[a, start:stop], hi[a], lo[a], sum_dy[a, p], sum_dy_xc[a, p],
                       _slab_scratch(scratch, 2, width, (stop - start) * width, x.dtype))


@njit(parallel=True, **_ew)
def col_input_grad(dy, x, hi, lo, ka, kb, kc, pieces, out):
    """``out[a, b, c] = dy*ka[a, c] + (x - center[a, c])*kb[a, c] + kc[a, c]``."""
    outer, length, width = x.shape
    streamed = _streams(out)
    for task in prange(outer * pieces):
        a, p, start, stop = _piece(task, pieces, length)
        if streamed:
            _slab_input_grad_streamed(dy[a, start:stop], x[a, start:stop], hi[a], lo[a], ka[a], kb[a], kc[a],
                                      out[a, start:stop])
        else:
            _slab_input_grad(dy[a, start:stop], x[a, start:stop], hi[a], lo[a], ka[a], kb[a], kc[a],
                             out[a, start:stop])


# -- planned grid drivers: batch, instance and group norm over any plan, one call from Python -------
#
# Between two kernels that stream a large tensor through the caches, the interpreter runs cold:
# each NumPy or dispatcher call there costs tens of microseconds instead of a few.  So the steps
# of a planned grid norm -- kernel, merge, coefficients, kernel -- run from one compiled call.
# ``x.ndim`` is a compile-time constant, so each specialization keeps one kind's kernels only.


@njit(**_numpy_errors)
def grid_normalize(x, pieces, states, group_of, samples, channels, members, weight, bias, eps, stats, coef, out):
    """Normalize the rows (R, L) or cols (A, B, C) view ``x`` with statistics per group.

    ``states`` (3, K, P, W) float64 is scratch for the moments kernels (W = 1 for rows);
    ``group_of`` (K, W) names each state's group, ``samples``/``channels`` the (sample, channel)
    of each flat coefficient position (see ``Plan.kernel_cells``).  Writes (count, mean, var,
    rstd) of every group into ``stats`` (4, S, G), S = 1 when the groups span the batch, and
    the result into ``out``, laid out as ``x``; ``coef`` (4, K*W) of x's dtype is scratch."""
    count, mean, m2 = states[0], states[1], states[2]
    if x.ndim == 2:
        row_moments(x, pieces, count[:, :, 0], mean[:, :, 0], m2[:, :, 0])
    else:
        col_moments(x, pieces, count, mean, m2)
    flat = stats.reshape(4, -1)
    merge_groups(count, mean, m2, group_of, flat[0], flat[1], flat[2])
    for g in range(flat.shape[1]):
        flat[2, g] = flat[2, g] / flat[0, g]
        flat[3, g] = 1.0 / np.sqrt(flat[2, g] + eps)  # eps = 0 on a constant group: inf, as in NumPy
    grid_coefficients(samples, channels, members, stats[1], stats[3], weight, bias, coef)
    if x.ndim == 2:
        row_affine(x, coef[0], coef[1], coef[2], coef[3], None, None, pieces, out)
    else:
        k = coef.reshape(4, x.shape[0], x.shape[2])
        col_affine(x, k[0], k[1], k[2], k[3], pieces, out)


@njit(**_numpy_errors)
def grid_normalize_backward(dy, x, pieces, sums, samples, channels, members, per_group, mean, rstd, weight,
                            batch_stats, coef, grad_weight, grad_bias, out):
    """Input gradient of ``grid_normalize`` into ``out`` (laid out as the view ``x``), and the
    per-channel ``grad_weight``/``grad_bias`` (float64, (C,)); ``mean``/``rstd`` (S, G) as
    ``grid_normalize`` left them.  ``sums`` (2, K, P, W) float64 and ``coef`` (5, K*W) of x's
    dtype are scratch (see ``grid_backward_coefficients``)."""
    grid_coefficients(samples, channels, members, mean, rstd, None, None, coef[:4])
    if x.ndim == 2:
        row_grad_sums(dy, x, coef[0], coef[1], None, pieces, sums[0, :, :, 0], sums[1, :, :, 0])
    else:
        k = coef.reshape(5, x.shape[0], x.shape[2])
        col_grad_sums(dy, x, k[0], k[1], pieces, sums[0], sums[1])
    grid_backward_coefficients(sums, samples, channels, members, per_group, rstd, weight, batch_stats, coef,
                               grad_weight, grad_bias)
    if x.ndim == 2:
        row_input_grad(dy, x, coef[0], coef[1], coef[2], coef[3], coef[4], pieces, out)
    else:
        k = coef.reshape(5, x.shape[0], x.shape[2])
        col_input_grad(dy, x, k[0], k[1], k[2], k[3], k[4], pieces, out)


# -- fused cols kernels: channels-last instance/group norm, one sample's slab at a time ----------
#
# The (spatial, C) slab of one sample fits in L2, so its statistics and its normalization read
# memory once.  Channels are grouped in ``groups`` runs of C // groups (instance norm: groups = C).


@njit(parallel=True, **_ew)
def col_normalize(x, weight, bias, groups, eps, fold, out, mean, var, rstd):
    """Normalize each sample's slab by per-group statistics, returned in ``mean``/``var``/``rstd`` (A, G).

    The slab may be folded (see ``_plan.fold_for``): ``fold`` rows side by side, so column j
    holds channel ``j % C``, C = width // fold; every column has the same count."""
    outer, length, width = x.shape
    channels = width // fold
    members = channels // groups
    dtype = x.dtype.type
    streamed = _streams(out)
    for a in prange(outer):
        col_mean = np.empty(width)
        col_m2 = np.empty(width)
        n = _slab_moments(x[a], col_mean, col_m2, np.empty((3, width), x.dtype))
        hi = np.empty(width, x.dtype)
        lo = np.empty(width, x.dtype)
        alpha = np.empty(width, x.dtype)
        beta = np.empty(width, x.dtype)
        for g in range(groups):
            first = g * members
            gm = 0.0
            for f in range(fold):
                for c in range(f * channels + first, f * channels + first + members):
                    gm += col_mean[c]
            gm /= members * fold
            gq = 0.0
            for f in range(fold):
                for c in range(f * channels + first, f * channels + first + members):
                    d = col_mean[c] - gm
                    gq += col_m2[c] + n * d * d
            mean[a, g] = gm
            var[a, g] = gq / (n * members * fold)
            inv = 1.0 / np.sqrt(var[a, g] + eps)
            rstd[a, g] = inv
            h, l = _split(gm, 0.0, dtype)
            for f in range(fold):
                for c in range(first, first + members):
                    hi[f * channels + c] = h
                    lo[f * channels + c] = l
                    alpha[f * channels + c] = dtype(inv * weight[c])
                    beta[f * channels + c] = bias[c]
        if streamed:
            _slab_affine_streamed(x[a], hi, lo, alpha, beta, out[a])
        else:
            _slab_affine(x[a], hi, lo, alpha, beta, out[a])


@njit(parallel=True, **_ew)
def col_normalize_backward(dy, x, weight, groups, mean, rstd, fold, out, sum_dy, sum_dy_xhat):
    """Input gradient of ``col_normalize`` slab by slab (``fold`` as there); per-(a, c)
    ``sum(dy)`` and ``sum(dy*xhat)`` (the bias and weight gradient pieces) into float64
    ``sum_dy``/``sum_dy_xhat`` (A, C)."""
    outer, length, width = x.shape
    channels = width // fold
    members = channels // groups
    count = length * members * fold
    dtype = x.dtype.type
    streamed = _streams(out)
    for a in prange(outer):
        hi = np.empty(width, x.dtype)
        lo = np.empty(width, x.dtype)
        for j in range(width):
            hi[j], lo[j] = _split(mean[a, (j % channels) // members], 0.0, dtype)
        t1 = np.empty(width)
        t2 = np.empty(width)
        t1[:] = 0.0
        t2[:] = 0.0
        _slab_dot_sums(dy[a], x[a], hi, lo, t1, t2, np.empty((2, width), x.dtype))
        c1 = sum_dy[a]
        c2 = sum_dy_xhat[a]
        c1[:] = 0.0
        c2[:] = 0.0
        for j in range(width):
            c1[j % channels] += t1[j]
            c2[j % channels] += t2[j]
        ka = np.empty(width, x.dtype)
        kb = np.empty(width, x.dtype)
        kc = np.empty(width, x.dtype)
        for g in range(groups):
            inv = rstd[a, g]
            s1 = 0.0
            s2 = 0.0
            for c in range(g * members, (g + 1) * members):
                c2[c] *= inv
                s1 += weight[c] * c1[c]
                s2 += weight[c] * c2[c]
            # dx = rstd*(w*dy - mean(w*dy) - xhat*mean(w*dy*xhat))
            for f in range(fold):
                for c in range(g * members, (g + 1) * members):
                    ka[f * channels + c] = dtype(inv * weight[c])
                    kb[f * channels + c] = dtype(-inv * inv * s2 / count)
                    kc[f * channels + c] = dtype(-inv * s1 / count)
        if streamed:
            _slab_input_grad_streamed(dy[a], x[a], hi, lo, ka, kb, kc, out[a])
        else:
            _slab_input_grad(dy[a], x[a], hi, lo, ka, kb, kc, out[a])
