"""The public functions: statistics, normalization forwards and their hand-derived backwards.

Batch, instance and group norm are one computation: per-(sample, channel) partial statistics
from the engine, merged over a grouping of the ``(N, C)`` grid -- over the batch and per channel
(batch norm), per sample and channel (instance norm), or per sample and group of channels (group
norm).  Their backward likewise reduces ``dy`` per (sample, channel) once and does the grouping
on those small arrays.  Layer norm is the same engine with statistics per row and the affine
parameters along the row.
"""

from typing import NamedTuple, Optional

import math
import threading

import numpy as np

from . import _checks as chk
from . import _cpu, _engine
from ._dispatch import dispatch
from ._plan import Plan, fold_for


__all__ = [
    "Grads", "Moments", "NormStats", "SwitchableGrads", "SwitchableStats",
    "batch_norm", "batch_norm_backward", "batch_normalization", "group_norm", "group_norm_backward",
    "instance_norm", "instance_norm_backward", "layer_norm", "layer_norm_backward", "merge", "moments",
    "rms_norm", "rms_norm_backward", "switchable_norm", "switchable_norm_backward",
    "weight_standardization", "weight_standardization_backward", "welford",
]


class NormStats(NamedTuple):
    """What a forward keeps for its backward (float64, whatever the input's dtype).

    mean, rstd
        Per group: ``(C,)`` for batch norm, ``(N, C)`` for instance norm, ``(N, G)`` for group
        norm, the leading shape of the input for layer norm.
    batch_stats
        True when the statistics came from the input (training); False when running
        statistics were used, which the backward then treats as constants.
    has_bias
        Whether the forward had a bias, so the backward returns its gradient.
    eps
        The forward's eps (backends that recompute statistics blockwise need it).
    """

    mean: np.ndarray
    rstd: np.ndarray
    batch_stats: bool = True
    has_bias: bool = False
    eps: float = 1e-5


class Grads(NamedTuple):
    """Gradients of a normalization; ``weight``/``bias`` are None where the forward had none."""

    input: np.ndarray
    weight: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None


# -- helpers ------------------------------------------------------------------------------------

_current = threading.local()


def _eng():
    """The engine of this call: the CPU one unless a backend (CUDA) set its own for the call."""
    return getattr(_current, "engine", _engine.CPU)


def _is_c(a):
    """A C-contiguous NumPy array (the fused CPU kernels' precondition)."""
    return isinstance(a, np.ndarray) and a.flags.c_contiguous


def _input(name, value, min_ndim):
    """The checked input ``x`` and ``xk``, x as the kernels take it (float16 widened to float32).
    (In the kernels ``xc`` is a centred value, ``x - mean``.)"""
    x = chk.float_array(name, value, min_ndim)
    return x, (x.astype(np.float32) if x.dtype == np.float16 else x)


def _deliver(y, dtype, out):
    """The result in the caller's dtype, written into ``out`` when one was given."""
    if out is not None:
        if y is not out:
            np.copyto(out, y, casting="unsafe")
        return out
    return y if y.dtype == dtype else y.astype(dtype)


