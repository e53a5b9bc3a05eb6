"""Small inputs: the whole pass in one compiled, serial call.

Below ``SMALL_ELEMENTS`` the work of a call is a few microseconds, less than what the general
path spends around it: planning the view, a parallel launch per kernel, merging partial results
in Python between them.  There the front hands the checked arguments to one of the serial
drivers of ``_serial`` (the kernels behind the ``@njit`` overloads, with ``_cpu``'s numerical
scheme), on the C-contiguous input seen as ``(N, P, C, Q)`` (grid norms) or ``(R, L)`` (row
norms).  The CPU device (``_cpu_pipelines``) asks `row_fits` or `grid_fits` first and otherwise
takes its fused or planned kernels.

A plain forward (`row_norm`, `grid_norm`) or backward (`row_grads`, `grid_grads`, `weight_grads`)
takes the lane from the public function on: a few exact tests of its arguments stand in for the
front's checks, which on a few hundred elements cost more than the arithmetic.  At more than one
thread a plain row norm past the serial crossover (up to ``ONE_THREAD_ROW_FACTOR``), forward or
backward, and a channels-first instance or group norm forward past it (up to
``FUSED_LANE_FACTOR``) run from the lane the fused parallel kernel the checked path would.

Absent parameters are passed as shared ones and zeros rather than None: scaling by 1
and adding 0 change no bit, and the drivers then compile once per dtype instead of once per
combination of absent arguments.
"""

import functools
import math

import numpy as np

from . import _serial as S
from ._config import SMALL_ELEMENTS
from ._cpu import row_normalize_viewed, thread_count
from ._dispatch import NO_GUARD, launch_guard
from ._engine import CPUDevice
from ._types import Grads, NormStats

# batch norm's planned path merges a partial state per sample and channel, and per piece, so on
# small inputs it costs several times more than the other grid norms': the lane pays off on inputs
# this many times larger there
OVER_BATCH_FACTOR = 16
# instance and group norm's fused kernels give each task whole (sample, group) rows or samples,
# few and short at these sizes: the lane's forward keeps to inputs this many times larger at one
# thread (above them the fused forward's channels-last statistics, on slabs folded wider, sum
# shorter float32 chains: a few times more exact next to outliers), and this many at more, where
# the fused kernels overtake it sooner; past that the lane runs the channels-first one itself, on
# inputs up to FUSED_LANE_FACTOR times larger ...
PER_SAMPLE_FACTOR = 4
PARALLEL_PER_SAMPLE_FACTOR = 2
FUSED_LANE_FACTOR = 16
# ... and its backward, where the fused kernels reduce per channel in Python afterwards and the
# lane reads the given statistics, to inputs this many times larger, at one thread or two
PER_SAMPLE_BACKWARD_FACTOR = 16
# the row norms' serial drivers keep up with their parallel kernels' speed per thread (both run
# ``_cpu.normalize_rows``), and a parallel call with its planning costs several microseconds:
# their lane takes inputs this many times larger, and at one thread, where a parallel launch
# buys nothing, this many
ROW_FACTOR = 4
ONE_THREAD_ROW_FACTOR = 16


def fits(x, other=None, factor=1):
    """``x`` (and ``other`` unless None) NumPy arrays, C-contiguous, non-empty, of at most
    ``factor * SMALL_ELEMENTS`` elements and of a dtype the drivers take (native float32/float64:
    the checks have made it native)."""
    if type(x) is not np.ndarray or not 0 < x.size <= SMALL_ELEMENTS * factor or x.dtype.char not in "fd":
        return False
    return x.flags.c_contiguous and (other is None or (type(other) is np.ndarray and other.flags.c_contiguous))


def row_fits(x, other=None):
    """`fits` for a row norm (layer norm, RMS norm, weight standardization), see `ROW_FACTOR`."""
    if fits(x, other, ROW_FACTOR):
        return True
    return fits(x, other, ONE_THREAD_ROW_FACTOR) and thread_count() == 1


