"""The engine: runs a device's kernels on a ``Plan`` and merges their partial results.

The CPU engine (``CPU``): a device supplies the kernels (``_cpu``) and a few array services: the
kernel view of a full-size array and a place for a result.  The small per-row or per-channel
arrays are NumPy arrays: kernels take their coefficients and fill their partial results there.
The GPU does not go through an engine: ``_cuda_pipelines.Device`` runs each op family's whole
data path in kernels, with no small arrays on the host.

Small arrays come in two orders.  ``states``, ``grad_states``, ``affine_coef`` and
``input_grad_coef`` speak the kernels' order (see ``Plan.coef_shape``, ``Plan.kernel_cells``),
for callers that turn statistics into coefficients with a compiled loop (the grid norms);
``moments``, ``grad_sums``, ``affine`` and ``input_grad`` speak the caller's
axis order, with length 1 along the reduced axes (``keepdims`` style), the statistics as float64
partial results that the caller may merge further.
"""

import math
import numpy as np

from . import _cpu
from ._arguments import _is_c
from ._plan import aligned_empty, Plan


def merge_axes(count, mean, m2, axes):
    """Merge (count, mean, M2) states along ``axes``, keepdims-shaped (Chan's formula for k
    parts, in float64; see ``_cpu.merge_groups``) -- no ``E[x^2] - E[x]^2``."""
    shape = np.shape(mean)
    axes = tuple(a % len(shape) for a in axes)
    if all(shape[a] == 1 for a in axes) and np.shape(count) == np.shape(m2) == shape:
        return count, mean, m2  # merging one part is a no-op
    kept = [i for i in range(len(shape)) if i not in axes]
    order = kept + list(axes)
    parts = math.prod(shape[i] for i in axes)

    def as_rows(a):
        a = np.asarray(a, dtype=np.float64)
        if a.shape != shape:
            a = np.broadcast_to(a, shape)
        a = a.transpose(order)
        return np.ascontiguousarray(a).reshape(-1, parts)

    rows = as_rows(mean)
    merged = [np.empty(rows.shape[0]) for _ in range(3)]
    index = np.arange(rows.shape[0])[:, None]
    _cpu.merge_groups(*(a[:, :, None] for a in (as_rows(count), rows, as_rows(m2))), index, *merged)
    out_shape = tuple(1 if i in axes else shape[i] for i in range(len(shape)))
    return tuple(a.reshape(out_shape) for a in merged)


