"""Axis and layout planning: map any strided array onto the kernels' rows or cols view.

A plan takes an array and a role per axis -- *kept* (statistics or coefficients vary along it)
or *reduced* (they do not) -- and finds the cheapest view the kernels understand:

1. the axes are put in memory order (largest stride first) and reversed where their stride is
   negative, so transposes, Fortran order, channels-last strides and negative steps all become
   plain C order without copying;
2. only if that view still has gaps (a strided slice) is it copied, once, into C order;
3. neighbouring axes of the same role are merged, leaving alternating runs of kept and reduced
   axes.  If the last run is reduced, the kernels see rows ``(R, L)`` with one result per row;
   if it is kept, they see cols ``(A, B, C)``, reduced over ``B``, with a result per ``(a, c)``.

A result "per row" or "per (a, c)" is per *outer* index: every axis except the one run the kernel
reduced.  ``to_outer`` / ``from_outer`` move small coefficient and statistic arrays between the
caller's axis order and that kernel order; results over reduced axes still left in the outer
index are merged by the caller (``kept_cells`` names the result cell of every kernel state).
"""

import math
import functools

import numpy as np

from ._config import MIN_PIECE
from ._cpu import STREAM_ALIGN, STREAM_BYTES, thread_count


class Plan:
    """How one array (and any array laid out like it) is handed to the kernels."""

    def __init__(self, shape, strides, kept, threads):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)
        self.kept = tuple(bool(k) for k in kept)
        # axes of length 1 carry nothing; the rest go in memory order, negative strides flipped
        live = [i for i in range(self.ndim) if self.shape[i] != 1]
        self.order = sorted(live, key=lambda i: -abs(strides[i]))
        self.flips = tuple(i for i in live if strides[i] < 0)
        self.dead = [i for i in range(self.ndim) if self.shape[i] == 1]

        runs = []  # [kept flag, [axes]] in memory order
        for axis in self.order:
            if runs and runs[-1][0] == self.kept[axis]:
                runs[-1][1].append(axis)
            else:
                runs.append([self.kept[axis], [axis]])
        if not any(not kept_run for kept_run, _ in runs):
            runs.append([False, []])  # nothing to reduce: rows of length 1
        if runs[-1][0]:
            self.kind = "cols"  # a kept run at the end: reduce over the run before it
            reduced_run = len(runs) - 2
        else:
            self.kind = "rows"
            reduced_run = len(runs) - 1
        size = lambda axes: math.prod(self.shape[i] for i in axes)
        self.reduced_axes = tuple(runs[reduced_run][1])
        self.outer_axes = [a for r in runs[:reduced_run] for a in r[1]]
        self.inner_axes = [a for r in runs[reduced_run + 1:] for a in r[1]]
        outer, inner = size(self.outer_axes), size(self.inner_axes)
        length = size(self.reduced_axes)
        self.fold = 1
        if self.kind == "rows":
            self.view_shape = (outer, length)
        else:
            self.fold = fold_for(length, inner)
            self.view_shape = (outer, length // self.fold, inner * self.fold)
        # many tasks a thread, for balance (uneven spans would leave a thread idle at the end),
        # but each task gets at least MIN_PIECE elements
        wanted = max(1, -(-32 * threads // max(outer, 1)))
        per_piece = max(1, MIN_PIECE // max(1, inner * self.fold))
        self.pieces = int(max(1, min(wanted, length // self.fold // per_piece)))
        self._inverse_order = tuple(np.argsort(self.order + self.dead))
        self._fold_index = np.tile(np.arange(inner), self.fold)  # column j holds channel j % C
        self._memos = {}
        self._index_maps()

    @classmethod
    def of(cls, x, kept):
        """The plan for ``x`` (cached: a training loop plans the same few layouts every step).

        An empty array is planned as C order: NumPy calls every empty array contiguous, so its
        strides, whatever they are, say nothing of a layout the kernels could take."""
        strides = x.strides if x.size else _c_strides(x.shape)
        return _cached_plan(tuple(x.shape), tuple(strides), tuple(bool(k) for k in kept), thread_count())

    # -- full-size arrays -------------------------------------------------------------------
    def _permuted(self, a):
        for axis in self.flips:
            a = np.flip(a, axis)
        return a.transpose(self.order + self.dead)

    def view(self, a, copy_ok=True):
        """``a`` (shaped like the planned array) as the kernel view; a copy if it has gaps."""
        p = self._permuted(a)
        if not p.flags.c_contiguous:
            if not copy_ok:
                return None
            p = np.ascontiguousarray(p)
        return p.reshape(self.view_shape)

    def empty(self, dtype):
        """A new array for a result: C order in the kernel view, returned with its user view."""
        buf = aligned_empty(self.view_shape, dtype)
        return buf, self.unview(buf)

    def unview(self, buf):
        p_shape = [self.shape[i] for i in self.order + self.dead]
        a = buf.reshape(p_shape).transpose(self._inverse_order)
        for axis in self.flips:
            a = np.flip(a, axis)
        return a

    def writable_view(self, out):
        """The kernel view of a caller's ``out`` array, or None if it is not laid out like ours."""
        return self.view(out, copy_ok=False)

    # -- small per-outer-index arrays -------------------------------------------------------
    def _index_maps(self):
        """Precomputed moves between the caller's keepdims order and the kernel order: the
        kernels' outer index ``k`` is flat index ``gather[k]`` of a C-ordered ``small_shape``
        array (None when the two orders agree)."""
        axes = self.outer_axes + self.inner_axes
        self.small_shape = tuple(self.shape[i] if i in axes else 1 for i in range(self.ndim))
        self.outer_shape = (self.view_shape[:1] if self.kind == "rows"
                            else (self.view_shape[0], self.view_shape[2] // self.fold))
        # the coefficients the kernels take: (R,) or (A, fold*C), each channel fold times
        self.coef_shape = tuple(self.view_shape[:1] if self.kind == "rows"
                                else (self.view_shape[0], self.view_shape[2]))
        index = np.arange(math.prod(self.small_shape)).reshape(self.small_shape)
        for axis in self.flips:
            if axis in axes:
                index = np.flip(index, axis)
        rest = [i for i in range(self.ndim) if i not in axes]
        gather = index.transpose(axes + rest).reshape(-1)
        self._gather = None if np.array_equal(gather, np.arange(gather.size)) else gather

    def to_outer(self, coef, dtype):
        """An array broadcastable to the planned shape, constant along the reduced run, as the
        kernels index it: (R,) for rows, (A, C) for cols, of ``dtype``; a folded plan's comes back
        Fortran-ordered (its channel copies are gathered along C)."""
        full = np.empty(self.small_shape, dtype)
        full[...] = coef
        flat = full.reshape(-1)
        if self._gather is not None:
            flat = flat.take(self._gather)
        coef = flat.reshape(self.outer_shape)
        return coef if self.fold == 1 else coef[:, self._fold_index]

    def from_outer(self, result):
        """Kernel-ordered results (R,) or (A, C) -- folded results already merged, see
        ``unfold`` -- back in the caller's axis order, with length 1
        along the reduced run and the length-1 axes."""
        flat = np.asarray(result).reshape(-1)
        if self._gather is not None:
            placed = np.empty_like(flat)
            placed[self._gather] = flat
            flat = placed
        return flat.reshape(self.small_shape)
    def cells(self, ch):
        """For (sample, channel) grid plans: the sample and the channel index of each kernel
        outer index, two int arrays of ``prod(outer_shape)`` (cached on the plan)."""
        def make():
            flat = np.arange(math.prod(self.outer_shape)) if self._gather is None else self._gather
            where = np.unravel_index(flat, self.small_shape)
            return where[0], where[ch]
        return self.memo(("cells", ch), make)

    def memo(self, key, make):
        """``make()``, made once per plan and ``key``: small index arrays derived from the plan
        (plans are cached, see ``of``, so a training loop makes them once)."""
        if key not in self._memos:
            self._memos[key] = make()
        return self._memos[key]

    def kernel_cells(self, ch):
        """``cells`` laid out like the coefficients the kernels take (``coef_shape``): a folded
        column j holds channel j % C (cached on the plan)."""
        def make():
            where = [a.reshape(self.outer_shape) for a in self.cells(ch)]
            return tuple(np.ascontiguousarray(a if self.fold == 1 else a[:, self._fold_index]) for a in where)
        return self.memo(("kernel", ch), make)

    def state_index(self):
        """For each (outer index, column) of the moments kernels' (K, P, W) states, the flat
        kernel-order outer index it belongs to: (K, W) (folded copies of a channel share one)."""
        def make():
            outer = math.prod(self.outer_shape)
            if self.kind == "rows":
                return np.arange(outer).reshape(outer, 1)
            a, c = self.outer_shape
            return np.arange(a)[:, None] * c + self._fold_index[None, :]
        return self.memo("state_index", make)

    def kept_cells(self, kept):
        """For each (outer index, column) of the moments kernels' states, its flat index in a
        keepdims result with length 1 along every axis not ``kept`` (a superset of the kernel
        run): (K, W)."""
        def make():
            index = self.state_index()
            small = (index if self._gather is None else self._gather[index]).reshape(-1)
            # by hand: np.ravel_multi_index returned wrong indices past 8192 elements of
            # (N, 1)-shaped input (NumPy 2.4)
            cell = np.zeros_like(small)
            step = 1
            for n, k in zip(reversed(self.small_shape), reversed(kept)):
                if k:
                    cell += small % n * step
                    step *= n
                small = small // n
            return cell.reshape(index.shape)
        return self.memo(("kept_cells", tuple(kept)), make)

    def unfold(self, states):
        """Per-(a, piece, column) results of a cols kernel, (A, pieces, fold*C), as
        (A, pieces*fold, C): the fold's copies of a channel become more pieces to merge."""
        outer, parts, width = states.shape
        return states.reshape(outer, parts * self.fold, width // self.fold)


# Channels-last data with few channels leave the cols kernels' vector loops only C long.  Such
# a (A, B, C) view is read as (A, B/k, k*C) instead: k consecutive rows side by side, each
# channel k columns to be merged afterwards, so the vector loops stay long.
FOLD_WIDTH = 64
FOLDED_ROWS = 8


def aligned_empty(shape, dtype):
    """``np.empty(shape, dtype)``, starting on a STREAM_ALIGN boundary when it is large enough for
    the kernels to stream into it (see ``_cpu._streams``); NumPy aligns only to 16 bytes."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < STREAM_BYTES:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + STREAM_ALIGN, np.uint8)
    start = -raw.ctypes.data % STREAM_ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def fold_for(length, width):
    """The most rows, up to FOLD_WIDTH // width, that divide ``length`` and leave at least
    FOLDED_ROWS; 1 for wide rows.  (The per-(a, c) coefficients and states grow with the fold: a
    short run folded flat would make them as large as the data.)"""
    for k in range(min(FOLD_WIDTH // max(width, 1), length // FOLDED_ROWS), 1, -1):
        if length % k == 0:
            return k
    return 1


def _c_strides(shape):
    """Strides, in elements, of a C-ordered array of ``shape`` (only their order matters)."""
    return tuple(math.prod(max(n, 1) for n in shape[i + 1:]) for i in range(len(shape)))


@functools.lru_cache(maxsize=512)
def _cached_plan(shape, strides, kept, threads):
    return Plan(shape, strides, kept, threads)