def grid_fits(x, other=None, over_batch=False):
    """`fits` for a grid norm: batch norm (``over_batch``) or instance/group norm, a backward
    where ``other`` (the output gradient) is given; see `PER_SAMPLE_FACTOR`."""
    if over_batch:
        return fits(x, other, OVER_BATCH_FACTOR)
    if other is None:
        return fits(x, None, _per_sample_factor(thread_count()))
    if not fits(x, other, PER_SAMPLE_BACKWARD_FACTOR):
        return False
    # at more than one thread the parallel backward overtakes the serial one at a size in bytes:
    # a float64 input at half as many elements
    return x.dtype.itemsize == 4 or x.size <= SMALL_ELEMENTS * PER_SAMPLE_BACKWARD_FACTOR // 2 or thread_count() == 1


def _per_sample_factor(threads):
    """`grid_fits`' factor for an instance or group norm forward at ``threads`` threads."""
    return PER_SAMPLE_FACTOR if threads == 1 else PARALLEL_PER_SAMPLE_FACTOR


@functools.lru_cache(maxsize=256)
def constant(value, length, dtype):
    # writable like the parameters users pass (Numba compiles apart for read-only arrays); the
    # drivers never write their parameters
    return np.full(length, value, dtype)


def _flat(a, length):
    return a if a.ndim == 1 else a.reshape(length)


def _or_ones(weight, length, dtype):
    return constant(1.0, length, dtype) if weight is None else _flat(weight, length)


def _or_zeros(bias, length, dtype):
    return constant(0.0, length, dtype) if bias is None else _flat(bias, length)


def _rows(a, rows, length):
    return a if a.shape == (rows, length) else a.reshape(rows, length)


def _target(out, x):
    """``out`` if the driver can write it directly, else a new array like ``x``."""
    if out is None:
        return np.empty_like(x)
    return out if out.dtype == x.dtype and out.flags.c_contiguous else np.empty_like(x)


def _deliver(y, out):
    if out is not None and y is not out:  # an ``out`` the driver could not write
        np.copyto(out, y, casting="unsafe")
        return out
    return y


def grid_forward(x, ch, groups, over_batch, weight, bias, eps, out):
    """Batch statistics and normalization of a grid norm: (y, stats) with ``stats`` (4, S, G)
    float64 = count, mean, biased variance, rstd per group (S = 1 over the batch, else N)."""
    c = x.shape[ch]
    y = _target(out, x)
    stats = np.empty((4, 1 if over_batch else x.shape[0], groups))
    S.grid_forward_viewed(x, ch, groups, over_batch, _or_ones(weight, c, x.dtype), _or_zeros(bias, c, x.dtype), eps,
                          y, stats)
    return _deliver(y, out), stats


def grid_backward(dy, x, ch, mean, rstd, weight, over_batch, batch_stats):
    """(dx, grad_weight, grad_bias), the gradients float64 (C,), of a grid norm that normalized
    with per-group ``mean``/``rstd`` (S, G) float64."""
    c = x.shape[ch]
    dx = np.empty_like(x)
    grad_weight, grad_bias = np.empty(c), np.empty(c)
    S.grid_backward_viewed(dy, x, ch, mean, rstd, _or_ones(weight, c, x.dtype), over_batch, batch_stats, dx,
                           grad_weight, grad_bias)
    return dx, grad_weight, grad_bias


def row_forward(x, rows, length, weight, bias, eps, centered, out):
    """Layer norm (``centered``) or RMS norm of each of ``rows`` rows: (y, mean, rstd), the
    statistics float64 (rows,)."""
    y = _target(out, x)
    stats = np.empty((2, rows))
    S.norm_rows(_rows(x, rows, length), _or_ones(weight, length, x.dtype), _or_zeros(bias, length, x.dtype), eps,
                centered, _rows(y, rows, length), stats[0], stats[1])
    return _deliver(y, out), stats[0], stats[1]


def row_moments(x, rows, length):
    """Per-row (mean, biased variance), float64 (rows,)."""
    count, mean, m2 = np.empty(rows), np.empty(rows), np.empty(rows)
    S.rows_moments(_rows(x, rows, length), count, mean, m2)
    return mean, m2 / count


def row_backward(dy, x, mean, rstd, weight, centered, params=True):
    """(dx, grad_weight, grad_bias) of a row norm, the gradients float64 (L,) (None without
    ``params``: a forward with neither weight nor bias)."""
    rows = mean.size
    return _serial_row_backward(dy, x, rows, weight, mean.reshape(rows), rstd.reshape(rows), centered, params, False,
                                0.0)


