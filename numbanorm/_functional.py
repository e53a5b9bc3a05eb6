"""The public functions: statistics, normalization forwards and their hand-derived backwards.

Batch, instance and group norm are one computation: per-(sample, channel) partial statistics
from the engine, merged over a grouping of the ``(N, C)`` grid -- over the batch and per channel
(batch norm), per sample and channel (instance norm), or per sample and group of channels (group
norm).  Their backward likewise reduces ``dy`` per (sample, channel) once and does the grouping
on those small arrays.  Layer norm is the same engine with statistics per row and the affine
parameters along the row.
"""

from typing import TYPE_CHECKING, Any, Callable, Literal, NamedTuple, Optional, Protocol, Sequence, TypeVar, Union, overload

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks as chk
from . import _cpu, _engine, _small
from ._plan import Plan, fold_for

if TYPE_CHECKING:
    _F = TypeVar("_F", bound=Callable[..., Any])

    def dispatch(fn: _F) -> _F:
        """``_dispatch.dispatch`` wraps with ``functools.wraps``: the signature stays the function's."""
        return fn
else:
    from ._dispatch import dispatch

#: An array of the input's family: a NumPy array for NumPy (and array-like) input; Dask and CUDA
#: inputs return a Dask array or an array of the input's CUDA family (not described statically).
Array = NDArray[Any]


class _CUDAArray(Protocol):
    """A CUDA array (Numba device array, CuPy array, PyTorch CUDA tensor): what the CUDA backend takes."""

    @property
    def __cuda_array_interface__(self) -> Any: ...


#: An array written in place (running statistics, ``out``): a NumPy array, or a CUDA array when
#: the input is one.
InPlace = Union[NDArray[Any], _CUDAArray]
#: ``normalized_shape``: the trailing dimensions of a layer or RMS norm.
ShapeLike = Union[int, Sequence[int]]
#: ``axes`` of `moments` and `welford`.
AxesLike = Union[int, Sequence[int]]


__all__ = [
    "Grads", "Moments", "NormStats", "SwitchableGrads", "SwitchableStats",
    "batch_norm", "batch_norm_backward", "batch_normalization", "group_norm", "group_norm_backward",
    "instance_norm", "instance_norm_backward", "layer_norm", "layer_norm_backward", "merge", "moments",
    "rms_norm", "rms_norm_backward", "switchable_norm", "switchable_norm_backward",
    "weight_standardization", "weight_standardization_backward", "welford",
]


class NormStats(NamedTuple):
    """What a forward keeps for its backward (float64, whatever the input's dtype).

    Returned by the forwards called with ``return_stats=True`` (`batch_norm`, `instance_norm`,
    `group_norm`, `layer_norm`, `rms_norm`) and passed to the matching backward.

    Attributes
    ----------
    mean, rstd : ndarray of float64
        Per group: ``(C,)`` for batch norm, ``(N, C)`` for instance norm, ``(N, G)`` for group
        norm, the leading shape of the input for layer norm and RMS norm (whose ``mean`` is
        zero).  ``rstd`` is ``1 / sqrt(var + eps)``.
    batch_stats : bool
        True when the statistics came from the input (training); False when running
        statistics were used, which the backward then treats as constants.
    has_bias : bool
        Whether the forward had a bias, so the backward returns its gradient.
    eps : float
        The forward's eps (backends that recompute statistics blockwise need it).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> y, stats = nn.instance_norm(x, return_stats=True)
    >>> stats.mean.shape, stats.rstd.dtype, stats.batch_stats, stats.has_bias
    ((4, 3), dtype('float64'), True, False)
    """

    mean: NDArray[np.float64]
    rstd: NDArray[np.float64]
    batch_stats: bool = True
    has_bias: bool = False
    eps: float = 1e-5


class Grads(NamedTuple):
    """Gradients of a normalization; ``weight``/``bias`` are None where the forward had none.

    Returned by `batch_norm_backward`, `instance_norm_backward`, `group_norm_backward`,
    `layer_norm_backward` and `rms_norm_backward`.

    Attributes
    ----------
    input : ndarray
        The gradient with respect to the input: its shape and dtype.
    weight : ndarray or None
        The gradient with respect to ``weight`` (its shape), or None when no weight was given.
    bias : ndarray or None
        The gradient with respect to ``bias``, or None when the forward had no bias
        (``stats.has_bias`` is False; always None for RMS norm).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 6))
    >>> y, stats = nn.layer_norm(x, 6, np.ones(6), np.zeros(6), return_stats=True)
    >>> g = nn.layer_norm_backward(np.ones_like(y), x, stats, 6, np.ones(6))
    >>> g.input.shape, g.weight.shape, g.bias.tolist()
    ((4, 6), (6,), [4.0, 4.0, 4.0, 4.0, 4.0, 4.0])
    """

    input: Array
    weight: Optional[Array] = None
    bias: Optional[Array] = None


# -- helpers ------------------------------------------------------------------------------------

def _is_c(a):
    """A C-contiguous NumPy array (the fused CPU kernels' precondition)."""
    return isinstance(a, np.ndarray) and a.flags.c_contiguous


def _input(name, value, min_ndim):
    """The checked input ``x`` and ``xk``, x as the kernels take it (float16 widened to float32).
    (In the kernels ``xk`` is a centred value, ``x - mean``.)"""
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
    if not _is_c(x) or x.size == 0 or rows < 2 * _cpu.thread_count():
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
    s1, s2 = _engine.CPU.grad_sums(dy, x, plan, center)
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
    return _deliver(_engine.CPU.affine_coef(xk, plan, coef, out=direct_out), x.dtype, out), mean, rstd


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
    if _small.fits(x):
        y, (count, mean, var, rstd) = _small.grid_forward(x, ch, grouping.groups, grouping.over_batch, weight, bias,
                                                          eps, out)
        return y, float(count[0, 0]), mean, var, rstd
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
    count, mean, m2 = grouping.merge_states(_engine.CPU.states(xk, plan), plan, ch, n)
    var = m2 / count
    y, mean, rstd = _grid_forward(x, xk, ch, grouping, mean, var, weight, bias, eps, out, plan)
    return y, count, mean, var, rstd


def _grid_backward(dy, x, ch, grouping, mean, rstd, weight, batch_stats, has_bias):
    """Grads for a forward that normalized with per-group ``mean``/``rstd`` (1 or N, G)."""
    n, c = x.shape[0], x.shape[ch]
    if x.size == 0:  # an empty batch: the parameters had no effect
        zeros = np.zeros(c, x.dtype)
        return np.empty_like(x), None if weight is None else zeros, zeros.copy() if has_bias else None
    if _small.fits(x, dy):
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
    sums = _engine.CPU.grad_states(dy, x, plan, hi, lo)
    grad_weight, grad_bias = np.empty(c), np.empty(c)
    _cpu.grid_backward_coefficients(sums, samples, channels, members, x.size / mean.size, rstd, weight,
                                    batch_stats, coef, grad_weight, grad_bias)
    dx, _, _ = _engine.CPU.input_grad_coef(dy, x, plan, coef)
    return (dx, None if weight is None else grad_weight.astype(weight.dtype),
            grad_bias.astype(dx.dtype) if has_bias else None)


def _grid_affine_params(weight, bias, c, dtype):
    return (chk.parameter("weight", weight, (c,), dtype), chk.parameter("bias", bias, (c,), dtype))


def _maybe_stats(y, stats, return_stats):
    return (y, stats) if return_stats else y


@overload
def batch_norm(input: ArrayLike, running_mean: Optional[InPlace], running_var: Optional[InPlace],
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
               return_stats: Literal[False] = ..., out: Optional[InPlace] = ...,
               num_batches_tracked: Optional[Array] = ...,
               running_var_unbiased: bool = ...) -> Array: ...
@overload
def batch_norm(input: ArrayLike, running_mean: Optional[InPlace], running_var: Optional[InPlace],
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
               return_stats: Literal[True], out: Optional[InPlace] = ...,
               num_batches_tracked: Optional[Array] = ...,
               running_var_unbiased: bool = ...) -> tuple[Array, NormStats]: ...