def _rstd(var, eps):
    """``1/sqrt(var + eps)``; a constant group with eps=0 gives inf (NaN output), as in NumPy and
    PyTorch, without a divide-by-zero warning."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)


def _update_running(running, batch_value, momentum, num_batches_tracked):
    """``(1 - m)*old + m*new`` in place; ``momentum=None`` is the cumulative average."""
    if running is None:
        return
    if momentum is None:
        momentum = 1.0 / float(num_batches_tracked.reshape(-1)[0])
    running[...] = (1.0 - momentum) * running.astype(np.float64) + momentum * batch_value


def _bessel(count, unbiased):
    """The factor from the biased variance of ``count`` values to the stored running variance:
    ``count / (count - 1)`` (``running_var_unbiased=True``, PyTorch) or 1 (Keras, Flax, ONNX)."""
    return count / (count - 1) if unbiased else 1.0


def _batch_counter(num_batches_tracked, required):
    if num_batches_tracked is None:
        if required:
            raise ValueError("num_batches_tracked must be given when momentum is None (it is "
                             "the count of the cumulative average), got None")
        return None
    nbt = num_batches_tracked
    if not isinstance(nbt, np.ndarray) or nbt.dtype.kind not in "iu" or nbt.size != 1:
        raise TypeError("num_batches_tracked must be an integer NumPy array of one element, got "
                        f"{chk._describe(nbt)}")
    if not nbt.flags.writeable:
        raise ValueError("num_batches_tracked must be writable (it is incremented in place)")
    return nbt


def _running_pair(running_mean, running_var, channels):
    rm = chk.running_stat("running_mean", running_mean, channels)
    rv = chk.running_stat("running_var", running_var, channels)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean and running_var must both be given or both be None, got "
                         f"running_mean={'None' if rm is None else 'an array'} and "
                         f"running_var={'None' if rv is None else 'an array'}")
    return rm, rv


# -- fused rows: statistics and normalization of a row while it is in cache -------------------------

FUSED_ROW_BYTES = 1 << 20  # rows up to this size stay in L2 between the two passes


def _fused_rows(x, rows, segments):
    """x as (rows, L) for the fused row kernels, or None when they do not fit the case:
    not C-contiguous, too few rows to keep every thread busy, or rows too long for cache."""
    if _eng() is not _engine.CPU or not _is_c(x) or x.size == 0 or rows < 2 * _cpu.thread_count():
        return None
    length = x.size // rows
    if length * x.itemsize > FUSED_ROW_BYTES or length % segments:
        return None
    return x.reshape(rows, length)


def _fused_forward(x, x2, weight, bias, seg, eps, out, centered=True):
    """Run ``row_normalize``; ``weight``/``bias`` (K, L // seg) in the compute dtype.
    Returns (y, mean, var, rstd) with the statistics per row."""
    mean, var, rstd = np.empty((3, x2.shape[0]))
    direct = out is not None and out.dtype == x2.dtype and _is_c(out)
    y2 = out.reshape(x2.shape) if direct else np.empty_like(x2)
    blocks = _engine.CPUDevice.row_blocks(x2.shape[0])
    _cpu.row_normalize(x2, weight, bias, seg, eps, centered, blocks, y2, mean, var, rstd)
    y = out if direct else _deliver(y2.reshape(x.shape), x.dtype, out)
    return y, mean, var, rstd


def _fused_params(weight, bias, shape, dtype):
    w = np.ones(shape, dtype) if weight is None else weight.reshape(shape)
    b = np.zeros(shape, dtype) if bias is None else bias.reshape(shape)
    return w, b


# -- batch / instance / group norm: one engine over the (N, C) grid -------------------------------

class _Grouping(NamedTuple):
    """How the (N, C) grid of per-(sample, channel) statistics is grouped."""

    groups: int  # channel groups: C for batch and instance norm, num_groups for group norm
    over_batch: bool  # batch norm merges the samples too

    def merge_states(self, states, plan, ch, n):
        """The moments kernels' states (see ``Engine.states``) merged into groups: (1 or N, G) each."""
        merged = np.empty((3, 1 if self.over_batch else n, self.groups))
        group_of = plan.memo(("groups", ch, self), lambda: self._group_of(plan, ch))
        _cpu.merge_groups(states[0], states[1], states[2], group_of, *merged.reshape(3, -1))
        return merged

    def _group_of(self, plan, ch):
        """The group of each (outer index, column) of the kernels' states, (K, W)."""
        samples, channels = plan.kernel_cells(ch)
        group = channels // (plan.shape[ch] // self.groups)
        if not self.over_batch:
            group = samples * self.groups + group
        return group if group.ndim == 2 else group[:, None]


def _grid_plan(x, ch, over_batch=False):
    """Statistics per (sample, channel), or per channel only where the samples are merged anyway
    (batch norm: channels-last data then make one long cols view, one merge instead of two)."""
    return Plan.of(x, [i == ch or (i == 0 and not over_batch) for i in range(x.ndim)])


def _on_grid(a, x, ch):
    """A (1 or N, C) array shaped to broadcast against x."""
    shape = [1] * x.ndim
    shape[0], shape[ch] = a.shape[0], x.shape[ch]
    return a.reshape(shape)


def _grid_sums(dy, x, plan, ch, center):
    """Gradient sums per (sample, channel), (N, C) -- or (1, C) where the plan merged the samples."""
    s1, s2 = _eng().grad_sums(dy, x, plan, center)
    c = x.shape[ch]
    return s1.reshape(-1, c), s2.reshape(-1, c)


def _grid_forward(x, xk, ch, grouping, mean, var, weight, bias, eps, out, plan):
    """Normalize with per-group ``mean``/``var`` of shape (1 or N, G); returns (y, mean, rstd)."""
    rstd = _rstd(var, eps)
    samples, channels = plan.kernel_cells(ch)
    coef = np.empty((4, samples.size), xk.dtype)
    _cpu.grid_coefficients(samples.reshape(-1), channels.reshape(-1), x.shape[ch] // grouping.groups,
                           mean, rstd, weight, bias, coef)
    direct_out = out if out is not None and out.dtype == xk.dtype else None
    return _deliver(_eng().affine_coef(xk, plan, coef, out=direct_out), x.dtype, out), mean, rstd


def _grid_rows(x, ch, grouping):
    """NCHW instance/group norm as fused rows, one per (sample, group); None if that does not fit."""
    n, c = x.shape[0], x.shape[ch]
    if grouping.over_batch or ch != 1 or x.size < 2 * n * c:
        return None
    return _fused_rows(x, n * grouping.groups, c // grouping.groups)


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


def _grid_batch_forward(x, xk, ch, grouping, weight, bias, eps, out):
    """Normalize with statistics of the input; returns (y, count, mean, var, rstd) per group
    (``count`` a number where every group has the same)."""
    n, c = x.shape[0], x.shape[ch]
    x2 = _grid_rows(xk, ch, grouping)
    if x2 is not None:
        shape = (grouping.groups, c // grouping.groups)
        w, b = _fused_params(weight, bias, shape, xk.dtype)
        y, mean, var, rstd = _fused_forward(x, x2, w, b, x.size // (n * c), eps, out)
        mean, var, rstd = mean.reshape(n, -1), var.reshape(n, -1), rstd.reshape(n, -1)
        return y, float(x2.shape[1]), mean, var, rstd
    x3, fold = _grid_slabs(xk, ch, grouping)
    if x3 is not None:
        mean, var = np.empty((n, grouping.groups)), np.empty((n, grouping.groups))
        direct = out is not None and out.dtype == xk.dtype and _is_c(out)
        y3 = out.reshape(x3.shape) if direct else np.empty_like(x3)
        w, b = _fused_params(weight, bias, (c,), xk.dtype)
        _cpu.col_normalize(x3, w, b, grouping.groups, eps, fold, y3, mean, var)
        y = out if direct else _deliver(y3.reshape(x.shape), x.dtype, out)
        count = float(x.size // (n * grouping.groups))
        return y, count, mean, var, _rstd(var, eps)
    plan = _grid_plan(xk, ch, grouping.over_batch)  # no fused kernel fits: statistics, then affine
    count, mean, m2 = grouping.merge_states(_eng().states(xk, plan), plan, ch, n)
    var = m2 / count
    y, mean, rstd = _grid_forward(x, xk, ch, grouping, mean, var, weight, bias, eps, out, plan)
    return y, count, mean, var, rstd


def _grid_backward(dy, x, ch, grouping, mean, rstd, weight, batch_stats, has_bias):
    """Grads for a forward that normalized with per-group ``mean``/``rstd`` (1 or N, G)."""
    n, c = x.shape[0], x.shape[ch]
    if x.size == 0:  # an empty batch: the parameters had no effect
        zeros = np.zeros(c, x.dtype)
        return np.empty_like(x), None if weight is None else zeros, zeros.copy() if has_bias else None
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
        dx3 = np.empty_like(x3)
        sum_dy, sum_dy_xhat = np.empty((n, c)), np.empty((n, c))
        _cpu.col_normalize_backward(dy.reshape(x3.shape), x3, w, grouping.groups, mean, rstd, fold, dx3,
                                    sum_dy, sum_dy_xhat)
        grad_weight = None if weight is None else sum_dy_xhat.sum(axis=0).astype(x.dtype)
        grad_bias = sum_dy.sum(axis=0).astype(x.dtype) if has_bias else None
        return dx3.reshape(x.shape), grad_weight, grad_bias
    plan = _grid_plan(x, ch, grouping.over_batch)
    samples, channels = (a.reshape(-1) for a in plan.kernel_cells(ch))
    members = c // grouping.groups
    coef = np.empty((5, samples.size), x.dtype)  # (hi, lo, ka, kb, kc) at each outer position
    _cpu.grid_coefficients(samples, channels, members, mean, rstd, None, None, coef[:4])
    hi, lo = (a.reshape(plan.coef_shape) for a in coef[:2])
    sums = _eng().grad_states(dy, x, plan, hi, lo)
    grad_weight, grad_bias = np.empty(c), np.empty(c)
    _cpu.grid_backward_coefficients(sums, samples, channels, members, x.size / mean.size, rstd, weight,
                                    batch_stats, coef, grad_weight, grad_bias)
    dx, _, _ = _eng().input_grad_coef(dy, x, plan, coef)
    return (dx, None if weight is None else grad_weight.astype(weight.dtype),
            grad_bias.astype(dx.dtype) if has_bias else None)


def _grid_affine_params(weight, bias, c, dtype):
    return (chk.parameter("weight", weight, (c,), dtype), chk.parameter("bias", bias, (c,), dtype))


def _maybe_stats(y, stats, return_stats):
    return (y, stats) if return_stats else y


@dispatch
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, return_stats=False, out=None,
               num_batches_tracked=None, running_var_unbiased=True):
    """Batch normalization (``torch.nn.functional.batch_norm``), statistics over every axis but
    ``channel_axis``.

    Parameters
    ----------
    input : ndarray, float16/32/64, at least 2-D
        Laid out ``(N, C, *spatial)`` (``channel_axis=1``) or ``(N, *spatial, C)``
        (``channel_axis=-1``); any strides.
    running_mean, running_var : ndarray (C,) or None
        Training: updated in place as ``(1 - momentum)*old + momentum*batch`` (running_var with
        the unbiased batch variance) when given.  Eval: used for normalization (required).
    weight, bias : array (C,) or None
    training : bool
    momentum : float in [0, 1] or None
        None: cumulative average over the batches counted in ``num_batches_tracked``.
    eps : float >= 0, added to the variance inside the square root.
    channel_axis : int, keyword-only
    return_stats : bool, keyword-only
        Also return a `NormStats` for `batch_norm_backward`.
    out : ndarray, optional
        Where to write the result (same shape and dtype as input).
    num_batches_tracked : integer ndarray of one element, optional
        Incremented in place by each training call that updates running statistics (as the
        PyTorch module's buffer); required when ``momentum`` is None.
    running_var_unbiased : bool, keyword-only
        True (PyTorch): ``running_var`` is updated with the unbiased (n - 1) batch variance.
        False: with the biased one that normalizes, as Keras, Flax and ONNX store it (with
        ``momentum = 1 - their momentum``).

    Returns
    -------
    y, or ``(y, stats)`` with ``return_stats=True``.
    """
    return _tracked_grid_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                              channel_axis, return_stats, out, num_batches_tracked, over_batch=True,
                              running_var_unbiased=running_var_unbiased)


@dispatch
def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, *, channel_axis=1,
                  return_stats=False, out=None, num_batches_tracked=None, running_var_unbiased=True):
    """Instance normalization (``torch.nn.functional.instance_norm``): statistics per sample and
    channel over the spatial axes.

    With ``use_input_stats`` and running statistics given, these are updated like PyTorch's: the
    batch value is the mean over samples of the per-instance mean and unbiased variance.  With
    ``use_input_stats=False`` the running statistics normalize every instance.  Other arguments
    as `batch_norm`.
    """
    return _tracked_grid_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                              channel_axis, return_stats, out, num_batches_tracked, over_batch=False,
                              running_var_unbiased=running_var_unbiased)


def _tracked_grid_norm(input, running_mean, running_var, weight, bias, batch_stats, momentum, eps,
                       channel_axis, return_stats, out, num_batches_tracked, over_batch,
                       running_var_unbiased=True):
    """Batch norm (``over_batch``) or instance norm: batch statistics, which update the running
    ones when given, or the running statistics themselves."""
    x, xk = _input("input", input, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    weight, bias = _grid_affine_params(weight, bias, c, xk.dtype)
    eps = chk.eps_value("eps", eps)
    momentum = chk.momentum_value(momentum)
    unbiased = chk.flag("running_var_unbiased", running_var_unbiased)
    out = chk.out_array(out, x.shape, x.dtype)
    grouping = _Grouping(c, over_batch)
    if n == 0 and not over_batch:  # no instances: nothing to normalize, no statistics to track
        y = np.empty_like(x) if out is None else out
        return _maybe_stats(y, NormStats(np.empty((0, c)), np.empty((0, c)), bool(batch_stats), bias is not None,
                                         eps), return_stats)
    if batch_stats:
        rm, rv = _running_pair(running_mean, running_var, c)
        nbt = _batch_counter(num_batches_tracked, momentum is None and rm is not None)
        if over_batch and x.size // c < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")
        if not over_batch and n and math.prod(x.shape) // (n * c) < 2:
            raise ValueError(f"Expected more than 1 spatial element when training, got input of shape {x.shape}")
        y, count, mean, var, rstd = _grid_batch_forward(x, xk, ch, grouping, weight, bias, eps, out)
        if rm is not None:  # instance norm: the mean over samples of the per-instance values
            if nbt is not None:
                nbt += 1
            _update_running(rm, mean.mean(axis=0), momentum, nbt)
            _update_running(rv, (var * _bessel(count, unbiased)).mean(axis=0), momentum, nbt)
    else:
        if running_mean is None or running_var is None:
            flag = "training=False" if over_batch else "use_input_stats=False"
            raise ValueError(f"running_mean and running_var are required when {flag}, got None")
        shape = (1 if over_batch else n, c)
        mean = np.broadcast_to(chk.parameter("running_mean", running_mean, (c,), np.float64), shape)
        var = np.broadcast_to(chk.parameter("running_var", running_var, (c,), np.float64), shape)
        y, mean, rstd = _grid_forward(x, xk, ch, grouping, mean, var, weight, bias, eps, out,
                                      _grid_plan(xk, ch, over_batch))
    mean, rstd = (mean[0], rstd[0]) if over_batch else (np.array(mean), np.array(rstd))
    return _maybe_stats(y, NormStats(mean, rstd, bool(batch_stats), bias is not None, eps), return_stats)


@dispatch
def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1,
               return_stats=False, out=None):
    """Group normalization (``torch.nn.functional.group_norm``): statistics per sample over each
    of ``num_groups`` groups of consecutive channels and the spatial axes."""
    x, xk = _input("input", input, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    groups = _num_groups(num_groups, c)
    weight, bias = _grid_affine_params(weight, bias, c, xk.dtype)
    eps = chk.eps_value("eps", eps)
    out = chk.out_array(out, x.shape, x.dtype)
    grouping = _Grouping(groups, False)
    y, _, mean, _, rstd = _grid_batch_forward(x, xk, ch, grouping, weight, bias, eps, out)
    return _maybe_stats(y, NormStats(mean, rstd, True, bias is not None, eps), return_stats)


def _num_groups(num_groups, channels):
    if isinstance(num_groups, (bool, np.bool_)) or not isinstance(num_groups, (int, np.integer)):
        raise TypeError(f"num_groups must be an integer, got {chk._describe(num_groups)}")
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"num_groups must be a positive divisor of the number of channels "
                         f"{channels}, got {num_groups}")
    return int(num_groups)


def _stats_arg(stats, shape):
    if not (hasattr(stats, "mean") and hasattr(stats, "rstd")):
        raise TypeError(f"stats must be the NormStats returned by the forward with return_stats=True, "
                        f"got {chk._describe(stats)}")
    mean = chk.float_array("stats.mean", stats.mean).astype(np.float64)
    rstd = chk.float_array("stats.rstd", stats.rstd).astype(np.float64)
    for name, a in (("stats.mean", mean), ("stats.rstd", rstd)):
        if a.shape != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} for this input, got shape {a.shape}")
    return mean, rstd, bool(getattr(stats, "batch_stats", True)), bool(getattr(stats, "has_bias", False))


