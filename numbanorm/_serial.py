"""Serial kernels behind numbanorm's public functions when a user's ``@njit`` code calls them.

Inside compiled code there is no planning in Python and no thread pool of ours: a user's own
``prange`` loop may call a normalization once per sample, so these kernels run serially on the
calling thread, on one C-contiguous view of the input (``_overloads.py`` makes the views and
checks the arguments):

* rows ``(R, L)``: layer and RMS norm, one row at a time;
* grid ``(N, P, C, Q)``: batch, instance and group norm, ``C`` the channel axis, ``P`` the axes
  between the batch axis and the channels, ``Q`` the axes after them.  ``Q > 1`` (channels
  first) works on contiguous segments ``x[n, p, c, :]``; ``Q == 1`` (channels last) on the
  ``(P, C)`` slab of each sample, vectorised along the channels.

The numerical scheme is ``_cpu``'s, through its own helpers: exact chunked statistics
merged with Chan's formula in float64, the centre carried as ``hi + lo`` of the input precision,
normalization as ``((x - hi) - lo) * a + b``, never ``x * a + (b - mean * a)``, never
``E[x^2] - E[x]^2``.  Short rows (at most ``ROW_CHUNK``) take ``row_normalize``'s fast path:
one chunk, a plain sum (in float64 only where the previous rows' mean is no shift for the row)
then the deviation sums, no allocation.

Cached on disk like ``_cpu``'s kernels (``NUMBANORM_CACHE``): the small lane calls these from
Python in every new process, and they are much of what a user's ``@njit`` function compiles on
first use.  Numba keys a cache entry on this file's
timestamp alone, so during development an edit of ``_cpu``'s helpers needs this file touched
(or the cache cleared) to be seen here; an installed release replaces both files.
"""

import numpy as np
from numba import njit

# compiled with _cpu's flags (_ew, _jit): NumPy's error model, a 0/0 NaN and not an exception
from ._cpu import (
    normalize_rows,
    normalize_rows_backward,
    ROW_CHUNK,
    _chan_merge,
    _corrected,
    _ew,
    _jit,
    _less_low,
    _plain_sum,
    _slab_affine,
    _slab_dot_sums,
    _slab_input_grad,
    _slab_moments,
    _shifted_sums,
    _span_moments,
    _split,
    _weighted_dot_sums,
)


# -- rows: layer norm and RMS norm --------------------------------------------------------------

@njit(inline="always", **_ew)
def span_moments(xs):
    """``_span_moments`` of a 1-D span (count, base, offset, M2), a span of at most ROW_CHUNK
    taken as one exact chunk (as ``_cpu.row_normalize``'s short rows): a plain sum then the
    deviation sums, without the chunk loop."""
    length = xs.shape[0]
    if 0 < length <= ROW_CHUNK:
        dtype = xs.dtype.type
        guess = _plain_sum(xs) / dtype(length)
        dev, sq = _shifted_sums(xs, guess)
        base = np.float64(guess)
        offset, m2 = _corrected(length, guess, dev, sq, base)
        return np.float64(length), base, offset, m2
    return _span_moments(xs)


@njit(inline="always", **_ew)
def row_stats(xs):
    """(base, offset, var) of a 1-D span: the mean is ``base + offset`` (a float64 and its
    correction), ``var`` the biased variance."""
    n, base, offset, m2 = span_moments(xs)
    return base, offset, m2 / n


@njit(**_ew)
def norm_row(xs, weight, bias, eps, centered, ys):
    """Normalize one row into ``ys``; ``weight``/``bias`` flat (L,) or None.  ``centered=False``
    is RMS norm (centre 0, the mean square ``var + mean**2``: no cancellation).
    Returns the row's (mean, rstd) in float64 (mean 0 for RMS norm)."""
    base, offset, spread = row_stats(xs)
    if not centered:
        spread += (base + offset) * (base + offset)
        base = 0.0
        offset = 0.0
    inv = 1.0 / np.sqrt(spread + eps)
    dtype = xs.dtype.type
    h, l = _split(base, offset, dtype)
    s = dtype(inv)
    n = xs.shape[0]
    if weight is None:
        if bias is None:
            for i in range(n):
                ys[i] = ((xs[i] - h) - l) * s
        else:
            for i in range(n):
                ys[i] = ((xs[i] - h) - l) * s + bias[i]
    elif bias is None:
        for i in range(n):
            ys[i] = ((xs[i] - h) - l) * s * weight[i]
    else:
        for i in range(n):
            ys[i] = ((xs[i] - h) - l) * s * weight[i] + bias[i]
    return base + offset, inv