@overload
def batch_norm(input: ArrayLike, running_mean: Optional[InPlace], running_var: Optional[InPlace],
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
               return_stats: bool = ..., out: Optional[InPlace] = ...,
               num_batches_tracked: Optional[Array] = ...,
               running_var_unbiased: bool = ...) -> Union[Array, tuple[Array, NormStats]]: ...
@dispatch
def batch_norm(input: ArrayLike, running_mean: Optional[InPlace], running_var: Optional[InPlace],
               weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, training: bool = False,
               momentum: Optional[float] = 0.1, eps: float = 1e-5, *, channel_axis: int = 1,
               return_stats: bool = False, out: Optional[InPlace] = None,
               num_batches_tracked: Optional[Array] = None,
               running_var_unbiased: bool = True) -> Union[Array, tuple[Array, NormStats]]:
    """Batch normalization (``torch.nn.functional.batch_norm``), statistics over every axis but
    ``channel_axis``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, with the batch's mean and
    biased variance (``training=True``) or the running statistics (``training=False``).

    Parameters
    ----------
    input : array_like, float16/32/64, at least 2-D
        Laid out ``(N, C, *spatial)`` (``channel_axis=1``) or ``(N, *spatial, C)``
        (``channel_axis=-1``); any strides.  A Dask or CUDA array runs on that backend.
    running_mean, running_var : ndarray (C,) or None
        Training: updated in place as ``(1 - momentum)*old + momentum*batch`` (running_var with
        the unbiased batch variance) when given; writable, contiguous 1-D float arrays, updated
        in their own dtype.  Eval: used for normalization (required).
    weight, bias : array_like (C,) or None
        The affine parameters; cast to the compute dtype.  None: no scale, no shift.
    training : bool
        Normalize with the batch statistics (and update the running ones) rather than with the
        running statistics.
    momentum : float in [0, 1] or None
        The weight of the new batch value in the running update (PyTorch's direction).  None:
        cumulative average over the batches counted in ``num_batches_tracked``.
    eps : float >= 0
        Added to the variance inside the square root.
    channel_axis : int, keyword-only
        The channel axis: any axis but the batch axis 0, negative allowed.
    return_stats : bool, keyword-only
        Also return a `NormStats` for `batch_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).
    num_batches_tracked : integer ndarray of one element, optional, keyword-only
        Incremented in place by each training call that updates running statistics (as the
        PyTorch module's buffer); required when ``momentum`` is None.
    running_var_unbiased : bool, keyword-only
        True (PyTorch): ``running_var`` is updated with the unbiased (n - 1) batch variance.
        False: with the biased one that normalizes, as Keras, Flax and ONNX store it (with
        ``momentum = 1 - their momentum``).

    Returns
    -------
    y : ndarray
        The normalized input, with its shape and dtype (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: per-channel ``mean`` and ``rstd``
        of shape ``(C,)`` in float64.

    Raises
    ------
    TypeError
        If an array argument is not of a float16/32/64 dtype (integer, bool, complex, object,
        None or a string where an array is needed); if a running statistic is not a NumPy
        array; if ``out`` is not an array or has another dtype than the input; if ``eps`` or
        ``momentum`` is not a real number (a bool is refused), ``channel_axis`` is not an
        integer, or ``num_batches_tracked`` is not an integer NumPy array of one element; if
        the arrays of the call live in different places (a NumPy array among CUDA arrays).
    ValueError
        If the input has fewer than 2 dimensions; ``channel_axis`` is the batch axis or out of
        range; ``weight``, ``bias`` or a running statistic does not have shape ``(C,)``; a
        running statistic is read-only or not contiguous; only one of ``running_mean`` and
        ``running_var`` is given; they are missing with ``training=False``; ``eps`` is negative
        or not finite; ``momentum`` is outside [0, 1]; ``momentum`` is None with running
        statistics but no ``num_batches_tracked``; training sees a single value per channel;
        ``out`` has another shape or is read-only; ``num_batches_tracked`` is read-only.
        Nothing is written when a check fails.

    See Also
    --------
    batch_norm_backward, BatchNorm, instance_norm, moments

    Notes
    -----
    Conventions beside other frameworks:

    - **momentum** is PyTorch's: ``running = (1 - momentum)*running + momentum*batch``,
      default 0.1.  Keras and Flax use a decay ``m`` (default 0.99) on the *old* value: pass
      ``momentum = 1 - m``.
    - **variance**: normalization uses the biased batch variance (divided by n), the running
      variance stores the unbiased one (n - 1), as PyTorch.  Keras and Flax store the biased
      one.
    - **eps** is inside the square root, ``(x - mean) / sqrt(var + eps)``, as everywhere;
      defaults differ: 1e-5 here and in PyTorch, 1e-3 in Keras, 1e-6 in Flax.
    - **channel axis**: 1 as PyTorch (NCHW); ``channel_axis=-1`` for the channels-last layout
      of Keras and Flax.

    Statistics are computed in one pass per chunk in the input precision (float32 at least)
    and merged in float64 with Chan's formula; ``stats`` are float64.  float16 input is computed
    in float32 and returned as float16.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    >>> running_mean, running_var = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y, stats = nn.batch_norm(x, running_mean, running_var, training=True, return_stats=True)
    >>> y.shape, y.dtype, stats.mean.shape
    ((8, 3, 4, 4), dtype('float32'), (3,))
    >>> bool(np.allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-6))
    True
    >>> bool(np.allclose(running_mean, 0.1 * x.mean(axis=(0, 2, 3)), atol=1e-6))
    True

    Channels-last data give the same result with ``channel_axis=-1``:

    >>> x_nhwc = np.moveaxis(x, 1, -1)
    >>> y_nhwc = nn.batch_norm(x_nhwc, None, None, training=True, channel_axis=-1)
    >>> bool(np.allclose(np.moveaxis(y_nhwc, -1, 1), y, atol=1e-6))
    True
    """
    return _tracked_grid_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                              channel_axis, return_stats, out, num_batches_tracked, over_batch=True,
                              running_var_unbiased=running_var_unbiased)


@overload
def instance_norm(input: ArrayLike, running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                  weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., use_input_stats: bool = ...,
                  momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                  return_stats: Literal[False] = ..., out: Optional[InPlace] = ...,
                  num_batches_tracked: Optional[Array] = ...,
                  running_var_unbiased: bool = ...) -> Array: ...
@overload
def instance_norm(input: ArrayLike, running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                  weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., use_input_stats: bool = ...,
                  momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                  return_stats: Literal[True], out: Optional[InPlace] = ...,
                  num_batches_tracked: Optional[Array] = ...,
                  running_var_unbiased: bool = ...) -> tuple[Array, NormStats]: ...
@overload
def instance_norm(input: ArrayLike, running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                  weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., use_input_stats: bool = ...,
                  momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                  return_stats: bool = ..., out: Optional[InPlace] = ...,
                  num_batches_tracked: Optional[Array] = ...,
                  running_var_unbiased: bool = ...) -> Union[Array, tuple[Array, NormStats]]: ...
