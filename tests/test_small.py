"""Issue #15: small inputs run in one serial compiled call (``_small``), decided by size.

On both sides of the crossover an op must give the general path's result (and the float64
reference's), and the small lane must be taken exactly where it should: below the crossover for
C-contiguous float32/float64 NumPy input, never above it or for other layouts.
"""

import numba
import numpy as np
import pytest

import numbanorm as nn
from numbanorm import _cpu, _dispatch, _prepared, _serial, _small
from numbanorm import reference as ref
from numbanorm._ops import OPS

# forwards whose plain calls take the lane from the public function on (``_small.row_norm``, ``grid_norm``)
COMPILED_LANE_OPS = ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm", "weight_standardization")
LANE_OPS = ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm", "weight_standardization", "normalize")
DRIVERS = ("norm_rows", "norm_rows_backward")
# the grid drivers as the lane calls them (on its views), under their names
VIEWED_DRIVERS = {"grid_forward_viewed": "grid_forward", "grid_backward_viewed": "grid_backward"}
GROUPS = 4


def _spy(monkeypatch, module, names, calls, label=None):
    """Append to ``calls`` the name (or ``label``) of each of ``module``'s functions ``names``
    called from now on."""
    for name in names:
        original = getattr(module, name)

        def spy(*args, _name=label or name, _original=original):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(module, name, spy)


@pytest.fixture
def driver_calls(monkeypatch):
    """The names of the serial drivers called, in order."""
    calls = []
    _spy(monkeypatch, _serial, DRIVERS, calls)
    for name, label in VIEWED_DRIVERS.items():
        _spy(monkeypatch, _serial, [name], calls, label)
    return calls


def _served(monkeypatch, name):
    """Whether each call of ``_small.<name>`` (a lane) from now on served its call, in order."""
    served, original = [], getattr(_small, name)

    def spy(*args):
        result = original(*args)
        served.append(result is not None)
        return result

    monkeypatch.setattr(_small, name, spy)
    return served


def _case(op, layout, elements, dtype, seed=0):
    """Inputs of ``op`` with exactly ``elements`` elements."""
    rng = np.random.default_rng(seed)
    kind = OPS[op].kind
    if kind == "rows":
        shape = (elements // 32, 32)
    elif kind == "weight":
        shape = (elements // 72, 8, 3, 3)
    else:
        shape = (elements // 256, 16, 4, 4) if layout == "nchw" else (elements // 256, 4, 4, 16)
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    pshape = OPS[op].param_shape(shape, layout)
    w, b = (None, None) if pshape is None else (rng.standard_normal(pshape).astype(dtype) for _ in range(2))
    return x, dy, w, b, (-1 if layout == "nhwc" else 1)


def _run(api, op, x, dy, w, b, ca):
    y, stats = OPS[op].run_forward(api, x, w, b, ca, GROUPS)
    if OPS[op].stats is None:  # weight standardization: the backward recomputes its statistics
        return y, OPS[op].run_backward(api, dy, x, None, w, ca, GROUPS)
    return y, OPS[op].run_backward(api, dy, x, stats, w, ca, GROUPS)


def _layouts(op):
    return OPS[op].layouts


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op,layout", [(op, layout) for op in LANE_OPS for layout in _layouts(op)])
def test_both_sides_of_the_crossover_agree(op, layout, dtype, driver_calls, monkeypatch):
    """Just below the crossover the small lane runs; forcing the general path on the same input
    gives the same result, and both match the float64 reference; just above it the general path
    runs by itself."""
    # batch norm's lane, and normalize's on a view of x, take inputs 16 times larger; instance and
    # group norm's forward 4 times, and at more than one thread 2 times; normalize's on a
    # transposed copy (its NCHW case here) 4 times; the row norms' 4 times, and at one thread 16
    # times.  Instance and group norm's backward lane is wider than their forward's
    # (test_per_sample_backward_lane_is_wider) and stays in it above.
    one_thread = _cpu.thread_count() == 1
    rows = _small.ONE_THREAD_ROW_FACTOR if one_thread else _small.ROW_FACTOR
    per_sample = _small.PER_SAMPLE_FACTOR if one_thread else _small.PARALLEL_PER_SAMPLE_FACTOR
    factor = {"batch_norm": _small.OVER_BATCH_FACTOR, "instance_norm": per_sample, "group_norm": per_sample,
              "normalize": _small.OVER_BATCH_FACTOR // (1 if layout == "nhwc" else 4)}.get(op, rows)
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 4608 // factor)
    x, dy, w, b, ca = _case(op, layout, 4608, dtype)
    small_y, small_grads = _run(nn, op, x, dy, w, b, ca)
    assert driver_calls[:1] in (["grid_forward"], ["norm_rows"]), f"the small lane was not taken below the crossover: {driver_calls}"
    driver_calls.clear()
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 4608 // factor - 1)
    general_y, general_grads = _run(nn, op, x, dy, w, b, ca)
    wider = ["grid_backward"] if op in ("instance_norm", "group_norm") else []
    assert driver_calls == wider, f"the small lane ran above the crossover: {driver_calls}"
    ref_y, ref_grads = _run(ref, op, x.astype(np.float64), dy.astype(np.float64),
                            *(None if p is None else p.astype(np.float64) for p in (w, b)), ca)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == "float32" else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(small_y, general_y, **tol)
    np.testing.assert_allclose(small_y, ref_y, **tol)
    assert small_y.dtype == general_y.dtype == np.dtype(dtype)
    for name, s, g, r in zip(ref_grads._fields, small_grads, general_grads, ref_grads):
        if r is None:
            assert s is None and g is None, name
            continue
        scale = max(1.0, float(np.abs(r).max()))
        np.testing.assert_allclose(s, g, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=name)
        np.testing.assert_allclose(s, r, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=name)
        assert s.dtype == g.dtype, name


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "weight_standardization"])
def test_row_lane_widens_at_one_thread(op, driver_calls, monkeypatch):
    """The row norms' lane takes ROW_FACTOR times SMALL_ELEMENTS at any thread count and
    ONE_THREAD_ROW_FACTOR times at one thread, where a parallel launch buys nothing; a prepared
    call made at one thread still takes the parallel kernels at two."""
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 72)
    elements = 72 * 8  # between the two limits
    x, dy, w, b, ca = _case(op, "rows", elements, "float32")
    assert _small.ROW_FACTOR * 72 < x.size <= _small.ONE_THREAD_ROW_FACTOR * 72
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_y, one_grads = _run(nn, op, x, dy, w, b, ca)
        one_y_again, _ = _run(nn, op, x, dy, w, b, ca)
        assert driver_calls.count("norm_rows_backward") == 2 and len(driver_calls) >= 3, driver_calls
        driver_calls.clear()
        if numba.config.NUMBA_NUM_THREADS > 1:
            numba.set_num_threads(2)
            two_y, two_grads = _run(nn, op, x, dy, w, b, ca)
            assert not driver_calls, f"the row lane ran above ROW_FACTOR at two threads: {driver_calls}"
            np.testing.assert_allclose(one_y, two_y, rtol=2e-5, atol=2e-5)
            for s, g in zip(one_grads, two_grads):
                if s is not None:
                    np.testing.assert_allclose(s, g, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(g).max())))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one_y, one_y_again)
    ref_y, _ = _run(ref, op, x.astype(np.float64), dy.astype(np.float64),
                    *(None if p is None else p.astype(np.float64) for p in (w, b)), ca)
    np.testing.assert_allclose(one_y, ref_y, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["instance_norm", "group_norm"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_per_sample_backward_lane_is_wider(op, layout, dtype, driver_calls, monkeypatch):
    """Instance and group norm's backward stays in the lane up to PER_SAMPLE_BACKWARD_FACTOR times
    SMALL_ELEMENTS, past their forward's PER_SAMPLE_FACTOR (float64 at more than one thread: half
    as many elements, as many bytes), and leaves it above; on both sides it gives the general
    path's gradients and the float64 reference's."""
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 256)
    halved = dtype == "float64" and _cpu.thread_count() > 1
    x, dy, w, b, ca = _case(op, layout, 256 * _small.PER_SAMPLE_BACKWARD_FACTOR // (2 if halved else 1), dtype)
    assert _small.PER_SAMPLE_FACTOR * 256 < x.size
    lane_y, lane_grads = _run(nn, op, x, dy, w, b, ca)
    assert driver_calls == ["grid_backward"], driver_calls
    driver_calls.clear()
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 255)
    general_y, general_grads = _run(nn, op, x, dy, w, b, ca)
    assert not driver_calls, f"the backward lane ran above its crossover: {driver_calls}"
    ref_y, ref_grads = _run(ref, op, *(a.astype(np.float64) for a in (x, dy, w, b)), ca)
    tol = 1e-11 if dtype == "float64" else 2e-5
    np.testing.assert_array_equal(lane_y, general_y)  # the same fused forward on both sides
    np.testing.assert_allclose(lane_y, ref_y, rtol=tol, atol=tol)
    for name, s, g, r in zip(ref_grads._fields, lane_grads, general_grads, ref_grads):
        assert (s is None) == (g is None) == (r is None), name
        if r is not None:
            scale = max(1.0, float(np.abs(r).max()))
            np.testing.assert_allclose(s, g, rtol=tol, atol=tol * scale, err_msg=name)
            np.testing.assert_allclose(s, r, rtol=tol, atol=tol * scale, err_msg=name)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("op", ["instance_norm", "group_norm"])
def test_a_float64_backward_leaves_the_lane_at_half_the_elements_at_two_threads(op, driver_calls, monkeypatch):
    """Past half of PER_SAMPLE_BACKWARD_FACTOR times SMALL_ELEMENTS a float64 backward takes the
    parallel kernels at two threads and the lane at one, with the same gradients."""
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 256)
    x, dy, w, b, ca = _case(op, "nchw", 256 * _small.PER_SAMPLE_BACKWARD_FACTOR, "float64")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        _, two = _run(nn, op, x, dy, w, b, ca)
        assert "grid_backward" not in driver_calls, driver_calls
        numba.set_num_threads(1)
        _, one = _run(nn, op, x, dy, w, b, ca)
        assert driver_calls[-1] == "grid_backward", driver_calls
    finally:
        numba.set_num_threads(before)
    for name, s, g in zip(two._fields, two, one):
        if s is not None:
            np.testing.assert_allclose(s, g, rtol=1e-11, atol=1e-11 * max(1.0, float(np.abs(g).max())), err_msg=name)