def _backward_inputs(grad_output, input, min_ndim=2):
    x, xk = _input("input", input, min_ndim)
    dy = chk.same_array("grad_output", grad_output, x)
    return x, xk, (dy.astype(np.float32) if dy.dtype == np.float16 else dy)


def _grads(x, dx, grad_weight, grad_bias):
    return Grads(dx if dx.dtype == x.dtype else dx.astype(x.dtype), grad_weight, grad_bias)


@dispatch
def batch_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
    """Gradients of `batch_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    Training statistics (``stats.batch_stats``) depend on the input; running statistics are
    constants."""
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    mean, rstd, batch_stats, has_bias = _stats_arg(stats, (c,))
    grads = _grid_backward(dy, xk, ch, _Grouping(c, True), mean[None], rstd[None], weight,
                           batch_stats, has_bias)
    return _grads(x, *grads)


@dispatch
def instance_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
    """Gradients of `instance_norm` given its `NormStats`; returns `Grads(input, weight, bias)`."""
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    mean, rstd, batch_stats, has_bias = _stats_arg(stats, (n, c))
    grads = _grid_backward(dy, xk, ch, _Grouping(c, False), mean, rstd, weight, batch_stats, has_bias)
    return _grads(x, *grads)


@dispatch
def group_norm_backward(grad_output, input, stats, num_groups, weight=None, *, channel_axis=1):
    """Gradients of `group_norm` given its `NormStats`; returns `Grads(input, weight, bias)`."""
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    groups = _num_groups(num_groups, c)
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    mean, rstd, _, has_bias = _stats_arg(stats, (n, groups))
    grads = _grid_backward(dy, xk, ch, _Grouping(groups, False), mean, rstd, weight, True, has_bias)
    return _grads(x, *grads)