# the same function inlined into the caller (a user's per-row loop), for the weight-and-bias case
# only: an inlined body's "weight is None" tests are not pruned, and None would fail to type
norm_row_inline = njit(inline="always", **_ew)(norm_row.py_func)


@njit(**_ew)
def norm_rows(x2, weight, bias, eps, centered, y2, mean, rstd):
    """``norm_row`` for every row of ``x2`` (R, L), per-row statistics into ``mean``/``rstd``:
    ``row_normalize``'s rows in one thread (see ``normalize_rows``).  ``weight`` and ``bias`` are
    (L,) arrays (ones and zeros where absent)."""
    w = np.ascontiguousarray(weight).reshape(1, -1)  # C-typed: the affine loop vectorizes
    b = np.ascontiguousarray(bias).reshape(1, -1)
    normalize_rows(x2, w, b, 1, eps, centered, 0, x2.shape[0], y2, mean, None, rstd)


@njit(**_ew)
def norm_rows_backward(dy2, x2, weight, mean, rstd, centered, dx2, grad_weight, grad_bias, recompute=False, eps=0.0):
    """Input gradient of ``norm_rows``: ``dx = rstd*(w*dy - mean(w*dy) - xhat*mean(w*dy*xhat))``
    per row (RMS norm: no ``mean(w*dy)`` term), the fused kernel's rows in one thread (see
    ``normalize_rows_backward``; with ``recompute`` the statistics are taken there, into
    ``mean``/``rstd``).  ``weight``: (L,) or None.  ``grad_weight``/``grad_bias``: float64 (L,)
    receiving ``sum(dy*xhat)`` and ``sum(dy)`` over the rows, or None (neither is summed when
    both are)."""
    rows, length = x2.shape
    if weight is None:
        weight = np.ones(length, x2.dtype)
    width = 0 if grad_weight is None and grad_bias is None else length
    if grad_weight is None:
        grad_weight = np.empty(width)
    if grad_bias is None:
        grad_bias = np.empty(width)
    normalize_rows_backward(dy2, x2, np.ascontiguousarray(weight), mean, rstd, centered, recompute, eps, width > 0, 0,
                            rows, dx2, grad_bias, grad_weight, np.empty((2, width), x2.dtype))


@njit(**_ew)
def rows_moments(x2, count, mean, m2):
    """Per-row (count, mean, M2) of ``x2`` (R, L) into float64 (R,) arrays."""
    for r in range(x2.shape[0]):
        n, base, offset, q = _span_moments(x2[r])
        count[r] = n
        mean[r] = base + offset
        m2[r] = q


@njit(**_ew)
def slabs_moments(x3, count, mean, m2):
    """Per-(a, c) (count, mean, M2) of ``x3`` (A, B, C) reduced over B, into float64 (A, C)."""
    scratch = np.empty((3, x3.shape[2]), x3.dtype)
    for a in range(x3.shape[0]):
        if x3.shape[1] == 0:
            count[a, :] = 0.0
            mean[a, :] = 0.0
            m2[a, :] = 0.0
        else:
            count[a, :] = _slab_moments(x3[a], mean[a], m2[a], scratch)


# -- grid: batch, instance and group norm on (N, P, C, Q) ----------------------------------------

@njit(**_ew)
def grid_states(x4, states):
    """Per-(sample, channel) statistics of ``x4`` (N, P, C, Q) into ``states`` (4, N, C): count,
    base, offset and M2, the mean being ``base + offset``."""
    n_, p_, c_, q_ = x4.shape
    count, base, offset, m2 = states[0], states[1], states[2], states[3]
    count[:, :] = 0.0
    base[:, :] = 0.0
    offset[:, :] = 0.0
    m2[:, :] = 0.0
    if q_ == 1:  # channels last: a (P, C) slab per sample, vectorised along C
        x3 = x4.reshape((n_, p_, c_))
        scratch = np.empty((3, c_), x4.dtype)
        for n in range(n_):
            if p_ > 0:
                count[n, :] = _slab_moments(x3[n], base[n], m2[n], scratch)
        return
    for n in range(n_):
        for p in range(p_):
            for c in range(c_):
                k, b, o, q = span_moments(x4[n, p, c])
                if k == 0.0:
                    continue
                if count[n, c] == 0.0:
                    base[n, c] = b
                count[n, c], offset[n, c], m2[n, c] = _chan_merge(
                    count[n, c], offset[n, c], m2[n, c], k, (b - base[n, c]) + o, q)