@dispatch
def instance_norm(input: ArrayLike, running_mean: Optional[InPlace] = None, running_var: Optional[InPlace] = None,
                  weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, use_input_stats: bool = True,
                  momentum: Optional[float] = 0.1, eps: float = 1e-5, *, channel_axis: int = 1,
                  return_stats: bool = False, out: Optional[InPlace] = None,
                  num_batches_tracked: Optional[Array] = None,
                  running_var_unbiased: bool = True) -> Union[Array, tuple[Array, NormStats]]:
    """Instance normalization (``torch.nn.functional.instance_norm``): statistics per sample and
    channel over the spatial axes.

    With ``use_input_stats`` and running statistics given, these are updated like PyTorch's: the
    batch value is the mean over samples of the per-instance mean and unbiased variance.  With
    ``use_input_stats=False`` the running statistics normalize every instance.  Other arguments
    as `batch_norm`.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 2-D
        ``(N, C, *spatial)`` or, with ``channel_axis=-1``, ``(N, *spatial, C)``; any strides.
    running_mean, running_var : ndarray (C,) or None
        Updated in place when given and ``use_input_stats`` (see above); required with
        ``use_input_stats=False``.
    weight, bias : array_like (C,) or None
        Per-channel affine parameters.
    use_input_stats : bool
        Normalize each instance with its own statistics (True, the default) or with the
        running statistics.
    momentum : float in [0, 1] or None
        As `batch_norm` (PyTorch's direction; None is the cumulative average).
    eps : float >= 0
        Added to the variance inside the square root.
    channel_axis : int, keyword-only
        Any axis but the batch axis 0.
    return_stats : bool, keyword-only
        Also return a `NormStats` for `instance_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).
    num_batches_tracked : integer ndarray of one element, optional, keyword-only
        Incremented in place by each call that updates running statistics; required when
        ``momentum`` is None and running statistics are given.

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: ``mean`` and ``rstd`` of shape
        ``(N, C)``.

    Raises
    ------
    TypeError
        As `batch_norm`: a non-float array, a running statistic that is not a NumPy array, a
        wrong ``out``, ``eps``, ``momentum``, ``channel_axis`` or ``num_batches_tracked``
        type.
    ValueError
        As `batch_norm`; with ``use_input_stats`` an input with a single spatial element per
        instance, and with ``use_input_stats=False`` missing running statistics.

    See Also
    --------
    instance_norm_backward, InstanceNorm, group_norm

    Notes
    -----
    The normalizing variance is biased (divided by the number of spatial elements), eps is
    inside the square root, and the running update follows PyTorch's momentum direction, as in
    `batch_norm`.  An empty batch (N = 0) returns an empty result and tracks nothing.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    >>> y = nn.instance_norm(x)
    >>> bool(np.allclose(y.mean(axis=(2, 3)), 0)), bool(np.allclose(y.var(axis=(2, 3)), 1, atol=1e-3))
    (True, True)

    With running statistics, updated from the per-instance values:

    >>> rm, rv = np.zeros(3), np.ones(3)
    >>> _ = nn.instance_norm(x, rm, rv)
    >>> bool(np.allclose(rm, 0.1 * x.mean(axis=(2, 3)).mean(axis=0)))
    True
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


@overload
def group_norm(input: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
               eps: float = ..., *, channel_axis: int = ..., return_stats: Literal[False] = ...,
               out: Optional[InPlace] = ...) -> Array: ...
@overload
def group_norm(input: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
               eps: float = ..., *, channel_axis: int = ..., return_stats: Literal[True],
               out: Optional[InPlace] = ...) -> tuple[Array, NormStats]: ...
@overload
def group_norm(input: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
               eps: float = ..., *, channel_axis: int = ..., return_stats: bool = ...,
               out: Optional[InPlace] = ...) -> Union[Array, tuple[Array, NormStats]]: ...
@dispatch
def group_norm(input: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, channel_axis: int = 1,
               return_stats: bool = False, out: Optional[InPlace] = None) -> Union[Array, tuple[Array, NormStats]]:
    """Group normalization (``torch.nn.functional.group_norm``): statistics per sample over each
    of ``num_groups`` groups of consecutive channels and the spatial axes.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 2-D
        ``(N, C, *spatial)`` or, with ``channel_axis=-1``, ``(N, *spatial, C)``; any strides.
    num_groups : int
        A positive divisor of the number of channels C.  ``num_groups=C`` is instance norm
        (without running statistics); ``num_groups=1`` normalizes each sample over C and the
        spatial axes.
    weight, bias : array_like (C,) or None
        Per-channel affine parameters.
    eps : float >= 0
        Added to the variance inside the square root.
    channel_axis : int, keyword-only
        Any axis but the batch axis 0.
    return_stats : bool, keyword-only
        Also return a `NormStats` for `group_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: ``mean`` and ``rstd`` of shape
        ``(N, num_groups)``.

    Raises
    ------
    TypeError
        If an array argument is not of a float16/32/64 dtype; ``num_groups`` or
        ``channel_axis`` is not an integer; ``eps`` is not a real number; ``out`` is not an
        array or has another dtype than the input.
    ValueError
        If the input has fewer than 2 dimensions; ``num_groups`` is not a positive divisor of
        C; ``channel_axis`` is the batch axis or out of range; ``weight`` or ``bias`` does not
        have shape ``(C,)``; ``eps`` is negative or not finite; ``out`` has another shape or
        is read-only.

    See Also
    --------
    group_norm_backward, GroupNorm, instance_norm, layer_norm

    Notes
    -----
    Biased variance, eps inside the square root (default 1e-5 as PyTorch; Flax's GroupNorm
    uses 1e-6), channel axis 1 as PyTorch or -1 as Keras' ``GroupNormalization`` and Flax.
    Groups are consecutive channels, as in all of them.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((2, 6, 4, 4))
    >>> y, stats = nn.group_norm(x, 3, return_stats=True)
    >>> y.shape, stats.mean.shape
    ((2, 6, 4, 4), (2, 3))
    >>> groups = y.reshape(2, 3, -1)
    >>> bool(np.allclose(groups.mean(axis=-1), 0)), bool(np.allclose(groups.var(axis=-1), 1, atol=1e-3))
    (True, True)
    """
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


def _stats_arg(stats, shape, kind="NormStats returned by the forward", why="for this input"):
    """A forward's stats checked against the shape its ``mean``/``rstd`` must have: (mean, rstd)
    as float64, ``batch_stats`` and ``has_bias``."""
    if not (hasattr(stats, "mean") and hasattr(stats, "rstd")):
        raise TypeError(f"stats must be the {kind} with return_stats=True, got {chk._describe(stats)}")
    mean = chk.float_array("stats.mean", stats.mean).astype(np.float64)
    rstd = chk.float_array("stats.rstd", stats.rstd).astype(np.float64)
    for name, a in (("stats.mean", mean), ("stats.rstd", rstd)):
        if a.shape != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} {why}, got shape {a.shape}")
    return mean, rstd, bool(getattr(stats, "batch_stats", True)), bool(getattr(stats, "has_bias", False))


def _backward_inputs(grad_output, input, min_ndim=2):
    x, xk = _input("input", input, min_ndim)
    dy = chk.same_array("grad_output", grad_output, x)
    return x, xk, (dy.astype(np.float32) if dy.dtype == np.float16 else dy)


def _grads(x, dx, grad_weight, grad_bias):
    return Grads(dx if dx.dtype == x.dtype else dx.astype(x.dtype), grad_weight, grad_bias)


@dispatch
def batch_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats,
                        weight: Optional[ArrayLike] = None, *, channel_axis: int = 1) -> Grads:
    """Gradients of `batch_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    Training statistics (``stats.batch_stats``) depend on the input; running statistics are
    constants.

    Parameters
    ----------
    grad_output : array_like
        The gradient of the loss with respect to the forward's output: the input's shape and
        dtype.
    input : array_like, float16/32/64, at least 2-D
        The forward's input.
    stats : NormStats
        The forward's statistics (``return_stats=True``): ``mean`` and ``rstd`` of shape ``(C,)``.
    weight : array_like (C,) or None
        The forward's weight; None when it had none.
    channel_axis : int, keyword-only
        The forward's channel axis.

    Returns
    -------
    Grads
        ``input``: the input gradient (input's shape and dtype); ``weight``: ``(C,)``, None
        without a weight; ``bias``: ``(C,)``, None when the forward had no bias.

    Raises
    ------
    TypeError
        If ``input``, ``grad_output`` or ``weight`` is not a float16/32/64 array,
        ``grad_output`` has another dtype than the input, ``stats`` is not a `NormStats`
        (anything without ``mean`` and ``rstd``), or ``channel_axis`` is not an integer.
    ValueError
        If ``grad_output`` has another shape than the input, ``stats.mean``/``stats.rstd`` do
        not have shape ``(C,)``, ``weight`` does not, or ``channel_axis`` is out of range or 0.

    See Also
    --------
    batch_norm, BatchNorm.backward

    Notes
    -----
    The same gradients as PyTorch's autograd through ``F.batch_norm`` (the tests use it as an
    oracle).  With ``stats.batch_stats`` the input gradient is
    ``rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat))`` per channel; with running
    statistics it is ``rstd * w * dy``.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
    >>> w, b = np.full(3, 2.0), np.zeros(3)
    >>> y, stats = nn.batch_norm(x, None, None, w, b, training=True, return_stats=True)
    >>> grads = nn.batch_norm_backward(np.ones_like(y), x, stats, w)
    >>> grads.input.shape, grads.weight.shape, grads.bias.tolist()
    ((8, 3, 5), (3,), [40.0, 40.0, 40.0])

    A constant upstream gradient does not reach the input through batch statistics:

    >>> bool(np.allclose(grads.input, 0))
    True
    """
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    mean, rstd, batch_stats, has_bias = _stats_arg(stats, (c,))
    grads = _grid_backward(dy, xk, ch, _Grouping(c, True), mean[None], rstd[None], weight,
                           batch_stats, has_bias)
    return _grads(x, *grads)


@dispatch
def instance_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats,
                           weight: Optional[ArrayLike] = None, *, channel_axis: int = 1) -> Grads:
    """Gradients of `instance_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 2-D
        The forward's input.
    stats : NormStats
        The forward's statistics: ``mean`` and ``rstd`` of shape ``(N, C)``.  With
        ``stats.batch_stats`` False (``use_input_stats=False``) they are constants.
    weight : array_like (C,) or None
        The forward's weight.
    channel_axis : int, keyword-only
        The forward's channel axis.

    Returns
    -------
    Grads
        ``input`` (input's shape and dtype), ``weight`` ``(C,)`` or None, ``bias`` ``(C,)`` or
        None when the forward had no bias.

    Raises
    ------
    TypeError
        As `batch_norm_backward`.
    ValueError
        As `batch_norm_backward`, with ``stats`` of shape ``(N, C)``.

    See Also
    --------
    instance_norm, InstanceNorm.backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 6))
    >>> y, stats = nn.instance_norm(x, return_stats=True)
    >>> dy = np.random.default_rng(1).standard_normal(x.shape)
    >>> g = nn.instance_norm_backward(dy, x, stats)
    >>> g.input.shape, g.weight, g.bias
    ((2, 3, 6), None, None)
    >>> bool(np.allclose(g.input.sum(axis=-1), 0))
    True
    """
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    mean, rstd, batch_stats, has_bias = _stats_arg(stats, (n, c))
    grads = _grid_backward(dy, xk, ch, _Grouping(c, False), mean, rstd, weight, batch_stats, has_bias)
    return _grads(x, *grads)


@dispatch
def group_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats, num_groups: int,
                        weight: Optional[ArrayLike] = None, *, channel_axis: int = 1) -> Grads:
    """Gradients of `group_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 2-D
        The forward's input.
    stats : NormStats
        The forward's statistics: ``mean`` and ``rstd`` of shape ``(N, num_groups)``.
    num_groups : int
        The forward's number of groups.
    weight : array_like (C,) or None
        The forward's weight.
    channel_axis : int, keyword-only
        The forward's channel axis.

    Returns
    -------
    Grads
        ``input`` (input's shape and dtype), ``weight`` ``(C,)`` or None, ``bias`` ``(C,)`` or
        None when the forward had no bias.

    Raises
    ------
    TypeError
        As `batch_norm_backward`, and if ``num_groups`` is not an integer.
    ValueError
        As `batch_norm_backward` with ``stats`` of shape ``(N, num_groups)``, and if
        ``num_groups`` is not a positive divisor of C.

    See Also
    --------
    group_norm, GroupNorm.backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((2, 4, 3, 3))
    >>> w, b = np.ones(4), np.zeros(4)
    >>> y, stats = nn.group_norm(x, 2, w, b, return_stats=True)
    >>> g = nn.group_norm_backward(2 * y, x, stats, 2, w)
    >>> g.input.shape, g.weight.shape, g.bias.shape
    ((2, 4, 3, 3), (4,), (4,))
    >>> bool(np.allclose(g.weight, 2 * (y * y).sum(axis=(0, 2, 3))))
    True
    """
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

    Attributes
    ----------
    mean, rstd : ndarray of float64
        The mixed statistics per (sample, channel), ``(N, C)``.
    batch_stats : bool
        Whether the batch term came from the input (training) or running statistics.
    has_bias : bool
        Whether the forward had a bias, so the backward returns its gradient.
    means, variances : ndarray of float64
        Each term's biased statistics broadcast to ``(K, N, C)``, in the order instance, layer,
        batch (K = 3, or 2 with ``using_bn=False``).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> y, stats = nn.switchable_norm(x, np.zeros(3), np.zeros(3), training=True, return_stats=True)
    >>> stats.mean.shape, stats.means.shape, stats.batch_stats
    ((4, 3), (3, 4, 3), True)
    """

    mean: NDArray[np.float64]
    rstd: NDArray[np.float64]
    batch_stats: bool
    has_bias: bool
    means: NDArray[np.float64]
    variances: NDArray[np.float64]



def _softmax_logits(name, logits, terms):
    z = chk.float_array(name, logits).astype(np.float64)
    if z.shape != (terms,):
        which = "instance, layer, batch" if terms == 3 else "instance, layer (using_bn=False)"
        raise ValueError(f"{name} must be {terms} logits ({which}), got shape {z.shape}")
    e = np.exp(z - z.max())
    return e / e.sum()


@overload
def switchable_norm(input: ArrayLike, mean_weight: ArrayLike, var_weight: ArrayLike,
                    running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                    weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
                    momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                    using_bn: bool = ..., return_stats: Literal[False] = ..., out: Optional[InPlace] = ...,
                    num_batches_tracked: Optional[Array] = ...,
                    running_var_unbiased: bool = ...) -> Array: ...
@overload
def switchable_norm(input: ArrayLike, mean_weight: ArrayLike, var_weight: ArrayLike,
                    running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                    weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
                    momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                    using_bn: bool = ..., return_stats: Literal[True], out: Optional[InPlace] = ...,
                    num_batches_tracked: Optional[Array] = ...,
                    running_var_unbiased: bool = ...) -> tuple[Array, SwitchableStats]: ...
@overload
def switchable_norm(input: ArrayLike, mean_weight: ArrayLike, var_weight: ArrayLike,
                    running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                    weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
                    momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                    using_bn: bool = ..., return_stats: bool = ..., out: Optional[InPlace] = ...,
                    num_batches_tracked: Optional[Array] = ...,
                    running_var_unbiased: bool = ...) -> Union[Array, tuple[Array, SwitchableStats]]: ...
@dispatch
def switchable_norm(input: ArrayLike, mean_weight: ArrayLike, var_weight: ArrayLike,
                    running_mean: Optional[InPlace] = None, running_var: Optional[InPlace] = None,
                    weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, training: bool = False,
                    momentum: Optional[float] = 0.1, eps: float = 1e-5, *, channel_axis: int = 1,
                    using_bn: bool = True, return_stats: bool = False, out: Optional[InPlace] = None,
                    num_batches_tracked: Optional[Array] = None,
                    running_var_unbiased: bool = True) -> Union[Array, tuple[Array, SwitchableStats]]:
    """Switchable normalization (Luo et al. 2018): normalize by a softmax mixture of the instance,
    layer and batch statistics, ``mean = sum_k softmax(mean_weight)_k * mean_k`` and likewise the
    (biased) variances with ``var_weight``.

    The instance statistics are computed in one pass; the layer and batch statistics are merged
    from them with Chan's formula.  The batch term uses the batch (training) or the running
    statistics (eval), which training updates as `batch_norm` does.  ``using_bn=False`` drops the
    batch term: the logits then have length 2.  Other arguments as `batch_norm`; the stats for
    `switchable_norm_backward` are a `SwitchableStats`.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 2-D
        ``(N, C, *spatial)`` or, with ``channel_axis=-1``, ``(N, *spatial, C)``.  NumPy and
        CUDA arrays; Dask arrays are not supported yet.
    mean_weight, var_weight : array_like (3,) or (2,)
        The mixture logits of the means and of the variances, in the order instance, layer,
        batch (length 2 without the batch term, ``using_bn=False``).
    running_mean, running_var : ndarray (C,) or None
        The batch term's running statistics: updated in place when training (as `batch_norm`),
        required for eval when ``using_bn``.
    weight, bias : array_like (C,) or None
        Per-channel affine parameters.
    training : bool
        Batch term from the input (and running statistics updated) or from the running
        statistics.
    momentum : float in [0, 1] or None
        As `batch_norm`: PyTorch's direction, None the cumulative average.
    eps : float >= 0
        Added to the mixed variance inside the square root.
    channel_axis : int, keyword-only
        Any axis but the batch axis 0.
    using_bn : bool, keyword-only
        Include the batch term.
    return_stats : bool, keyword-only
        Also return a `SwitchableStats` for `switchable_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).
    num_batches_tracked : integer ndarray of one element, optional, keyword-only
        As `batch_norm`.

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : SwitchableStats
        Only with ``return_stats=True``, as ``(y, stats)``.

    Raises
    ------
    TypeError
        As `batch_norm`, and if a logits argument is not a float array.
    ValueError
        As `batch_norm`, and if ``mean_weight`` or ``var_weight`` does not have 3 elements (2
        with ``using_bn=False``).
    NotImplementedError
        For a Dask input.

    See Also
    --------
    switchable_norm_backward, SwitchableNorm, batch_norm, instance_norm, layer_norm

    Notes
    -----
    numbanorm follows the paper's formula with *biased* variances for every term and
    PyTorch's momentum convention for the running statistics (``(1 - momentum)*old +
    momentum*new``, default 0.1, unbiased running variance).  The paper's reference code
    instead uses a 0.9 decay, unbiased instance variances and zero-initialised running
    statistics.  The layer term is over C and the spatial axes of each sample.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> rm, rv = np.zeros(3), np.ones(3)
    >>> y = nn.switchable_norm(x, np.zeros(3), np.zeros(3), rm, rv, training=True)
    >>> y.shape
    (4, 3, 5)

    Logits that put all the weight on the instance term give instance norm:

    >>> only_in = np.array([50.0, 0.0, 0.0])
    >>> y = nn.switchable_norm(x, only_in, only_in, rm, rv, training=True)
    >>> bool(np.allclose(y, nn.instance_norm(x)))
    True
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
    states = _engine.CPU.states(xk, plan)  # one statistics pass, merged three ways: IN, LN, BN
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
def switchable_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: SwitchableStats,
                             mean_weight: ArrayLike, var_weight: ArrayLike, weight: Optional[ArrayLike] = None, *,
                             channel_axis: int = 1) -> "SwitchableGrads":
    """Gradients of `switchable_norm` given its `SwitchableStats`: returns
    `SwitchableGrads(input, weight, bias, mean_weight, var_weight)`, the last two with respect to
    the logits.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 2-D
        The forward's input.
    stats : SwitchableStats
        The forward's statistics (``return_stats=True``).
    mean_weight, var_weight : array_like (3,) or (2,)
        The forward's mixture logits.
    weight : array_like (C,) or None
        The forward's weight.
    channel_axis : int, keyword-only
        The forward's channel axis.

    Returns
    -------
    SwitchableGrads
        ``input`` (input's shape and dtype), ``weight`` and ``bias`` ``(C,)`` or None,
        ``mean_weight`` and ``var_weight`` (float64, the logits' shape).

    Raises
    ------
    TypeError
        If ``stats`` is not a `SwitchableStats`, or as `batch_norm_backward`.
    ValueError
        If ``stats`` belongs to an input of another ``(N, C)``, the logits do not have the
        stats' number of terms, or as `batch_norm_backward`.
    NotImplementedError
        For a Dask input.

    See Also
    --------
    switchable_norm, SwitchableNorm.backward

    Notes
    -----
    Running statistics (eval) are constants; the batch term depends on the input only when it
    came from the batch.  The logits' gradients go through the softmax Jacobian.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> logits = np.zeros(3)
    >>> y, stats = nn.switchable_norm(x, logits, logits, training=True, return_stats=True)
    >>> dy = np.random.default_rng(1).standard_normal(x.shape)
    >>> g = nn.switchable_norm_backward(dy, x, stats, logits, logits)
    >>> g.input.shape, g.mean_weight.shape, g.weight
    ((4, 3, 5), (3,), None)

    The logits' gradients sum to zero (a common shift of the logits changes nothing):

    >>> bool(abs(g.mean_weight.sum()) < 1e-12), bool(abs(g.var_weight.sum()) < 1e-12)
    (True, True)
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
    if x.size == 0:  # an empty batch: nothing depends on the parameters or the mixture
        zeros = np.zeros(c, x.dtype)
        return SwitchableGrads(np.empty_like(x), None if weight is None else zeros,
                               zeros.copy() if stats.has_bias else None, np.zeros(terms), np.zeros(terms))
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
    dx, _, _ = _engine.CPU.input_grad(dy, xk, plan, *(_on_grid(a, xk, ch) for a in (centre, rstd * w, kb, kc)))
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
    """Gradients of switchable norm, the mixture logits included.

    Attributes
    ----------
    input : ndarray
        The input gradient: the input's shape and dtype.
    weight, bias : ndarray or None
        ``(C,)``; None where the forward had no weight or bias.
    mean_weight, var_weight : ndarray of float64
        The gradients with respect to the mixture logits, of the logits' shape.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> y, stats = nn.switchable_norm(x, np.zeros(2), np.zeros(2), using_bn=False, return_stats=True)
    >>> g = nn.switchable_norm_backward(np.ones_like(y), x, stats, np.zeros(2), np.zeros(2))
    >>> g._fields
    ('input', 'weight', 'bias', 'mean_weight', 'var_weight')
    >>> g.var_weight.shape, g.bias
    ((2,), None)
    """

    input: Array
    weight: Optional[Array]
    bias: Optional[Array]
    mean_weight: NDArray[np.float64]
    var_weight: NDArray[np.float64]



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
    if _small.fits(x):
        y, mean, rstd = _small.row_forward(x, math.prod(lead), length, weight, bias, eps, centered, out)
    elif (x2 := _fused_rows(xk, math.prod(lead), 1)) is not None:
        w, b = _fused_params(weight, bias, (1, length), xk.dtype)
        y, mean, _, rstd = _fused_forward(x, x2, w, b, 1, eps, out, centered)
    else:
        xk, plan = _row_plan(xk, k, weight is not None or bias is not None)
        count, mean, m2 = _engine.CPU.moments(xk, [i < x.ndim - k for i in range(x.ndim)], plan)
        spread = m2 / count
        if not centered:
            spread, mean = spread + mean * mean, np.zeros_like(mean)
        w, b = _row_params(weight, bias, length, xk.dtype)
        direct_out = out if out is not None and out.dtype == xk.dtype else None
        rstd = _rstd(spread, eps)
        y = _deliver(_engine.CPU.affine(xk, plan, mean, rstd, np.zeros_like(rstd), out=direct_out,
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
    if _small.fits(xk, dy):
        dx, grad_w, grad_b = _small.row_backward(dy, xk, mean, rstd, weight, centered)
        return _grads(x, dx, None if weight is None else grad_w.reshape(shape).astype(xk.dtype),
                      grad_b.reshape(shape).astype(xk.dtype) if has_bias else None)
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
    sum_wdy, sum_wdy_xc = _engine.CPU.grad_sums(dy, xk, plan, mean, weight=w)
    # dx = rstd*(w*dy - mean(w*dy) - xhat*mean(w*dy*xhat)); RMS norm has no mean(w*dy) term
    ka = rstd
    kb = -rstd * rstd * (sum_wdy_xc * rstd / length)
    kc = -rstd * (sum_wdy / length) if centered else np.zeros_like(rstd)
    dx, grad_w, grad_b = _engine.CPU.input_grad(dy, xk, plan, mean, ka, kb, kc, weight=w)
    grad_weight = None if weight is None else grad_w.reshape(shape).astype(weight.dtype)
    grad_bias = grad_b.reshape(shape).astype(xk.dtype) if has_bias else None
    return _grads(x, dx, grad_weight, grad_bias)


@overload
def layer_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, return_stats: Literal[False] = ...,
               out: Optional[InPlace] = ...) -> Array: ...
@overload
def layer_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, return_stats: Literal[True],
               out: Optional[InPlace] = ...) -> tuple[Array, NormStats]: ...
@overload
def layer_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, return_stats: bool = ...,
               out: Optional[InPlace] = ...) -> Union[Array, tuple[Array, NormStats]]: ...
@dispatch
def layer_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, return_stats: bool = False,
               out: Optional[InPlace] = None) -> Union[Array, tuple[Array, NormStats]]:
    """Layer normalization (``torch.nn.functional.layer_norm``) over the trailing
    ``normalized_shape`` dimensions; ``weight``/``bias`` have that shape.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 1-D
        Any layout and strides.
    normalized_shape : int or sequence of int
        The trailing dimensions to normalize over; must match the end of the input's shape.
    weight, bias : array_like of shape ``normalized_shape``, or None
        Elementwise affine parameters.
    eps : float >= 0
        Added to the variance inside the square root.
    return_stats : bool, keyword-only
        Also return a `NormStats` for `layer_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: ``mean`` and ``rstd`` of the leading
        (not normalized) shape.

    Raises
    ------
    TypeError
        If an array argument is not of a float16/32/64 dtype; ``normalized_shape`` is not an
        integer or a sequence of integers; ``eps`` is not a real number; ``out`` is not an
        array or has another dtype than the input.
    ValueError
        If ``normalized_shape`` is empty or does not match the trailing dimensions of the
        input; ``weight`` or ``bias`` does not have shape ``normalized_shape``; ``eps`` is
        negative or not finite; ``out`` has another shape or is read-only.

    See Also
    --------
    layer_norm_backward, LayerNorm, rms_norm

    Notes
    -----
    Biased variance and eps inside the square root, as PyTorch (default 1e-5) and Keras'
    ``LayerNormalization`` (which normalizes over ``axis=-1`` and defaults to 1e-3); Flax's
    LayerNorm defaults to 1e-6.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 10, 16)).astype(np.float32)
    >>> y = nn.layer_norm(x, 16)
    >>> y.shape, y.dtype
    ((4, 10, 16), dtype('float32'))
    >>> bool(np.allclose(y.mean(axis=-1), 0, atol=1e-6)), bool(np.allclose(y.std(axis=-1), 1, atol=1e-3))
    (True, True)

    Over the two trailing dimensions, with parameters of that shape:

    >>> y, stats = nn.layer_norm(x, (10, 16), np.ones((10, 16)), np.zeros((10, 16)), return_stats=True)
    >>> stats.mean.shape
    (4,)
    """
    y, stats = _row_norm(input, normalized_shape, weight, bias, eps, True, out)
    return _maybe_stats(y, stats, return_stats)


@dispatch
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats, normalized_shape: ShapeLike,
                        weight: Optional[ArrayLike] = None) -> Grads:
    """Gradients of `layer_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    The weight and bias gradients are summed in the same pass that writes the input gradient.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 1-D
        The forward's input.
    stats : NormStats
        The forward's statistics: ``mean`` and ``rstd`` of the leading shape.
    normalized_shape : int or sequence of int
        The forward's ``normalized_shape``.
    weight : array_like of shape ``normalized_shape``, or None
        The forward's weight.

    Returns
    -------
    Grads
        ``input`` (input's shape and dtype), ``weight`` and ``bias`` of shape
        ``normalized_shape`` (None where the forward had none).

    Raises
    ------
    TypeError
        If ``input``, ``grad_output`` or ``weight`` is not a float16/32/64 array,
        ``grad_output`` has another dtype than the input, ``stats`` is not a `NormStats`, or
        ``normalized_shape`` is not an integer or a sequence of integers.
    ValueError
        If ``grad_output`` has another shape than the input, ``normalized_shape`` does not
        match its trailing dimensions, or ``stats`` or ``weight`` has the wrong shape.

    See Also
    --------
    layer_norm, LayerNorm.backward

    Notes
    -----
    ``dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat))`` over each normalized row.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 8))
    >>> w, b = np.ones(8), np.zeros(8)
    >>> y, stats = nn.layer_norm(x, 8, w, b, return_stats=True)
    >>> dy = np.random.default_rng(1).standard_normal(x.shape)
    >>> g = nn.layer_norm_backward(dy, x, stats, 8, w)
    >>> bool(np.allclose(g.bias, dy.sum(axis=0))), bool(np.allclose(g.weight, (dy * y).sum(axis=0)))
    (True, True)
    """
    return _row_norm_backward(grad_output, input, stats, normalized_shape, weight, True)


