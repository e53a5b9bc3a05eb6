"""Cases, references and comparisons for the differential tests (``test_differential.py``).

A `Case` is one forward call of a normalization and the backward of its result: the op and its
parameters, the data (from a seed, an offset and a scale), the memory layout of every full-size
array and the engine's configuration.  `cases()` draws them, one strategy per concern.

`reference()` computes what the calls must return, in float64 from the definitions, written once
for every op: each normalizes by a softmax mixture of *terms*, a term being the mean and
(biased) variance over some axes of a canonical ``(N, G, C/G, S)`` view of the input (batch,
instance, group and switchable norm) or ``(R, 1, 1, L)`` view (layer and RMS norm), or running
statistics held constant.  `torch_reference()` asks PyTorch's autograd in float64.

Every reference value comes with two *magnitudes*: its formula evaluated on absolute values
(the running-error bound), with the deviations ``x - mean`` as ``|x - mean|`` and as
``|x| + |mean|``.  A result may differ from the reference by some ulps of its precision times the
first (so an input gradient that cancels to nearly nothing, as for two-element instances, is
held to the digits the computation can keep, and data far from zero to as many digits as data
near it) plus some float64 ulps times the second (the float64 statistics' rounding); see
`excess`.
"""

import contextlib
import dataclasses
import functools
import math
from typing import Optional

import numba
import numpy as np
from hypothesis import strategies as st
from numba.core.registry import CPUDispatcher

import numbanorm as nn
from numbanorm import _cpu, _plan, _small

GRID = ("batch", "instance", "group", "switchable")  # (N, C, *spatial), any channel axis but 0
ROWS = ("layer", "rms")  # over the trailing normalized_shape
FAMILIES = GRID + ROWS
FLOATS = ("float16", "float32", "float64")
DEFAULT_MIN_PIECE = _plan.MIN_PIECE
DEFAULT_SMALL_ELEMENTS = _small.SMALL_ELEMENTS


# -- tolerances --------------------------------------------------------------------------------

# a correct result stays within ULPS unit roundoffs of its computing precision, relative to its
# magnitude (measured on 14,000 cases: within 3.2; float32 backward on 1e4 + N(0, 1) before its
# fix: 110)
ULPS = 16


def tolerance(dtype):
    """Error allowed to a result of ``dtype``, relative to its magnitude by deviations: the
    computing precision's (float16 is computed in float32, then rounded once)."""
    dtype = np.dtype(dtype)
    compute = np.float64 if dtype == np.float64 else np.float32
    return ULPS * float(np.finfo(compute).eps) + (float(np.finfo(dtype).eps) if dtype == np.float16 else 0.0)


def excess(actual, expected, magnitudes, dtype, slack=0.0):
    """``max|actual - expected|`` as a fraction of what is allowed: `tolerance` of the
    magnitude by deviations, plus float64's of the magnitude by operands (statistics are
    float64, and a mean of 1e4 + N(0, 1e-2) rounds at 1e-12, a millionth of the spread), plus
    the smallest normal number of ``dtype`` (a float32 running mean updated by 1e-219 stays 0);
    ``slack`` more of the magnitude by deviations for an oracle's own error."""
    by_deviations, by_operands = (float(np.max(m, initial=0.0)) for m in magnitudes)
    allowed = ((tolerance(dtype) + slack) * by_deviations + ULPS * float(np.finfo(np.float64).eps) * by_operands
               + float(np.finfo(dtype).tiny))
    err = float(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)).max(initial=0.0))
    return err / allowed, err


def assert_close(what, actual, expected, magnitudes, dtype, slack=0.0):
    """``actual`` has the expected shape, is finite and within what `excess` allows."""
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected), f"{what}: shape {actual.shape}, expected {np.shape(expected)}"
    assert np.isfinite(actual.astype(np.float64)).all(), f"{what}: non-finite values"
    ratio, err = excess(actual, expected, magnitudes, dtype, slack)
    assert ratio <= 1, (f"{what}: max error {err:.3g} is {ratio:.3g} times the allowed {err / ratio:.3g} "
                        f"({tolerance(dtype):.2g} of the magnitude {np.max(magnitudes[0], initial=0):.3g})")


# -- the engine's configuration ------------------------------------------------------------------

@contextlib.contextmanager
def engine(min_piece, threads):
    """Run with ``MIN_PIECE`` = ``min_piece`` (what NUMBANORM_MIN_PIECE sets at import: the fewest
    elements a parallel task takes; small, it splits small arrays into pieces merged like those of
    large ones) and ``threads`` Numba threads.  Plans are cached by shape, strides and threads
    but not MIN_PIECE, so the cache is cleared on the way in and out.  With the default
    ``min_piece`` and one thread small inputs take the small lane (``_small``), as users' do;
    otherwise the lane is off, so that small arrays reach the fused and planned kernels."""
    old_threads = numba.get_num_threads()
    _small.SMALL_ELEMENTS = DEFAULT_SMALL_ELEMENTS if (min_piece, threads) == (DEFAULT_MIN_PIECE, 1) else 0
    _plan.MIN_PIECE = min_piece
    _plan._cached_plan.cache_clear()
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(old_threads)
        _plan.MIN_PIECE = DEFAULT_MIN_PIECE
        _small.SMALL_ELEMENTS = DEFAULT_SMALL_ELEMENTS
        _plan._cached_plan.cache_clear()


@functools.lru_cache(maxsize=None)
def engines():
    """(min_piece, threads): the default or a few elements a piece; one thread or more."""
    most = numba.config.NUMBA_NUM_THREADS
    return st.tuples(st.sampled_from([DEFAULT_MIN_PIECE, 1, 3, 64]), st.sampled_from(sorted({1, min(2, most), most})))


# -- which paths a call takes -------------------------------------------------------------------------

# the parallel kernels: the fused row and slab normalizations and their backwards, and the planned
# moments/affine/gradient kernels of the generic path
KERNELS = tuple(sorted(name for name, f in vars(_cpu).items() if not name.startswith("_")
                       and isinstance(f, CPUDispatcher) and f.targetoptions.get("parallel")))
# the planned grid drivers run their kernels from compiled code, where a spy cannot replace them: a
# driver's call stands for the kernels its view's kind runs (rows: 2-D, cols: 3-D)
DRIVERS = {"grid_normalize": {2: ("row_moments", "row_affine"), 3: ("col_moments", "col_affine")},
           "grid_normalize_backward": {2: ("row_grad_sums", "row_input_grad"), 3: ("col_grad_sums", "col_input_grad")}}