def test_small_lane_keeps_running_statistics_and_stats(driver_calls):
    """Batch norm in the small lane updates the running statistics as the general path does and
    returns the same NormStats."""
    x, _, w, b, _ = _case("batch_norm", "nchw", 512, "float32", seed=3)
    results = []
    for small in (True, False):
        rm, rv, nbt = np.zeros(16, np.float32), np.ones(16, np.float32), np.zeros(1, np.int64)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(_small, "SMALL_ELEMENTS", 10**6 if small else 0)
            y, stats = nn.batch_norm(x, rm, rv, w, b, training=True, momentum=None, num_batches_tracked=nbt,
                                     return_stats=True)
        results.append((y, stats, rm, rv, nbt))
    assert driver_calls == ["grid_forward"]
    (y1, s1, rm1, rv1, n1), (y2, s2, rm2, rv2, n2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-6)
    exact = ref.batch_norm(x.astype(np.float64), None, None, training=True, return_stats=True)[1]
    for stats, rtol in ((s1, 1e-13), (s2, 1e-7)):  # float64 sums here, float32 chunk sums there
        np.testing.assert_allclose(stats.mean, exact.mean, rtol=rtol)
        np.testing.assert_allclose(stats.rstd, exact.rstd, rtol=rtol)
    np.testing.assert_allclose(rm1, rm2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv1, rv2, rtol=1e-6)
    assert s1.mean.dtype == s2.mean.dtype == np.float64 and s1.mean.shape == s2.mean.shape == (16,)
    assert n1[0] == n2[0] == 1


@pytest.mark.parametrize("make,lane", [
    (lambda x: np.asfortranarray(x), False),
    (lambda x: x[:, ::-1], False),
    (lambda x: x.astype(np.float16), False),
    (lambda x: x.astype(">f4"), True),  # swapped to native order by the checks: then C-contiguous
], ids=["fortran", "negative-stride", "float16", "big-endian"])
def test_layouts_and_dtypes_outside_the_lane(make, lane, driver_calls):
    """The drivers take C-contiguous native float32/float64 only; the rest is planned as before;
    every one is correct."""
    x = make(np.random.default_rng(1).standard_normal((8, 16, 3, 3)).astype(np.float32))
    y = nn.group_norm(x, 4)
    assert bool(driver_calls) == lane
    expected = ref.group_norm(np.asarray(x, np.float64), 4)
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=2e-3 if x.dtype == np.float16 else 1e-5,
                               atol=2e-3 if x.dtype == np.float16 else 1e-5)


def test_out_argument_in_the_small_lane(driver_calls):
    """``out`` is written in place (directly when C-contiguous, by a copy otherwise)."""
    x = np.random.default_rng(2).standard_normal((16, 32)).astype(np.float32)
    for out in (np.empty_like(x), np.empty_like(x, order="F")):
        y = nn.layer_norm(x, 32, out=out)
        assert y is out
        np.testing.assert_allclose(out, ref.layer_norm(x.astype(np.float64), 32), rtol=1e-5, atol=1e-5)
    assert driver_calls == ["norm_rows", "norm_rows"]


def test_absent_parameters_are_not_written(driver_calls):
    """The shared ones/zeros that stand in for absent weight and bias are left as they were."""
    x = np.random.default_rng(4).standard_normal((4, 8, 5)).astype(np.float64)
    y, stats = nn.instance_norm(x, return_stats=True)
    nn.instance_norm_backward(np.ones_like(x), x, stats)
    assert driver_calls == ["grid_forward", "grid_backward"]
    for value in (1.0, 0.0):
        shared = _small.constant(value, 8, np.dtype(np.float64))
        assert (shared == value).all()


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_row_norm_over_a_whole_2d_array(op, driver_calls):
    """A 2-D input normalized over both axes is one row of all its values, not its own rows."""
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((2, 4, 7)), rng.standard_normal((4, 7))
    x = x[0]
    y, stats = getattr(nn, op)(x, (4, 7), return_stats=True)
    grads = getattr(nn, op + "_backward")(dy, x, stats, (4, 7))
    assert driver_calls == ["norm_rows", "norm_rows_backward"]
    expected, ref_stats = getattr(ref, op)(x, (4, 7), return_stats=True)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.rstd, ref_stats.rstd, rtol=1e-12)
    assert stats.mean.shape == stats.rstd.shape == ()
    np.testing.assert_allclose(grads.input, getattr(ref, op + "_backward")(dy, x, ref_stats, (4, 7)).input,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [lambda x: x, np.asfortranarray, lambda x: x[:, ::-1], lambda x: x.astype(np.float16)],
                         ids=["c", "fortran", "negative-stride", "float16"])
@pytest.mark.parametrize("axes,weight_shape,lane", [
    ((0, 2), (6, 1, 1), True),  # per (channel, width) statistics, a per-channel scale: one row each once transposed
    ((1,), None, True),
    ((0, 2), (5, 1, 1, 1), False),  # a scale along a reduced axis: not one value a row
], ids=["kept-scale", "no-scale", "reduced-scale"])
def test_normalize_lane_transposes_any_layout(make, axes, weight_shape, lane, driver_calls):
    """`normalize` takes the small lane for any layout and dtype (it reads the input transposed,
    the kept axes first), unless a parameter varies along a reduced axis; both ways it matches
    the float64 reference, forward and backward, and lays the result out like x."""
    rng = np.random.default_rng(6)
    x = make((rng.standard_normal((5, 6, 4, 3)) + 4).astype(np.float32))
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    w = None if weight_shape is None else rng.standard_normal(weight_shape).astype(x.dtype)
    b = None if w is None else rng.standard_normal(weight_shape).astype(x.dtype)
    y, stats = nn.normalize(x, axes, w, b, return_stats=True)
    grads = nn.normalize_backward(dy, x, stats, axes, w)
    assert driver_calls == (["grid_forward", "grid_backward"] if lane else [])
    wide = lambda a: None if a is None else np.asarray(a, np.float64)
    ref_y, ref_stats = ref.normalize(wide(x), axes, wide(w), wide(b), return_stats=True)
    ref_grads = ref.normalize_backward(wide(dy), wide(x), ref_stats, axes, wide(w))
    tol = 3e-3 if x.dtype == np.float16 else 2e-5
    assert y.dtype == x.dtype and y.shape == x.shape and y.flags.f_contiguous == x.flags.f_contiguous
    np.testing.assert_allclose(np.asarray(y, np.float64), ref_y, rtol=tol, atol=tol)
    np.testing.assert_allclose(stats.rstd, ref_stats.rstd, rtol=1e-5)
    for name, g, r in zip(ref_grads._fields, grads, ref_grads):
        assert (g is None) == (r is None), name
        if r is not None:
            assert g.shape == r.shape and g.dtype == x.dtype, name
            np.testing.assert_allclose(np.asarray(g, np.float64), r, rtol=tol, atol=tol * max(1, np.abs(r).max()),
                                       err_msg=name)