@njit(**_ew)
def merge_grid(states, groups, over_batch, merged):
    """Merge per-(sample, channel) ``states`` (4, N, C) into groups of ``C // groups`` consecutive
    channels -- per sample, or over the samples too (``over_batch``) -- ``merged`` (4, 1 or N, G),
    as offsets from the first member's base (Chan's formula, in float64)."""
    _, n_, c_ = states.shape
    members = c_ // groups
    merged[:, :, :] = 0.0
    for n in range(n_):
        s = 0 if over_batch else n
        for g in range(groups):  # by group, then its channels (see `grid_coefficients`)
            for c in range(g * members, (g + 1) * members):
                k = states[0, n, c]
                if k == 0.0:
                    continue
                if merged[0, s, g] == 0.0:
                    merged[1, s, g] = states[1, n, c]
                merged[0, s, g], merged[2, s, g], merged[3, s, g] = _chan_merge(
                    merged[0, s, g], merged[2, s, g], merged[3, s, g], k,
                    (states[1, n, c] - merged[1, s, g]) + states[2, n, c], states[3, n, c])


@njit(**_ew)
def grid_coefficients(base, offset, rstd, weight, bias, channels, coef):
    """(hi, lo, alpha, beta) per (sample, channel) from per-group statistics (S, G) -- the
    centre ``base + offset`` split in the input precision -- into ``coef`` (4, S, C)."""
    s_, groups = rstd.shape
    members = channels // groups
    dtype = coef.dtype.type
    # by group, then its channels: an integer division per channel (``c // members``) would cost
    # more than the rest of the loop
    for s in range(s_):
        for g in range(groups):
            h, l = _split(base[s, g], offset[s, g], dtype)
            r = rstd[s, g]
            for c in range(g * members, (g + 1) * members):
                coef[0, s, c] = h
                coef[1, s, c] = l
                coef[2, s, c] = dtype(r) if weight is None else dtype(r * weight[c])
                coef[3, s, c] = dtype(0) if bias is None else bias[c]


@njit(**_ew)
def grid_affine(x4, coef, y4):
    """``y = ((x - hi) - lo)*alpha + beta`` with ``coef`` (4, S, C), S = 1 (shared by every
    sample) or N."""
    n_, p_, c_, q_ = x4.shape
    per_sample = coef.shape[1] > 1
    if q_ == 1:
        x3 = x4.reshape((n_, p_, c_))
        y3 = y4.reshape((n_, p_, c_))
        for n in range(n_):
            s = n if per_sample else 0
            _slab_affine(x3[n], coef[0, s], coef[1, s], coef[2, s], coef[3, s], y3[n])
        return
    for n in range(n_):
        s = n if per_sample else 0
        for p in range(p_):
            for c in range(c_):
                h = coef[0, s, c]
                l = coef[1, s, c]
                a = coef[2, s, c]
                b = coef[3, s, c]
                xs = x4[n, p, c]
                ys = y4[n, p, c]
                for q in range(q_):
                    ys[q] = ((xs[q] - h) - l) * a + b


@njit(**_jit)
def _segments_dot_sums(dy3, x3, hi, lo, sum_dy, sum_dy_xc):
    """Add per-channel ``sum(dy)`` and ``sum(dy*(x - centre))`` of one sample's (P, C, Q) block,
    each segment of at most ROW_CHUNK one exact chunk in the input precision, to float64 (C,)
    sums; the loops inline here, where a call per short segment would cost more than its sums."""
    p_, c_, q_ = x3.shape
    zero = x3.dtype.type(0)
    for p in range(p_):
        for c in range(c_):
            h = hi[c]
            xs = x3[p, c]
            gs = dy3[p, c]
            t1 = zero
            t2 = zero
            for q in range(q_):
                g = gs[q]
                t1 += g
                t2 += g * (xs[q] - h)
            sum_dy[c] += t1
            sum_dy_xc[c] += _less_low(t2, t1, lo[c])