def row_backward_recomputing(dy, x, rows, eps):
    """The input gradient of a layer norm without parameters over ``rows`` rows whose forward
    kept no statistics (weight standardization): recomputed row by row in the same call."""
    return _serial_row_backward(dy, x, rows, None, np.empty(rows), np.empty(rows), True, False, True, eps)[0]


def _serial_row_backward(dy, x, rows, weight, mean, rstd, centered, params, recompute, eps):
    """The serial driver's (dx, grad_weight, grad_bias) on C-contiguous ``dy`` and ``x`` seen as
    ``rows`` rows (the gradients None without ``params``); with ``recompute`` the rows' statistics
    are taken into ``mean``/``rstd`` (rows,) first.  The checked path and the lane both call it,
    with every argument given: one compiled variant."""
    length = x.size // rows
    dx = np.empty(x.shape, x.dtype)  # C order, as x (see `row_norm`)
    grad_weight, grad_bias = (np.empty(length), np.empty(length)) if params else (None, None)
    S.norm_rows_backward(_rows(dy, rows, length), _rows(x, rows, length), _or_ones(weight, length, x.dtype), mean,
                         rstd, centered, _rows(dx, rows, length), grad_weight, grad_bias, recompute, eps)
    return dx, grad_weight, grad_bias


# the dtypes of a plain call, compared by identity: NumPy keeps one instance of each native
# dtype, and a byte-swapped or otherwise unusual one takes the checked path
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_MACHINE_EPS = {_F32: float(np.finfo(_F32).eps), _F64: float(np.finfo(_F64).eps)}
_INF = float("inf")


def row_norm(input, normalized_shape, weight, bias, eps, centered, return_stats):
    """A plain layer norm (``centered``) or RMS norm in the lane, as the front returns it, or None
    where the lane does not take the call or an argument fails a check (the front then checks
    them all, and raises).

    Plain: a C-contiguous, aligned, writable NumPy input of native float32/float64 that
    `row_fits`, parameters None or writable arrays of its dtype and ``normalized_shape``, that
    shape an int or a non-empty tuple of ints, ``eps`` a float or None, no ``out``.  Of those the
    front's checks pass exactly the ones tested here, and hand them on as they came; the driver
    then compiles once per dtype (and per parameter layout), whatever the input's number of
    dimensions."""
    if type(input) is not np.ndarray or not 0 < (size := input.size) <= SMALL_ELEMENTS * ONE_THREAD_ROW_FACTOR:
        return None
    dtype = input.dtype
    # C-contiguous, aligned and writable (NumPy's "carray", one flag to read): the checks hand a
    # read-only array on as a view typed writable (``_checks.kernel_view``), so that the drivers
    # compile no read-only variant
    if dtype is not _F32 and dtype is not _F64 or not input.flags.carray:
        return None
    if eps is None:
        eps = _MACHINE_EPS[dtype]
    elif type(eps) is not float or not 0.0 <= eps < _INF:
        return None
    dims = input.shape
    # one trailing axis, the common case (an int, or a shape's last item as ``x.shape[-1:]`` gives
    # it), tested without slicing the input's shape to compare
    last = normalized_shape[0] if type(normalized_shape) is tuple and len(normalized_shape) == 1 else normalized_shape
    if type(last) is int:
        if not (dims and 0 < last == dims[-1]):
            return None
        shape = (last,)
    elif (shape := _dims(normalized_shape, size)) is None or dims[len(dims) - len(shape):] != shape:
        return None
    if weight is not None and not _plain_param(weight, dtype, shape) or bias is not None and not _plain_param(
            bias, dtype, shape):
        return None
    # `row_forward` without its steps for ``out`` and reshapes that a plain call does not need: at
    # 64 elements each costs as much as a tenth of the arithmetic
    length = shape[0] if len(shape) == 1 else math.prod(shape)
    rows = size // length
    # past the serial crossover the checked path runs the fused parallel kernel where its rows fit
    # (``CPUDevice.fused_rows``): the same kernel from here, without the few microseconds of
    # checks, key and lookup around it -- a tenth of a 64 K element call
    parallel = size > SMALL_ELEMENTS * ROW_FACTOR and (threads := thread_count()) > 1
    if parallel and (not CPUDevice.fits_fused_rows(input, rows, 1, threads) or launch_guard() is not NO_GUARD):
        return None
    y = np.empty(dims, dtype)  # C order, as the input: a third faster than ``empty_like``
    if parallel:
        stats = np.empty((3, rows))
        row_normalize_viewed(input, rows, constant(1.0, length, dtype) if weight is None else weight,
                             constant(0.0, length, dtype) if bias is None else bias, 1, 1, eps, centered,
                             CPUDevice.blocks_of(rows, threads), y, stats)
        mean, rstd = stats[0], stats[2]
    else:
        mean, rstd = np.empty(rows), np.empty(rows)
        if len(dims) == 2 and len(shape) == 1:  # (rows, L) over its last axis, the common case
            S.norm_rows(input, constant(1.0, length, dtype) if weight is None else weight,
                        constant(0.0, length, dtype) if bias is None else bias, eps, centered, y, mean, rstd)
        else:
            S.norm_rows(input.reshape(rows, length), _or_ones(weight, length, dtype), _or_zeros(bias, length, dtype),
                        eps, centered, y.reshape(rows, length), mean, rstd)
    if not return_stats:
        return y
    if input.ndim != len(shape) + 1:
        lead = input.shape[: input.ndim - len(shape)]
        mean, rstd = mean.reshape(lead), rstd.reshape(lead)
    return y, NormStats(mean, rstd, True, bias is not None, eps)