# -- switchable norm: a softmax mixture of instance, layer and batch statistics -----------------------

class SwitchableStats(NamedTuple):
    """What `switchable_norm` keeps for its backward (float64).

    mean, rstd: the mixed statistics per (sample, channel), ``(N, C)``.
    means, variances: each term's biased statistics broadcast to ``(K, N, C)``, in the order
    instance, layer, batch (K = 3, or 2 with ``using_bn=False``).
    batch_stats: whether the batch term came from the input (training) or running statistics.
    """

    mean: np.ndarray
    rstd: np.ndarray
    batch_stats: bool
    has_bias: bool
    means: np.ndarray
    variances: np.ndarray


def _softmax_logits(name, logits, terms):
    z = chk.float_array(name, logits).astype(np.float64)
    if z.shape != (terms,):
        which = "instance, layer, batch" if terms == 3 else "instance, layer (using_bn=False)"
        raise ValueError(f"{name} must be {terms} logits ({which}), got shape {z.shape}")
    e = np.exp(z - z.max())
    return e / e.sum()


@dispatch
def switchable_norm(input, mean_weight, var_weight, running_mean=None, running_var=None, weight=None,
                    bias=None, training=False, momentum=0.1, eps=1e-5, *, channel_axis=1, using_bn=True,
                    return_stats=False, out=None, num_batches_tracked=None, running_var_unbiased=True):
    """Switchable normalization (Luo et al. 2018): normalize by a softmax mixture of the instance,
    layer and batch statistics, ``mean = sum_k softmax(mean_weight)_k * mean_k`` and likewise the
    (biased) variances with ``var_weight``.

    The instance statistics are computed in one pass; the layer and batch statistics are merged
    from them with Chan's formula.  The batch term uses the batch (training) or the running
    statistics (eval), which training updates as `batch_norm` does.  ``using_bn=False`` drops the
    batch term: the logits then have length 2.  Other arguments as `batch_norm`; the stats for
    `switchable_norm_backward` are a `SwitchableStats`.
    """
    x, xk = _input("input", input, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    terms = 3 if using_bn else 2
    unbiased = chk.flag("running_var_unbiased", running_var_unbiased)
    mix_mean = _softmax_logits("mean_weight", mean_weight, terms)
    mix_var = _softmax_logits("var_weight", var_weight, terms)
    weight, bias = _grid_affine_params(weight, bias, c, xk.dtype)
    eps = chk.eps_value("eps", eps)
    momentum = chk.momentum_value(momentum)
    out = chk.out_array(out, x.shape, x.dtype)
    rm = rv = nbt = None
    if using_bn and training:
        rm, rv = _running_pair(running_mean, running_var, c)
        nbt = _batch_counter(num_batches_tracked, momentum is None and rm is not None)
        if x.size // c < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")
    elif using_bn:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False, got None")
        eval_mean = chk.parameter("running_mean", running_mean, (c,), np.float64)
        eval_var = chk.parameter("running_var", running_var, (c,), np.float64)
    plan = _grid_plan(xk, ch)
    states = _eng().states(xk, plan)  # one statistics pass, merged three ways: IN, LN, BN
    count_in, mean_in, m2_in = _Grouping(c, False).merge_states(states, plan, ch, n)
    count_ln, mean_ln, m2_ln = _Grouping(1, False).merge_states(states, plan, ch, n)
    means = [mean_in, np.broadcast_to(mean_ln, (n, c))]
    variances = [m2_in / count_in, np.broadcast_to(m2_ln / count_ln, (n, c))]
    if using_bn:
        if training:
            count_bn, mean_bn, m2_bn = _Grouping(c, True).merge_states(states, plan, ch, n)
            var_bn = m2_bn / count_bn
        else:
            mean_bn, var_bn = eval_mean[None], eval_var[None]
        means.append(np.broadcast_to(mean_bn, (n, c)))
        variances.append(np.broadcast_to(var_bn, (n, c)))
    means, variances = np.stack(means), np.stack(variances)
    mean = (mix_mean @ means.reshape(terms, -1)).reshape(n, c)
    var = (mix_var @ variances.reshape(terms, -1)).reshape(n, c)
    y, mean, rstd = _grid_forward(x, xk, ch, _Grouping(c, False), mean, var, weight, bias, eps, out, plan)
    if rm is not None:
        if nbt is not None:
            nbt += 1
        _update_running(rm, mean_bn[0], momentum, nbt)
        _update_running(rv, (var_bn * _bessel(count_bn, unbiased))[0], momentum, nbt)
    stats = SwitchableStats(mean, rstd, bool(training), bias is not None, means, variances)
    return _maybe_stats(y, stats, return_stats)


@dispatch
def switchable_norm_backward(grad_output, input, stats, mean_weight, var_weight, weight=None, *,
                             channel_axis=1):
    """Gradients of `switchable_norm` given its `SwitchableStats`: returns
    `Grads(input, weight, bias, mean_weight, var_weight)`, the last two with respect to the logits.
    """
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    if not isinstance(stats, SwitchableStats):
        raise TypeError(f"stats must be the SwitchableStats returned by switchable_norm with "
                        f"return_stats=True, got {chk._describe(stats)}")
    terms = stats.means.shape[0]
    if stats.mean.shape != (n, c) or stats.means.shape != (terms, n, c) or terms not in (2, 3):
        raise ValueError(f"stats must belong to an input with (N, C) = {(n, c)}, got stats.mean of shape "
                         f"{stats.mean.shape} and stats.means of shape {stats.means.shape}")
    mix_mean = _softmax_logits("mean_weight", mean_weight, terms)
    mix_var = _softmax_logits("var_weight", var_weight, terms)
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    mean, rstd = stats.mean, stats.rstd
    plan = _grid_plan(xk, ch)
    sum_dy, sum_dy_xc = _grid_sums(dy, xk, plan, ch, _on_grid(mean, xk, ch))
    d_mean = -rstd * w * sum_dy  # dL/dmean per (sample, channel)
    d_var = -0.5 * rstd ** 3 * w * sum_dy_xc  # dL/dvar
    spatial = x.size // (n * c)
    # each term's statistic is a mean over its group of `size` values: IN (spatial), LN (C*spatial),
    # BN (N*spatial, only when it came from this batch); its gradient reaches x as
    # d_mean_k/size + d_var_k*2*(x - mean_k)/size, with d_*_k summed over the term's group.
    # The variance terms are applied around the instance mean, the centre nearest every value:
    # around the mixed mean, which may lie far from the data (stale running statistics), each
    # term would split into two large pieces that cancel in the input precision.
    reduce = [lambda a: a, lambda a: a.sum(axis=1, keepdims=True), lambda a: a.sum(axis=0, keepdims=True)]
    sizes = [spatial, c * spatial, n * spatial]
    centre = stats.means[0]
    kb = np.zeros((n, c))
    kc = np.zeros((n, c))
    for k in range(terms):
        if k == 2 and not stats.batch_stats:
            continue  # running statistics are constants
        var_coef = mix_var[k] * 2.0 * reduce[k](d_var) / sizes[k]
        kb = kb + var_coef
        kc = kc + mix_mean[k] * reduce[k](d_mean) / sizes[k] + var_coef * (centre - stats.means[k])
    dx, _, _ = _eng().input_grad(dy, xk, plan, *(_on_grid(a, xk, ch) for a in (centre, rstd * w, kb, kc)))
    # logits: softmax Jacobian of sum_nc dL/dmean * mean_k; deviations from the mixture keep the
    # digits that a large common offset would cancel (the Jacobian ignores a common shift)
    var_mix = (mix_var @ stats.variances.reshape(terms, -1)).reshape(n, c)
    g_mean = np.array([(d_mean * (stats.means[k] - mean)).sum() for k in range(terms)])
    g_var = np.array([(d_var * (stats.variances[k] - var_mix)).sum() for k in range(terms)])
    grad_mean_weight = mix_mean * (g_mean - mix_mean @ g_mean)
    grad_var_weight = mix_var * (g_var - mix_var @ g_var)
    grad_weight = None if weight is None else (sum_dy_xc * rstd).sum(axis=0).astype(xk.dtype)
    grad_bias = sum_dy.sum(axis=0).astype(xk.dtype) if stats.has_bias else None
    return SwitchableGrads(dx if dx.dtype == x.dtype else dx.astype(x.dtype), grad_weight, grad_bias, grad_mean_weight,
                           grad_var_weight)


class SwitchableGrads(NamedTuple):
    """Gradients of switchable norm, the mixture logits included."""

    input: np.ndarray
    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray]
    mean_weight: np.ndarray
    var_weight: np.ndarray