@njit(**_ew)
def grid_grad_sums(dy4, x4, coef, sums):
    """``sum(dy)`` and ``sum(dy*(x - centre))`` per (sample, channel) into float64 ``sums``
    (2, N, C); the centre is ``coef[0] + coef[1]`` (4 or more, S, C)."""
    n_, p_, c_, q_ = x4.shape
    per_sample = coef.shape[1] > 1
    sums[:, :, :] = 0.0
    if q_ == 1:
        x3 = x4.reshape((n_, p_, c_))
        scratch = np.empty((2, c_), x4.dtype)
        d3 = dy4.reshape((n_, p_, c_))
        for n in range(n_):
            s = n if per_sample else 0
            _slab_dot_sums(d3[n], x3[n], coef[0, s], coef[1, s], sums[0, n], sums[1, n], scratch)
        return
    if q_ <= ROW_CHUNK:
        for n in range(n_):
            s = n if per_sample else 0
            _segments_dot_sums(dy4[n], x4[n], coef[0, s], coef[1, s], sums[0, n], sums[1, n])
        return
    for n in range(n_):
        s = n if per_sample else 0
        for p in range(p_):
            for c in range(c_):
                t1, t2 = _weighted_dot_sums(dy4[n, p, c], x4[n, p, c], None, coef[0, s, c], coef[1, s, c])
                sums[0, n, c] += t1
                sums[1, n, c] += t2


@njit(**_ew)
def grid_backward_coefficients(sums, rstd, weight, over_batch, batch_stats, per_group, coef, grad_weight,
                               grad_bias):
    """The input gradient's coefficients ``coef[2:5]`` = (ka, kb, kc) per (sample, channel), for
    ``dx = dy*ka + (x - centre)*kb + kc`` -- with batch statistics ``dx = rstd*(w*dy -
    mean_g(w*dy) - xhat*mean_g(w*dy*xhat))``, ``per_group`` values in a group; with running ones
    ``dx = rstd*w*dy`` -- and the float64 per-channel ``grad_weight = sum(dy*xhat)``,
    ``grad_bias = sum(dy)``.  ``rstd`` (S, G)."""
    _, n_, c_ = sums.shape
    s_, groups = rstd.shape
    members = c_ // groups
    dtype = coef.dtype.type
    sum_wdy = np.zeros((s_, groups))
    sum_wdy_xhat = np.zeros((s_, groups))
    grad_weight[:] = 0.0
    grad_bias[:] = 0.0
    # by group, then its channels (as `grid_coefficients`)
    for n in range(n_):
        s = 0 if over_batch else n
        for g in range(groups):
            r = rstd[s, g]
            wdy = 0.0
            wdy_xc = 0.0
            for c in range(g * members, (g + 1) * members):
                scale = 1.0 if weight is None else np.float64(weight[c])
                grad_bias[c] += sums[0, n, c]
                grad_weight[c] += sums[1, n, c] * r
                wdy += scale * sums[0, n, c]
                wdy_xc += scale * sums[1, n, c]
            sum_wdy[s, g] += wdy
            sum_wdy_xhat[s, g] += wdy_xc * r
    for s in range(s_):
        for g in range(groups):
            r = rstd[s, g]
            kb = dtype(-r * r * (sum_wdy_xhat[s, g] / per_group)) if batch_stats else dtype(0)
            kc = dtype(-r * (sum_wdy[s, g] / per_group)) if batch_stats else dtype(0)
            for c in range(g * members, (g + 1) * members):
                coef[2, s, c] = dtype(r) if weight is None else dtype(r * weight[c])
                coef[3, s, c] = kb
                coef[4, s, c] = kc