@overload
def rms_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, return_stats: Literal[False] = ...,
             out: Optional[InPlace] = ...) -> Array: ...
@overload
def rms_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, return_stats: Literal[True],
             out: Optional[InPlace] = ...) -> tuple[Array, NormStats]: ...
@overload
def rms_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, return_stats: bool = ...,
             out: Optional[InPlace] = ...) -> Union[Array, tuple[Array, NormStats]]: ...
@dispatch
def rms_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = None,
             eps: Optional[float] = None, *, return_stats: bool = False,
             out: Optional[InPlace] = None) -> Union[Array, tuple[Array, NormStats]]:
    """RMS normalization (``torch.nn.functional.rms_norm``): ``x / sqrt(mean(x**2) + eps) * weight``
    over the trailing ``normalized_shape`` dimensions; ``eps=None`` is the machine epsilon of the
    input's dtype.  The stats' ``mean`` is zero.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 1-D
        Any layout and strides.
    normalized_shape : int or sequence of int
        The trailing dimensions to normalize over.
    weight : array_like of shape ``normalized_shape``, or None
        Elementwise scale; there is no bias.
    eps : float >= 0 or None
        Added to the mean square inside the square root; None: ``np.finfo(input.dtype).eps``
        (of float16 for float16 input).
    return_stats : bool, keyword-only
        Also return a `NormStats` for `rms_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: ``rstd`` of the leading shape and a
        zero ``mean``.

    Raises
    ------
    TypeError
        As `layer_norm`.
    ValueError
        As `layer_norm`.

    See Also
    --------
    rms_norm_backward, RMSNorm, layer_norm

    Notes
    -----
    Follows ``torch.nn.functional.rms_norm``, eps default included; the mean square is
    accumulated exactly as layer norm's statistics (mean and spread merged in float64).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((3, 8))
    >>> y = nn.rms_norm(x, 8)
    >>> bool(np.allclose(np.sqrt((y ** 2).mean(axis=-1)), 1))
    True
    >>> bool(np.allclose(y, x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + np.finfo(x.dtype).eps)))
    True
    """
    y, stats = _row_norm(input, normalized_shape, weight, None, eps, False, out)
    return _maybe_stats(y, stats, return_stats)