# -- layer norm: statistics per row, parameters along the row ------------------------------------

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


def _row_norm(input, normalized_shape, weight, bias, eps, centered, out):
    """Layer norm (``centered``) or RMS norm over the trailing ``normalized_shape`` dimensions."""
    x, xk = _input("input", input, 1)
    shape = chk.normalized_shape_of(normalized_shape, x.shape)
    k = len(shape)
    weight = chk.parameter("weight", weight, shape, xk.dtype)
    bias = chk.parameter("bias", bias, shape, xk.dtype)
    eps = chk.eps_value("eps", np.finfo(x.dtype).eps if eps is None else eps)
    out = chk.out_array(out, x.shape, x.dtype)
    lead = x.shape[: x.ndim - k]
    length = math.prod(shape)
    x2 = _fused_rows(xk, math.prod(lead), 1)
    if x2 is not None:
        w, b = _fused_params(weight, bias, (1, length), xk.dtype)
        y, mean, _, rstd = _fused_forward(x, x2, w, b, 1, eps, out, centered)
    else:
        xk, plan = _row_plan(xk, k, weight is not None or bias is not None)
        count, mean, m2 = _eng().moments(xk, [i < x.ndim - k for i in range(x.ndim)], plan)
        spread = m2 / count
        if not centered:
            spread, mean = spread + mean * mean, np.zeros_like(mean)
        w, b = _row_params(weight, bias, length, xk.dtype)
        direct_out = out if out is not None and out.dtype == xk.dtype else None
        rstd = _rstd(spread, eps)
        y = _deliver(_eng().affine(xk, plan, mean, rstd, np.zeros_like(rstd), out=direct_out,
                                    weight=w, bias=b), x.dtype, out)
    return y, NormStats(mean.reshape(lead), rstd.reshape(lead), True, bias is not None, eps)