def _plain_param(param, dtype, shape):
    """A writable array of ``dtype`` and ``shape`` (writable as the input, see `row_norm`): a given
    parameter the checks hand on as it came (the callers test None first, without a call)."""
    return type(param) is np.ndarray and param.dtype is dtype and param.shape == shape and param.flags.writeable


def _dims(value, size):
    """``value`` (an int or a tuple of them) as a non-empty tuple of exact ints each in [1, size],
    or None: the checks refuse a bool or a float, and a dimension of a non-empty input of ``size``
    elements is one of those."""
    if type(value) is int:
        return (value,) if 0 < value <= size else None
    if type(value) is not tuple or not value:
        return None
    for item in value:  # a plain loop: on the one or two items of a shape, half a generator's time
        if type(item) is not int or not 0 < item <= size:
            return None
    return value


def _grid_axis(channel_axis, ndim):
    """``channel_axis`` of a grid norm as an index in [1, ndim), or None where the checks would
    refuse it (an exact int only: they refuse a bool)."""
    if type(channel_axis) is not int:
        return None
    ch = channel_axis + ndim if channel_axis < 0 else channel_axis
    return ch if 0 < ch < ndim else None


def _grid_groups(groups, channels):
    """A group norm's ``groups`` that divides ``channels`` (None: one per channel), or None where
    the checks would refuse it."""
    if groups is None:
        return channels
    return groups if type(groups) is int and 0 < groups <= channels and not channels % groups else None


