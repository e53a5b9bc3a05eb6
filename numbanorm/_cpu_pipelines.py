"""The CPU device: each op family's whole data path on NumPy arrays, once the front has checked
the arguments.

Batch, instance and group norm are one computation: per-(sample, channel) partial statistics
from the engine, merged over a grouping of the ``(N, C)`` grid -- over the batch and per channel
(batch norm), per sample and channel (instance norm), or per sample and group of channels (group
norm).  Their backward likewise reduces ``dy`` per (sample, channel) once and does the grouping
on those small arrays.  Layer and RMS norm are the same engine with statistics per row and the
affine parameters along the row.

Which kernels run is decided here, by size and layout: the small lane (``_small``: one serial
call), the fused row and slab kernels (statistics and normalization while the data is in cache),
or the general plan (``_plan``) over the engine's kernels.  ``_cuda_pipelines`` is the CUDA
device's counterpart."""

import math
from typing import NamedTuple

import numpy as np

from . import _cpu, _engine, _prepared, _small
from ._arguments import _deliver, _is_c, _rstd
from ._plan import aligned_empty, fold_for, Plan


_fused_rows = _engine.CPUDevice.fused_rows
_fused_row_backward = _engine.CPUDevice.fused_row_backward


def _fused_forward(x, x2, weight, bias, seg, eps, out, centered=True, kernel=None):
    """Run ``row_normalize`` (a prepared call passes it as its ``_prepared.Kernel``);
    ``weight``/``bias`` (K, L // seg) in the compute dtype.  Returns (y, mean, var, rstd) with the
    statistics per row."""
    stats = np.empty((3, x2.shape[0]))  # one allocation: at 16 K-64 K elements each costs a measurable part
    direct = out is not None and out.dtype == x2.dtype and _is_c(out)
    y2 = out.reshape(x2.shape) if direct else aligned_empty(x2.shape, x2.dtype)
    run = _cpu.row_normalize if kernel is None else kernel.run
    run(x2, weight, bias, seg, eps, centered, _engine.CPUDevice.row_blocks(x2.shape[0]), y2, stats)
    y = out if direct else _deliver(y2.reshape(x.shape), x.dtype, out)
    return y, stats[0], stats[1], stats[2]


def _fused_params(weight, bias, shape, dtype):
    w = np.ones(shape, dtype) if weight is None else weight.reshape(shape)
    b = np.zeros(shape, dtype) if bias is None else bias.reshape(shape)
    return w, b


class _FusedRows(NamedTuple):
    """A prepared `_fused_forward` (see ``_prepared``): layer/RMS norm rows, or NCHW instance and
    group norm's (sample, group) rows, their shapes worked out once.  From 16 K elements a call
    is tens of microseconds, and `_fused_forward`'s steps around the kernel cost a third of it:
    this call takes only the steps its signature leaves open.  ``(y, mean, rstd)``, the
    statistics shaped ``stats_shape``; ``ones``/``zeros`` (K, L // seg) stand in for an absent
    weight/bias."""

    shape2: tuple  # (rows, L): x as the kernel takes it
    params: tuple  # (K, L // seg): the weight and bias as the kernel takes them
    seg: int
    eps: float
    centered: bool
    stats_shape: tuple
    ones: np.ndarray
    zeros: np.ndarray
    kernel: "_prepared.Kernel"  # _cpu.row_normalize
    streamed: bool  # the output large enough to take aligned_empty's alignment (see ``_cpu._streams``)

    @classmethod
    def of(cls, x2, params, seg, eps, centered, stats_shape):
        count = math.prod(params)
        return cls(x2.shape, params, seg, eps, centered, stats_shape,
                   _small.constant(1.0, count, x2.dtype).reshape(params),
                   _small.constant(0.0, count, x2.dtype).reshape(params), _prepared.Kernel(_cpu.row_normalize),
                   x2.nbytes >= _cpu.STREAM_BYTES)

    def __call__(self, x, weight, bias):
        shape2, params, seg, eps, centered, stats_shape, ones, zeros, kernel, streamed = self
        blocks = _engine.CPUDevice.blocks_of(shape2[0], _cpu.thread_count())
        # x is C-contiguous and of the compute dtype (the signature pins both): y is the kernel's
        # output as it is, and each view is made once
        y = aligned_empty(x.shape, x.dtype) if streamed else np.empty_like(x)
        stats = np.empty((3, shape2[0]))
        flat = x.shape == shape2 and len(stats_shape) == 1  # (rows, L) over its last axis: no views to make
        kernel.run(x if flat else x.reshape(shape2), ones if weight is None else weight.reshape(params),
                   zeros if bias is None else bias.reshape(params), seg, eps, centered, blocks,
                   y if flat else y.reshape(shape2), stats)
        if flat:
            return y, stats[0], stats[2]
        return y, stats[0].reshape(stats_shape), stats[2].reshape(stats_shape)