def _row_norm_backward(grad_output, input, stats, normalized_shape, weight, centered):
    x, xk, dy = _backward_inputs(grad_output, input, 1)
    shape = chk.normalized_shape_of(normalized_shape, x.shape)
    k = len(shape)
    lead = x.shape[: x.ndim - k]
    weight = chk.parameter("weight", weight, shape, xk.dtype)
    mean, rstd, _, has_bias = _stats_arg(stats, lead)
    length = math.prod(shape)
    x2 = _fused_rows(xk, mean.size, 1) if _is_c(dy) else None
    if x2 is not None:
        w = np.ones(length, xk.dtype) if weight is None else weight.reshape(length)
        blocks = _engine.CPUDevice.row_blocks(x2.shape[0])
        dx2 = np.empty_like(x2)
        sum_dy, sum_dy_xhat = np.empty((2, blocks, length))
        _cpu.row_normalize_backward(dy.reshape(x2.shape), x2, w, mean.ravel(), rstd.ravel(), centered,
                                    blocks, dx2, sum_dy, sum_dy_xhat, np.empty((blocks, 2, length), xk.dtype))
        grad_weight = None if weight is None else sum_dy_xhat.sum(axis=0).reshape(shape).astype(xk.dtype)
        grad_bias = sum_dy.sum(axis=0).reshape(shape).astype(xk.dtype) if has_bias else None
        return _grads(x, dx2.reshape(x.shape), grad_weight, grad_bias)
    w, _ = _row_params(weight, np.zeros(shape, xk.dtype) if has_bias else None, length, xk.dtype)
    xk, plan = _row_plan(xk, k, w is not None)
    keep = lead + (1,) * k
    mean, rstd = mean.reshape(keep), rstd.reshape(keep)
    sum_wdy, sum_wdy_xc = _eng().grad_sums(dy, xk, plan, mean, weight=w)
    # dx = rstd*(w*dy - mean(w*dy) - xhat*mean(w*dy*xhat)); RMS norm has no mean(w*dy) term
    ka = rstd
    kb = -rstd * rstd * (sum_wdy_xc * rstd / length)
    kc = -rstd * (sum_wdy / length) if centered else np.zeros_like(rstd)
    dx, grad_w, grad_b = _eng().input_grad(dy, xk, plan, mean, ka, kb, kc, weight=w)
    grad_weight = None if weight is None else grad_w.reshape(shape).astype(weight.dtype)
    grad_bias = grad_b.reshape(shape).astype(xk.dtype) if has_bias else None
    return _grads(x, dx, grad_weight, grad_bias)