SMALL_LANE = ("grid_forward", "grid_backward", "row_forward", "row_backward")  # _small's entries
PATHS = KERNELS + ("long-row", "plan-copy", "fold", "pieces", "small-lane")


@contextlib.contextmanager
def paths():
    """Collects the paths the calls inside take: the `KERNELS` run, ``long-row`` (a row
    kernel's rows longer than one exact chunk), and of the plans made, ``plan-copy`` (a layout
    with gaps, copied), ``fold`` (few channels read rows side by side) and ``pieces`` (a
    reduction split in pieces) and ``small-lane`` (one serial call, ``_small``)."""
    seen = set()
    driven = {k for kinds in DRIVERS.values() for names in kinds.values() for k in names}
    kernels = {name: getattr(_cpu, name) for name in KERNELS + tuple(DRIVERS) if name not in driven}
    lane = {name: getattr(_small, name) for name in SMALL_LANE}
    view, of = _plan.Plan.view, _plan.Plan.__dict__["of"]

    def spy(name, kernel):
        def run(*args):
            seen.update(DRIVERS[name][args[0].ndim] if name in DRIVERS else (name,))
            if not name.startswith("col") and args[0].ndim == 2 and args[0].shape[1] > _cpu.ROW_CHUNK:
                seen.add("long-row")
            return kernel(*args)
        return run

    def spied_view(plan, a, copy_ok=True):
        result = view(plan, a, copy_ok)
        if result is not None and a.size and not np.shares_memory(result, a):
            seen.add("plan-copy")
        return result

    def spied_of(cls, x, kept):
        plan = of.__func__(cls, x, kept)
        seen.update(name for name, used in (("fold", plan.fold > 1), ("pieces", plan.pieces > 1)) if used)
        return plan

    def spied_lane(entry):
        def run(*args):
            seen.add("small-lane")
            return entry(*args)
        return run

    try:
        for name, kernel in kernels.items():
            setattr(_cpu, name, spy(name, kernel))
        for name, entry in lane.items():
            setattr(_small, name, spied_lane(entry))
        _plan.Plan.view, _plan.Plan.of = spied_view, classmethod(spied_of)
        yield seen
    finally:
        for name, kernel in kernels.items():
            setattr(_cpu, name, kernel)
        for name, entry in lane.items():
            setattr(_small, name, entry)
        _plan.Plan.view, _plan.Plan.of = view, of


