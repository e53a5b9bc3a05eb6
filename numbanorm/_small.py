"""Small inputs: the whole pass in one compiled, serial call.

Below ``SMALL_ELEMENTS`` the work of a call is a few microseconds, less than what the general
path spends around it: planning the view, a parallel launch per kernel, merging partial results
in Python between them.  There the front hands the checked arguments to one of the serial
drivers of ``_serial`` (the kernels behind the ``@njit`` overloads, with ``_cpu``'s numerical
scheme), on the C-contiguous input seen as ``(N, P, C, Q)`` (grid norms) or ``(R, L)`` (row
norms).  The CPU device (``_cpu_pipelines``) asks `row_fits` or `grid_fits` first and otherwise
takes its fused or planned kernels.

`RowCall` and `GridCall` are the lane's prepared calls (see ``_prepared``): a repeated forward
whose checks are already done, straight to its driver.

Absent parameters are passed as shared ones and zeros rather than None: scaling by 1
and adding 0 change no bit, and the drivers then compile once per dtype instead of once per
combination of absent arguments.
"""

import functools
import math
from typing import NamedTuple

import numpy as np

from . import _prepared
from . import _serial as S
from ._config import SMALL_ELEMENTS
from ._cpu import thread_count

# batch norm's planned path merges a partial state per sample and channel, and per piece, so on
# small inputs it costs several times more than the other grid norms': the lane pays off on inputs
# this many times larger there
OVER_BATCH_FACTOR = 16
# instance and group norm's fused kernels give each task whole (sample, group) rows or samples,
# few and short at these sizes: the lane's forward keeps to inputs this many times larger (above
# them the fused forward wins at two threads, and its channels-last statistics, on slabs folded
# wider, sum shorter float32 chains: a few times more exact next to outliers) ...
PER_SAMPLE_FACTOR = 4
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
    return fits(x, other, PER_SAMPLE_FACTOR if other is None else PER_SAMPLE_BACKWARD_FACTOR)


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


@functools.lru_cache(maxsize=256)
def grid_shape(shape, ch):
    """(N, P, C, Q): the batch axis, the axes before the channels, the channels, the axes after."""
    return shape[0], math.prod(shape[1:ch]), shape[ch], math.prod(shape[ch + 1:])


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
    shape4 = grid_shape(x.shape, ch)
    c = shape4[2]
    y = _target(out, x)
    stats = np.empty((4, 1 if over_batch else shape4[0], groups))
    S.grid_forward(x.reshape(shape4), groups, over_batch, _or_ones(weight, c, x.dtype), _or_zeros(bias, c, x.dtype),
                   eps, y.reshape(shape4), stats)
    return _deliver(y, out), stats


def grid_backward(dy, x, ch, mean, rstd, weight, over_batch, batch_stats):
    """(dx, grad_weight, grad_bias), the gradients float64 (C,), of a grid norm that normalized
    with per-group ``mean``/``rstd`` (S, G) float64."""
    shape4 = grid_shape(x.shape, ch)
    c = shape4[2]
    dx = np.empty_like(x)
    grad_weight, grad_bias = np.empty(c), np.empty(c)
    S.grid_backward(dy.reshape(shape4), x.reshape(shape4), mean, rstd, _or_ones(weight, c, x.dtype), over_batch,
                    batch_stats, dx.reshape(shape4), grad_weight, grad_bias)
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
    length = x.size // rows
    dx = np.empty_like(x)
    grad_weight, grad_bias = (np.empty(length), np.empty(length)) if params else (None, None)
    S.norm_rows_backward(_rows(dy, rows, length), _rows(x, rows, length), _or_ones(weight, length, x.dtype),
                         mean.reshape(rows), rstd.reshape(rows), centered, _rows(dx, rows, length), grad_weight,
                         grad_bias)
    return dx, grad_weight, grad_bias


def row_backward_recomputing(dy, x, rows, eps):
    """The input gradient of a layer norm without parameters over ``rows`` rows whose forward
    kept no statistics (weight standardization): recomputed row by row in the same call."""
    length = x.size // rows
    dx = np.empty_like(x)
    S.norm_rows_backward(_rows(dy, rows, length), _rows(x, rows, length), constant(1.0, length, x.dtype),
                         np.empty(rows), np.empty(rows), True, _rows(dx, rows, length), None, None, True, eps)
    return dx


class RowCall(NamedTuple):
    """A prepared row norm: ``(y, mean, rstd)`` of x's ``rows`` rows of ``length``, the
    statistics shaped ``lead`` (the input's leading shape); ``ones``/``zeros`` stand in for an
    absent weight/bias."""

    rows: int
    length: int
    lead: tuple
    eps: float
    centered: bool
    ones: np.ndarray
    zeros: np.ndarray
    two_d: bool
    kernel: "_prepared.Kernel"  # S.norm_rows

    @classmethod
    def of(cls, x, length, lead, eps, centered):
        return cls(x.size // length, length, lead, eps, centered, constant(1.0, length, x.dtype),
                   constant(0.0, length, x.dtype), x.ndim == 2 and len(lead) == 1, _prepared.Kernel(S.norm_rows))

    def __call__(self, x, weight, bias):
        rows, length, lead, eps, centered, ones, zeros, two_d, kernel = self
        # `row_forward` without its checks of ``out`` and stand-ins for absent parameters; x is
        # C-contiguous (the signature pins its strides), so its rows are a reshape
        y = np.empty_like(x)
        stats = np.empty((2, rows))
        mean, rstd = stats[0], stats[1]  # each view made once: at a few rows, these cost more than the arithmetic
        if two_d:  # x (rows, length) normalized over its last axis, the common case: no reshapes
            kernel.run(x, ones if weight is None else weight, zeros if bias is None else bias, eps, centered, y,
                       mean, rstd)
            return y, mean, rstd
        kernel.run(x.reshape(rows, length), ones if weight is None else weight.reshape(length),
                   zeros if bias is None else bias.reshape(length), eps, centered, y.reshape(rows, length), mean,
                   rstd)
        return y, mean.reshape(lead), rstd.reshape(lead)


class GridCall(NamedTuple):
    """A prepared grid norm with batch statistics: ``(y, mean, rstd)``, the statistics (C,) over
    the batch, else (N, G); ``ones``/``zeros`` stand in for an absent weight/bias."""

    shape4: tuple
    groups: int
    over_batch: bool
    eps: float
    ones: np.ndarray
    zeros: np.ndarray
    kernel: "_prepared.Kernel"  # S.grid_forward

    @classmethod
    def of(cls, x, ch, groups, over_batch, eps):
        shape4 = grid_shape(x.shape, ch)
        c = shape4[2]
        return cls(shape4, groups, over_batch, eps, constant(1.0, c, x.dtype), constant(0.0, c, x.dtype),
                   _prepared.Kernel(S.grid_forward))

    def __call__(self, x, weight, bias):
        shape4, groups, over_batch, eps, ones, zeros, kernel = self
        y = np.empty_like(x)
        stats = np.empty((4, 1 if over_batch else shape4[0], groups))
        kernel.run(x.reshape(shape4), groups, over_batch, ones if weight is None else weight,
                   zeros if bias is None else bias, eps, y.reshape(shape4), stats)
        if over_batch:
            return y, stats[1, 0], stats[3, 0]
        return y, stats[1], stats[3]