@dispatch
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, return_stats=False, out=None):
    """Layer normalization (``torch.nn.functional.layer_norm``) over the trailing
    ``normalized_shape`` dimensions; ``weight``/``bias`` have that shape."""
    y, stats = _row_norm(input, normalized_shape, weight, bias, eps, True, out)
    return _maybe_stats(y, stats, return_stats)


@dispatch
def layer_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    """Gradients of `layer_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    The weight and bias gradients are summed in the same pass that writes the input gradient."""
    return _row_norm_backward(grad_output, input, stats, normalized_shape, weight, True)


@dispatch
def rms_norm(input, normalized_shape, weight=None, eps=None, *, return_stats=False, out=None):
    """RMS normalization (``torch.nn.functional.rms_norm``): ``x / sqrt(mean(x**2) + eps) * weight``
    over the trailing ``normalized_shape`` dimensions; ``eps=None`` is the machine epsilon of the
    input's dtype.  The stats' ``mean`` is zero."""
    y, stats = _row_norm(input, normalized_shape, weight, None, eps, False, out)
    return _maybe_stats(y, stats, return_stats)


@dispatch
def rms_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    """Gradients of `rms_norm` given its `NormStats`; returns `Grads(input, weight, None)`."""
    return _row_norm_backward(grad_output, input, stats, normalized_shape, weight, False)


# -- weight standardization: a layer norm over a weight tensor's trailing axes ------------------------

def _weight_arrays(weight, grad_output=None):
    w = chk.float_array("weight", weight, 2)
    return w, None if grad_output is None else chk.same_array("grad_output", grad_output, w, "weight")


@dispatch
def weight_standardization(weight, eps=1e-5):
    """Weight standardization (Qiao et al. 2019): ``(w - mean) / sqrt(var + eps)`` over every axis
    of ``weight`` but the first (the output channels), with the biased variance."""
    w, _ = _weight_arrays(weight)
    return _row_norm(w, w.shape[1:], None, None, eps, True, None)[0]


@dispatch
def weight_standardization_backward(grad_output, weight, eps=1e-5):
    """Gradient of `weight_standardization` with respect to ``weight`` (its statistics
    recomputed, as the forward returns none)."""
    w, dy = _weight_arrays(weight, grad_output)
    _, stats = _row_norm(w, w.shape[1:], None, None, eps, True, None)
    return _row_norm_backward(dy, w, stats, w.shape[1:], None, True).input