# -- memory layouts ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """Where an array's values lie: its axes in memory ``order`` (outermost first: C order is
    0, 1, ..., Fortran order the reverse, channels-last strides for (N, C, H, W) 0, 2, 3, 1),
    the axes in ``flips`` stored backwards (negative strides), ``step`` an axis read with step 2
    from a buffer twice as long, ``readonly``."""

    order: tuple
    flips: tuple = ()
    step: Optional[int] = None
    readonly: bool = False

    def apply(self, a):
        """A new array holding ``a``'s values in this layout (an empty one keeps the strides it
        would have if it were not empty, as a slice ``[:0]`` does)."""
        shape = list(a.shape)
        if self.step is not None:
            shape[self.step] *= 2
        memory = np.zeros([max(shape[i], 1) for i in self.order], a.dtype)
        view = memory.transpose(np.argsort(self.order))[tuple(slice(0, d) for d in shape) + (Ellipsis,)]
        if self.step is not None:
            view = view[(slice(None),) * self.step + (slice(None, None, 2),)]
        for axis in self.flips:
            view = np.flip(view, axis)
        view[...] = a
        view.flags.writeable = not self.readonly
        return view

    def __repr__(self):
        ndim = len(self.order)
        name = ("C" if self.order == tuple(range(ndim)) else
                "F" if self.order == tuple(reversed(range(ndim))) else f"order={self.order}")
        extras = [f"flips={self.flips}"] * bool(self.flips) + [f"step={self.step}"] * (self.step is not None)
        return f"Layout({', '.join([name] + extras + ['readonly'] * self.readonly)})"


@functools.lru_cache(maxsize=None)
def layouts(ndim, writable=False, empty=False):
    """C order two times in three (the fused kernels need C-contiguous input and gradient),
    else Fortran order, a transposed view (two axes swapped) or any permutation of the axes, with
    flips and a step-2 axis; read-only unless ``writable``.  For an ``empty`` array, whose strides
    are all there is to it, never C order."""
    readonly = st.just(False) if writable else st.booleans()
    axes = tuple(range(ndim))
    c_order = st.builds(Layout, st.just(axes), readonly=readonly)
    if not ndim:
        return c_order
    swapped = st.lists(st.sampled_from(axes), min_size=2, max_size=2, unique=True).map(
        lambda ij: tuple(ij[1] if a == ij[0] else ij[0] if a == ij[1] else a for a in axes))
    orders = st.just(axes[::-1]) | swapped | st.permutations(axes).map(tuple) if ndim > 1 else st.just(axes)
    other = st.builds(Layout, orders, st.lists(st.sampled_from(axes), unique=True).map(tuple),
                      st.none() | st.sampled_from(axes), readonly)
    return other if empty else st.sampled_from([c_order, c_order, other]).flatmap(lambda layout: layout)


# -- cases -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    """One forward call and the backward of its result.  The arrays derive from ``seed``:
    ``x = offset + scale * N(0, 1)`` in ``dtype``, ``grad_output ~ N(0, 1)``, weight, bias,
    running statistics (their mean ``stale`` spreads away from the data's), switchable logits."""

    family: str
    shape: tuple
    dtype: str
    axis: object  # the channel_axis (grid) or normalized_shape (rows) argument, as passed
    groups: int = 1  # group norm's num_groups
    using_bn: bool = True  # switchable norm's batch term
    affine: tuple = (False, False)  # weight, bias given
    eps: Optional[float] = 1e-5
    training: bool = True  # statistics of the input: training, use_input_stats
    momentum: Optional[float] = 0.1
    running: Optional[str] = None  # dtype of the running statistics given, None for none
    stale: object = 0.0  # running mean this many spreads off the data's; "init": 0 and 1
    count: Optional[tuple] = None  # num_batches_tracked (value, shape), None for none
    seed: int = 0
    offset: float = 0.0
    scale: float = 1.0
    layouts: tuple = ()  # of x for the forward, x for the backward, grad_output
    out: object = None  # None, a Layout, or "input" (in place)
    engine: tuple = (DEFAULT_MIN_PIECE, 1)

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        dtype = np.dtype(self.dtype)
        self.x = (self.offset + self.scale * rng.standard_normal(self.shape)).astype(dtype)
        self.dy = rng.standard_normal(self.shape).astype(dtype)
        pshape = self.param_shape
        self.weight = rng.normal(1.0, 0.5, pshape).astype(dtype) if self.affine[0] else None
        self.bias = rng.normal(0.0, 1.0, pshape).astype(dtype) if self.affine[1] else None
        self.running_stats = None
        if self.running:
            if self.stale == "init":  # as a layer starts, however far from the data
                mean, var = np.zeros(pshape), np.ones(pshape)
            else:
                mean = self.offset + self.scale * rng.uniform(-self.stale, self.stale, pshape)
                var = self.scale ** 2 * 10.0 ** rng.uniform(-1, 1, pshape)
            self.running_stats = (mean.astype(self.running), var.astype(self.running))
        self.logits = tuple(rng.normal(0.0, 1.5, self.terms) for _ in range(2)) if self.family == "switchable" else None

    @property
    def grid(self):
        return self.family in GRID

    @property
    def ch(self):
        return self.axis % len(self.shape)

    @property
    def k(self):
        return 1 if isinstance(self.axis, int) else len(self.axis)

    @property
    def param_shape(self):
        return (self.shape[self.ch],) if self.grid else tuple(self.shape[len(self.shape) - self.k:])

    @property
    def terms(self):
        return 3 if self.using_bn else 2

    @property
    def backward(self):
        """float16 is checked in the forward only."""
        return self.dtype != "float16"

    @property
    def eps_value(self):
        return float(np.finfo(self.dtype).eps) if self.eps is None else self.eps

    @property
    def updates_running(self):
        """Whether the forward updates running statistics (and counts the batch)."""
        return (self.running is not None and self.training and (self.family != "switchable" or self.using_bn)
                and self.x.size > 0)

    def expected_error(self):
        """Whether the forward must refuse the input with a ValueError (too few values to train)."""
        if not self.training or not self.grid:
            return False
        n, c = self.shape[0], self.shape[self.ch]
        if self.family == "batch" or self.family == "switchable" and self.using_bn:
            return self.x.size // c < 2
        return self.family == "instance" and n > 0 and self.x.size // (n * c) < 2


SIZES = st.integers(1, 7)  # small axes, size 1 and odd sizes included
LONG = st.integers(_cpu.ROW_CHUNK + 1, 2 * _cpu.ROW_CHUNK + 150)  # rows past one exact chunk
RARELY = st.integers(0, 9)
DIMS = st.integers(2, 5)  # grid norms: N, C and up to three spatial axes
# an empty batch, a few samples, or enough for the fused kernels (two rows a thread at least)
BATCHES = st.sampled_from([0, 1, 2, 3]) | st.integers(4, 8)
SEEDS = st.integers(0, 2**32 - 1)
MOMENTA = st.none() | st.just(0.1) | st.floats(0.0, 1.0)
RUNNING_DTYPES = st.sampled_from(["float32", "float64"])
COUNTS = st.tuples(st.integers(0, 4), st.sampled_from([(), (1,)]))  # num_batches_tracked (value, shape)
STALE = {False: st.sampled_from([0.0, 1.0, 30.0, "init"]), True: st.sampled_from([30.0, "init"])}
GRID_EPS = st.sampled_from([1e-5, 1e-3, 0.5, 1e-9])
ROW_EPS = {"layer": st.sampled_from([1e-5, 1e-3, 0.5]), "rms": st.none() | st.sampled_from([1e-5, 1e-3, 0.5])}


def rarely(draw):
    """True one time in ten."""
    return draw(RARELY) == 0


@functools.lru_cache(maxsize=None)
def channel_axes(ndim):
    """Channels first or last (channels-last data: ``channel_axis=-1``) half the time, else any
    axis but 0; as a positive or a negative index."""
    axes = st.sampled_from([1, ndim - 1]) | st.integers(1, ndim - 1)
    return axes.flatmap(lambda ch: st.sampled_from([ch, ch - ndim]))


@st.composite
def _grid_shapes(draw, family):
    ndim = draw(DIMS)
    groups = draw(st.integers(1, 4)) if family == "group" else 1
    channels = groups * draw(st.integers(1, 3)) if family == "group" else draw(st.integers(1, 6))
    n = draw(BATCHES)
    spatial = draw(st.lists(SIZES, min_size=ndim - 2, max_size=ndim - 2))
    if spatial and rarely(draw):
        spatial = [1] * len(spatial)
        spatial[draw(st.integers(0, len(spatial) - 1))] = draw(LONG)
        n, channels = min(n, 5), min(channels, 4 * groups)
    axis = draw(channel_axes(ndim))
    shape = [n] + spatial
    shape.insert(axis % ndim, channels)
    return tuple(shape), axis, groups


@functools.lru_cache(maxsize=None)
def grid_shapes(family):
    """(shape, channel_axis argument, num_groups): N (0 sometimes), C, up to three spatial axes,
    now and then a long one."""
    return _grid_shapes(family)


@st.composite
def _row_shapes(draw):
    lead = draw(st.lists(SIZES, max_size=2))
    normalized = draw(st.lists(SIZES, min_size=1, max_size=3))
    if lead and draw(st.integers(0, 7)) == 0:
        lead[draw(st.integers(0, len(lead) - 1))] = 0
    if rarely(draw):
        lead, normalized = [min(d, 5) for d in lead], [1] * len(normalized)
        normalized[draw(st.integers(0, len(normalized) - 1))] = draw(LONG)
    argument = normalized[0] if len(normalized) == 1 and draw(st.booleans()) else tuple(normalized)
    return tuple(lead + normalized), argument


@functools.lru_cache(maxsize=None)
def row_shapes():
    """(shape, normalized_shape argument): up to two leading axes (one 0 sometimes), one to
    three normalized ones (an int for one, sometimes; now and then a long one)."""
    return _row_shapes()


@functools.lru_cache(maxsize=None)
def data(dtype, far=False):
    """(seed, offset, scale) of ``x = offset + scale * N(0, 1)``: offsets of 1e3..1e4 far beyond
    the spread (always if ``far``) test that normalization keeps its digits (float16 keeps to its
    range)."""
    top = 1e3 if dtype == "float16" else 1e4
    offsets = st.sampled_from([-1e3, top]) | st.floats(1e3, top).map(lambda v: -v)
    if not far:
        offsets = st.sampled_from([0.0, 0.0, 1.5]) | offsets
    scales = st.sampled_from([1.0, 3.0] if dtype == "float16" else [1.0, 0.01, 3.0, 100.0])
    return st.tuples(SEEDS, offsets, scales)


@st.composite
def _tracking(draw, required, far):
    running = draw(RUNNING_DTYPES if required else st.none() | RUNNING_DTYPES)
    momentum = draw(MOMENTA)
    count = draw(COUNTS) if momentum is None or draw(st.booleans()) else None
    return running, draw(STALE[far]), momentum, count


@functools.lru_cache(maxsize=None)
def tracking(required, far=False):
    """(running dtype, stale, momentum, count) for ops with running statistics: ``required``
    where they normalize (eval), optional where they are updated, ``far`` from the data if
    asked; momentum None is the cumulative average, which needs a num_batches_tracked (an int64
    array of one element)."""
    return _tracking(required, far)


@functools.lru_cache(maxsize=None)
def outs(ndim, inplace):
    """Where the forward writes: a new array, a given ``out`` of any writable layout, or the
    input itself (where it is writable)."""
    return st.none() | layouts(ndim, writable=True) | (st.just("input") if inplace else st.nothing())


@st.composite
def _cases(draw, families, dtypes, far):
    family = draw(st.sampled_from(families))
    dtype = draw(st.sampled_from(dtypes))
    groups, using_bn, training = 1, True, True
    if family in GRID:
        shape, axis, groups = draw(grid_shapes(family))
        using_bn = family != "switchable" or draw(st.booleans())
        training = family == "group" or draw(st.booleans())
        affine = (draw(st.booleans()), draw(st.booleans()))
        eps = draw(GRID_EPS)
    else:
        shape, axis = draw(row_shapes())
        affine = (draw(st.booleans()), family == "layer" and draw(st.booleans()))
        eps = draw(ROW_EPS[family])
    running, stale, momentum, count = None, 0.0, 0.1, None
    if family in ("batch", "instance") or family == "switchable" and using_bn:
        running, stale, momentum, count = draw(tracking(not training, far))
    seed, offset, scale = draw(data(dtype, far))
    ndim, empty = len(shape), 0 in shape
    x_layout, backward_layout, dy_layout = (draw(layouts(ndim, empty=empty)) for _ in range(3))
    out = draw(outs(ndim, not x_layout.readonly))
    return Case(family, shape, dtype, axis, groups, using_bn, affine, eps, training, momentum, running, stale,
                count, seed, offset, scale, (x_layout, backward_layout, dy_layout), out, draw(engines()))


@functools.lru_cache(maxsize=None)
def cases(families=FAMILIES, dtypes=FLOATS, far=False):
    """A `Case` of one of ``families`` (a tuple): shape, parameters, running statistics, data,
    layouts (of x for the forward, x for the backward, grad_output, out) and engine, each drawn
    by its own strategy; with ``far``, data and running statistics far from zero and the data."""
    return _cases(tuple(families), tuple(dtypes), far)


# -- numbanorm's answers ----------------------------------------------------------------------------

def forward(case, x, out=None, running=None, count=None, api=nn):
    """The case's forward in ``api`` (numbanorm, or numbanorm.reference) with ``return_stats=True``."""
    kw = dict(return_stats=True, out=out)
    rm, rv = running if running is not None else (None, None)
    tracked = dict(momentum=case.momentum, num_batches_tracked=count, channel_axis=case.axis)
    w, b = case.weight, case.bias
    if case.family == "batch":
        return api.batch_norm(x, rm, rv, w, b, training=case.training, eps=case.eps, **tracked, **kw)
    if case.family == "instance":
        return api.instance_norm(x, rm, rv, w, b, use_input_stats=case.training, eps=case.eps, **tracked, **kw)
    if case.family == "switchable":
        return api.switchable_norm(x, *case.logits, rm, rv, w, b, training=case.training, eps=case.eps,
                                  using_bn=case.using_bn, **tracked, **kw)
    if case.family == "group":
        return api.group_norm(x, case.groups, w, b, case.eps, channel_axis=case.axis, **kw)
    if case.family == "layer":
        return api.layer_norm(x, case.axis, w, b, case.eps, **kw)
    return api.rms_norm(x, case.axis, w, case.eps, **kw)


def backward(case, dy, x, stats, api=nn):
    """The case's backward in ``api``, as a dict of gradients (None where there is none)."""
    w = case.weight
    if case.family == "batch":
        g = api.batch_norm_backward(dy, x, stats, w, channel_axis=case.axis)
    elif case.family == "instance":
        g = api.instance_norm_backward(dy, x, stats, w, channel_axis=case.axis)
    elif case.family == "group":
        g = api.group_norm_backward(dy, x, stats, case.groups, w, channel_axis=case.axis)
    elif case.family == "switchable":
        g = api.switchable_norm_backward(dy, x, stats, *case.logits, w, channel_axis=case.axis)
    elif case.family == "layer":
        g = api.layer_norm_backward(dy, x, stats, case.axis, w)
    else:
        g = api.rms_norm_backward(dy, x, stats, case.axis, w)
    return g._asdict()


def run(case, api=nn):
    """Forward and backward as a user calls them (numbanorm's, or ``api``'s) in the case's
    layouts and engine: the results in a dict (y, input, weight, bias[, mean_weight, var_weight]
    [, running_mean, running_var][, count]).  Checks that ``out`` is the result and that no
    argument changed but the running statistics, the counter, and x where written in place."""
    x = case.layouts[0].apply(case.x)
    out = x if case.out == "input" else None if case.out is None else case.out.apply(np.zeros_like(case.x))
    running = None if case.running is None else tuple(a.copy() for a in case.running_stats)
    count = None if case.count is None else np.full(case.count[1], case.count[0], np.int64)
    params = [p for p in (case.weight, case.bias, *(case.logits or ())) if p is not None]
    before = [p.copy() for p in params]
    with engine(*case.engine):
        y, stats = forward(case, x, out, running, count, api)
        result = {"y": y}
        if case.backward:
            xb, dy = case.layouts[1].apply(case.x), case.layouts[2].apply(case.dy)
            result.update(backward(case, dy, xb, stats, api))
            assert np.array_equal(xb, case.x) and np.array_equal(dy, case.dy), "the backward modified its input"
    assert out is None or y is out, "the forward did not return its out array"
    assert case.out == "input" or np.array_equal(x, case.x), "the forward modified its input"
    assert all(np.array_equal(p, b) for p, b in zip(params, before)), "a parameter was modified"
    if running is not None:
        result["running_mean"], result["running_var"] = running
    if count is not None:
        result["count"] = int(count.reshape(-1)[0])
    return result


def compare(case, actual, expected, magnitudes, precision=None, slack=0.0):
    """Every expected result (a None stands for 'no such gradient') against ``actual``, of the
    case's dtypes, or of ``precision`` for results computed in another (numbanorm.reference);
    ``slack``: the oracle's own relative error (see `excess`)."""
    for key, value in expected.items():
        got = actual.get(key)
        if value is None:
            assert got is None, f"{key}: expected None, got {type(got).__name__}"
            continue
        assert got is not None, f"{key}: missing"
        if key == "count":
            assert got == value, f"num_batches_tracked {got}, expected {value}"
            continue
        dtype = case.running if key.startswith("running") else precision or case.dtype
        if key not in ("mean_weight", "var_weight") and precision is None:  # the logits' gradients are float64
            assert got.dtype == np.dtype(dtype), f"{key}: dtype {got.dtype}, expected {dtype}"
        assert_close(key, got, value, magnitudes[key], coarser(precision or case.dtype, dtype), slack)


def coarser(*dtypes):
    """The least precise of ``dtypes`` (running statistics: the input's precision, then their own)."""
    return max(dtypes, key=lambda d: np.finfo(d).eps)


# -- the float64 reference --------------------------------------------------------------------------

def _canonical(case, a):
    """``a`` (shaped like x) as (N, G, C/G, S) for grid norms, (R, 1, 1, L) for row norms."""
    if not case.grid:
        lead = math.prod(case.shape[:len(case.shape) - case.k])
        return a.reshape(lead, 1, 1, math.prod(case.param_shape))
    moved = np.moveaxis(a, case.ch, 1)
    n, c = moved.shape[:2]
    groups = case.groups if case.family == "group" else c
    return moved.reshape(n, groups, c // groups, math.prod(moved.shape[2:]))


def _from_canonical(case, a4):
    if not case.grid:
        return a4.reshape(case.shape)
    return np.moveaxis(a4.reshape(np.moveaxis(np.empty(case.shape, bool), case.ch, 1).shape), 1, case.ch)


def _param(case, p, default):
    """A weight/bias (or default) broadcastable against x, float64."""
    if p is None:
        return np.full((1,) * len(case.shape), default)
    if not case.grid:
        return p.astype(np.float64)  # the normalized shape: trailing axes
    shape = [1] * len(case.shape)
    shape[case.ch] = case.shape[case.ch]
    return p.astype(np.float64).reshape(shape)


def _sum(v, axes):
    return v.sum(axis=axes, keepdims=True)


def _statistics(case):
    """The canonical view ``v`` of x, its terms [(axes of v, centered, constant)], each term's
    (mean, variance), the mixture weights of the means and of the variances, and
    ``rstd = 1/sqrt(mixed variance + eps)``."""
    v = _canonical(case, case.x.astype(np.float64))
    one = np.ones(1)
    if case.family == "switchable":
        axes = [(2, 3), (1, 2, 3), (0, 2, 3)][:case.terms]  # instance, layer, batch
        softmax = lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        mixes = tuple(softmax(np.asarray(z, np.float64)) for z in case.logits)
    else:
        axes = [{"batch": (0, 2, 3), "instance": (2, 3), "group": (2, 3)}.get(case.family, (1, 2, 3))]
        mixes = (one, one)
    constant = [None] * len(axes)
    if case.running is not None and not case.training and case.using_bn:  # eval: running statistics
        c = case.shape[case.ch]
        constant[-1] = tuple(a.astype(np.float64).reshape(1, c, 1, 1) for a in case.running_stats)
    centered = case.family != "rms"
    terms = [(a, centered, f is not None) for a, f in zip(axes, constant)]
    stats = []
    for (ax, _, _), fixed in zip(terms, constant):
        if fixed is not None:
            stats.append(fixed)
        elif not v.size:
            stats.append((np.zeros(()), np.ones(())))
        elif centered:
            m = v.mean(axis=ax, keepdims=True)
            m = m + (v - m).mean(axis=ax, keepdims=True)  # a float64 mean of 1e4 + N(0, 1) is off by ulps
            stats.append((m, ((v - m) ** 2).mean(axis=ax, keepdims=True)))
        else:
            stats.append((np.zeros(()), (v * v).mean(axis=ax, keepdims=True)))
    var = sum(b * s for b, (_, s) in zip(mixes[1], stats))
    return v, terms, stats, mixes, 1.0 / np.sqrt(var + case.eps_value)


class _Arithmetic:
    """How `_evaluate` computes: ``value`` with signs; ``deviations`` on absolute values (the
    formula's running-error bound: what the result's own precision is measured against);
    ``operands`` also with deviations ``x - m`` as ``|x| + |m|`` (what the float64 statistics'
    rounding, large for offset data, is measured against)."""

    def __init__(self, kind):
        self.kind = kind

    def __call__(self, a):
        return a if self.kind == "value" else np.abs(a)

    def neg(self, a):
        return -a if self.kind == "value" else a

    def dev(self, a, b):
        return a - b if self.kind == "value" else np.abs(a - b) if self.kind == "deviations" else np.abs(a) + np.abs(b)


def _evaluate(case, v, terms, stats, mixes, r, A):
    """The forward's y and the backward's gradients by their definitions, in arithmetic ``A``."""
    mix_mean, mix_var = mixes
    w, b = A(_param(case, case.weight, 1.0)), A(_param(case, case.bias, 0.0))
    # x - mean as the mixture of the terms' deviations: exact where they are (a constant group)
    d = sum(a * A.dev(v, m) for a, (m, _) in zip(mix_mean, stats))
    xhat = _from_canonical(case, d * r)
    result = {"y": xhat * w + b}
    if not case.backward:
        return result
    # dx = g*r + sum_k mix_mean_k * S_k(dL/dmean)/n_k + mix_var_k * S_k(dL/dvar) * 2*(x - mean_k)/n_k
    # with g = dy*w, S_k the sum over term k's n_k values; constant terms contribute nothing
    dy = A(case.dy.astype(np.float64))
    g = _canonical(case, dy * w)
    d_mean, d_var = A.neg(r * g), A.neg(0.5 * r ** 3 * g * d)  # dL/dmean and dL/dvar, elementwise
    dx = g * r
    for (axes, centered, constant), a, bk, (m, _) in zip(terms, mix_mean, mix_var, stats):
        if not constant:
            n = math.prod(v.shape[i] for i in axes)
            dx = dx + (a * _sum(d_mean, axes) / n if centered else 0) + bk * _sum(d_var, axes) * 2 * A.dev(v, m) / n
    result["input"] = _from_canonical(case, dx)
    ndim = len(case.shape)
    lead = tuple(i for i in range(ndim) if i != case.ch) if case.grid else tuple(range(ndim - case.k))
    result["weight"] = (dy * xhat).sum(axis=lead).reshape(case.param_shape)
    result["bias"] = dy.sum(axis=lead).reshape(case.param_shape)
    if case.family == "switchable":
        # through the softmax: d logit_k = mix_k * sum(dL/dstat * (stat_k - mixed stat)), where the
        # mixture of those sums is 0 (up to rounding: the library subtracts it)
        for key, mix, d_stat, which in (("mean_weight", mix_mean, d_mean, 0), ("var_weight", mix_var, d_var, 1)):
            mixed = sum(a * s[which] for a, s in zip(mix, stats))
            parts = np.array([np.sum(d_stat * A.dev(s[which], mixed)) for s in stats])
            result[key] = mix * (parts + A.neg(mix @ parts))
    return result


def reference(case):
    """(expected, magnitudes): dicts keyed like `run`'s results, expected values in float64 (None
    where there must be no gradient), magnitudes (by deviations, by operands) for `compare`."""
    v, terms, stats, mixes, r = _statistics(case)
    expected, by_deviations, by_operands = (_evaluate(case, v, terms, stats, mixes, r, _Arithmetic(kind))
                                            for kind in ("value", "deviations", "operands"))
    magnitudes = {key: (by_deviations[key], by_operands[key]) for key in expected}
    if case.backward:
        expected["weight"] = expected["weight"] if case.weight is not None else None
        expected["bias"] = expected["bias"] if case.bias is not None else None
    _expected_running(case, v, stats, expected, magnitudes)
    return expected, magnitudes


def _expected_running(case, v, stats, expected, magnitudes):
    """Running statistics after the forward: ``(1 - m)*old + m*batch`` with the unbiased batch
    variance (instance norm: averaged over the samples), m = 1/count for momentum None."""
    if case.count is not None:
        expected["count"] = case.count[0] + case.updates_running
    if case.running is None:
        return
    old_mean, old_var = (a.astype(np.float64) for a in case.running_stats)
    expected["running_mean"], expected["running_var"] = old_mean, old_var
    magnitudes["running_mean"], magnitudes["running_var"] = (np.abs(old_mean),) * 2, (old_var,) * 2
    if not case.updates_running:
        return
    axes, (m, s) = ((2, 3), stats[0]) if case.family == "instance" else ((0, 2, 3), stats[-1])
    n = math.prod(v.shape[i] for i in axes)
    per_channel = lambda a: a.reshape(-1, v.shape[1]).mean(axis=0)  # instance norm: mean over samples
    batch_mean, batch_var, spread = per_channel(m), per_channel(s * n / (n - 1)), np.sqrt(per_channel(s))
    k = 1.0 / (case.count[0] + 1) if case.momentum is None else case.momentum
    expected["running_mean"] = (1 - k) * old_mean + k * batch_mean
    expected["running_var"] = (1 - k) * old_var + k * batch_var
    # a mean is as exact as the deviations summed; a variance's deviations carry the mean's rounding
    mean_size = (1 - k) * np.abs(old_mean) + k * (np.abs(batch_mean) + spread)
    magnitudes["running_mean"] = (mean_size, mean_size)
    magnitudes["running_var"] = ((1 - k) * old_var + k * batch_var,
                                 (1 - k) * old_var + k * (batch_var + 2 * spread * np.abs(batch_mean)))


# -- PyTorch's autograd -----------------------------------------------------------------------

TORCH_CONDITION = 1e4  # offset / spread of the data PyTorch is asked about


def torch_slack(case):
    """PyTorch's own error in float64, relative to the magnitude by deviations: its statistics
    lose up to (offset / spread)**2 ulps (measured: 1e-9 on a group of two values at 1e3 + N(0, 1))."""
    return ULPS * float(np.finfo(np.float64).eps) * (1.0 + abs(case.offset) / case.scale) ** 2


def torch_accepts(case):
    """Whether PyTorch 2.x can judge the case: data no further from zero than TORCH_CONDITION
    spreads; not group norm of one value per group (refused; numbanorm normalizes it to 0), nor
    with a bias but no weight (its backward fails: "tensor does not have a device"); not
    instance norm of an empty batch ("select(): index 0 out of range")."""
    if case.expected_error() or abs(case.offset) > TORCH_CONDITION * case.scale:
        return False
    n = case.shape[0]
    if case.family == "instance":
        return n > 0
    if case.family == "group":
        return case.affine != (False, True) and (n == 0 or case.x.size // (n * case.groups) > 1)
    return True


def torch_reference(case):
    """The case's forward and backward by PyTorch's autograd in float64: a dict like `run`'s."""
    import torch
    F = torch.nn.functional

    def t(a, grad=False):
        return None if a is None else torch.tensor(np.asarray(a, np.float64), requires_grad=grad)

    X, W, B = t(case.x, True), t(case.weight, True), t(case.bias, True)
    rm, rv = (None, None) if case.running is None else (t(a) for a in case.running_stats)
    momentum = case.momentum if case.momentum is not None else 1.0 / (case.count[0] + 1)
    # channels first and contiguous, the gradient too: PyTorch 2.13's instance_norm(use_input_stats=
    # False) backward is wrong for a strided grad_output (x (1, 5, 1, 4) moved to (1, 4, 5, 1))
    channels_first = (lambda T: T.movedim(case.ch, 1).contiguous()) if case.grid else (lambda T: T)
    Xc = channels_first(X)
    if case.family == "batch":
        Y = F.batch_norm(Xc, rm, rv, W, B, training=case.training, momentum=momentum, eps=case.eps)
    elif case.family == "instance":
        Y = F.instance_norm(Xc, rm, rv, W, B, use_input_stats=case.training, momentum=momentum, eps=case.eps)
    elif case.family == "group":
        Y = F.group_norm(Xc, case.groups, W, B, eps=case.eps)
    elif case.family == "layer":
        Y = F.layer_norm(X, case.param_shape, W, B, eps=case.eps)
    elif case.family == "rms":
        Y = F.rms_norm(X, case.param_shape, W, eps=case.eps_value)
    else:
        Y, (ZM, ZV), (rm, rv) = _torch_switchable(case, Xc, W, B, rm, rv, momentum)
    result = {"y": (Y.movedim(1, case.ch) if case.grid else Y).detach().numpy()}
    if case.backward:
        Y.backward(channels_first(t(case.dy)))
        grad = lambda T: None if T is None else T.grad.numpy()
        result.update(input=grad(X), weight=grad(W), bias=grad(B))
        if case.family == "switchable":
            result.update(mean_weight=grad(ZM), var_weight=grad(ZV))
    if rm is not None:
        result["running_mean"], result["running_var"] = rm.numpy(), rv.numpy()
    return result


def _torch_switchable(case, X, W, B, rm, rv, momentum):
    """Switchable norm composed of torch ops (its definition, Luo et al. 2018, with biased
    variances and batch-norm running statistics)."""
    import torch
    n, c = X.shape[:2]
    Xs = X.reshape(n, c, math.prod(X.shape[2:]))
    ZM, ZV = (torch.tensor(z, requires_grad=True) for z in case.logits)
    variance = lambda axes: Xs.var(axes, correction=0, keepdim=True) if Xs.numel() else Xs.mean(axes, keepdim=True)
    stats = [(Xs.mean(2, keepdim=True), variance(2)), (Xs.mean((1, 2), keepdim=True), variance((1, 2)))]
    if case.using_bn and case.training:
        mb, vb = Xs.mean((0, 2), keepdim=True), variance((0, 2))
        stats.append((mb, vb))
        if rm is not None:
            count = Xs.shape[0] * Xs.shape[2]
            rm = (1 - momentum) * rm + momentum * mb.detach().reshape(c)
            rv = (1 - momentum) * rv + momentum * vb.detach().reshape(c) * count / (count - 1)
    elif case.using_bn:
        stats.append((rm.reshape(1, c, 1), rv.reshape(1, c, 1)))
    a, b = torch.softmax(ZM, 0), torch.softmax(ZV, 0)
    mean = sum(a[k] * m for k, (m, _) in enumerate(stats))
    var = sum(b[k] * v for k, (_, v) in enumerate(stats))
    Y = (Xs - mean) / torch.sqrt(var + case.eps)
    if W is not None:
        Y = Y * W.reshape(1, c, 1)
    if B is not None:
        Y = Y + B.reshape(1, c, 1)
    return Y.reshape(X.shape), (ZM, ZV), (rm, rv)


# -- statistics: moments, welford/merge, batch_normalization ---------------------------------------

@dataclasses.dataclass
class StatCase:
    """``x = offset + scale * N(0, 1)`` of ``shape`` and ``dtype`` in ``layout``, reduced over
    ``axes`` (as passed: negative ones too)."""

    shape: tuple
    dtype: str
    axes: tuple
    keepdims: bool
    layout: Layout
    seed: int
    offset: float
    scale: float
    engine: tuple

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        self.x = (self.offset + self.scale * rng.standard_normal(self.shape)).astype(self.dtype)
        self.rng = rng  # for what a test draws further (parameters of batch_normalization)

    @property
    def reduced(self):
        return tuple(sorted(a % len(self.shape) for a in self.axes))


@st.composite
def stat_cases(draw, dtypes=FLOATS, nonempty=True):
    """A `StatCase`: 0 to 4 axes (one long now and then; empty ones unless ``nonempty``), any of
    them reduced."""
    ndim = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(1 if nonempty else 0, 7), min_size=ndim, max_size=ndim))
    if ndim and rarely(draw):
        shape[draw(st.integers(0, ndim - 1))] = draw(LONG)
    axes = draw(st.lists(st.integers(0, ndim - 1), unique=True).map(tuple) if ndim else st.just(()))
    axes = tuple(draw(st.sampled_from([a, a - ndim])) for a in axes)
    dtype = draw(st.sampled_from(dtypes))
    seed, offset, scale = draw(data(dtype))
    return StatCase(tuple(shape), dtype, axes, draw(st.booleans()), draw(layouts(ndim)), seed, offset, scale,
                    draw(engines()))


def reference_moments(x, axes, keepdims=False):
    """(count, mean, variance) in float64 over ``axes`` and magnitudes (by deviations, by
    operands) of the mean and the variance."""
    v = x.astype(np.float64)
    if v.size:
        mean = v.mean(axis=axes, keepdims=True)
        mean = mean + (v - mean).mean(axis=axes, keepdims=True)
        var = ((v - mean) ** 2).mean(axis=axes, keepdims=True)
    else:  # nothing to compare but shapes
        mean = var = np.zeros([1 if i in axes else d for i, d in enumerate(x.shape)])
    spread = np.sqrt(var)
    count = math.prod(x.shape[a] for a in axes)
    squeeze = (lambda a: a) if keepdims else (lambda a: a.reshape([d for i, d in enumerate(x.shape) if i not in axes]))
    mean_size = np.abs(mean) + spread
    return (count, squeeze(mean), squeeze(var),
            (mean_size, mean_size), (var, var + 2 * spread * np.abs(mean)))


# -- layers ---------------------------------------------------------------------------------

LAYERS = ("BatchNorm", "InstanceNorm", "GroupNorm", "LayerNorm", "RMSNorm", "SwitchableNorm")


@functools.lru_cache(maxsize=None)
def layer_setups(kinds=LAYERS):
    """(kind, constructor keyword arguments, input shape, dtype): shapes with at least two values
    per channel and per instance, so that every mode may train."""
    return _layer_setups(kinds)


@st.composite
def _layer_setups(draw, kinds):
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    kw = {"dtype": np.dtype(dtype), "eps": draw(st.sampled_from([1e-5, 1e-3]))}
    if kind in ("LayerNorm", "RMSNorm"):
        shape, normalized = draw(row_shapes())
        shape = tuple(max(d, 1) for d in shape)
        normalized = tuple(shape[len(shape) - (1 if isinstance(normalized, int) else len(normalized)):])
        kw["elementwise_affine"] = draw(st.booleans())
        if kind == "LayerNorm":
            kw["bias"] = draw(st.booleans())
        else:
            kw["eps"] = draw(st.none() | st.just(1e-5))
        return kind, dict(kw, normalized_shape=normalized), shape, dtype
    ndim = draw(st.integers(3, 5))
    spatial = draw(st.lists(SIZES, min_size=ndim - 2, max_size=ndim - 2).filter(lambda s: math.prod(s) > 1))
    ch = draw(st.integers(1, ndim - 1))
    channels = draw(st.integers(1, 5))
    kw["channel_axis"] = draw(st.sampled_from([ch, ch - ndim]))
    kw["affine"] = draw(st.booleans())
    if kind == "GroupNorm":
        groups = draw(st.integers(1, 3))
        channels *= groups
        kw.update(num_groups=groups, num_channels=channels)
    else:
        kw.update(num_features=channels, momentum=draw(st.none() | st.just(0.1) | st.floats(0.0, 1.0)))
    if kind in ("BatchNorm", "InstanceNorm"):
        kw["track_running_stats"] = draw(st.booleans())
    if kind == "SwitchableNorm":
        kw["using_bn"] = draw(st.booleans())
    shape = [draw(st.integers(2, 5))] + spatial
    shape.insert(ch, channels)
    return kind, kw, tuple(shape), dtype


def layer_case(layer, kind, shape, dtype, seed, layouts_):
    """The `Case` of one step of ``layer`` (forward and backward of an input from ``seed``):
    its arguments are the layer's parameters and buffers, and the mode decides which statistics
    normalize, as in ``torch.nn``."""
    kw = dict(seed=seed, layouts=layouts_, eps=layer.eps)
    params, buffers = layer.params, layer.buffers
    if kind in ("LayerNorm", "RMSNorm"):
        family, axis = ("layer" if kind == "LayerNorm" else "rms"), layer.normalized_shape
    else:
        family, axis = kind.replace("Norm", "").lower(), layer.channel_axis
    tracked = "running_mean" in buffers
    if kind == "GroupNorm":
        kw["groups"] = layer.num_groups
    if family in ("batch", "instance", "switchable"):
        # batch statistics when training, or always where nothing is tracked
        kw.update(momentum=layer.momentum, training=layer.training or not tracked and family != "switchable")
        kw["running"] = dtype if tracked else None
        count = buffers.get("num_batches_tracked")
        kw["count"] = (int(count), ()) if tracked and layer.training else None
    if family == "switchable":
        kw["using_bn"] = layer.using_bn
    case = Case(family, shape, dtype, axis, affine=("weight" in params, "bias" in params), **kw)
    case.weight, case.bias = params.get("weight"), params.get("bias")
    if tracked:
        case.running_stats = (buffers["running_mean"].copy(), buffers["running_var"].copy())
    if family == "switchable":
        case.logits = (params["mean_weight"], params["var_weight"])
    return case


class TorchTwin:
    """The ``torch.nn`` module of a numbanorm layer, in float64, stepped beside it (a second,
    independent account of the modes: which statistics normalize, what is updated and counted)."""

    def __init__(self, layer, kind, kw, ndim):
        import torch

        self.torch, tnn, f64 = torch, torch.nn, dict(dtype=torch.float64)
        self.ch = kw["channel_axis"] % ndim if "channel_axis" in kw else None
        eps = kw["eps"] if kw["eps"] is not None else float(np.finfo(kw["dtype"]).eps)
        if kind in ("BatchNorm", "InstanceNorm"):
            dims = {"BatchNorm": {2: 1, 3: 1, 4: 2, 5: 3}, "InstanceNorm": {3: 1, 4: 2, 5: 3}}[kind][ndim]
            self.module = getattr(tnn, f"{kind}{dims}d")(kw["num_features"], eps, kw["momentum"], kw["affine"],
                                                        kw["track_running_stats"], **f64)
        elif kind == "GroupNorm":
            self.module = tnn.GroupNorm(kw["num_groups"], kw["num_channels"], eps, kw["affine"], **f64)
        elif kind == "LayerNorm":
            self.module = tnn.LayerNorm(kw["normalized_shape"], eps, kw["elementwise_affine"], kw["bias"], **f64)
        else:
            self.module = tnn.RMSNorm(kw["normalized_shape"], eps, kw["elementwise_affine"], **f64)
        with torch.no_grad():
            for name, value in layer.params.items():
                getattr(self.module, name).copy_(torch.from_numpy(value.astype(np.float64)))

    def step(self, training, x, dy):
        """Forward and backward in ``training`` mode: a dict like `run`'s."""
        torch = self.torch
        self.module.train(training)
        self.module.zero_grad()
        X = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        # channels first and contiguous, the gradient too (see `torch_reference`)
        channels_first = (lambda T: T.movedim(self.ch, 1).contiguous()) if self.ch is not None else (lambda T: T)
        Y = self.module(channels_first(X))
        Y.backward(channels_first(torch.tensor(dy, dtype=torch.float64)))
        y = Y.movedim(1, self.ch) if self.ch is not None else Y
        result = {"y": y.detach().numpy(), "input": X.grad.numpy()}
        for name in ("weight", "bias"):
            param = getattr(self.module, name, None)
            result[name] = None if param is None else param.grad.numpy()
        if getattr(self.module, "running_mean", None) is not None:
            result.update(running_mean=self.module.running_mean.numpy().copy(),
                          running_var=self.module.running_var.numpy().copy())
            if not isinstance(self.module, torch.nn.modules.instancenorm._InstanceNorm):
                result["count"] = int(self.module.num_batches_tracked)  # InstanceNorm counts nothing
        return result