@njit(**_ew)
def grid_input_grad(dy4, x4, coef, dx4):
    """``dx = dy*ka + ((x - hi) - lo)*kb + kc`` with ``coef`` (5, S, C) = (hi, lo, ka, kb, kc)."""
    n_, p_, c_, q_ = x4.shape
    per_sample = coef.shape[1] > 1
    if q_ == 1:
        x3 = x4.reshape((n_, p_, c_))
        d3 = dy4.reshape((n_, p_, c_))
        o3 = dx4.reshape((n_, p_, c_))
        for n in range(n_):
            s = n if per_sample else 0
            _slab_input_grad(d3[n], x3[n], coef[0, s], coef[1, s], coef[2, s], coef[3, s], coef[4, s], o3[n])
        return
    for n in range(n_):
        s = n if per_sample else 0
        for p in range(p_):
            for c in range(c_):
                h, lo, ka, kb, kc = coef[0, s, c], coef[1, s, c], coef[2, s, c], coef[3, s, c], coef[4, s, c]
                xs = x4[n, p, c]
                gs = dy4[n, p, c]
                ds = dx4[n, p, c]
                for q in range(q_):
                    ds[q] = gs[q] * ka + ((xs[q] - h) - lo) * kb + kc


# -- whole grid passes: one call from statistics to output ----------------------------------------

@njit(**_ew)
def grid_stats(x4, groups, over_batch, eps):
    """Per-group (count, base, offset, var, rstd) of ``x4``, each (1 or N, G) float64."""
    n, p, c, q = x4.shape
    if over_batch and q == 1:  # channels last over the batch: the samples' slabs as one
        x4 = x4.reshape((1, n * p, c, 1))
        n = 1
    states = np.empty((4, n, c))
    grid_states(x4, states)
    merged = np.empty((4, 1 if over_batch else n, groups))
    merge_grid(states, groups, over_batch, merged)
    var = merged[3] / merged[0]
    return merged[0], merged[1], merged[2], var, 1.0 / np.sqrt(var + eps)


@njit(**_ew)
def grid_normalize(x4, y4, base, offset, rstd, weight, bias):
    """``y4`` from ``x4`` with per-group centre ``base + offset`` and ``rstd`` (S, G)."""
    c = x4.shape[2]
    coef = np.empty((4, rstd.shape[0], c), x4.dtype)
    grid_coefficients(base, offset, rstd, weight, bias, c, coef)
    grid_affine(x4, coef, y4)


@njit(**_jit)
def channel_deviations(x4, shift, acc):
    """Per-(sample, channel) float64 sums of ``x - shift`` and of its square into ``acc``
    (2, N, C); ``shift`` (S, C) float64, S = 1 (every sample) or N.  For ``grid_forward``'s
    channels-first input (channels-last takes ``grid_stats`` there)."""
    n_, p_, c_, q_ = x4.shape
    per_sample = shift.shape[0] > 1
    acc[:, :, :] = 0.0
    for n in range(n_):
        s = n if per_sample else 0
        for p in range(p_):
            for c in range(c_):
                centre = shift[s, c]
                t1 = 0.0
                t2 = 0.0
                for q in range(q_):
                    d = np.float64(x4[n, p, c, q]) - centre
                    t1 += d
                    t2 += d * d
                acc[0, n, c] += t1
                acc[1, n, c] += t2


@njit(**_ew)
def _group_totals(per_channel, groups, over_batch, totals):
    """Sum (N, C) per-channel values into (1 or N, G) groups of consecutive channels."""
    n_, c_ = per_channel.shape
    members = c_ // groups
    totals[:, :] = 0.0
    for n in range(n_):
        s = 0 if over_batch else n
        for g in range(groups):  # by group, then its channels (see `grid_coefficients`)
            for c in range(g * members, (g + 1) * members):
                totals[s, g] += per_channel[n, c]


@njit(inline="always", **_ew)
def grid_shape4(shape, ch):
    """(N, P, C, Q) of an input of ``shape`` with channels on axis ``ch``: the batch axis, the
    axes before the channels, the channels, the axes after."""
    p = 1
    for i in range(1, ch):
        p *= shape[i]
    q = 1
    for i in range(ch + 1, len(shape)):
        q *= shape[i]
    return shape[0], p, shape[ch], q


@njit(**_ew)
def grid_forward_viewed(x, ch, groups, over_batch, weight, bias, eps, y, stats):
    """`grid_forward` on C-contiguous ``x`` and ``y`` of any number of dimensions, channels on
    axis ``ch``: the small lane's one call from Python for the views it would make there (on 64
    elements each is a measurable part of the call)."""
    shape4 = grid_shape4(x.shape, ch)
    grid_forward(x.reshape(shape4), groups, over_batch, weight, bias, eps, y.reshape(shape4), stats)