def grid_norm(input, groups, weight, bias, eps, channel_axis, over_batch, return_stats):
    """A plain forward with batch statistics of batch norm (``over_batch``), instance norm
    (``groups`` None: one per channel) or group norm in the lane, as the front returns it, or
    None where the lane does not take the call or an argument fails a check (as `row_norm`; the
    callers leave out running statistics, ``out`` and ``training=False``)."""
    factor = OVER_BATCH_FACTOR if over_batch else FUSED_LANE_FACTOR
    if type(input) is not np.ndarray or not 0 < (size := input.size) <= SMALL_ELEMENTS * factor:
        return None
    dtype = input.dtype
    if dtype is not _F32 and dtype is not _F64 or not input.flags.carray:  # as `row_norm`'s
        return None
    if type(eps) is not float or not 0.0 <= eps < _INF:
        return None
    # the tests of `_grid_axis` and `_grid_groups` written out: on 64 elements a call costs a
    # twentieth of the forward
    ndim = input.ndim
    if type(channel_axis) is not int or not 0 < (ch := channel_axis + ndim if channel_axis < 0 else channel_axis) < ndim:
        return None
    shape = input.shape
    n, c = shape[0], shape[ch]
    if weight is not None and not _plain_param(weight, dtype, (c,)) or bias is not None and not _plain_param(
            bias, dtype, (c,)):
        return None
    if groups is None:  # batch and instance norm refuse a single value per statistic
        groups, least = c, 2
    elif type(groups) is not int or not 0 < groups <= c or c % groups:
        return None
    else:
        least = 1
    if size // (c if over_batch else n * c) * (c // groups) < least:
        return None
    if not over_batch and size > SMALL_ELEMENTS * PARALLEL_PER_SAMPLE_FACTOR and size > SMALL_ELEMENTS * (
            _per_sample_factor(threads := thread_count())):
        # past the serial crossover (`grid_fits`), the fused row kernel the checked path runs at
        # more than one thread (see `row_norm`), on channels-first input; other calls go to the front
        if threads == 1 or not CPUDevice.fits_grid_rows(input, ch, groups, False, threads) or (
                launch_guard() is not NO_GUARD):
            return None
        rows = n * groups
        y = np.empty(shape, dtype)
        stats = np.empty((3, rows))
        row_normalize_viewed(input, rows, constant(1.0, c, dtype) if weight is None else weight,
                             constant(0.0, c, dtype) if bias is None else bias, groups, size // (n * c), eps, True,
                             CPUDevice.blocks_of(rows, threads), y, stats)
        if not return_stats:
            return y
        return y, NormStats(stats[0].reshape(n, groups), stats[2].reshape(n, groups), True, bias is not None, eps)
    # `grid_forward` without its steps for ``out``
    y = np.empty(shape, dtype)  # C order, as the input (see `row_norm`)
    stats = np.empty((4, 1 if over_batch else n, groups))
    S.grid_forward_viewed(input, ch, groups, over_batch, constant(1.0, c, dtype) if weight is None else weight,
                          constant(0.0, c, dtype) if bias is None else bias, eps, y, stats)
    if not return_stats:
        return y
    if over_batch:
        return y, NormStats(stats[1, 0], stats[3, 0], True, bias is not None, eps)
    return y, NormStats(stats[1], stats[3], True, bias is not None, eps)


def grid_grads(grad_output, input, stats, groups, weight, channel_axis, over_batch):
    """A plain backward of batch norm (``over_batch``), instance norm (``groups`` None) or group
    norm in the lane, as the front returns it, or None (as `grid_norm`).

    Plain: ``input`` and ``grad_output`` as `grid_norm`'s input, of one shape and dtype, within
    `grid_fits`; ``stats`` a forward's `NormStats` as the forwards make them (writable C-contiguous
    float64 ``mean`` and ``rstd`` of the shape the checks require, exact bools); ``weight`` None or
    plain.  The checks hand exactly these on to the same driver, copying the statistics."""
    if (dtype := _backward_dtype(grad_output, input)) is None or not grid_fits(input, grad_output, over_batch):
        return None
    shape = input.shape
    if (ch := _grid_axis(channel_axis, len(shape))) is None:
        return None
    c = shape[ch]
    if (groups := _grid_groups(groups, c)) is None or weight is not None and not _plain_param(weight, dtype, (c,)):
        return None
    if not _plain_stats(stats, (c,) if over_batch else (shape[0], groups)):
        return None
    dx = np.empty(shape, dtype)
    grad_weight, grad_bias = np.empty(c), np.empty(c)
    S.grid_backward_viewed(grad_output, input, ch, stats.mean.reshape(-1, groups), stats.rstd.reshape(-1, groups),
                           constant(1.0, c, dtype) if weight is None else weight, over_batch, stats.batch_stats, dx,
                           grad_weight, grad_bias)
    return Grads(dx, None if weight is None else _delivered(grad_weight, (c,), dtype),
                 _delivered(grad_bias, (c,), dtype) if stats.has_bias else None)


def _backward_dtype(grad_output, input):
    """The dtype of a plain backward's ``input`` and ``grad_output`` -- NumPy arrays of one shape
    and one dtype, as `row_norm`'s input; None for any other."""
    if type(input) is not np.ndarray or type(grad_output) is not np.ndarray:
        return None
    dtype = input.dtype
    if dtype is not _F32 and dtype is not _F64 or grad_output.dtype is not dtype or grad_output.shape != input.shape:
        return None
    return dtype if input.flags.carray and grad_output.flags.carray else None