@dispatch
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats, normalized_shape: ShapeLike,
                      weight: Optional[ArrayLike] = None) -> Grads:
    """Gradients of `rms_norm` given its `NormStats`; returns `Grads(input, weight, None)`.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 1-D
        The forward's input.
    stats : NormStats
        The forward's statistics.
    normalized_shape : int or sequence of int
        The forward's ``normalized_shape``.
    weight : array_like of shape ``normalized_shape``, or None
        The forward's weight.

    Returns
    -------
    Grads
        ``input`` (input's shape and dtype), ``weight`` of shape ``normalized_shape`` or None,
        ``bias`` None.

    Raises
    ------
    TypeError
        As `layer_norm_backward`.
    ValueError
        As `layer_norm_backward`.

    See Also
    --------
    rms_norm, RMSNorm.backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((3, 8))
    >>> y, stats = nn.rms_norm(x, 8, np.ones(8), return_stats=True)
    >>> g = nn.rms_norm_backward(np.ones_like(y), x, stats, 8, np.ones(8))
    >>> g.input.shape, g.weight.shape, g.bias
    ((3, 8), (8,), None)
    """
    return _row_norm_backward(grad_output, input, stats, normalized_shape, weight, False)


# -- weight standardization: a layer norm over a weight tensor's trailing axes ------------------------