class CPUDevice:
    """NumPy arrays and the ``_cpu`` kernels."""

    kernels = _cpu

    @staticmethod
    def view(plan, a):
        return plan.view(a)

    @staticmethod
    def result(plan, dtype, out, x):
        """Kernel-view and user-view arrays to write a result into, honouring ``out``."""
        if out is not None:
            view = plan.writable_view(out)
            if view is not None:  # laid out like x, so even out=x is safe elementwise
                return view, out
        return plan.empty(dtype)  # written elsewhere, then copied into out

    @staticmethod
    def finish(user, out):
        if out is not None and user is not out:
            np.copyto(out, user)
            return out
        return user

    @staticmethod
    def pieces(plan):
        return plan.pieces

    @staticmethod
    def row_blocks(rows):
        """Blocks of whole rows for fused weight-gradient buffers: a few per thread."""
        return CPUDevice.blocks_of(rows, _cpu.thread_count())

    @staticmethod
    def blocks_of(rows, threads):
        """`row_blocks` at ``threads`` threads."""
        return max(1, min(rows, 4 * threads))

    @staticmethod
    def fused_rows(x, rows, segments):
        """x as (rows, L) for the fused row kernels, or None when they do not fit the case (see
        `fits_fused_rows`)."""
        if not CPUDevice.fits_fused_rows(x, rows, segments, _cpu.thread_count()):
            return None
        return x.reshape(rows, x.size // rows)

    @staticmethod
    def fits_fused_rows(x, rows, segments, threads):
        """Whether the fused row kernels take x as ``rows`` rows of whole ``segments`` at
        ``threads`` threads: not if x is not C-contiguous, has too few rows to keep every thread
        busy, or rows too long for cache."""
        if not _is_c(x) or x.size == 0 or rows < 2 * threads:
            return False
        length = x.size // rows
        return length * x.itemsize <= _cpu.FUSED_ROW_BYTES and not length % segments

    @staticmethod
    def fused_row_backward(dy, x2, weight, mean, rstd, centered, has_bias, recompute=False, eps=0.0):
        """``row_normalize_backward`` on C-contiguous rows x2 (R, L): (dx2, grad_w, grad_b), the
        parameter gradients float64 (L,) (empty where the forward had neither parameter); with
        ``recompute`` the rows' statistics are taken in the kernel, into ``mean``/``rstd``."""
        length = x2.shape[1]
        w = np.ones(length, x2.dtype) if weight is None else weight.reshape(length)
        blocks = CPUDevice.row_blocks(x2.shape[0])
        dx2 = aligned_empty(x2.shape, x2.dtype)
        params = weight is not None or has_bias
        width = length if params else 0  # without parameters the kernel sums no gradients for them
        sum_dy, sum_dy_xhat = np.empty((blocks, width)), np.empty((blocks, width))
        _cpu.row_normalize_backward(dy.reshape(x2.shape), x2, w, mean.ravel(), rstd.ravel(), centered, recompute, eps,
                                    params, blocks, dx2, sum_dy, sum_dy_xhat, np.empty((blocks, 2, width), x2.dtype))
        return dx2, sum_dy_xhat.sum(axis=0), sum_dy.sum(axis=0)

    @staticmethod
    def grid_rows(x, ch, groups, over_batch=False):
        """A channels-first instance or group norm's x as `fused_rows`, one per (sample, group),
        or None where that does not fit (see `fits_grid_rows`)."""
        if not CPUDevice.fits_grid_rows(x, ch, groups, over_batch, _cpu.thread_count()):
            return None
        return x.reshape(x.shape[0] * groups, -1)

    @staticmethod
    def fits_grid_rows(x, ch, groups, over_batch, threads):
        """Whether `grid_rows` takes x at ``threads`` threads: not for batch norm, channels
        elsewhere than axis 1 or a single value per channel, nor where `fits_fused_rows` does not."""
        n, c = x.shape[0], x.shape[ch]
        if over_batch or ch != 1 or x.size < 2 * n * c:
            return False
        return CPUDevice.fits_fused_rows(x, n * groups, c // groups, threads)


class Engine:
    def __init__(self, device):
        self.device = device

    def _row_param(self, values):
        return None if values is None else np.ascontiguousarray(values)

    def _center(self, plan, center, dtype):
        """The centre as ``hi + lo`` in ``dtype``: ``lo`` keeps what rounding ``hi`` lost."""
        exact = plan.to_outer(center, np.float64)
        hi = exact.astype(dtype)
        return np.ascontiguousarray(hi), np.ascontiguousarray((exact - hi).astype(dtype))

    def partials(self, plan, pieces, count):
        """``count`` float64 arrays for the kernels' per-piece results, stacked: as the kernels
        take them, (K, P) for rows plans and (K, P, W) for cols plans, and the same memory as
        (count, K, P, W) with W = 1 for rows plans."""
        width = plan.view_shape[2] if plan.kind == "cols" else 1
        stacked = np.empty((count, plan.view_shape[0], pieces, width))
        return (stacked[..., 0] if plan.kind == "rows" else stacked), stacked

    def states(self, x, plan):
        """Per-piece (count, mean, M2) of ``x`` as the moments kernels leave them: host float64
        (K, P, W) arrays -- K outer indices in kernel order, P pieces, W = 1 for rows plans and
        the (folded) columns for cols plans (see ``Plan.state_index``, ``Plan.kernel_cells``)."""
        dev = self.device
        pieces = dev.pieces(plan)
        states, stacked = self.partials(plan, pieces, 3)
        kernel = dev.kernels.row_moments if plan.kind == "rows" else dev.kernels.col_moments
        kernel(dev.view(plan, x), pieces, *states)
        return stacked

    def moments(self, x, kept, plan=None):
        """(count, mean, M2) over every axis whose ``kept`` flag is False, keepdims-shaped: the
        kernels' states merged once, straight into the kept cells -- also across the reduced axes
        that the plan's kernel run left in its outer index (not adjacent in memory to the run)."""
        plan = plan or Plan.of(x, kept)
        final = tuple(n if k else 1 for n, k in zip(x.shape, kept))
        merged = np.empty((3, math.prod(final)))
        _cpu.merge_groups(*self.states(x, plan), plan.kept_cells(kept), *merged)
        return tuple(a.reshape(final) for a in merged)

    def affine(self, x, plan, center, alpha, beta, out=None, weight=None, bias=None):
        """``y = (x - center)*alpha + beta`` with coefficients per outer index; for rows plans
        optionally followed by ``*weight + bias`` along the row (layer norm)."""
        dtype = x.dtype
        coef = np.empty((4,) + plan.coef_shape, dtype)
        coef[0], coef[1] = self._center(plan, center, dtype)
        coef[2], coef[3] = plan.to_outer(alpha, dtype), plan.to_outer(beta, dtype)
        return self.affine_coef(x, plan, coef, out, weight, bias)

    def affine_coef(self, x, plan, coef, out=None, weight=None, bias=None):
        """``affine`` with its coefficients ready in kernel order: ``coef`` of the input's dtype
        holds (hi, lo, alpha, beta), each of ``plan.coef_shape`` or flattened."""
        dev = self.device
        out_view, user = dev.result(plan, x.dtype, out, x)
        hi, lo, a, b = coef.reshape((4,) + plan.coef_shape)
        weight, bias = self._row_param(weight), self._row_param(bias)
        pieces = dev.pieces(plan)
        if plan.kind == "rows":
            dev.kernels.row_affine(dev.view(plan, x), hi, lo, a, b, weight, bias, pieces, out_view)
        else:
            dev.kernels.col_affine(dev.view(plan, x), hi, lo, a, b, pieces, out_view)
        return dev.finish(user, out)

    def grad_sums(self, dy, x, plan, center, weight=None):
        """``sum(dy*w)`` and ``sum(dy*w*(x - center))`` over every axis the plan does not keep,
        keepdims-shaped (float64): the kernel run, then the reduced axes it left in the outer
        index (those not adjacent in memory to the run)."""
        hi, lo = self._center(plan, center, x.dtype)
        sums = self.grad_states(dy, x, plan, hi, lo, weight)
        rest = tuple(i for i in range(x.ndim) if not plan.kept[i] and i not in plan.reduced_axes)
        return tuple(plan.from_outer((plan.unfold(s) if plan.kind == "cols" else s).sum(axis=1)).sum(
            axis=rest, keepdims=True) for s in sums)

    def grad_states(self, dy, x, plan, hi, lo, weight=None):
        """Per-piece ``sum(dy*w)`` and ``sum(dy*w*(x - (hi + lo)))`` as the kernels leave them:
        host float64 (2, K, P, W), laid out as ``states``; ``hi``/``lo`` in kernel order."""
        dev = self.device
        pieces = dev.pieces(plan)
        sums, stacked = self.partials(plan, pieces, 2)
        weight = self._row_param(weight)
        if plan.kind == "rows":
            dev.kernels.row_grad_sums(dev.view(plan, dy), dev.view(plan, x), hi, lo, weight, pieces, *sums)
        else:
            dev.kernels.col_grad_sums(dev.view(plan, dy), dev.view(plan, x), hi, lo, pieces, *sums)
        return stacked

    def input_grad(self, dy, x, plan, center, ka, kb, kc, weight=None):
        """``dx = dy*[w]*ka + (x - center)*kb + kc`` (coefficients per outer index).

        With ``weight`` (rows plans only, layer norm) also returns the fused weight and bias
        gradients ``sum(dy*(x-center)*ka)`` and ``sum(dy)`` over rows, shaped like the row.
        """
        dtype = x.dtype
        coef = np.empty((5,) + plan.coef_shape, dtype)
        coef[0], coef[1] = self._center(plan, center, dtype)
        for row, values in zip(coef[2:], (ka, kb, kc)):
            row[...] = plan.to_outer(values, dtype)
        return self.input_grad_coef(dy, x, plan, coef, weight)

    def input_grad_coef(self, dy, x, plan, coef, weight=None):
        """``input_grad`` with its coefficients ready in kernel order: ``coef`` of the input's
        dtype holds (hi, lo, ka, kb, kc), each of ``plan.coef_shape`` or flattened."""
        dev = self.device
        out_view, user = dev.result(plan, x.dtype, None, x)
        hi, lo, a, b, k = coef.reshape((5,) + plan.coef_shape)
        weight = self._row_param(weight)
        if plan.kind == "cols":
            dev.kernels.col_input_grad(dev.view(plan, dy), dev.view(plan, x), hi, lo, a, b, k,
                                       dev.pieces(plan), out_view)
            return user, None, None
        if weight is None:
            dev.kernels.row_input_grad(dev.view(plan, dy), dev.view(plan, x), hi, lo, a, b, k, dev.pieces(plan),
                                       out_view)
            return user, None, None
        rows, length = plan.view_shape
        blocks = dev.row_blocks(rows)
        wg, bg = np.empty((2, blocks, length))
        dev.kernels.row_input_grad_params(dev.view(plan, dy), dev.view(plan, x), hi, lo, a, b, k, weight, blocks,
                                          out_view, wg, bg, np.empty((blocks, 2, length), x.dtype))
        return user, wg.sum(axis=0), bg.sum(axis=0)


CPU = Engine(CPUDevice)
