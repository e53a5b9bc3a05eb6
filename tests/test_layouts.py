"""Awkward but valid inputs -- slices, transposes, negative strides, Fortran order, read-only --
give the answers of the same values in a fresh C-ordered array."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import numbanorm as nn
from numbanorm import reference as ref
from conftest import GRID_OPS, assert_close


def _awkward(x):
    readonly = x.copy()
    readonly.flags.writeable = False
    big = np.zeros((x.shape[0] * 2,) + x.shape[1:])
    big[::2] = x
    flipped = np.ascontiguousarray(x[::-1, :, ::-1])[::-1, :, ::-1]
    return {
        "fortran": np.asfortranarray(x),
        "strided-slice": big[::2],
        "negative-strides": flipped,
        "transposed-memory": np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0),
        "read-only": readonly,
    }


@pytest.mark.parametrize("kind", ["fortran", "strided-slice", "negative-strides", "transposed-memory", "read-only"])
@pytest.mark.parametrize("op", GRID_OPS, ids=repr)
def test_grid_ops_on_awkward_inputs(op, kind, rng):
    x = rng.normal(size=(6, 4, 10))
    dy = rng.normal(size=x.shape)
    w, b = rng.normal(size=4), rng.normal(size=4)
    xa, dya = _awkward(x)[kind], _awkward(dy)[kind]
    assert not xa.flags.c_contiguous or kind == "read-only"
    y, st_ = op.forward(xa, w, b, 1)
    assert_close(y, op.reference(x, w, b, 1), 1e-10)
    g = op.backward(dya, xa, st_, w, 1)
    dx, dw, db = op.reference_backward(dy, x, w, 1)
    assert_close(g.input, dx, 1e-10)
    assert_close(g.weight, dw, 1e-9)
    assert_close(g.bias, db, 1e-9)


@pytest.mark.parametrize("kind", ["fortran", "strided-slice", "negative-strides", "transposed-memory", "read-only"])
def test_layer_norm_and_moments_on_awkward_inputs(kind, rng):
    x = rng.normal(size=(6, 4, 10))
    dy = rng.normal(size=x.shape)
    w = rng.normal(size=(4, 10))
    xa, dya = _awkward(x)[kind], _awkward(dy)[kind]
    y, st_ = nn.layer_norm(xa, (4, 10), w, None, return_stats=True)
    y_ref, st_ref = ref.layer_norm(x, (4, 10), w, return_stats=True)
    assert_close(y, y_ref, 1e-10)
    g = nn.layer_norm_backward(dya, xa, st_, (4, 10), w)
    dx, dw, _ = ref.layer_norm_backward(dy, x, st_ref, (4, 10), w)
    assert_close(g.input, dx, 1e-10)
    assert_close(g.weight, dw, 1e-9)
    for axes in [(0,), (1, 2), (0, 2), (-1,)]:
        m, v = nn.moments(xa, axes)
        assert_close(m, x.mean(axis=axes), 1e-12)
        assert_close(v, x.var(axis=axes), 1e-12)


def test_channels_last_strides_with_channel_axis_1(rng):
    """A PyTorch 'channels_last' tensor: NCHW shape, NHWC memory."""
    x = np.ascontiguousarray(rng.normal(size=(4, 5, 6, 3))).transpose(0, 3, 1, 2)
    for op in GRID_OPS[:2]:
        y, _ = op.forward(x, None, None, 1)
        assert_close(y, op.reference(x, None, None, 1), 1e-10)


@st.composite
def _cases(draw):
    ndim = draw(st.integers(2, 5))
    n = draw(st.integers(1, 4))
    c_groups = draw(st.integers(1, 3))
    cg = draw(st.integers(1, 3))
    spatial = [draw(st.integers(1, 5)) for _ in range(ndim - 2)]
    channels_last = draw(st.booleans())
    op = draw(st.sampled_from(["batch_norm", "instance_norm", "group_norm"]))
    seed = draw(st.integers(0, 2**31))
    return n, c_groups, cg, spatial, channels_last, op, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_property_grid_ops_match_reference(case):
    n, groups, cg, spatial, channels_last, name, seed = case
    rng = np.random.default_rng(seed)
    c = groups * cg
    shape = (n, c, *spatial)
    per_group = {"batch_norm": n * int(np.prod(spatial)), "instance_norm": int(np.prod(spatial)),
                 "group_norm": cg * int(np.prod(spatial))}[name]
    x = rng.normal(size=shape) * rng.uniform(0.1, 10) + rng.uniform(-100, 100)
    ca = 1
    if channels_last:
        x, ca = np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1
    w, b = rng.normal(size=c), rng.normal(size=c)
    dy = rng.normal(size=x.shape)
    if per_group < 2 and name != "group_norm":
        with pytest.raises(ValueError):
            (nn.batch_norm(x, None, None, training=True, channel_axis=ca) if name == "batch_norm"
             else nn.instance_norm(x, channel_axis=ca))
        return
    from conftest import Op
    op = Op(name, groups)
    y, st_ = op.forward(x, w, b, ca)
    assert_close(y, op.reference(x, w, b, ca), 1e-9)
    g = op.backward(dy, x, st_, w, ca)
    dx, dw, db = op.reference_backward(dy, x, w, ca)
    assert_close(g.input, dx, 1e-7)
    assert_close(g.weight, dw, 1e-8)
    assert_close(g.bias, db, 1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.data())
def test_property_moments_any_axes(shape, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x = rng.normal(size=shape) + 50
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), unique_by=lambda a: a % len(shape), min_size=1))
    perm = data.draw(st.permutations(range(len(shape))))
    xt = np.ascontiguousarray(x.transpose(perm)).transpose(np.argsort(perm))  # same values, other memory order
    keep = data.draw(st.booleans())
    m, v = nn.moments(xt, axes, keepdims=keep)
    assert_close(m, x.mean(axis=tuple(axes), keepdims=keep), 1e-12)
    assert_close(v, x.var(axis=tuple(axes), keepdims=keep), 1e-11)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(0, 2**31))
def test_property_layer_norm(lead, trailing, seed):
    rng = np.random.default_rng(seed)
    shape = (lead, *trailing)
    k = len(trailing)
    x = rng.normal(size=shape) * 3 + 7
    w, b = rng.normal(size=trailing), rng.normal(size=trailing)
    dy = rng.normal(size=shape)
    y, st_ = nn.layer_norm(x, trailing, w, b, return_stats=True)
    y_ref, st_ref = ref.layer_norm(x, trailing, w, b, return_stats=True)
    assert_close(y, y_ref, 1e-9)
    g = nn.layer_norm_backward(dy, x, st_, trailing, w)
    dx, dw, db = ref.layer_norm_backward(dy, x, st_ref, trailing, w)
    assert_close(g.input, dx, 1e-7)
    assert_close(g.weight, dw, 1e-8)
    assert_close(g.bias, db, 1e-9)


@pytest.mark.parametrize("spatial", [(12, 10), (1, 37)], ids=["folded", "prime-rows"])
@pytest.mark.parametrize("channels", [2, 4, 6])
@pytest.mark.parametrize("op", GRID_OPS, ids=repr)
def test_channels_last_with_few_channels(op, channels, spatial, rng):
    """Few channels: the channels-last kernels read k rows side by side (a fold) when k divides
    the rows, and merge each channel's k columns; the answer is the reference's either way.
    Enough samples that instance/group norm take their fused per-sample kernels (folded too)."""
    import numba
    from numbanorm._plan import fold_for
    folded = spatial == (12, 10)
    n = 2 * numba.get_num_threads() + 1
    assert (fold_for(spatial[0] * spatial[1], channels) > 1) == folded
    x = rng.normal(size=(n,) + spatial + (channels,)) * 3 + 5
    dy = rng.normal(size=x.shape)
    w, b = rng.normal(size=channels), rng.normal(size=channels)
    y, st_ = op.forward(x, w, b, -1)
    assert_close(y, op.reference(x, w, b, -1), 1e-10)
    g = op.backward(dy, x, st_, w, -1)
    dx, dw, db = op.reference_backward(dy, x, w, -1)
    assert_close(g.input, dx, 1e-10)
    assert_close(g.weight, dw, 1e-10)
    assert_close(g.bias, db, 1e-10)
    mean, var = nn.moments(x, axes=(0, 1, 2))
    assert_close(mean, x.mean(axis=(0, 1, 2)), 1e-12)
    assert_close(var, x.var(axis=(0, 1, 2)), 1e-12)


def test_read_only_inputs_run_the_writable_inputs_compiled_kernels(rng):
    """A read-only input (a read-only memory map, a broadcast, weights marked read-only) reaches
    the kernels typed like a writable one: no compilation of its own, the same bits, and the
    caller's array stays read-only and unchanged."""
    from numbanorm import _serial

    x = rng.normal(size=(4, 8, 6)).astype(np.float32)
    w = rng.normal(size=8).astype(np.float32)
    y, stats = nn.group_norm(x, 2, w, return_stats=True)
    compiled = len(_serial.grid_forward_viewed.signatures)
    xr, wr = x.copy(), w.copy()
    xr.flags.writeable = wr.flags.writeable = False
    yr, stats_r = nn.group_norm(xr, 2, wr, return_stats=True)
    assert len(_serial.grid_forward_viewed.signatures) == compiled
    np.testing.assert_array_equal(yr, y)
    np.testing.assert_array_equal(stats_r.rstd, stats.rstd)
    assert not xr.flags.writeable and not wr.flags.writeable
    np.testing.assert_array_equal(xr, x)
    assert yr.flags.writeable and not np.shares_memory(yr, xr)


def test_kernel_view_shares_the_memory_of_a_read_only_array():
    from numbanorm._checks import kernel_view

    a = np.arange(6.0).reshape(2, 3)[:, ::-1]
    a.flags.writeable = False
    v = kernel_view(a)
    assert v.flags.writeable and v.shape == a.shape and v.strides == a.strides
    assert np.shares_memory(v, a) and (v == a).all()
    writable = np.ones(3)
    assert kernel_view(writable) is writable