# -- statistics -----------------------------------------------------------------------------------

@dispatch
def moments(x, axes, keepdims=False, *, nan_policy="propagate"):
    """Mean and (biased) variance of ``x`` over ``axes`` in one pass (``tf.nn.moments``).

    ``axes``: an integer or a sequence of distinct integers, negative allowed.  The results
    have x's dtype (computed in float64 from float32 chunk sums).  ``nan_policy="omit"`` takes
    the statistics of the values that are not NaN (NaN for a group without any)."""
    if nan_policy != "propagate":
        from ._tfstats import nan_policy_value, omit_moments

        nan_policy_value(nan_policy)
        return omit_moments(x, axes, keepdims)
    arr, xk = _input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    kept = [i not in axes for i in range(arr.ndim)]
    if arr.size == 0:
        raise ValueError(f"x must not be empty, got shape {arr.shape}")
    count, mean, m2 = _eng().moments(xk, kept)
    var = m2 / count
    if not keepdims:
        mean, var = mean.reshape([arr.shape[i] for i in range(arr.ndim) if kept[i]]), var.reshape(
            [arr.shape[i] for i in range(arr.ndim) if kept[i]])
    return mean.astype(arr.dtype), var.astype(arr.dtype)


@dispatch
def batch_normalization(x, mean, variance, offset, scale, variance_epsilon):
    """``(x - mean) * scale / sqrt(variance + variance_epsilon) + offset`` with broadcasting
    (``tf.nn.batch_normalization``); ``offset``/``scale`` may be None."""
    arr, xk = _input("x", x, 0)
    eps = chk.eps_value("variance_epsilon", variance_epsilon)
    params = {}
    for name, value in (("mean", mean), ("variance", variance), ("offset", offset), ("scale", scale)):
        if value is None and name in ("offset", "scale"):
            continue
        value = chk.float_array(name, value).astype(np.float64)
        try:
            fits = np.broadcast_shapes(value.shape, arr.shape) == arr.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{name} must broadcast to x's shape {arr.shape}, got shape {value.shape}")
        params[name] = value.reshape((1,) * (arr.ndim - value.ndim) + value.shape)
    alpha = _rstd(params["variance"], eps)
    if "scale" in params:
        alpha = alpha * params["scale"]
    beta = params.get("offset", np.zeros(()))
    kept = [any(p.shape[i] != 1 for p in params.values()) for i in range(arr.ndim)]
    plan = Plan.of(xk, kept)
    full = lambda a: np.broadcast_to(a, [arr.shape[i] if kept[i] else 1 for i in range(arr.ndim)])
    beta = beta.reshape((1,) * (arr.ndim - beta.ndim) + beta.shape)
    y = _eng().affine(xk, plan, full(params["mean"]), full(alpha), full(beta))
    return _deliver(y, arr.dtype, None)


# -- mergeable statistics -----------------------------------------------------------------------

class Moments(NamedTuple):
    """A mergeable Welford state: per-element ``count``, ``mean`` and ``m2`` (the sum of squared
    deviations from the mean), float64 arrays of one shape (Dask arrays for Dask input)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    def finalize(self, ddof=0):
        """``(mean, variance)`` with ``m2 / (count - ddof)``; NaN where that has no value left."""
        dof = self.count - ddof
        return self.mean, np.where(dof > 0, self.m2 / np.where(dof > 0, dof, 1), np.nan)


@dispatch
def welford(x, axes, keepdims=False, *, weights=None, nan_policy="propagate"):
    """The `Moments` of ``x`` over ``axes`` (one pass, the kernels of `moments`).

    Merge states of blocks, files, streams or MPI ranks with `merge`; an empty block gives count
    0, which merges as nothing.  ``weights`` (frequency weights >= 0 broadcasting against x, see
    `weighted_moments`) make the count the sum of the weights; such states merge the same way.
    ``nan_policy="omit"`` counts only the values that are not NaN (count 0 where none are)."""
    if weights is not None or nan_policy != "propagate":
        from ._tfstats import weighted_welford

        return weighted_welford(x, axes, weights, keepdims, nan_policy)
    arr, xk = _input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    kept = [i not in axes for i in range(arr.ndim)]
    shape = [arr.shape[i] if kept[i] else 1 for i in range(arr.ndim)]
    if arr.size == 0:
        count, mean, m2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    else:
        count, mean, m2 = _eng().moments(xk, kept)
    if not keepdims:
        out_shape = [arr.shape[i] for i in range(arr.ndim) if kept[i]]
        count, mean, m2 = (a.reshape(out_shape) for a in (count, mean, m2))
    return Moments(np.asarray(count, np.float64), mean, m2)


def merge(a, b):
    """Chan's formula: the `Moments` of the union of two disjoint samples.  Safe when a count is
    zero; shapes broadcast."""
    for name, m in (("a", a), ("b", b)):
        if not (hasattr(m, "count") and hasattr(m, "mean") and hasattr(m, "m2")):
            raise TypeError(f"{name} must be a Moments (count, mean, m2), got {chk._describe(m)}")
    n = a.count + b.count
    frac = np.where(n > 0, b.count / np.where(n > 0, n, 1), 0.0)
    delta = b.mean - a.mean
    return Moments(n, a.mean + delta * frac, a.m2 + b.m2 + delta * delta * a.count * frac)