class Grouping(NamedTuple):
    """How the (N, C) grid of per-(sample, channel) statistics is grouped."""

    groups: int  # channel groups: C for batch and instance norm, num_groups for group norm
    over_batch: bool  # batch norm merges the samples too

    def merge_states(self, states, plan, ch, n):
        """The moments kernels' states (see ``Engine.states``) merged into groups: (1 or N, G) each."""
        merged = np.empty((3, 1 if self.over_batch else n, self.groups))
        _cpu.merge_groups(states[0], states[1], states[2], self.group_of(plan, ch), *merged.reshape(3, -1))
        return merged

    def group_of(self, plan, ch):
        """The group of each (outer index, column) of the kernels' states, (K, W) (cached on the plan)."""
        def make():
            samples, channels = plan.kernel_cells(ch)
            group = channels // (plan.shape[ch] // self.groups)
            if not self.over_batch:
                group = samples * self.groups + group
            return group if group.ndim == 2 else group[:, None]
        return plan.memo(("groups", ch, self), make)


def grid_plan(x, ch, over_batch=False):
    """Statistics per (sample, channel), or per channel only where the samples are merged anyway
    (batch norm: channels-last data then make one long cols view, one merge instead of two)."""
    return Plan.of(x, [i == ch or (i == 0 and not over_batch) for i in range(x.ndim)])


def on_grid(a, x, ch):
    """A (1 or N, C) array shaped to broadcast against x."""
    shape = [1] * x.ndim
    shape[0], shape[ch] = a.shape[0], x.shape[ch]
    return a.reshape(shape)


def grid_sums(dy, x, plan, ch, center):
    """Gradient sums per (sample, channel), (N, C) -- or (1, C) where the plan merged the samples."""
    s1, s2 = _engine.CPU.grad_sums(dy, x, plan, center)
    c = x.shape[ch]
    return s1.reshape(-1, c), s2.reshape(-1, c)


def grid_apply(x, xk, ch, grouping, mean, var, weight, bias, eps, out, plan):
    """Normalize with per-group ``mean``/``var`` of shape (1 or N, G); returns (y, mean, rstd)."""
    rstd = _rstd(var, eps)
    samples, channels = plan.kernel_cells(ch)
    coef = np.empty((4, samples.size), xk.dtype)
    _cpu.grid_coefficients(samples.reshape(-1), channels.reshape(-1), x.shape[ch] // grouping.groups,
                           mean, rstd, weight, bias, coef)
    direct_out = out if out is not None and out.dtype == xk.dtype else None
    return _deliver(_engine.CPU.affine_coef(xk, plan, coef, out=direct_out), x.dtype, out), mean, rstd


def _grid_rows(x, ch, grouping):
    """NCHW instance/group norm as fused rows, one per (sample, group); None if that does not fit."""
    return _engine.CPUDevice.grid_rows(x, ch, grouping.groups, grouping.over_batch)