def _weight_arrays(weight, grad_output=None):
    """The checked ``weight`` (float16/32/64, at least 2-D) and ``grad_output`` (its shape and
    dtype), or None without one."""
    w = chk.float_array("weight", weight, 2)
    return w, None if grad_output is None else chk.same_array("grad_output", grad_output, w, "weight")


@dispatch
def weight_standardization(weight: ArrayLike, eps: float = 1e-5) -> Array:
    """Weight standardization (Qiao et al. 2019): ``(w - mean) / sqrt(var + eps)`` over every axis
    of ``weight`` but the first (the output channels), with the biased variance.

    A layer norm of the weight tensor over its trailing axes, without affine parameters:
    ``weight_standardization(w)`` is ``layer_norm(w, w.shape[1:])``.  Apply it to a convolution's
    or a linear layer's weight before using it, and chain the gradient reaching the standardized
    weight through `weight_standardization_backward`.

    Parameters
    ----------
    weight : array_like, float16/32/64, at least 2-D
        A weight tensor with the output channels first: ``(C_out, C_in, *kernel)`` for a
        convolution (PyTorch's layout), ``(out_features, in_features)`` for a linear layer.
        Any layout and strides; a CUDA array runs on the GPU.
    eps : float >= 0
        Added to the variance inside the square root.

    Returns
    -------
    ndarray
        The standardized weight, of weight's shape and dtype: zero mean and unit (biased)
        variance over each output channel, up to ``eps``.

    Raises
    ------
    TypeError
        If ``weight`` is not of a float16/32/64 dtype, or ``eps`` is not a real number (a bool
        is refused).
    ValueError
        If ``weight`` has fewer than 2 dimensions, or a trailing axis of length 0 (an output
        channel without values); if ``eps`` is negative or not finite.
    NotImplementedError
        If ``weight`` is a Dask array (compute it first).

    See Also
    --------
    weight_standardization_backward, layer_norm

    Notes
    -----
    The paper's formula (Qiao et al. 2019, "Micro-Batch Training with Batch-Channel
    Normalization and Weight Standardization"): statistics over all axes but the first, the
    *biased* variance (divided by the ``n`` values per output channel), eps inside the square
    root -- as timm's ``StdConv2d``, which standardizes with ``F.batch_norm`` (its eps defaults to
    1e-6).  The paper's PyTorch reference code divides by ``w.std() + 1e-5`` instead (the
    unbiased standard deviation, eps outside the root): its results differ from these by the
    factor ``sqrt((n - 1) / n)`` and by O(eps).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    >>> ws = nn.weight_standardization(w)
    >>> ws.shape, ws.dtype
    ((8, 3, 3, 3), dtype('float32'))
    >>> bool(np.allclose(ws.mean(axis=(1, 2, 3)), 0, atol=1e-6)), bool(np.allclose(ws.var(axis=(1, 2, 3)), 1, atol=1e-3))
    (True, True)
    >>> bool(np.allclose(ws, nn.layer_norm(w, (3, 3, 3))))
    True
    """
    w, _ = _weight_arrays(weight)
    return _row_norm(w, w.shape[1:], None, None, chk.eps_value("eps", eps), True, None)[0]