@pytest.mark.parametrize("small", [True, False])
@pytest.mark.parametrize("shape,axes,weight_shape", [
    ((6, 40, 30), (1, 2), (30,)),  # a per-feature scale over the trailing axes: a layer norm
    ((6, 40, 30), (2,), (40, 30)),  # constant along axis 1, which is not normalized: not one
    ((6, 40, 30), (1, 2), None),
])
def test_normalize_over_trailing_axes_is_a_layer_norm(shape, axes, weight_shape, small, monkeypatch):
    """`normalize` over the trailing axes with parameters constant along the others runs the
    layer norm's row kernels (their small lane below the crossover, the fused kernels above),
    with the reference's results and gradients in the parameters' own shapes."""
    from numbanorm import _normalize

    routed = []
    _spy(monkeypatch, _normalize, ("row_forward", "row_backward"), routed)
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 10 ** 6 if small else 0)
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) + 2).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w = None if weight_shape is None else rng.standard_normal(weight_shape).astype(np.float32)
    b = None if w is None else rng.standard_normal(weight_shape).astype(np.float32)
    y, stats = nn.normalize(x, axes, w, b, return_stats=True)
    grads = nn.normalize_backward(dy, x, stats, axes, w)
    layer_norm = weight_shape is None or len(weight_shape) <= len(axes)
    assert routed == (["row_forward", "row_backward"] if layer_norm else [])
    wide = lambda a: None if a is None else a.astype(np.float64)
    ref_y, ref_stats = ref.normalize(wide(x), axes, wide(w), wide(b), return_stats=True)
    ref_grads = ref.normalize_backward(wide(dy), wide(x), ref_stats, axes, wide(w))
    np.testing.assert_allclose(y, ref_y, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(stats.mean, ref_stats.mean, rtol=1e-6)
    for name, g, r in zip(ref_grads._fields, grads, ref_grads):
        assert (g is None) == (r is None), name
        if r is not None:
            assert g.shape == r.shape, name
            np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5 * max(1, np.abs(r).max()), err_msg=name)


# the lane from the front: a plain forward's exact tests in Python, then the lane's driver

def _assert_same_results(x, ys, stats, checked_y, checked_stats):
    """The lane's outputs ``ys`` and statistics are the checked path's, bit for bit,
    with their types, shapes and dtypes; each output a new C-contiguous writable array."""
    for y in ys:
        np.testing.assert_array_equal(y, checked_y)
        assert y.dtype == x.dtype and y.shape == x.shape and y.flags.c_contiguous and y.flags.writeable
    assert type(stats) is type(checked_stats)
    for name, a, c in zip(stats._fields, stats, checked_stats):
        if isinstance(c, np.ndarray):
            assert a.shape == c.shape and a.dtype == c.dtype, name
            np.testing.assert_array_equal(a, c, err_msg=name)
        else:
            assert a == c and type(a) is type(c), name


def _assert_refused_alike(call, lane, monkeypatch, *args):
    """``call(*args)`` raises the checks' exception and message with the lane ``_small.<lane>``
    open as with it shut."""
    with monkeypatch.context() as m:
        m.setattr(_small, lane, lambda *a: None)
        with pytest.raises((TypeError, ValueError)) as checked:
            call(*args)
    with pytest.raises(checked.type) as refused:
        call(*args)
    assert str(refused.value) == str(checked.value)


ROW_LANE_SHAPES = [((4, 16), (16,)), ((4, 16), 16), ((16,), 16), ((2, 3, 8), (3, 8)), ((3, 5, 7), 7), ((6, 1), 1)]


def _row_args(op, x, normalized, rng, params):
    """(normalized_shape, weight[, bias]) for ``op``: parameters of the normalized shape, None, or a
    strided view for a bias."""
    pshape = (normalized,) if isinstance(normalized, int) else normalized
    if params == "none":
        w = b = None
    else:
        w, b = (rng.standard_normal(pshape).astype(x.dtype) for _ in range(2))
        if params == "unusual":
            b = np.repeat(b[..., None], 2, axis=-1)[..., 0]  # b's values, every other element of a buffer
    return (normalized, w, b) if op == "layer_norm" else (normalized, w)


@pytest.mark.parametrize("params", ["given", "none", "unusual"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_a_plain_row_norm_takes_the_lane_from_the_front(op, dtype, params, prepared_hits, monkeypatch):
    """Within the lane a plain row norm goes from the public function to the lane's driver
    (``_small.row_norm``), past the front's checks and the prepared calls' key and lookup, with
    and without parameters, for any leading and normalized shape.  It gives the checked path's
    bits (the same driver), the statistics' values, shapes and types included."""
    served = _served(monkeypatch, "row_norm")
    fn = getattr(nn, op)
    rng = np.random.default_rng(16)
    for shape, normalized in ROW_LANE_SHAPES:
        x = (2 + rng.standard_normal(shape)).astype(dtype)
        args = _row_args(op, x, normalized, rng, params)
        y = fn(x, *args)
        y_with_stats, stats = fn(x, *args, return_stats=True)
        assert prepared_hits == []
        _assert_row_lane_results(op, x, args, (y, y_with_stats), stats, monkeypatch)
        prepared_hits.clear()
    assert served == [True, True] * len(ROW_LANE_SHAPES)


def _assert_row_lane_results(op, x, args, ys, stats, monkeypatch):
    """A row lane's outputs ``ys`` and ``stats`` are the checked path's bits (the lane shut: the
    checks in Python, then the same driver or kernel) and near the float64 reference's."""
    fn = getattr(nn, op)
    with monkeypatch.context() as m:
        m.setattr(_small, "row_norm", lambda *a: None)
        checked_y, checked_stats = fn(x, *args, return_stats=True)
    _assert_same_results(x, ys, stats, checked_y, checked_stats)
    wide = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]
    tol = dict(rtol=2e-5, atol=2e-5) if x.dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ys[0], getattr(ref, op)(x.astype(np.float64), *wide), **tol)


# past the serial crossover at two threads (SMALL_ELEMENTS 64, ROW_FACTOR 4): rows enough for
# both threads, then too few
PARALLEL_ROW_LANE_SHAPES = [((16, 32), (32,)), ((8, 64), 64), ((4, 8, 16), (8, 16)), ((2, 4, 8, 8), 8)]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("params", ["given", "none", "unusual"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_past_the_serial_crossover_the_row_lane_runs_the_fused_kernel(op, dtype, params, driver_calls,
                                                                     prepared_hits, monkeypatch):
    """At two threads a plain row norm past ROW_FACTOR times SMALL_ELEMENTS (up to
    ONE_THREAD_ROW_FACTOR times) runs from the lane the fused parallel kernel the checked path
    runs, without the checks, key or lookup, and gives its bits; with fewer rows than two a
    thread, rows too long for the fused kernels, or under a threading layer that needs the launch
    guard, it leaves the call to the front."""
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 64)
    kernel_calls = []
    _spy(monkeypatch, _small, ["row_normalize_viewed"], kernel_calls)
    fn = getattr(nn, op)
    rng = np.random.default_rng(17)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        for shape, normalized in PARALLEL_ROW_LANE_SHAPES + [((2, 256), 256)]:
            x = (2 + rng.standard_normal(shape)).astype(dtype)
            assert _small.ROW_FACTOR * 64 < x.size <= _small.ONE_THREAD_ROW_FACTOR * 64
            args = _row_args(op, x, normalized, rng, params)
            y = fn(x, *args)
            y_with_stats, stats = fn(x, *args, return_stats=True)
            lane = x.size // int(np.prod(normalized)) >= 4  # rows
            assert kernel_calls == (["row_normalize_viewed"] * 2 if lane else []), shape
            assert len(prepared_hits) == (0 if lane else 2), shape  # the front's key and lookup, or none
            kernel_calls.clear()
            _assert_row_lane_results(op, x, args, (y, y_with_stats), stats, monkeypatch)
            prepared_hits.clear()
        x = rng.standard_normal((16, 32)).astype(dtype)
        with monkeypatch.context() as m:  # rows longer than the fused kernels take
            m.setattr(_cpu, "FUSED_ROW_BYTES", 32 * x.itemsize - 1)
            np.testing.assert_array_equal(fn(x, 32), checked := fn.route(x, 32))
            assert not kernel_calls and checked.shape == x.shape
        monkeypatch.setattr(_small, "launch_guard", lambda: _dispatch._workqueue_lock)
        np.testing.assert_array_equal(fn(x, 32), fn.route(x, 32))
        assert not kernel_calls
    finally:
        numba.set_num_threads(before)
    assert not driver_calls


GRID_LANE_SHAPES = [((4, 8, 3, 3), 1), ((4, 3, 3, 8), -1), ((2, 8, 5), 1), ((2, 3, 4, 8), 3), ((3, 8, 2, 2, 2), 1)]


def _grid_params(rng, channels, dtype, params):
    """(weight, bias) of ``channels``: given, None, or with a strided view for a bias."""
    if params == "none":
        return None, None
    w, b = (rng.standard_normal(channels).astype(dtype) for _ in range(2))
    return (w, np.repeat(b, 2)[::2]) if params == "unusual" else (w, b)  # b's values, every other element


def _grid_call(api, op, x, w, b, ca, **options):
    if op == "batch_norm":
        return api.batch_norm(x, None, None, w, b, training=True, channel_axis=ca, **options)
    if op == "instance_norm":
        return api.instance_norm(x, None, None, w, b, channel_axis=ca, **options)
    return api.group_norm(x, 2, w, b, channel_axis=ca, **options)


@pytest.mark.parametrize("params", ["given", "none", "unusual"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["batch_norm", "instance_norm", "group_norm"])
def test_a_plain_grid_norm_takes_the_lane_from_the_front(op, dtype, params, prepared_hits, monkeypatch):
    """Within the lane a plain batch, instance or group norm forward with batch statistics goes
    from the public function to the lane's driver (``_small.grid_norm``), for either channel axis
    and any number of spatial axes, and gives the checked path's bits (the same driver),
    statistics included."""
    served = _served(monkeypatch, "grid_norm")
    rng = np.random.default_rng(18)
    for shape, ca in GRID_LANE_SHAPES:
        x = (2 + rng.standard_normal(shape)).astype(dtype)
        w, b = _grid_params(rng, shape[ca], dtype, params)
        y = _grid_call(nn, op, x, w, b, ca)
        y_with_stats, stats = _grid_call(nn, op, x, w, b, ca, return_stats=True)
        assert prepared_hits == []
        with monkeypatch.context() as m:
            m.setattr(_small, "grid_norm", lambda *a: None)  # the checks in Python, then the same driver
            checked_y, checked_stats = _grid_call(nn, op, x, w, b, ca, return_stats=True)
        prepared_hits.clear()
        _assert_same_results(x, (y, y_with_stats), stats, checked_y, checked_stats)
        wide = [None if p is None else p.astype(np.float64) for p in (w, b)]
        expected = _grid_call(ref, op, x.astype(np.float64), *wide, ca)
        tol = dict(rtol=2e-5, atol=2e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y, expected, **tol)
    assert served == [True, True] * len(GRID_LANE_SHAPES)


@pytest.mark.parametrize("call", [
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, channel_axis=0),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, channel_axis=4),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, channel_axis=-4),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, channel_axis=True),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, channel_axis=1.0),
    lambda x, w: nn.batch_norm(x, None, None, w[:4], w, training=True),
    lambda x, w: nn.batch_norm(x, None, None, w, w[None], training=True),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, eps=-1.0),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, eps=float("nan")),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, momentum=2.0),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, momentum=float("nan")),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, running_var_unbiased=1),
    lambda x, w: nn.batch_norm(x[:1, :, :1, :1], None, None, w, w, training=True),
    lambda x, w: nn.batch_norm(x, None, None, w, w, training=False),
    lambda x, w: nn.instance_norm(x[:, :, :1, :1], None, None, w, w),
    lambda x, w: nn.instance_norm(x, None, None, w, w, momentum=-0.5),
    lambda x, w: nn.group_norm(x, 3, w, w),
    lambda x, w: nn.group_norm(x, 0, w, w),
    lambda x, w: nn.group_norm(x, 16, w, w),
    lambda x, w: nn.group_norm(x, True, w, w),
    lambda x, w: nn.group_norm(x, 2.0, w, w),
    lambda x, w: nn.group_norm(x, 2, w, w, channel_axis=-4),
    lambda x, w: nn.group_norm(x[0, 0, 0], 2, w, w),
], ids=["bn-axis-0", "bn-axis-4", "bn-axis-minus-4", "bn-bool-axis", "bn-float-axis", "bn-weight", "bn-bias-ndim",
        "bn-eps", "bn-nan-eps", "bn-momentum", "bn-nan-momentum", "bn-unbiased-flag", "bn-one-value",
        "bn-eval-without-running", "in-one-value", "in-momentum", "gn-groups", "gn-zero-groups", "gn-more-groups",
        "gn-bool-groups", "gn-float-groups", "gn-axis", "gn-1d"])