def _grid_slabs(x, ch, grouping):
    """Channels-last instance/group norm as fused (N, spatial, C) slabs, folded when C is small
    (see ``_plan.fold_for``): returns (slabs, fold), or (None, 1) if that does not fit."""
    n, c = x.shape[0], x.shape[ch]
    if grouping.over_batch or ch != x.ndim - 1 or x.size < 2 * n * c:
        return None, 1
    rows = _fused_rows(x, n, 1)
    if rows is None:
        return None, 1
    spatial = rows.shape[1] // c
    fold = fold_for(spatial, c)
    return rows.reshape(n, spatial // fold, c * fold), fold


def grid_forward(x, xk, ch, grouping, weight, bias, eps, out):
    """Normalize with statistics of the input; returns (y, count, mean, var, rstd) per group
    (``count`` a number where every group has the same)."""
    n, c = x.shape[0], x.shape[ch]
    if _small.grid_fits(x, over_batch=grouping.over_batch):
        y, stats = _small.grid_forward(x, ch, grouping.groups, grouping.over_batch, weight, bias, eps, out)
        return y, float(stats[0, 0, 0]), stats[1], stats[2], stats[3]  # indexed: unpacking an array iterates it
    x2 = _grid_rows(xk, ch, grouping)
    if x2 is not None:
        shape = (grouping.groups, c // grouping.groups)
        w, b = _fused_params(weight, bias, shape, xk.dtype)
        y, mean, var, rstd = _fused_forward(x, x2, w, b, x.size // (n * c), eps, out)
        mean, var, rstd = mean.reshape(n, -1), var.reshape(n, -1), rstd.reshape(n, -1)
        return y, float(x2.shape[1]), mean, var, rstd
    x3, fold = _grid_slabs(xk, ch, grouping)
    if x3 is not None:
        mean, var, rstd = np.empty((3, n, grouping.groups))
        direct = out is not None and out.dtype == xk.dtype and _is_c(out)
        y3 = out.reshape(x3.shape) if direct else aligned_empty(x3.shape, x3.dtype)
        w, b = _fused_params(weight, bias, (c,), xk.dtype)
        _cpu.col_normalize(x3, w, b, grouping.groups, eps, fold, y3, mean, var, rstd)
        y = out if direct else _deliver(y3.reshape(x.shape), x.dtype, out)
        return y, float(x.size // (n * grouping.groups)), mean, var, rstd
    plan = grid_plan(xk, ch, grouping.over_batch)  # no fused kernel fits: statistics, then affine
    samples, channels = _flat_cells(plan, ch)
    stats = np.empty((4, 1 if grouping.over_batch else n, grouping.groups))
    direct_out = out if out is not None and out.dtype == xk.dtype else None
    out_view, user = _engine.CPUDevice.result(plan, xk.dtype, direct_out, xk)
    _, states = _engine.CPU.partials(plan, plan.pieces, 3)
    _cpu.grid_normalize(plan.view(xk), plan.pieces, states, grouping.group_of(plan, ch), samples, channels,
                        c // grouping.groups, weight, bias, eps, stats, np.empty((4, samples.size), xk.dtype),
                        out_view)
    y = _deliver(_engine.CPUDevice.finish(user, direct_out), x.dtype, out)
    return y, stats[0], stats[1], stats[2], stats[3]


def _flat_cells(plan, ch):
    """``plan.kernel_cells(ch)`` flat, as the grid drivers take them (cached on the plan)."""
    return plan.memo(("flat cells", ch), lambda: tuple(a.reshape(-1) for a in plan.kernel_cells(ch)))


class _GridForward(NamedTuple):
    """A prepared grid norm above the small lane: `grid_forward` with its checked arguments."""

    ch: int
    grouping: Grouping
    eps: float

    def __call__(self, x, weight, bias):
        y, _, mean, _, rstd = grid_forward(x, x, self.ch, self.grouping, weight, bias, self.eps, None)
        if self.grouping.over_batch:
            return y, mean[0], rstd[0]
        return y, mean, rstd


def prepare_grid_forward(x, ch, grouping, eps):
    """The prepared call of a grid norm with batch statistics on a checked ``x`` (see
    ``_prepared``): ``(y, mean, rstd)`` from (x, weight, bias)."""
    x2 = _grid_rows(x, ch, grouping)
    if x2 is not None:
        n, c = x.shape[0], x.shape[ch]
        return _FusedRows.of(x2, (grouping.groups, c // grouping.groups), x.size // (n * c), eps, True,
                             (n, grouping.groups))
    return _GridForward(ch, grouping, eps)


def grid_backward(dy, x, ch, grouping, mean, rstd, weight, batch_stats, has_bias):
    """Grads for a forward that normalized with per-group ``mean``/``rstd`` (1 or N, G)."""
    n, c = x.shape[0], x.shape[ch]
    if x.size == 0:  # an empty batch: the parameters had no effect
        zeros = np.zeros(c, x.dtype)
        return np.empty_like(x), None if weight is None else zeros, zeros.copy() if has_bias else None
    if _small.grid_fits(x, dy, grouping.over_batch):
        dx, grad_weight, grad_bias = _small.grid_backward(dy, x, ch, mean, rstd, weight, grouping.over_batch,
                                                          batch_stats)
        return (dx, None if weight is None else grad_weight.astype(weight.dtype),
                grad_bias.astype(x.dtype) if has_bias else None)
    x2 = _grid_rows(x, ch, grouping) if batch_stats and _is_c(dy) else None
    if x2 is not None:
        cg = c // grouping.groups
        w, _ = _fused_params(weight, None, (grouping.groups, cg), x.dtype)
        dx2 = np.empty_like(x2)
        seg_dy, seg_dy_xhat = np.empty((2, x2.shape[0], cg))
        blocks = _engine.CPUDevice.row_blocks(x2.shape[0])
        _cpu.segment_normalize_backward(dy.reshape(x2.shape), x2, w, x.size // (n * c), mean.ravel(), rstd.ravel(),
                                        blocks, dx2, seg_dy, seg_dy_xhat)
        grad_weight = None if weight is None else seg_dy_xhat.reshape(n, c).sum(axis=0).astype(x.dtype)
        grad_bias = seg_dy.reshape(n, c).sum(axis=0).astype(x.dtype) if has_bias else None
        return dx2.reshape(x.shape), grad_weight, grad_bias
    x3, fold = _grid_slabs(x, ch, grouping) if batch_stats and _is_c(dy) else (None, 1)
    if x3 is not None:
        w, _ = _fused_params(weight, None, (c,), x.dtype)
        dx3 = aligned_empty(x3.shape, x3.dtype)
        sum_dy, sum_dy_xhat = np.empty((n, c)), np.empty((n, c))
        _cpu.col_normalize_backward(dy.reshape(x3.shape), x3, w, grouping.groups, mean, rstd, fold, dx3,
                                    sum_dy, sum_dy_xhat)
        grad_weight = None if weight is None else sum_dy_xhat.sum(axis=0).astype(x.dtype)
        grad_bias = sum_dy.sum(axis=0).astype(x.dtype) if has_bias else None
        return dx3.reshape(x.shape), grad_weight, grad_bias
    plan = grid_plan(x, ch, grouping.over_batch)
    samples, channels = _flat_cells(plan, ch)
    out_view, dx = _engine.CPUDevice.result(plan, x.dtype, None, x)
    grad_weight, grad_bias = np.empty(c), np.empty(c)
    _, sums = _engine.CPU.partials(plan, plan.pieces, 2)
    _cpu.grid_normalize_backward(plan.view(dy), plan.view(x), plan.pieces, sums, samples, channels,
                                 c // grouping.groups, x.size / mean.size, mean, rstd, weight, batch_stats,
                                 np.empty((5, samples.size), x.dtype), grad_weight, grad_bias, out_view)
    return (dx, None if weight is None else grad_weight.astype(weight.dtype),
            grad_bias.astype(dx.dtype) if has_bias else None)


def _row_plan(x, k, with_params):
    """A rows plan with the trailing ``k`` axes as the row; copies x to C order when the
    parameters need the row in its natural order and x's memory order differs."""
    kept = [i < x.ndim - k for i in range(x.ndim)]
    plan = Plan.of(x, kept)
    trailing = [i for i in range(x.ndim - k, x.ndim) if x.shape[i] != 1]
    natural = (plan.kind == "rows" and list(plan.reduced_axes) == trailing
               and not set(plan.flips) & set(trailing))
    if with_params and not natural:
        x = np.ascontiguousarray(x)
        plan = Plan.of(x, kept)
    return x, plan


def _row_params(weight, bias, length, dtype):
    """Row parameters as the kernels take them: both None, or both flat arrays."""
    if weight is None and bias is None:
        return None, None
    w = np.ones(length, dtype) if weight is None else weight.reshape(length)
    b = np.zeros(length, dtype) if bias is None else bias.reshape(length)
    return w, b


def row_forward(x, xk, k, weight, bias, eps, centered, out):
    """Layer norm (``centered``) or RMS norm of ``x`` over its trailing ``k`` axes, ``xk`` being x
    in the compute dtype and ``weight``/``bias`` checked (trailing shape, compute dtype) or None.
    Returns (y, mean, rstd), the statistics float64 per row, flat."""
    rows = math.prod(x.shape[: x.ndim - k])
    length = math.prod(x.shape[x.ndim - k:])
    if _small.row_fits(x):
        return _small.row_forward(x, rows, length, weight, bias, eps, centered, out)
    x2 = _fused_rows(xk, rows, 1)
    if x2 is not None:
        w, b = _fused_params(weight, bias, (1, length), xk.dtype)
        y, mean, _, rstd = _fused_forward(x, x2, w, b, 1, eps, out, centered)
        return y, mean, rstd
    xk, plan = _row_plan(xk, k, weight is not None or bias is not None)
    count, mean, m2 = _engine.CPU.moments(xk, [i < x.ndim - k for i in range(x.ndim)], plan)
    spread = m2 / count
    if not centered:
        spread, mean = spread + mean * mean, np.zeros_like(mean)
    w, b = _row_params(weight, bias, length, xk.dtype)
    direct_out = out if out is not None and out.dtype == xk.dtype else None
    rstd = _rstd(spread, eps)
    y = _deliver(_engine.CPU.affine(xk, plan, mean, rstd, np.zeros_like(rstd), out=direct_out, weight=w, bias=b),
                 x.dtype, out)
    return y, mean.reshape(-1), rstd.reshape(-1)


class _RowForward(NamedTuple):
    """A prepared row norm above the small lane: `row_forward` with its checked arguments."""

    k: int
    lead: tuple
    eps: float
    centered: bool

    def __call__(self, x, weight, bias):
        y, mean, rstd = row_forward(x, x, self.k, weight, bias, self.eps, self.centered, None)
        return y, mean.reshape(self.lead), rstd.reshape(self.lead)


def prepare_row_forward(x, k, eps, centered):
    """The prepared call of a row norm over the trailing ``k`` axes of a checked ``x`` (see
    ``_prepared``): ``(y, mean, rstd)`` from (x, weight, bias), the statistics shaped like x's
    leading axes."""
    lead = x.shape[: x.ndim - k]
    length = math.prod(x.shape[x.ndim - k:])
    x2 = _fused_rows(x, math.prod(lead), 1)
    if x2 is not None:
        return _FusedRows.of(x2, (1, length), 1, eps, centered, lead)
    return _RowForward(k, lead, eps, centered)


def row_moments(xk, k):
    """Per-row (mean, biased variance) of ``xk`` over its trailing ``k`` axes, float64 shaped like
    its leading axes: a row norm's statistics without its output."""
    lead = xk.shape[: xk.ndim - k]
    rows = math.prod(lead)
    if _small.row_fits(xk):
        mean, var = _small.row_moments(xk, rows, xk.size // rows)
    elif (x2 := _fused_rows(xk, rows, 1)) is not None:
        count, mean, m2 = np.empty((rows, 1)), np.empty((rows, 1)), np.empty((rows, 1))
        _cpu.row_moments(x2, 1, count, mean, m2)
        var = m2 / count
    else:
        count, mean, m2 = _engine.CPU.moments(xk, [i < xk.ndim - k for i in range(xk.ndim)])
        var = m2 / count
    return mean.reshape(lead), var.reshape(lead)


def row_backward_recomputing(dy, xk, k, eps):
    """The input gradient of a layer norm without parameters whose forward kept no statistics
    (weight standardization): they are recomputed, in the fused kernel while each row is in cache."""
    rows = math.prod(xk.shape[: xk.ndim - k])
    if _small.row_fits(xk, dy):
        return _small.row_backward_recomputing(dy, xk, rows, eps)
    x2 = _fused_rows(xk, rows, 1) if _is_c(dy) else None
    if x2 is None:
        mean, var = row_moments(xk, k)
        return row_backward(dy, xk, k, mean, _rstd(var, eps), None, False, True)[0]
    mean, rstd = np.empty(rows), np.empty(rows)
    dx2, _, _ = _fused_row_backward(dy, x2, None, mean, rstd, True, False, recompute=True, eps=eps)
    return dx2.reshape(xk.shape)


def row_backward(dy, xk, k, mean, rstd, weight, has_bias, centered):
    """Gradients of a row norm over the trailing ``k`` axes: (dx, grad_weight, grad_bias), the
    parameter gradients shaped like the row in the compute dtype (None where the forward had no
    such parameter)."""
    shape = xk.shape[xk.ndim - k:]
    lead = xk.shape[: xk.ndim - k]
    length = math.prod(shape)
    if _small.row_fits(xk, dy):
        dx, grad_w, grad_b = _small.row_backward(dy, xk, mean, rstd, weight, centered, weight is not None or has_bias)
    elif (x2 := _fused_rows(xk, mean.size, 1) if _is_c(dy) else None) is not None:
        dx2, grad_w, grad_b = _fused_row_backward(dy, x2, weight, mean, rstd, centered, has_bias)
        dx = dx2.reshape(xk.shape)
    else:
        w, _ = _row_params(weight, np.zeros(shape, xk.dtype) if has_bias else None, length, xk.dtype)
        xk, plan = _row_plan(xk, k, w is not None)
        keep = lead + (1,) * k
        mean, rstd = mean.reshape(keep), rstd.reshape(keep)
        sum_wdy, sum_wdy_xc = _engine.CPU.grad_sums(dy, xk, plan, mean, weight=w)
        # dx = rstd*(w*dy - mean(w*dy) - xhat*mean(w*dy*xhat)); RMS norm has no mean(w*dy) term
        ka = rstd
        kb = -rstd * rstd * (sum_wdy_xc * rstd / length)
        kc = -rstd * (sum_wdy / length) if centered else np.zeros_like(rstd)
        dx, grad_w, grad_b = _engine.CPU.input_grad(dy, xk, plan, mean, ka, kb, kc, weight=w)
    grad_weight = None if weight is None else grad_w.reshape(shape).astype(xk.dtype)
    grad_bias = grad_b.reshape(shape).astype(xk.dtype) if has_bias else None
    return dx, grad_weight, grad_bias