@dispatch
def weight_standardization_backward(grad_output: ArrayLike, weight: ArrayLike, eps: float = 1e-5) -> Array:
    """Gradient of `weight_standardization` with respect to ``weight`` (its statistics
    recomputed, as the forward returns none).

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the standardized weight: weight's shape and dtype.
    weight : array_like, float16/32/64, at least 2-D
        The forward's weight (not the standardized one).
    eps : float >= 0
        The forward's eps.

    Returns
    -------
    ndarray
        The gradient with respect to ``weight``, of its shape and dtype.

    Raises
    ------
    TypeError
        If ``weight`` or ``grad_output`` is not of a float16/32/64 dtype, ``grad_output`` has
        another dtype than ``weight``, or ``eps`` is not a real number; if the two arrays live
        in different places (a NumPy array and a CUDA array).
    ValueError
        If ``weight`` has fewer than 2 dimensions or a trailing axis of length 0,
        ``grad_output`` has another shape than ``weight``, or ``eps`` is negative or not finite.
    NotImplementedError
        If ``weight`` is a Dask array (compute it first).

    See Also
    --------
    weight_standardization, layer_norm_backward

    Notes
    -----
    Per output channel, ``dw = rstd * (dy - mean(dy) - what * mean(dy * what))`` with ``what``
    the standardized weight and the means over the trailing axes: the layer norm backward
    without affine parameters.  So each output channel's gradient has zero sum and is
    orthogonal to its standardized weight.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> w = np.random.default_rng(0).standard_normal((8, 3, 3, 3))
    >>> dy = np.random.default_rng(1).standard_normal(w.shape)
    >>> dw = nn.weight_standardization_backward(dy, w)
    >>> dw.shape, dw.dtype
    ((8, 3, 3, 3), dtype('float64'))
    >>> bool(np.allclose(dw.sum(axis=(1, 2, 3)), 0))
    True
    >>> _, stats = nn.layer_norm(w, (3, 3, 3), return_stats=True)
    >>> bool(np.allclose(dw, nn.layer_norm_backward(dy, w, stats, (3, 3, 3)).input))
    True
    """
    w, dy = _weight_arrays(weight, grad_output)
    _, stats = _row_norm(w, w.shape[1:], None, None, chk.eps_value("eps", eps), True, None)
    return _row_norm_backward(dy, w, stats, w.shape[1:], None, True).input


# -- statistics -----------------------------------------------------------------------------------

@dispatch
def moments(x: ArrayLike, axes: AxesLike, keepdims: bool = False, *,
            nan_policy: str = "propagate") -> tuple[Array, Array]:
    """Mean and (biased) variance of ``x`` over ``axes`` in one pass (``tf.nn.moments``).

    ``axes``: an integer or a sequence of distinct integers, negative allowed.  The results
    have x's dtype (computed in float64 from float32 chunk sums).  ``nan_policy="omit"`` takes
    the statistics of the values that are not NaN (NaN for a group without any).

    Parameters
    ----------
    x : array_like, float16/32/64
        Any layout and strides; a Dask array gives lazy Dask results.
    axes : int or sequence of int
        The axes to reduce.
    keepdims : bool
        Keep the reduced axes with length 1.
    nan_policy : {"propagate", "omit"}, keyword-only
        "propagate": a NaN spoils its group.  "omit": statistics of the values present.

    Returns
    -------
    mean, variance : ndarray
        Of x's dtype; the variance is biased (divided by the count).

    Raises
    ------
    TypeError
        If ``x`` is not of a float16/32/64 dtype, or ``axes`` is not an integer or a sequence
        of integers.
    ValueError
        If an axis is out of range or repeated, or ``x`` is empty.

    See Also
    --------
    welford : the same statistics as a mergeable `Moments` state, in float64.

    Notes
    -----
    The order is TensorFlow's ``(mean, variance)``; ``torch.var_mean(x, dims, correction=0)``
    returns ``(variance, mean)``.  Statistics are chunked two-pass sums merged with Chan's
    formula, never ``E[x^2] - E[x]^2``, so a large offset keeps its digits.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4))
    >>> mean, var = nn.moments(x, axes=(0, 2, 3))
    >>> mean.shape, bool(np.allclose(mean, x.mean(axis=(0, 2, 3)))), bool(np.allclose(var, x.var(axis=(0, 2, 3))))
    ((3,), True, True)
    >>> nn.moments(x, -1, keepdims=True)[1].shape
    (8, 3, 4, 1)

    A large offset does not cost the variance its digits:

    >>> big = (1e4 + np.arange(6, dtype=np.float32)).reshape(2, 3)
    >>> round(nn.moments(big, axes=(0, 1))[1].item(), 6), round(float(np.var(np.arange(6.0))), 6)
    (2.916667, 2.916667)
    """
    if nan_policy != "propagate":
        from ._tfstats import nan_policy_value, omit_moments

        nan_policy_value(nan_policy)
        return omit_moments(x, axes, keepdims)
    arr, xk = _input("x", x, 0)
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    kept = [i not in axes for i in range(arr.ndim)]
    if arr.size == 0:
        raise ValueError(f"x must not be empty, got shape {arr.shape}")
    count, mean, m2 = _engine.CPU.moments(xk, kept)
    var = m2 / count
    if not keepdims:
        mean, var = mean.reshape([arr.shape[i] for i in range(arr.ndim) if kept[i]]), var.reshape(
            [arr.shape[i] for i in range(arr.ndim) if kept[i]])
    return mean.astype(arr.dtype), var.astype(arr.dtype)