@njit(**_ew)
def grid_backward_viewed(dy, x, ch, mean, rstd, weight, over_batch, batch_stats, dx, grad_weight, grad_bias):
    """`grid_backward` on C-contiguous ``dy``, ``x`` and ``dx`` of any number of dimensions (as
    `grid_forward_viewed`)."""
    shape4 = grid_shape4(x.shape, ch)
    grid_backward(dy.reshape(shape4), x.reshape(shape4), mean, rstd, weight, over_batch, batch_stats,
                  dx.reshape(shape4), grad_weight, grad_bias)


@njit(**_ew)
def grid_forward(x4, groups, over_batch, weight, bias, eps, y4, stats):
    """Batch statistics of a small ``x4`` and its normalization into ``y4``; ``stats`` (4, 1 or
    N, G) float64 receives each group's count, mean, biased variance and rstd.

    For the ``_small`` lane only (at most a few tens of thousands of values): the statistics are
    the corrected two-pass sums over each whole group in float64 -- the mean of a first pass, then
    the sums of the deviations from it, which correct it, and of their squares -- with no chunk
    states to merge, the per-segment divisions that cost most at this size.  Channels-last input
    takes ``grid_stats`` instead: its chunk sums run along the channels in the input precision,
    a vector loop, where float64 sums along a row of channels would keep their accumulators in
    memory."""
    n_, p_, c_, q_ = x4.shape
    members = c_ // groups
    if not over_batch and p_ == 1 and q_ > 1:
        # channels first, groups per sample: each (sample, group) is one contiguous row, taken by
        # the fused kernel's row body (``normalize_rows``, each weight over ``q_`` values)
        flat = stats.reshape(4, -1)
        normalize_rows(x4.reshape(n_ * groups, members * q_), np.ascontiguousarray(weight).reshape(groups, members),
                       np.ascontiguousarray(bias).reshape(groups, members), q_, eps, True, 0, n_ * groups,
                       y4.reshape(n_ * groups, members * q_), flat[1], flat[2], flat[3])
        flat[0] = members * q_
        return
    if q_ == 1:
        count_g, base_g, offset_g, var_g, rstd_g = grid_stats(x4, groups, over_batch, eps)
        grid_normalize(x4, y4, base_g, offset_g, rstd_g, weight, bias)
        stats[0] = count_g
        stats[1] = base_g + offset_g
        stats[2] = var_g
        stats[3] = rstd_g
        return
    s_ = stats.shape[1]
    count = x4.size / (s_ * groups)
    acc = np.empty((2, n_, c_))
    shift = np.zeros((s_, c_))
    base = np.empty((s_, groups))
    channel_deviations(x4, shift, acc)
    _group_totals(acc[0], groups, over_batch, base)
    base /= count
    for s in range(s_):
        for g in range(groups):
            shift[s, g * members:(g + 1) * members] = base[s, g]
    channel_deviations(x4, shift, acc)
    dev = np.empty((s_, groups))
    sq = np.empty((s_, groups))
    _group_totals(acc[0], groups, over_batch, dev)
    _group_totals(acc[1], groups, over_batch, sq)
    offset = dev / count
    var = np.maximum(sq - dev * offset, 0.0) / count
    rstd = 1.0 / np.sqrt(var + eps)
    grid_normalize(x4, y4, base, offset, rstd, weight, bias)
    stats[0] = count
    stats[1] = base + offset
    stats[2] = var
    stats[3] = rstd


@njit(**_ew)
def grid_backward(dy4, x4, mean, rstd, weight, over_batch, batch_stats, dx4, grad_weight, grad_bias):
    """Input gradient into ``dx4`` and float64 per-channel ``grad_weight``/``grad_bias`` of a
    forward that normalized with per-group ``mean``/``rstd`` (S, G)."""
    n, _, c, _ = x4.shape
    s_, groups = rstd.shape
    coef = np.empty((5, s_, c), x4.dtype)
    grid_coefficients(mean, np.zeros((s_, groups)), rstd, None, None, c, coef[:4])
    sums = np.empty((2, n, c))
    grid_grad_sums(dy4, x4, coef, sums)
    per_group = x4.size / (s_ * groups)
    grid_backward_coefficients(sums, rstd, weight, over_batch, batch_stats, per_group, coef, grad_weight,
                               grad_bias)
    grid_input_grad(dy4, x4, coef, dx4)