def _plain_stats(stats, shape):
    """Whether ``stats`` is a `NormStats` as the forwards make it: ``mean`` and ``rstd`` writable
    C-contiguous float64 arrays of ``shape``, exact bools."""
    return (type(stats) is NormStats and _plain_stat(stats.mean, shape) and _plain_stat(stats.rstd, shape)
            and type(stats.batch_stats) is bool and type(stats.has_bias) is bool)


def _delivered(grad, shape, dtype):
    """A float64 parameter gradient of ``shape`` in the input's dtype, as the checked path delivers it."""
    grad = grad if grad.shape == shape else grad.reshape(shape)
    return grad if dtype is _F64 else grad.astype(dtype)


def _plain_stat(value, shape):
    """A forward's statistic as the forwards make it: a writable C-contiguous float64 array of
    ``shape``."""
    return type(value) is np.ndarray and value.dtype is _F64 and value.shape == shape and value.flags.carray


def row_grads(grad_output, input, stats, normalized_shape, weight, centered):
    """A plain backward of layer norm (``centered``) or RMS norm in the lane, as the front returns
    it, or None (as `row_norm`).

    Plain: ``input`` and ``grad_output`` as `row_norm`'s input, of one shape and dtype;
    ``normalized_shape`` and ``weight`` as `row_norm` takes them; ``stats`` as `grid_grads` takes
    them, of the input's leading shape.  Past the serial crossover at more than one thread the
    lane runs the fused parallel kernel the checked path runs, as `row_norm` does."""
    if (dtype := _backward_dtype(grad_output, input)) is None or not (
            0 < (size := input.size) <= SMALL_ELEMENTS * ONE_THREAD_ROW_FACTOR):
        return None
    dims = input.shape
    if (shape := _dims(normalized_shape, size)) is None or dims[len(dims) - len(shape):] != shape:
        return None
    if weight is not None and not _plain_param(weight, dtype, shape) or not _plain_stats(
            stats, dims[: len(dims) - len(shape)]):
        return None
    has_bias = stats.has_bias
    if (result := _row_input_grad(grad_output, input, stats.mean.size, size, weight, stats, centered, has_bias,
                                  0.0)) is None:
        return None
    dx, grad_weight, grad_bias = result
    return Grads(dx, None if weight is None else _delivered(grad_weight, shape, dtype),
                 _delivered(grad_bias, shape, dtype) if has_bias else None)


def weight_grads(grad_output, weight, eps):
    """A plain `weight_standardization_backward` in the lane (its statistics recomputed, one row
    per output channel), as the front returns it, or None (as `row_grads`; ``eps`` a float)."""
    if (dtype := _backward_dtype(grad_output, weight)) is None or type(eps) is not float or not 0.0 <= eps < _INF:
        return None
    if weight.ndim < 2 or not 0 < (size := weight.size) <= SMALL_ELEMENTS * ONE_THREAD_ROW_FACTOR:
        return None
    result = _row_input_grad(grad_output, weight, weight.shape[0], size, None, None, True, False, eps)
    return None if result is None else result[0]


def _row_input_grad(dy, x, rows, size, weight, stats, centered, has_bias, eps):
    """(dx, grad_weight, grad_bias) of a plain row norm backward over ``rows`` rows (the parameter
    gradients float64, None without parameters): serially, or past the serial crossover at more
    than one thread the fused parallel kernel (`CPUDevice.fused_row_backward`) where its rows fit
    and the threading layer needs no guard, else None.  Without ``stats`` (weight
    standardization) each row's statistics are recomputed with ``eps``."""
    length = size // rows
    recompute = stats is None
    mean, rstd = (np.empty(rows), np.empty(rows)) if recompute else (stats.mean.reshape(rows), stats.rstd.reshape(rows))
    if size > SMALL_ELEMENTS * ROW_FACTOR and (threads := thread_count()) > 1:
        if not CPUDevice.fits_fused_rows(x, rows, 1, threads) or launch_guard() is not NO_GUARD:
            return None
        dx2, grad_weight, grad_bias = CPUDevice.fused_row_backward(dy.reshape(rows, length), x.reshape(rows, length),
                                                                   weight, mean, rstd, centered, has_bias, recompute,
                                                                   eps)
        return dx2.reshape(x.shape), grad_weight, grad_bias
    return _serial_row_backward(dy, x, rows, weight, mean, rstd, centered, weight is not None or has_bias, recompute,
                                eps)