@dispatch
def batch_normalization(x: ArrayLike, mean: ArrayLike, variance: ArrayLike, offset: Optional[ArrayLike],
                        scale: Optional[ArrayLike], variance_epsilon: float) -> Array:
    """``(x - mean) * scale / sqrt(variance + variance_epsilon) + offset`` with broadcasting
    (``tf.nn.batch_normalization``); ``offset``/``scale`` may be None.

    Parameters
    ----------
    x : array_like, float16/32/64
        Any layout and strides.
    mean, variance : array_like
        Float arrays that broadcast to x's shape (``keepdims=True`` results of `moments`, or
        arrays of the trailing dimensions, as NumPy broadcasts).
    offset, scale : array_like or None
        Float arrays that broadcast to x's shape; None: no shift, no scale.
    variance_epsilon : float >= 0
        Added to the variance inside the square root.

    Returns
    -------
    ndarray
        x's shape and dtype.

    Raises
    ------
    TypeError
        If ``x`` or a parameter is not a float16/32/64 array (``mean`` and ``variance`` may not
        be None), or ``variance_epsilon`` is not a real number.
    ValueError
        If a parameter does not broadcast to x's shape, or ``variance_epsilon`` is negative or
        not finite.

    See Also
    --------
    moments, batch_norm

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 5))
    >>> mean, var = nn.moments(x, axes=0)
    >>> y = nn.batch_normalization(x, mean, var, offset=None, scale=None, variance_epsilon=1e-3)
    >>> bool(np.allclose(y, (x - mean) / np.sqrt(var + 1e-3)))
    True
    """
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
    y = _engine.CPU.affine(xk, plan, full(params["mean"]), full(alpha), full(beta))
    return _deliver(y, arr.dtype, None)


# -- mergeable statistics -----------------------------------------------------------------------

class Moments(NamedTuple):
    """A mergeable Welford state: per-element ``count``, ``mean`` and ``m2`` (the sum of squared
    deviations from the mean), float64 arrays of one shape (Dask arrays for Dask input).

    Returned by `welford`, combined by `merge`, turned into ``(mean, variance)`` by `finalize`.

    Attributes
    ----------
    count : ndarray of float64
        The number of values behind each element (0 for an empty block).
    mean : ndarray of float64
        Their mean.
    m2 : ndarray of float64
        The sum of their squared deviations from ``mean``.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> state = nn.welford(np.arange(10.0), axes=0)
    >>> float(state.count), float(state.mean), float(state.m2)
    (10.0, 4.5, 82.5)
    """

    count: NDArray[np.float64]  # type: ignore[assignment]  # the field shadows tuple.count, by design
    mean: NDArray[np.float64]
    m2: NDArray[np.float64]

    def finalize(self, ddof: int = 0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(mean, variance)`` with ``m2 / (count - ddof)``; NaN where that has no value left.

        Parameters
        ----------
        ddof : int
            Delta degrees of freedom: 0 for the biased variance (`moments`, the normalizing
            variance), 1 for the unbiased one (PyTorch's running variance).

        Returns
        -------
        mean, variance : ndarray of float64
            The state's shape; the variance is NaN where ``count - ddof <= 0``.

        Examples
        --------
        >>> import numpy as np
        >>> import numbanorm as nn
        >>> mean, var = nn.welford(np.arange(10.0), axes=0).finalize(ddof=1)
        >>> float(mean), round(float(var), 6)
        (4.5, 9.166667)
        """
        dof = self.count - ddof
        return self.mean, np.where(dof > 0, self.m2 / np.where(dof > 0, dof, 1), np.nan)


@dispatch
def welford(x: ArrayLike, axes: AxesLike, keepdims: bool = False, *, weights: Optional[ArrayLike] = None,
            nan_policy: str = "propagate") -> Moments:
    """The `Moments` of ``x`` over ``axes`` (one pass, the kernels of `moments`).

    Merge states of blocks, files, streams or MPI ranks with `merge`; an empty block gives count
    0, which merges as nothing.  ``weights`` (frequency weights >= 0 broadcasting against x, see
    `weighted_moments`) make the count the sum of the weights; such states merge the same way.
    ``nan_policy="omit"`` counts only the values that are not NaN (count 0 where none are).

    Parameters
    ----------
    x : array_like, float16/32/64
        Any layout and strides; may be empty.  A Dask array gives a state of Dask arrays.
    axes : int or sequence of int
        The axes to reduce.
    keepdims : bool
        Keep the reduced axes with length 1.
    weights : array_like or None, keyword-only
        Frequency weights >= 0 that broadcast against ``x``.
    nan_policy : {"propagate", "omit"}, keyword-only
        "omit": the NaN values are left out of the state.

    Returns
    -------
    Moments
        ``count``, ``mean`` and ``m2`` in float64, of the kept axes' shape.

    Raises
    ------
    TypeError
        If ``x`` is not of a float16/32/64 dtype, or ``axes`` is not an integer or a sequence
        of integers.
    ValueError
        If an axis is out of range or repeated.

    See Also
    --------
    merge, Moments.finalize, moments

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((1000, 4))
    >>> state = nn.welford(x[:300], axes=0)
    >>> state = nn.merge(state, nn.welford(x[300:], axes=0))
    >>> mean, var = state.finalize()
    >>> bool(np.allclose(mean, x.mean(axis=0))), bool(np.allclose(var, x.var(axis=0)))
    (True, True)
    """
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
        count, mean, m2 = _engine.CPU.moments(xk, kept)
    if not keepdims:
        out_shape = [arr.shape[i] for i in range(arr.ndim) if kept[i]]
        count, mean, m2 = (a.reshape(out_shape) for a in (count, mean, m2))
    return Moments(np.asarray(count, np.float64), mean, m2)


def merge(a: Moments, b: Moments) -> Moments:
    """Chan's formula: the `Moments` of the union of two disjoint samples.  Safe when a count is
    zero; shapes broadcast.

    Parameters
    ----------
    a, b : Moments
        Two states (anything with ``count``, ``mean`` and ``m2``), NumPy or Dask.

    Returns
    -------
    Moments
        The state of both samples together.

    Raises
    ------
    TypeError
        If ``a`` or ``b`` has no ``count``, ``mean`` and ``m2``.

    See Also
    --------
    welford

    Notes
    -----
    ``n = n_a + n_b``, ``mean = mean_a + delta * n_b / n``, ``m2 = m2_a + m2_b + delta**2 *
    n_a * n_b / n`` with ``delta = mean_b - mean_a`` (Chan, Golub and LeVeque).  The result
    does not depend on how the data were split, up to rounding.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> empty = nn.welford(np.empty((0, 3)), axes=0)
    >>> full = nn.welford(np.ones((4, 3)), axes=0)
    >>> nn.merge(empty, full).count.tolist()
    [4.0, 4.0, 4.0]
    """
    for name, m in (("a", a), ("b", b)):
        if not (hasattr(m, "count") and hasattr(m, "mean") and hasattr(m, "m2")):
            raise TypeError(f"{name} must be a Moments (count, mean, m2), got {chk._describe(m)}")
    n = a.count + b.count
    frac = np.where(n > 0, b.count / np.where(n > 0, n, 1), 0.0)
    delta = b.mean - a.mean
    return Moments(n, a.mean + delta * frac, a.m2 + b.m2 + delta * delta * a.count * frac)
