"""Forward and backward of batch, instance, group and layer norm against float64 references."""

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import reference as ref
from conftest import GRID_OPS, assert_close

TOL = {np.float64: 1e-10, np.float32: 2e-5, np.float16: 4e-3}

# shapes: fused rows (many rows), unfused (few rows), no spatial extent, 3-D and 5-D, and fused
# rows whose channels span more than one ROW_CHUNK without filling the last (1640 = 1024 + 616)
SHAPES = [(8, 4, 6, 5), (2, 4, 7, 3), (6, 4), (3, 4, 9), (2, 4, 3, 2, 3), (8, 4, 40, 41)]


def _layout(x, ca):
    return x if ca == 1 else np.ascontiguousarray(np.moveaxis(x, 1, -1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ca", [1, -1])
@pytest.mark.parametrize("op,shape", [(op, s) for op in GRID_OPS for s in SHAPES
                                      if not (op.name in ("instance_norm", "switchable_norm") and len(s) == 2)], ids=repr)
def test_grid_forward_backward(op, shape, ca, dtype, rng):
    x = _layout(rng.normal(1.5, 2.0, shape), ca).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    c = shape[1]
    w, b = rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)
    y, stats = op.forward(x, w, b, ca)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, op.reference(x, w, b, ca), TOL[dtype], what="forward")
    g = op.backward(dy, x, stats, w, ca)
    dx, dw, db = op.reference_backward(dy, x, w, ca)
    assert g.input.dtype == dtype
    assert_close(g.input, dx, TOL[dtype], what="dx")
    assert_close(g.weight, dw, TOL[dtype] * 10, what="dweight")
    assert_close(g.bias, db, TOL[dtype] * 10, what="dbias")