def test_the_grid_lane_refuses_as_the_checks_do(call, monkeypatch):
    """A bad argument to a plain grid norm gets the exception and message of the checks in
    Python, whether the lane's own tests turn it away or not."""
    rng = np.random.default_rng(19)
    x, w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    _assert_refused_alike(call, "grid_norm", monkeypatch, x, w)


# past the serial crossover at two threads (SMALL_ELEMENTS 64): channels-first inputs with rows
# enough for both threads, then inputs the lane leaves to the front (too few rows, channels last)
PARALLEL_GRID_LANE_SHAPES = [((4, 8, 3, 3), 1, True), ((2, 4, 5, 4), 1, True), ((8, 4, 4, 4), 1, True),
                             ((2, 4, 64), 1, True), ((1, 2, 256), 1, False), ((4, 3, 3, 8), -1, False)]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("params", ["given", "none", "unusual"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["instance_norm", "group_norm"])
def test_past_the_serial_crossover_the_grid_lane_runs_the_fused_row_kernel(op, dtype, params, driver_calls,
                                                                           prepared_hits, monkeypatch):
    """At two threads a plain channels-first instance or group norm past PARALLEL_PER_SAMPLE_FACTOR
    times SMALL_ELEMENTS (up to FUSED_LANE_FACTOR times) runs from the lane the fused row kernel
    the checked path runs on its (sample, group) rows, and gives its bits, statistics included;
    with fewer rows than two a thread, channels last, or under a threading layer that needs the
    launch guard, it leaves the call to the front.  At one thread the same input stays serial."""
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 64)
    kernel_calls = []
    _spy(monkeypatch, _small, ["row_normalize_viewed"], kernel_calls)
    rng = np.random.default_rng(21)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        for shape, ca, lane in PARALLEL_GRID_LANE_SHAPES:
            x = (2 + rng.standard_normal(shape)).astype(dtype)
            assert _small.PARALLEL_PER_SAMPLE_FACTOR * 64 < x.size <= _small.FUSED_LANE_FACTOR * 64
            w, b = _grid_params(rng, shape[ca], dtype, params)
            y = _grid_call(nn, op, x, w, b, ca)
            y_with_stats, stats = _grid_call(nn, op, x, w, b, ca, return_stats=True)
            assert kernel_calls == (["row_normalize_viewed"] * 2 if lane else []), shape
            assert len(prepared_hits) == (0 if lane else 2), shape  # the front's key and lookup, or none
            kernel_calls.clear()
            with monkeypatch.context() as m:
                m.setattr(_small, "grid_norm", lambda *a: None)  # the checks in Python, then the same kernel
                checked_y, checked_stats = _grid_call(nn, op, x, w, b, ca, return_stats=True)
            prepared_hits.clear()
            _assert_same_results(x, (y, y_with_stats), stats, checked_y, checked_stats)
            wide = [None if p is None else p.astype(np.float64) for p in (w, b)]
            tol = dict(rtol=2e-5, atol=2e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(y, _grid_call(ref, op, x.astype(np.float64), *wide, ca), **tol)
        assert not driver_calls, "the serial driver ran past the crossover at two threads"
        x = rng.standard_normal((2, 8, 3, 3)).astype(dtype)
        assert _small.PARALLEL_PER_SAMPLE_FACTOR * 64 < x.size <= _small.PER_SAMPLE_FACTOR * 64
        with monkeypatch.context() as m:
            m.setattr(_small, "launch_guard", lambda: _dispatch._workqueue_lock)
            np.testing.assert_array_equal(_grid_call(nn, op, x, None, None, 1), _grid_call(nn, op, x, None, None, 1))
            assert not kernel_calls
        numba.set_num_threads(1)
        one = _grid_call(nn, op, x, None, None, 1)
        assert driver_calls == ["grid_forward"] and not kernel_calls
        np.testing.assert_allclose(one, _grid_call(ref, op, x.astype(np.float64), None, None, 1),
                                   rtol=2e-5 if dtype == "float32" else 1e-12, atol=2e-5 if dtype == "float32" else 1e-12)
    finally:
        numba.set_num_threads(before)


def _grid_backward_call(api, op, dy, x, stats, w, ca):
    if op == "batch_norm":
        return api.batch_norm_backward(dy, x, stats, w, channel_axis=ca)
    if op == "instance_norm":
        return api.instance_norm_backward(dy, x, stats, w, channel_axis=ca)
    return api.group_norm_backward(dy, x, stats, 2, w, channel_axis=ca)


def _assert_same_grads(grads, checked, dtype):
    """Grads equal the checked path's bit for bit, with their types and dtypes."""
    assert type(grads) is type(checked)
    for name, g, c in zip(checked._fields, grads, checked):
        assert (g is None) == (c is None), name
        if c is not None:
            assert g.dtype == c.dtype == np.dtype(dtype) and g.shape == c.shape, name
            assert g.flags.c_contiguous and g.flags.writeable, name
            np.testing.assert_array_equal(g, c, err_msg=name)


@pytest.mark.parametrize("params", ["given", "none", "unusual"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["batch_norm", "instance_norm", "group_norm"])
def test_a_plain_grid_backward_takes_the_lane_from_the_front(op, dtype, params, driver_calls, monkeypatch):
    """Within the lane a plain batch, instance or group norm backward, given its forward's
    `NormStats`, goes from the public function to the lane's driver (``_small.grid_grads``), for
    either channel axis and any number of spatial axes, and gives the checked path's bits (the
    same driver, the statistics copied there)."""
    served = _served(monkeypatch, "grid_grads")
    rng = np.random.default_rng(22)
    for shape, ca in GRID_LANE_SHAPES:
        x = (2 + rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        b, w = _grid_params(rng, shape[ca], dtype, params)  # the strided one is the weight here
        _, stats = _grid_call(nn, op, x, w, b, ca, return_stats=True)
        driver_calls.clear()
        grads = _grid_backward_call(nn, op, dy, x, stats, w, ca)
        assert driver_calls == ["grid_backward"]
        with monkeypatch.context() as m:
            m.setattr(_small, "grid_grads", lambda *a: None)  # the checks in Python, then the same driver
            checked = _grid_backward_call(nn, op, dy, x, stats, w, ca)
        _assert_same_grads(grads, checked, dtype)
        wide = [None if p is None else p.astype(np.float64) for p in (w, b)]
        _, ref_stats = _grid_call(ref, op, x.astype(np.float64), *wide, ca, return_stats=True)
        expected = _grid_backward_call(ref, op, dy.astype(np.float64), x.astype(np.float64), ref_stats, wide[0], ca)
        tol = 2e-5 if dtype == "float32" else 1e-11
        for name, g, r in zip(expected._fields, grads, expected):
            assert (g is None) == (r is None), name
            if r is not None:
                np.testing.assert_allclose(g, r, rtol=tol, atol=tol * max(1.0, float(np.abs(r).max())), err_msg=name)
    assert served == [True] * len(GRID_LANE_SHAPES)


def _unusual_stats(stats):
    """The same statistics in forms the lane leaves to the checks, which accept and copy them."""
    import collections

    frozen = stats.mean.copy()
    frozen.setflags(write=False)
    other_kind = collections.namedtuple("Stats", "mean rstd batch_stats has_bias")
    unusual = [stats._replace(mean=frozen), stats._replace(rstd=np.repeat(stats.rstd, 2, axis=-1)[..., ::2]),
               stats._replace(batch_stats=np.bool_(True)), stats._replace(has_bias=1),
               other_kind(stats.mean, stats.rstd, True, True)]
    if stats.mean.ndim == 2:
        unusual.append(stats._replace(mean=np.asfortranarray(stats.mean)))
    return unusual


@pytest.mark.parametrize("op", ["batch_norm", "instance_norm", "group_norm"])
def test_statistics_the_backward_lane_leaves_to_the_checks(op, driver_calls, monkeypatch):
    """Statistics other than the forwards' own -- read-only, strided or Fortran-ordered arrays,
    non-bool flags, another class of named tuple, float32 -- take the checked path, which copies
    them to the driver's layout, with the gradients of the forward's own statistics."""
    rng = np.random.default_rng(23)
    x = (2 + rng.standard_normal((4, 8, 3, 3))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(8).astype(np.float32)
    _, stats = _grid_call(nn, op, x, w, w, 1, return_stats=True)
    expected = _grid_backward_call(nn, op, dy, x, stats, w, 1)
    served = _served(monkeypatch, "grid_grads")
    driver_calls.clear()
    for other in _unusual_stats(stats):
        _assert_same_grads(_grid_backward_call(nn, op, dy, x, other, w, 1), expected, "float32")
    grads = _grid_backward_call(nn, op, dy, x, stats._replace(mean=stats.mean.astype(np.float32)), w, 1)
    np.testing.assert_allclose(grads.input, expected.input, rtol=1e-4, atol=1e-4)
    assert served == [False] * len(served) and len(served) >= 6
    assert driver_calls.count("grid_backward") == len(served)


@pytest.mark.parametrize("call", [
    lambda dy, x, s, w: nn.group_norm_backward(dy[:2], x, s, 2, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy.astype(np.float64), x, s, 2, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s, 4, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s, 3, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s, 0, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s, True, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s, 2.0, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s, 2, w[:4]),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s, 2, w, channel_axis=0),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s, 2, w, channel_axis=True),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, None, 2, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s._replace(mean=s.mean[:, :1]), 2, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s._replace(rstd=s.rstd.T), 2, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy, x, s._replace(mean=s.mean.astype(np.int64)), 2, w),
    lambda dy, x, s, w: nn.group_norm_backward(dy[0, 0, 0], x[0, 0, 0], s, 2, w),
    lambda dy, x, s, w: nn.instance_norm_backward(dy, x, s, w),
    lambda dy, x, s, w: nn.batch_norm_backward(dy, x, s, w),
    lambda dy, x, s, w: nn.batch_norm_backward(dy, x, s._replace(mean=s.mean[0], rstd=s.rstd[0]), w),
], ids=["dy-shape", "dy-dtype", "other-groups", "groups", "zero-groups", "bool-groups", "float-groups", "weight",
        "axis-0", "bool-axis", "no-stats", "mean-shape", "rstd-transposed", "int-mean", "1d", "in-stats", "bn-stats",
        "bn-stats-shape"])
def test_the_grid_backward_lane_refuses_as_the_checks_do(call, monkeypatch):
    """A bad argument to a plain grid norm backward gets the exception and message of the checks
    in Python, whether the lane's own tests turn it away or not."""
    rng = np.random.default_rng(24)
    x, w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    _, stats = nn.group_norm(x, 2, w, w, return_stats=True)
    _assert_refused_alike(call, "grid_grads", monkeypatch, rng.standard_normal(x.shape).astype(np.float32), x, stats,
                          w)


@pytest.mark.parametrize("params", ["given", "none", "unusual"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_a_plain_row_backward_takes_the_lane_from_the_front(op, dtype, params, driver_calls, monkeypatch):
    """Within the lane a plain layer or RMS norm backward, given its forward's `NormStats`, goes
    from the public function to the lane's driver (``_small.row_grads``), for any leading and
    normalized shape, and gives the checked path's bits (the same driver) and the float64
    reference's values."""
    served = _served(monkeypatch, "row_grads")
    forward, backward = getattr(nn, op), getattr(nn, op + "_backward")
    rng = np.random.default_rng(25)
    for shape, normalized in ROW_LANE_SHAPES:
        x = (2 + rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        args = _row_args(op, x, normalized, rng, params)
        _, stats = forward(x, *args, return_stats=True)
        driver_calls.clear()
        grads = backward(dy, x, stats, normalized, args[1])
        assert driver_calls == ["norm_rows_backward"]
        with monkeypatch.context() as m:
            m.setattr(_small, "row_grads", lambda *a: None)  # the checks in Python, then the same driver
            checked = backward(dy, x, stats, normalized, args[1])
        _assert_same_grads(grads, checked, dtype)
        wide = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]
        _, ref_stats = getattr(ref, op)(x.astype(np.float64), *wide, return_stats=True)
        expected = getattr(ref, op + "_backward")(dy.astype(np.float64), x.astype(np.float64), ref_stats, normalized,
                                                  wide[1])
        # rounding errors of the centred input scaled by rstd (316 on the rows of one value)
        tol = (2e-5 if dtype == "float32" else 1e-11) * float(ref_stats.rstd.max())
        for name, g, r in zip(expected._fields, grads, expected):
            assert (g is None) == (r is None), name
            if r is not None:
                np.testing.assert_allclose(g, r, rtol=tol, atol=tol * max(1.0, float(np.abs(r).max())), err_msg=name)
    assert served == [True] * len(ROW_LANE_SHAPES)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_statistics_the_row_backward_lane_leaves_to_the_checks(op, driver_calls, monkeypatch):
    """As `test_statistics_the_backward_lane_leaves_to_the_checks`, for the row norms."""
    rng = np.random.default_rng(26)
    x = (2 + rng.standard_normal((6, 16))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(16).astype(np.float32)
    forward, backward = getattr(nn, op), getattr(nn, op + "_backward")
    _, stats = forward(x, 16, w, return_stats=True)
    expected = backward(dy, x, stats, 16, w)
    served = _served(monkeypatch, "row_grads")
    driver_calls.clear()
    for other in _unusual_stats(stats)[:4]:  # (a named tuple of another class has a bias gradient)
        _assert_same_grads(backward(dy, x, other, 16, w), expected if other.has_bias is False else
                           backward.route(dy, x, other, 16, w), "float32")
    assert served == [False] * 4 and driver_calls.count("norm_rows_backward") == 4 + 1


@pytest.mark.parametrize("call", [
    lambda dy, x, s, w: nn.layer_norm_backward(dy[:2], x, s, 16, w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy.astype(np.float64), x, s, 16, w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s, 15, w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s, (4, 16), w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s, (16.0,), w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s, True, w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s, (), w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s, 16, w[:8]),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s, 16, w[None]),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, None, 16, w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s._replace(mean=s.mean[:2]), 16, w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s._replace(rstd=s.rstd[:, None]), 16, w),
    lambda dy, x, s, w: nn.layer_norm_backward(dy, x, s._replace(mean=s.mean.astype(np.int64)), 16, w),
    lambda dy, x, s, w: nn.rms_norm_backward(dy, x, s, 15, w),
    lambda dy, x, s, w: nn.rms_norm_backward(dy, x, s._replace(rstd=s.rstd[:1]), 16, w),
], ids=["dy-shape", "dy-dtype", "shape", "longer-shape", "float-shape", "bool-shape", "empty-shape", "weight-shape",
        "weight-ndim", "no-stats", "mean-shape", "rstd-ndim", "int-mean", "rms-shape", "rms-stats"])
def test_the_row_backward_lane_refuses_as_the_checks_do(call, monkeypatch):
    """A bad argument to a plain row norm backward gets the exception and message of the checks in
    Python, whether the lane's own tests turn it away or not."""
    rng = np.random.default_rng(27)
    x, w = rng.standard_normal((4, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    _, stats = nn.layer_norm(x, 16, w, w, return_stats=True)
    _assert_refused_alike(call, "row_grads", monkeypatch, rng.standard_normal(x.shape).astype(np.float32), x, stats, w)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "weight_standardization"])
def test_past_the_serial_crossover_the_row_backward_lane_runs_the_fused_kernel(op, dtype, driver_calls,
                                                                              monkeypatch):
    """At two threads a plain row norm backward past ROW_FACTOR times SMALL_ELEMENTS (up to
    ONE_THREAD_ROW_FACTOR times) runs from the lane the fused parallel kernel the checked path
    runs (`CPUDevice.fused_row_backward`) and gives its bits; with fewer rows than two a thread it
    leaves the call to the front."""
    from numbanorm import _engine

    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 64)
    lane_calls = []
    original = _engine.CPUDevice.fused_row_backward

    def spy(*args, **kwargs):
        lane_calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(_engine.CPUDevice, "fused_row_backward", staticmethod(spy))  # the lane's; the front's is bound
    backward, lane = getattr(nn, op + "_backward"), "weight_grads" if op == "weight_standardization" else "row_grads"
    rng = np.random.default_rng(28)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        for shape, normalized in PARALLEL_ROW_LANE_SHAPES + [((2, 256), 256)]:
            x = (2 + rng.standard_normal(shape)).astype(dtype)
            dy = rng.standard_normal(shape).astype(dtype)
            if op == "weight_standardization":
                args = (dy, x)
            else:
                w = rng.standard_normal(normalized).astype(dtype)
                _, stats = getattr(nn, op)(x, normalized, w, return_stats=True)
                args = (dy, x, stats, normalized, w)
            grads = backward(*args)
            rows = x.shape[0] if op == "weight_standardization" else x.size // int(np.prod(normalized))
            assert lane_calls == ([(rows, x.size // rows)] if rows >= 4 else []), shape
            lane_calls.clear()
            with monkeypatch.context() as m:
                m.setattr(_small, lane, lambda *a: None)
                checked = backward(*args)
            if op == "weight_standardization":
                np.testing.assert_array_equal(grads, checked)
                assert grads.dtype == checked.dtype and grads.shape == checked.shape
            else:
                _assert_same_grads(grads, checked, dtype)
        assert not driver_calls, "the serial driver ran past the crossover at two threads"
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_plain_weight_standardization_backward_takes_the_lane(dtype, driver_calls, monkeypatch):
    """Within the lane a plain `weight_standardization_backward` goes from the public function to
    the lane's driver (``_small.weight_grads``, its statistics recomputed) and gives the checked
    path's bits and the float64 reference's values."""
    served = _served(monkeypatch, "weight_grads")
    rng = np.random.default_rng(29)
    for shape in [(8, 3, 3, 3), (4, 16), (6, 2, 5), (3, 1)]:
        w = (2 + rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        driver_calls.clear()
        dw = nn.weight_standardization_backward(dy, w)
        assert driver_calls == ["norm_rows_backward"]
        with monkeypatch.context() as m:
            m.setattr(_small, "weight_grads", lambda *a: None)
            checked = nn.weight_standardization_backward(dy, w)
        np.testing.assert_array_equal(dw, checked)
        assert dw.dtype == checked.dtype == np.dtype(dtype) and dw.shape == shape and dw.flags.c_contiguous
        expected = ref.weight_standardization_backward(dy.astype(np.float64), w.astype(np.float64))
        scale = max(1.0, float(np.abs(expected).max()))
        tol = 1e-4 if dtype == "float32" else 1e-10  # (3, 1): rows of one value, rstd 316
        np.testing.assert_allclose(dw, expected, rtol=tol, atol=tol * scale)
    assert served == [True] * 4


@pytest.mark.parametrize("call", [
    lambda dy, w: nn.weight_standardization_backward(dy, w, eps=-1.0),
    lambda dy, w: nn.weight_standardization_backward(dy, w, eps=float("nan")),
    lambda dy, w: nn.weight_standardization_backward(dy, w, eps="1e-5"),
    lambda dy, w: nn.weight_standardization_backward(dy[:2], w),
    lambda dy, w: nn.weight_standardization_backward(dy.astype(np.float64), w),
    lambda dy, w: nn.weight_standardization_backward(dy[0, 0, 0], w[0, 0, 0]),
    lambda dy, w: nn.weight_standardization_backward(dy, None),
], ids=["eps", "nan-eps", "str-eps", "dy-shape", "dy-dtype", "1d", "no-weight"])
def test_the_weight_standardization_backward_lane_refuses_as_the_checks_do(call, monkeypatch):
    """A bad argument gets the exception and message of the checks, with the lane open or shut."""
    rng = np.random.default_rng(30)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    _assert_refused_alike(call, "weight_grads", monkeypatch, rng.standard_normal(w.shape).astype(np.float32), w)


@pytest.mark.parametrize("name", ["layer_norm", "rms_norm", "weight_standardization", "batch_norm", "instance_norm",
                                  "group_norm", "batch_norm_backward", "instance_norm_backward",
                                  "group_norm_backward", "layer_norm_backward", "rms_norm_backward",
                                  "weight_standardization_backward"])
def test_a_lane_takes_its_public_functions_arguments(name):
    """A lane makes the public function (see `dispatch`), and hands the calls it does not take on
    to the routed one: it has the function's parameters, kinds and defaults, so a default changed
    in one place fails here."""
    import inspect

    public = getattr(nn, name)
    assert public is not public.route and public.route.__wrapped__ is public.cpu
    lane, fn = inspect.signature(public, follow_wrapped=False), inspect.signature(public.cpu)
    assert [(p.name, p.kind, p.default) for p in lane.parameters.values()] == \
        [(p.name, p.kind, p.default) for p in fn.parameters.values()]
    assert inspect.signature(public) == fn  # what help() and the documentation show


@pytest.mark.parametrize("call", [
    lambda x, w: nn.layer_norm(x, (15,), w, w),
    lambda x, w: nn.layer_norm(x, (1, 4, 16), None, None),
    lambda x, w: nn.layer_norm(x, (), w, w),
    lambda x, w: nn.layer_norm(x, 0),
    lambda x, w: nn.layer_norm(x, (16.0,), w, w),
    lambda x, w: nn.layer_norm(x, (True,)),
    lambda x, w: nn.layer_norm(x, (2 ** 70,)),
    lambda x, w: nn.layer_norm(x, (16,), w[:15], w),
    lambda x, w: nn.layer_norm(x, (16,), w[None], w),
    lambda x, w: nn.layer_norm(x, (16,), w, w[:15]),
    lambda x, w: nn.layer_norm(x, (4, 16), w, w),
    lambda x, w: nn.layer_norm(x, (16,), w, w, eps=-1.0),
    lambda x, w: nn.layer_norm(x, (16,), w, w, eps=float("inf")),
    lambda x, w: nn.layer_norm(x, (16,), w, w, eps=float("nan")),
    lambda x, w: nn.rms_norm(x, (16,), w[:8]),
    lambda x, w: nn.rms_norm(x, 15),
    lambda x, w: nn.weight_standardization(x, eps=-1.0),
    lambda x, w: nn.weight_standardization(x, eps=None),
    lambda x, w: nn.weight_standardization(w),
], ids=["shape", "longer-shape", "empty-shape", "zero-shape", "float-shape", "bool-shape", "huge-shape",
        "weight-shape", "weight-ndim", "bias-shape", "weight-rank", "negative-eps", "inf-eps", "nan-eps",
        "rms-weight", "rms-shape", "ws-eps", "ws-eps-none", "ws-1d"])
def test_the_row_lane_refuses_as_the_checks_do(call, monkeypatch):
    """A bad argument to a plain row norm gets the exception and message of the checks in Python,
    whether the lane's own tests turn it away or not."""
    rng = np.random.default_rng(17)
    x, w = rng.standard_normal((4, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    _assert_refused_alike(call, "row_norm", monkeypatch, x, w)


# prepared calls: a forward repeated with arguments like the last skips its checks

PREPARED_OPS = ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm", "weight_standardization",
                "normalize")


@pytest.fixture
def prepared_hits(monkeypatch):
    """Whether each lookup of a prepared call found one, in order; the cache starts empty."""
    monkeypatch.setattr(_prepared, "_PREPARED", {})
    hits, original = [], _prepared.lookup

    def spy(key):
        call = original(key)
        hits.append(call is not None)
        return call

    monkeypatch.setattr(_prepared, "lookup", spy)
    return hits


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("op,layout", [("layer_norm", "rows"), ("rms_norm", "rows"), ("group_norm", "nchw"),
                                       ("instance_norm", "nchw")])
def test_a_fused_call_prepared_at_two_threads_serves_one(op, layout, driver_calls, prepared_hits, monkeypatch):
    """A forward prepared above the lane at two threads (the fused row kernel, its shapes worked
    out once) gives the checked call's bits at any thread count."""
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 64)
    # the lanes run the fused kernel themselves up to ONE_THREAD_ROW_FACTOR (rows) and
    # FUSED_LANE_FACTOR (grid) times SMALL_ELEMENTS: past both here
    assert 2048 > 64 * max(_small.ONE_THREAD_ROW_FACTOR, _small.FUSED_LANE_FACTOR)
    x, _, w, b, ca = _case(op, layout, 2048, "float32", seed=3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        checked = OPS[op].run_forward(nn, x, w, b, ca, GROUPS)
        results = [OPS[op].run_forward(nn, x, w, b, ca, GROUPS)]  # prepared
        assert not driver_calls and prepared_hits == [False, True]
        numba.set_num_threads(1)
        results.append(OPS[op].run_forward(nn, x, w, b, ca, GROUPS))
        assert prepared_hits == [False, True, True]
    finally:
        numba.set_num_threads(before)
    assert not driver_calls
    for y, stats in results:
        np.testing.assert_allclose(y, checked[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats.rstd, checked[1].rstd, rtol=1e-5)
        assert stats.mean.shape == checked[1].mean.shape
    np.testing.assert_array_equal(results[0][0], checked[0])
    np.testing.assert_array_equal(results[1][0], checked[0])


@pytest.mark.parametrize("elements", [1024, 131072], ids=["lane", "planned"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op,layout", [(op, layout) for op in PREPARED_OPS for layout in _layouts(op)])
def test_a_repeated_call_is_prepared(op, layout, dtype, affine, elements, prepared_hits, driver_calls):
    """The second call of a signature skips the checks and gives, on new data, exactly what the
    checked call gives on that data (the same kernels: the small lane's driver, or the planned
    and fused ones above it), with the same statistics.  A plain row norm in the lane is one
    lane call that tests its arguments each time, and looks nothing up
    (`test_a_plain_row_norm_takes_the_lane_from_the_front`)."""
    x1, _, w, b, ca = _case(op, layout, elements, dtype, seed=8)
    x2, _, _, _, _ = _case(op, layout, elements, dtype, seed=9)
    if not affine:
        w = b = None
    first = OPS[op].run_forward(nn, x1, w, b, ca, GROUPS)
    prepared = OPS[op].run_forward(nn, x2, w, b, ca, GROUPS)
    _prepared._PREPARED.clear()
    checked = OPS[op].run_forward(nn, x2, w, b, ca, GROUPS)
    lane = op in COMPILED_LANE_OPS and elements == 1024
    assert prepared_hits == ([] if lane else [False, True, False])
    assert len(driver_calls) == (3 if elements == 1024 else 0)
    np.testing.assert_array_equal(prepared[0], checked[0])
    assert prepared[0].dtype == checked[0].dtype == np.dtype(dtype)
    if checked[1] is not None:
        assert type(prepared[1]) is type(checked[1])
        for name, p, c in zip(checked[1]._fields, prepared[1], checked[1]):
            if isinstance(c, np.ndarray):
                assert p.shape == c.shape and p.dtype == c.dtype, name
                np.testing.assert_array_equal(p, c, err_msg=name)
            else:
                assert p == c and type(p) is type(c), name
    expected = OPS[op].run_forward(ref, x2.astype(np.float64), *(None if p is None else p.astype(np.float64)
                                                                    for p in (w, b)), ca, GROUPS)[0]
    np.testing.assert_allclose(prepared[0], expected, rtol=2e-5, atol=2e-5)
    assert not np.array_equal(first[0], prepared[0])


@pytest.mark.parametrize("lane", [True, False])
def test_row_norms_prepared_over_several_axes(lane, prepared_hits, monkeypatch):
    """Leading and normalized shapes of any length: statistics come back in the leading shape,
    from the lane or (with the lane closed) from a prepared call."""
    if not lane:
        monkeypatch.setattr(_small, "SMALL_ELEMENTS", 0)
    rng = np.random.default_rng(10)
    cases = (((3, 4, 5, 6), (5, 6)), ((7,), 7), ((2, 3, 8), (8,)), ((4, 7), (4, 7)), ((6, 1), 1))
    for shape, normalized in cases:
        w = rng.standard_normal(normalized).astype(np.float32)
        for seed in (0, 1):
            x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
            y, stats = nn.layer_norm(x, normalized, w, w, return_stats=True)
            expected, ref_stats = ref.layer_norm(x.astype(np.float64), normalized, w, w, return_stats=True)
            np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)
            assert stats.mean.shape == stats.rstd.shape == ref_stats.mean.shape
            np.testing.assert_allclose(stats.rstd, ref_stats.rstd, rtol=1e-6)
    assert prepared_hits == ([] if lane else [False, True] * len(cases))


@pytest.mark.parametrize("call,error", [
    (lambda x, w: nn.layer_norm(x, (16.0,), w, w), TypeError),
    (lambda x, w: nn.layer_norm(x, 16, w, w, eps=-1.0), ValueError),
    (lambda x, w: nn.layer_norm(np.ascontiguousarray(x[:, :1]), (True,)), TypeError),
    (lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, channel_axis=True), TypeError),
    (lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, momentum=2.0), ValueError),
    (lambda x, w: nn.batch_norm(x, None, None, w, w, training=True, running_var_unbiased=1), TypeError),
    (lambda x, w: nn.batch_norm(x, None, None, w[:8], w, training=True), ValueError),
    (lambda x, w: nn.batch_norm(x[:1, :, None], None, None, w, w, training=True), ValueError),
    (lambda x, w: nn.group_norm(x, True, w, w), TypeError),
    (lambda x, w: nn.group_norm(x, 5, w, w), ValueError),
    (lambda x, w: nn.instance_norm(x[:, :, None], None, None, w, w), ValueError),
    (lambda x, w: nn.normalize(x, (0.0,), w, w), TypeError),
    (lambda x, w: nn.normalize(x, 0, w, w, eps=-1.0), ValueError),
    (lambda x, w: nn.normalize(x, 0, w, w, nan_policy="raise"), ValueError),
    (lambda x, w: nn.normalize(x, 0, w[:8], w), ValueError),
    (lambda x, w: nn.normalize(x, 2, w, w), ValueError),
], ids=["float-shape", "negative-eps", "bool-shape", "bool-axis", "momentum", "unbiased-flag", "weight-shape",
        "bn-one-value", "bool-groups", "groups", "in-one-value", "float-axes", "normalize-eps", "nan-policy",
        "normalize-weight", "axis-range"])
def test_prepared_calls_keep_every_check(call, error, prepared_hits):
    """Arguments that differ from a prepared call's only in a type or value the checks refuse
    (a bool for an int, a float for an int, a bad value) are refused as before, not served."""
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((4, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    # all but normalize's in the lane: tested in each call, prepared never
    good = [lambda: nn.layer_norm(x, (16,), w, w), lambda: nn.layer_norm(np.ascontiguousarray(x[:, :1]), (1,)),
            lambda: nn.batch_norm(x, None, None, w, w, training=True, channel_axis=1, momentum=0.1),
            lambda: nn.batch_norm(x[:2, :, None], None, None, w, w, training=True, channel_axis=1),
            lambda: nn.group_norm(x, 1, w, w), lambda: nn.instance_norm(x[:, :, None, None].repeat(2, 2)),
            lambda: nn.normalize(x, 0, w, w), lambda: nn.normalize(x, (0, 1), w, w)]
    for make in good * 2:
        make()
    assert prepared_hits == [False, False, True, True]
    with pytest.raises(error):
        call(x, w)


@pytest.mark.parametrize("shape,axes,param_shape", [
    ((4, 5, 6, 3), (1, 2, 3), (3,)),  # a layer norm with a per-channel scale: the row kernels
    ((4, 5, 6, 3), (0, 1, 2), (3,)),  # batch norm of channels-last data: the small lane's view
    ((4, 3, 5, 6), (0, 2), (3, 1, 6)),  # kept axes apart: the lane's transposed copy
    ((64, 48, 40), (0, 2), (48, 1)),  # above the lane: moments, then the planned affine pass
    ((4, 5, 6, 3), -1, None),
])
def test_normalize_is_prepared_in_each_of_its_cases(shape, axes, param_shape, prepared_hits):
    """A repeated `normalize` signature skips its checks in every case it plans (row kernels, the
    lane on a view or a copy, the planned passes) and gives the checked call's bits on new data and
    new parameters; a parameter that is a view into a larger array, of another dtype or read-only
    gives its own correct result, a read-only one checked on every call as in the other ops."""
    rng = np.random.default_rng(15)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    ps = [None if param_shape is None else rng.standard_normal(param_shape).astype(np.float32) for _ in range(3)]
    first = nn.normalize(xs[0], axes, ps[0], ps[0], return_stats=True)
    served = [nn.normalize(x, axes, p, p, return_stats=True) for x, p in zip(xs[1:], ps[1:])]
    assert prepared_hits == [False, True, True]
    for (y, stats), x, p in zip([first] + served, xs, ps):
        _prepared._PREPARED.clear()
        checked_y, checked_stats = nn.normalize(x, axes, p, p, return_stats=True)
        np.testing.assert_array_equal(y, checked_y)
        for name, a, c in zip(stats._fields, stats, checked_stats):
            if isinstance(c, np.ndarray):
                np.testing.assert_array_equal(a, c, err_msg=name)
            else:
                assert a == c, name
        wide = None if p is None else p.astype(np.float64)
        np.testing.assert_allclose(y, ref.normalize(x.astype(np.float64), axes, wide, wide), rtol=2e-5, atol=2e-5)
    if param_shape is not None:
        _prepared._PREPARED.clear()
        nn.normalize(xs[0], axes, ps[0], ps[0])
        larger = np.stack([ps[1], ps[2]])  # ps[1] as a view of another array, same signature
        read_only = ps[1].copy()
        read_only.flags.writeable = False
        for p in (larger[0], ps[1].astype(np.float64), read_only):
            expected = ref.normalize(xs[1].astype(np.float64), axes, p.astype(np.float64), p.astype(np.float64))
            hits = len(prepared_hits)
            for _ in range(2):
                np.testing.assert_allclose(nn.normalize(xs[1], axes, p, p), expected, rtol=2e-5, atol=2e-5)
            if p is read_only:  # wrapped by the checks (``kernel_view``): checked on every call
                assert prepared_hits[hits:] == [False, False]


def test_a_shape_of_numpy_integers_takes_the_checked_path(prepared_hits, monkeypatch):
    """A ``normalized_shape`` tuple of NumPy integers gives the plain tuple's result; only tuples of
    exact ints take the lane or key a prepared call, so it does neither."""
    served = _served(monkeypatch, "row_norm")
    rng = np.random.default_rng(13)
    x, w = rng.standard_normal((4, 16)), rng.standard_normal(16)
    plain = [nn.layer_norm(x, (16,), w, w) for _ in range(2)]
    numpy_ints = nn.layer_norm(x, (np.int64(16),), w, w)
    np.testing.assert_array_equal(numpy_ints, plain[1])
    np.testing.assert_array_equal(plain[0], plain[1])
    assert served == [True, True, False] and prepared_hits == []
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 0)  # the fused kernels: last bits of their own
    fused = nn.layer_norm(x, (16,), w, w)
    np.testing.assert_array_equal(nn.layer_norm(x, (np.int64(16),), w, w), fused)
    np.testing.assert_allclose(fused, plain[0], rtol=1e-14, atol=1e-14)
    assert prepared_hits == [False]


def test_weight_standardization_serves_only_weights_its_checks_keep(prepared_hits, monkeypatch):
    """Weight standardization looks its prepared call up before checking the weight: a weight the
    checks convert or wrap (float16, read-only, a list) is computed afresh on every call, each with
    its own correct result, and only the plain array's signature is served."""
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 0)  # the lane's weights: test_a_plain_row_norm_takes_the_lane_from_the_front
    rng = np.random.default_rng(14)
    plain = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    read_only = plain.copy()
    read_only.flags.writeable = False
    expected = ref.weight_standardization(plain.astype(np.float64))
    for weight, dtype in ((plain, np.float32), (plain.astype(np.float16), np.float16), (read_only, np.float32),
                          (plain.tolist(), np.float64)):
        for _ in range(2):
            y = nn.weight_standardization(weight)
            assert y.dtype == dtype
            np.testing.assert_allclose(y, expected, rtol=0, atol=2e-2 if dtype == np.float16 else 2e-5)
    assert prepared_hits.count(True) == 1 and prepared_hits[:2] == [False, True]


def test_other_arguments_of_a_prepared_signature_are_checked(prepared_hits, monkeypatch):
    """A weight of another dtype, a list, ``out``, a transposed or float16 input: each takes the
    checked path beside a prepared call of the plain signature, with its own correct result."""
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 0)  # the lane prepares nothing
    rng = np.random.default_rng(12)
    x, w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    nn.group_norm(x, 2, w, w)
    nn.group_norm(x, 2, w, w)
    assert prepared_hits == [False, True]
    expected = ref.group_norm(x.astype(np.float64), 2, w, w)
    tol = dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(nn.group_norm(x, 2, w.astype(np.float64), w), expected, **tol)
    np.testing.assert_allclose(nn.group_norm(x, 2, list(w), w), expected, **tol)
    out = np.zeros_like(x)
    assert nn.group_norm(x, 2, w, w, out=out) is out
    np.testing.assert_allclose(out, expected, **tol)
    flipped = np.ascontiguousarray(x[::-1])[::-1]  # x's shape, negative strides
    np.testing.assert_allclose(nn.group_norm(flipped, 2, w, w), expected, **tol)
    np.testing.assert_allclose(nn.group_norm(x.astype(np.float16), 2, w, w), expected, rtol=3e-3, atol=3e-3)
    assert prepared_hits.count(True) == 1


@pytest.mark.parametrize("lane", [True, False])
def test_prepared_batch_norm_leaves_running_statistics_to_the_checked_path(lane, prepared_hits, monkeypatch):
    """Running statistics are updated by every call that gives them, prepared signature (or
    lane) or not."""
    if not lane:
        monkeypatch.setattr(_small, "SMALL_ELEMENTS", 0)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((8, 4, 2, 2)).astype(np.float32)
    nn.batch_norm(x, None, None, training=True)
    nn.batch_norm(x, None, None, training=True)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    for _ in range(2):
        nn.batch_norm(x, rm, rv, training=True)
    mean, var = x.astype(np.float64).mean(axis=(0, 2, 3)), x.astype(np.float64).var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(rm, 0.19 * mean, rtol=1e-5)
    np.testing.assert_allclose(rv, 0.81 + 0.19 * var, rtol=1e-5)
    assert prepared_hits == ([] if lane else [False, True])


@pytest.mark.parametrize("op,layout,elements", [("instance_norm", "nchw", 1024), ("group_norm", "nchw", 1024),
                                                ("layer_norm", "rows", 131072)])
def test_a_prepared_call_runs_the_code_compiled_for_its_signature(op, layout, elements, prepared_hits, monkeypatch):
    """From its second use a prepared call runs the compiled code of its kernel directly
    (``_prepared.Kernel``), past the dispatcher's typing, with the dispatcher's results."""
    monkeypatch.setattr(_small, "SMALL_ELEMENTS", 0)  # the fused kernel's prepared call, not the lane
    inputs = [_case(op, layout, elements, "float32", seed=seed) for seed in (20, 21, 22, 23)]
    results = [OPS[op].run_forward(nn, x, w, b, ca, GROUPS)[0] for x, _, w, b, ca in inputs]
    (call,) = [entry[1] for entry in _prepared._PREPARED.values()]
    kernel = call.kernel
    assert kernel.run is not kernel.dispatcher and hasattr(kernel.dispatcher, "overloads")
    assert any(kernel.run is code.entry_point for code in kernel.dispatcher.overloads.values())
    for (x, _, w, b, ca), y in zip(inputs, results):
        _prepared._PREPARED.clear()
        np.testing.assert_array_equal(y, OPS[op].run_forward(nn, x, w, b, ca, GROUPS)[0])  # checked
    assert prepared_hits == [False, True, True, True] + [False] * 4


def test_compiled_code_is_found_only_for_the_types_it_was_compiled_for():
    """``_prepared.compiled`` falls back to the dispatcher where it has no code for exactly these
    types (it would convert arguments unchecked), and to any callable that is no dispatcher."""
    x = np.ones((2, 8))
    args = (x, np.ones(8), np.zeros(8), 1e-5, True, np.empty_like(x), np.empty(2), np.empty(2))
    _serial.norm_rows(*args)
    assert _prepared.compiled(_serial.norm_rows, args) is not _serial.norm_rows
    strided = (x[:, ::2], np.ones(4), np.zeros(4), 1e-5, True, np.empty((2, 4)), np.empty(2), np.empty(2))
    assert _prepared.compiled(_serial.norm_rows, strided) is _serial.norm_rows
    plain = lambda *a: None
    assert _prepared.compiled(plain, args) is plain


@pytest.mark.parametrize("lane", [True, False])
def test_an_unaligned_input_is_not_served_an_aligned_inputs_call(lane, prepared_hits, monkeypatch):
    """Numba compiles unaligned arrays apart, and a prepared call runs the code compiled for its
    signature: alignment is part of the signature, so an unaligned input of the same shape,
    strides and dtype takes the checked path (and gets the same result).  The lane takes aligned
    inputs only: it hands an unaligned one to the checked path too, which finds no prepared call."""
    if not lane:
        monkeypatch.setattr(_small, "SMALL_ELEMENTS", 0)
    x = np.random.default_rng(14).standard_normal((4, 16)).astype(np.float32)
    raw = np.empty(x.nbytes + 1, np.uint8)
    unaligned = raw[1:].view(np.float32).reshape(x.shape)
    unaligned[...] = x
    assert not unaligned.flags.aligned and unaligned.strides == x.strides
    aligned = [nn.layer_norm(x, 16) for _ in range(3)]
    np.testing.assert_array_equal(nn.layer_norm(unaligned, 16), aligned[0])
    assert prepared_hits == ([False] if lane else [False, True, True, False])
