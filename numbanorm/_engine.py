"""The CPU engine: runs the kernels of ``_cpu`` on a ``Plan`` and merges their partial results.

Results come back in the caller's axis order with length 1 along the axes that were reduced
(``keepdims`` style), as float64 partial statistics that the caller may merge further.
"""

import numba
import numpy as np

from . import _cpu
from ._plan import Plan


def merge_axes(count, mean, m2, axes):
    """Merge (count, mean, M2) states along ``axes`` (Chan's formula for k parts, in float64).

    The merged mean is the count-weighted mean of the means, and the merged M2 is the sum of the
    M2s plus the spread of the means around it -- no ``E[x^2] - E[x]^2``.
    """
    axes = tuple(axes)
    if not axes:
        return count, mean, m2
    n = count.sum(axis=axes, keepdims=True)
    safe_n = np.where(n > 0, n, 1.0)
    merged_mean = (count * mean).sum(axis=axes, keepdims=True) / safe_n
    spread = (count * (mean - merged_mean) ** 2).sum(axis=axes, keepdims=True)
    return n, merged_mean, m2.sum(axis=axes, keepdims=True) + spread


def _kernel_states(plan, view):
    if plan.kind == "rows":
        shape, kernel = (plan.view_shape[0], plan.pieces), _cpu.row_moments
    else:
        shape, kernel = (plan.view_shape[0], plan.pieces, plan.view_shape[2]), _cpu.col_moments
    count, mean, m2 = (np.empty(shape) for _ in range(3))
    kernel(view, plan.pieces, count, mean, m2)
    count, mean, m2 = merge_axes(count, mean, m2, (1,))
    squeeze = lambda a: a.reshape(a.shape[:1]) if plan.kind == "rows" else a[:, 0, :]
    return tuple(plan.from_outer(squeeze(a)) for a in (count, mean, m2))


def partial_moments(x, plan):
    """(count, mean, M2) of ``x`` reduced over the plan's kernel run only."""
    return _kernel_states(plan, plan.view(x))


def moments(x, kept, plan=None):
    """(count, mean, M2) over every axis whose ``kept`` flag is False, keepdims-shaped."""
    plan = plan or Plan.of(x, kept)
    count, mean, m2 = partial_moments(x, plan)
    rest = [i for i in range(x.ndim) if not kept[i] and i not in plan.reduced_axes]
    return merge_axes(count, mean, m2, rest)


def _result(plan, dtype, out):
    """Kernel-view and user-view arrays to write a result into, honouring ``out``."""
    if out is not None:
        view = plan.writable_view(out)
        if view is not None:
            return view, out
    return plan.empty(dtype)


def _finish(user_result, out):
    if out is not None and user_result is not out:
        np.copyto(out, user_result)
        return out
    return user_result


def _center(plan, center, dtype):
    """The centre as ``hi + lo`` in ``dtype``: ``lo`` keeps what rounding ``hi`` lost."""
    exact = plan.to_outer(center, np.float64)
    hi = exact.astype(dtype)
    return hi, (exact - hi).astype(dtype)


def affine(x, plan, center, alpha, beta, out=None, weight=None, bias=None):
    """``y = (x - center)*alpha + beta`` with coefficients per outer index; for rows plans
    optionally followed by ``*weight + bias`` along the row (layer norm)."""
    dtype = x.dtype
    view = plan.view(x)
    if out is not None and np.may_share_memory(out, x) and plan.writable_view(out) is None:
        out_view, user = plan.empty(dtype)  # an odd alias of x: write elsewhere first
    else:
        out_view, user = _result(plan, dtype, out)
    hi, lo = _center(plan, center, dtype)
    a, b = plan.to_outer(alpha, dtype), plan.to_outer(beta, dtype)
    if plan.kind == "rows":
        _cpu.row_affine(view, hi, lo, a, b, weight, bias, plan.pieces, out_view)
    else:
        _cpu.col_affine(view, hi, lo, a, b, plan.pieces, out_view)
    return _finish(user, out)


def grad_sums(dy, x, plan, center, weight=None):
    """``sum(dy*w)`` and ``sum(dy*w*(x - center))`` over the plan's kernel run (float64)."""
    view, dy_view = plan.view(x), plan.view(dy)
    hi, lo = _center(plan, center, x.dtype)
    if plan.kind == "rows":
        shape = (plan.view_shape[0], plan.pieces)
        s1, s2 = np.empty(shape), np.empty(shape)
        _cpu.row_grad_sums(dy_view, view, hi, lo, weight, plan.pieces, s1, s2)
    else:
        shape = (plan.view_shape[0], plan.pieces, plan.view_shape[2])
        s1, s2 = np.empty(shape), np.empty(shape)
        _cpu.col_grad_sums(dy_view, view, hi, lo, plan.pieces, s1, s2)
    return plan.from_outer(s1.sum(axis=1)), plan.from_outer(s2.sum(axis=1))


def input_grad(dy, x, plan, center, ka, kb, kc, weight=None):
    """``dx = dy*[w]*ka + (x - center)*kb + kc`` (coefficients per outer index).

    With ``weight`` (rows plans only, layer norm) also returns the fused weight and bias
    gradients ``sum(dy*(x-center)*ka)`` and ``sum(dy)`` over rows, shaped like the row.
    """
    dtype = x.dtype
    view, dy_view = plan.view(x), plan.view(dy)
    out_view, user = plan.empty(dtype)
    hi, lo = _center(plan, center, dtype)
    a, b, k = (plan.to_outer(v, dtype) for v in (ka, kb, kc))
    if plan.kind == "cols":
        _cpu.col_input_grad(dy_view, view, hi, lo, a, b, k, plan.pieces, out_view)
        return user, None, None
    rows, length = plan.view_shape
    if weight is None:
        blocks, buffers = plan.pieces, (1, 1)
    else:
        blocks = max(1, min(rows, 4 * numba.get_num_threads()))
        buffers = (blocks, length)
    wg, bg = np.empty(buffers), np.empty(buffers)
    _cpu.row_input_grad(dy_view, view, hi, lo, a, b, k, weight, blocks, out_view, wg, bg)
    if weight is None:
        return user, None, None
    return user, wg.sum(axis=0), bg.sum(axis=0)