@pytest.mark.parametrize("op", GRID_OPS, ids=repr)
def test_grid_without_affine_has_no_param_grads(op, rng):
    x = rng.normal(size=(4, 4, 5))
    y, stats = op.forward(x, None, None, 1)
    assert_close(y, op.reference(x, None, None, 1), 1e-10)
    g = op.backward(np.ones_like(x), x, stats, None, 1)
    assert g.weight is None and g.bias is None
    assert_close(g.input, op.reference_backward(np.ones_like(x), x, None, 1)[0], 1e-10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,k", [((8, 5, 6), 1), ((8, 5, 6), 2), ((3, 7), 1), ((11,), 1), ((2, 3, 4, 5), 3)])
def test_layer_norm_forward_backward(shape, k, dtype, rng):
    x = rng.normal(-2.0, 3.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    ns = shape[len(shape) - k:]
    w, b = rng.normal(size=ns).astype(dtype), rng.normal(size=ns).astype(dtype)
    y, stats = nn.layer_norm(x, ns, w, b, return_stats=True)
    assert y.dtype == dtype
    y_ref, st_ref = ref.layer_norm(x, ns, w, b, return_stats=True)
    assert_close(y, y_ref, TOL[dtype], what="forward")
    g = nn.layer_norm_backward(dy, x, stats, ns, w)
    dx, dw, db = ref.layer_norm_backward(dy, x, st_ref, ns, w)
    assert_close(g.input, dx, TOL[dtype], what="dx")
    assert_close(g.weight, dw, TOL[dtype] * 10, what="dweight")
    assert_close(g.bias, db, TOL[dtype] * 10, what="dbias")


def test_layer_norm_weight_only_and_bias_only(rng):
    x = rng.normal(size=(6, 8))
    dy = rng.normal(size=x.shape)
    w = rng.normal(size=8)
    y, st = nn.layer_norm(x, 8, w, None, return_stats=True)
    y_ref, st_ref = ref.layer_norm(x, 8, w, None, return_stats=True)
    assert_close(y, y_ref, 1e-10)
    g = nn.layer_norm_backward(dy, x, st, 8, w)
    assert g.bias is None
    assert_close(g.weight, ref.layer_norm_backward(dy, x, st_ref, 8, w).weight, 1e-10)
    y, st = nn.layer_norm(x, 8, None, w, return_stats=True)
    g = nn.layer_norm_backward(dy, x, st, 8)
    assert g.weight is None
    assert_close(g.bias, dy.sum(0), 1e-10)
    assert_close(g.input, ref.layer_norm_backward(dy, x, st_ref, 8).input, 1e-10)


def test_float16_in_float16_out(rng):
    x = rng.normal(3.0, 1.0, (4, 6, 5, 5)).astype(np.float16)
    w = rng.normal(size=6).astype(np.float16)
    for op in GRID_OPS:
        y, st = op.forward(x, w, None, 1)
        assert y.dtype == np.float16
        assert_close(y, op.reference(x, w, None, 1), TOL[np.float16])
        dy = np.ones_like(x)
        g = op.backward(dy, x, st, w, 1)
        assert g.input.dtype == np.float16
        assert_close(g.input, op.reference_backward(dy, x, w, 1)[0], 2e-2)
    y = nn.layer_norm(x, (5, 5))
    assert y.dtype == np.float16
    assert_close(y, ref.layer_norm(x, (5, 5)), TOL[np.float16])


def _finite_difference(f, x, direction, h=1e-6):
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.mark.parametrize("ca", [1, -1])
@pytest.mark.parametrize("op", GRID_OPS, ids=repr)
def test_grid_gradients_match_finite_differences(op, ca, rng):
    x = _layout(rng.normal(size=(3, 4, 5)), ca)
    w, b = rng.normal(size=4), rng.normal(size=4)
    r = rng.normal(size=x.shape)  # loss = sum(r * y)
    loss = lambda x_, w_=w, b_=b: float((r * op.forward(x_, w_, b_, ca)[0]).sum())
    _, stats = op.forward(x, w, b, ca)
    g = op.backward(r, x, stats, w, ca)
    for _ in range(3):
        d = rng.normal(size=x.shape)
        assert abs(_finite_difference(loss, x, d) - (g.input * d).sum()) < 1e-6
        dw = rng.normal(size=4)
        fd_w = (loss(x, w + 1e-6 * dw) - loss(x, w - 1e-6 * dw)) / 2e-6
        assert abs(fd_w - (g.weight * dw).sum()) < 1e-6
        fd_b = (loss(x, w, b + 1e-6 * dw) - loss(x, w, b - 1e-6 * dw)) / 2e-6
        assert abs(fd_b - (g.bias * dw).sum()) < 1e-6


def test_layer_norm_gradients_match_finite_differences(rng):
    x = rng.normal(size=(5, 3, 4))
    w, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    r = rng.normal(size=x.shape)
    loss = lambda x_, w_=w: float((r * nn.layer_norm(x_, (3, 4), w_, b)).sum())
    _, stats = nn.layer_norm(x, (3, 4), w, b, return_stats=True)
    g = nn.layer_norm_backward(r, x, stats, (3, 4), w)
    for _ in range(3):
        d = rng.normal(size=x.shape)
        assert abs(_finite_difference(loss, x, d) - (g.input * d).sum()) < 1e-6
        dw = rng.normal(size=w.shape)
        assert abs((loss(x, w + 1e-6 * dw) - loss(x, w - 1e-6 * dw)) / 2e-6 - (g.weight * dw).sum()) < 1e-6


def test_eval_batch_norm_backward_treats_running_stats_as_constants(rng):
    x = rng.normal(size=(4, 3, 5))
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    w, b = rng.normal(size=3), rng.normal(size=3)
    y, st = nn.batch_norm(x, rm, rv, w, b, training=False, return_stats=True)
    assert not st.batch_stats
    y_ref, st_ref = ref.batch_norm(x, rm, rv, w, b, training=False, return_stats=True)
    assert_close(y, y_ref, 1e-12)
    dy = rng.normal(size=x.shape)
    g = nn.batch_norm_backward(dy, x, st, w)
    dx, dw, db = ref.batch_norm_backward(dy, x, st_ref._replace(has_bias=True), w)
    assert_close(g.input, dx, 1e-12)
    assert_close(g.weight, dw, 1e-12)
    assert_close(g.bias, db, 1e-12)


def test_instance_norm_with_running_stats_in_eval(rng):
    x = rng.normal(size=(4, 3, 5))
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    y, st = nn.instance_norm(x, rm, rv, use_input_stats=False, return_stats=True)
    y_ref, st_ref = ref.instance_norm(x, rm, rv, use_input_stats=False, return_stats=True)
    assert_close(y, y_ref, 1e-12)
    g = nn.instance_norm_backward(np.ones_like(x), x, st)
    assert_close(g.input, ref.instance_norm_backward(np.ones_like(x), x, st_ref).input, 1e-12)


@pytest.mark.parametrize("op", GRID_OPS, ids=repr)
def test_out_argument(op, rng):
    x = rng.normal(size=(8, 4, 6)).astype(np.float32)
    out = np.empty_like(x)
    y, _ = op.forward(x, None, None, 1, out=out)
    assert y is out
    assert_close(out, op.reference(x, None, None, 1), 2e-5)
    strided = np.empty((8, 4, 12), np.float32)[:, :, ::2]
    y, _ = op.forward(x, None, None, 1, out=strided)
    assert y is strided
    assert_close(strided, op.reference(x, None, None, 1), 2e-5)
    y = nn.layer_norm(x, 6, out=out)
    assert y is out
    assert_close(out, ref.layer_norm(x, 6), 2e-5)


def test_in_place_out_is_input(rng):
    x = rng.normal(size=(8, 4, 6))
    expected = ref.layer_norm(x, 6)
    y = nn.layer_norm(x, 6, out=x)
    assert y is x
    assert_close(x, expected, 1e-10)


@pytest.mark.parametrize("ca", [1, -1])
def test_empty_batch_gives_empty_results(ca):
    """No samples: instance and group norm (and eval batch norm) return empty outputs and zero
    parameter gradients, as PyTorch does; batch norm training refuses (no values per channel)."""
    shape = (0, 3, 5, 5) if ca == 1 else (0, 5, 5, 3)
    x = np.zeros(shape, np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    runs = [
        (lambda: nn.instance_norm(x, None, None, w, b, channel_axis=ca, return_stats=True),
         lambda st: nn.instance_norm_backward(np.zeros_like(x), x, st, w, channel_axis=ca)),
        (lambda: nn.group_norm(x, 3, w, b, channel_axis=ca, return_stats=True),
         lambda st: nn.group_norm_backward(np.zeros_like(x), x, st, 3, w, channel_axis=ca)),
        (lambda: nn.batch_norm(x, np.zeros(3), np.ones(3), w, b, channel_axis=ca, return_stats=True),
         lambda st: nn.batch_norm_backward(np.zeros_like(x), x, st, w, channel_axis=ca)),
    ]
    for forward, backward in runs:
        y, stats = forward()
        assert y.shape == shape and y.dtype == np.float32
        g = backward(stats)
        assert g.input.shape == shape
        assert np.array_equal(g.weight, np.zeros(3)) and np.array_equal(g.bias, np.zeros(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.batch_norm(x, None, None, w, b, training=True, channel_axis=ca)
    assert nn.layer_norm(np.zeros((0, 4), np.float32), (4,)).shape == (0, 4)
