"""Regression tests for bugs found by differential testing (issue #13), each from a reproducer."""

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import _cpu
from numbanorm import reference as ref


def _relative_error(actual, expected):
    expected = np.asarray(expected, np.float64)
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max())


# 1. the gradient sums were reduced over one run of the normalized axes only
@pytest.mark.parametrize("op", ["layer", "rms"])
def test_row_backward_without_parameters_sums_every_normalized_axis(op, rng):
    x = rng.standard_normal((3, 2, 4)).transpose(1, 0, 2)  # normalized axes (3, 4) not adjacent in memory
    dy = rng.standard_normal((2, 3, 4))
    forward = nn.layer_norm if op == "layer" else nn.rms_norm
    backward = nn.layer_norm_backward if op == "layer" else nn.rms_norm_backward
    _, stats = forward(x, (3, 4), return_stats=True)
    dx = backward(dy, x, stats, (3, 4)).input
    ref_forward, ref_backward = getattr(ref, forward.__name__), getattr(ref, backward.__name__)
    _, ref_stats = ref_forward(x, (3, 4), return_stats=True)
    np.testing.assert_allclose(dx, ref_backward(dy, x, ref_stats, (3, 4)).input, atol=1e-12)


# 2. reductions compiled with reassoc folded (x - hi) - lo into x - (hi + lo), dropping lo
def test_chunk_dot_sums_keep_the_centres_low_part():
    _, s2 = _cpu._chunk_dot_sums(np.ones(64, np.float32), np.full(64, 1e4, np.float32), np.float32(1e4),
                                 np.float32(1e-4))
    assert s2 == pytest.approx(-0.0064, rel=1e-6)


def _offset_backward_cases():
    yield "layer", lambda x, dy: nn.layer_norm_backward(dy, x, nn.layer_norm(x, x.shape[-1:], return_stats=True)[1],
                                                        x.shape[-1:]).input
    for ca in (1, -1):
        yield f"batch-{ca}", lambda x, dy, ca=ca: nn.batch_norm_backward(
            dy, x, nn.batch_norm(x, None, None, training=True, channel_axis=ca, return_stats=True)[1],
            channel_axis=ca).input
        yield f"instance-{ca}", lambda x, dy, ca=ca: nn.instance_norm_backward(
            dy, x, nn.instance_norm(x, channel_axis=ca, return_stats=True)[1], channel_axis=ca).input
        yield f"group-{ca}", lambda x, dy, ca=ca: nn.group_norm_backward(
            dy, x, nn.group_norm(x, 2, channel_axis=ca, return_stats=True)[1], 2, channel_axis=ca).input
        logits = np.array([0.3, -0.2, 0.5])
        yield f"switchable-{ca}", lambda x, dy, ca=ca: nn.switchable_norm_backward(
            dy, x, nn.switchable_norm(x, logits, -logits, training=True, channel_axis=ca, return_stats=True)[1],
            logits, -logits, channel_axis=ca).input


@pytest.mark.parametrize("order", ["C", "F"])  # F: dy takes the generic (unfused) kernels
@pytest.mark.parametrize("name, grad", list(_offset_backward_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_float32_backward_keeps_digits_on_offset_data(name, grad, order, rng):
    """float32 1e4 + N(0, 1): the input gradient as accurate as the float32 forward allows
    (the forward's own error is ~1e-7 relative; the folded centre gave ~1e-4)."""
    x = (1e4 + rng.standard_normal((8, 6, 45, 6))).astype(np.float32)
    dy = np.asarray(rng.standard_normal(x.shape), np.float32, order=order)
    exact = grad(x.astype(np.float64), dy.astype(np.float64))
    assert _relative_error(grad(x, dy), exact) < 2e-6


# 3. an empty array's strides mean nothing, but the planner used them
def test_empty_batch_with_non_c_strides():
    x = np.moveaxis(np.zeros((3, 2, 2, 5), np.float32), -1, 0)[:0]
    y, stats = nn.group_norm(x, 3, return_stats=True)
    assert y.shape == x.shape and stats.mean.shape == (0, 3)
    xe = np.zeros((6, 2, 4), np.float32).transpose(1, 0, 2)[:0]
    w, b = np.ones((6, 4), np.float32), np.zeros((6, 4), np.float32)
    y, stats = nn.layer_norm(xe, (6, 4), w, b, return_stats=True)
    grads = nn.layer_norm_backward(np.zeros_like(xe), xe, stats, (6, 4), w)
    assert grads.input.shape == xe.shape
    np.testing.assert_array_equal(grads.weight, np.zeros((6, 4)))
    np.testing.assert_array_equal(grads.bias, np.zeros((6, 4)))


# 4. each variance term's gradient was applied around the mixed mean, far from the data
def test_switchable_backward_float32_with_stale_running_statistics(rng):
    x = rng.normal(10, 0.1, (3, 7)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    mean_weight, var_weight = np.array([0.0, 0.0, 1.0]), np.array([2.0, 0.0, 0.0])

    def grad(x, dy):
        rm, rv = np.zeros(7, x.dtype), np.full(7, 0.01, x.dtype)
        _, stats = nn.switchable_norm(x, mean_weight, var_weight, rm, rv, training=False, return_stats=True)
        return nn.switchable_norm_backward(dy, x, stats, mean_weight, var_weight).input

    assert _relative_error(grad(x, dy), grad(x.astype(np.float64), dy.astype(np.float64))) < 1e-6


# found by the differential tests: the forward took an empty batch, the backward divided by zero
@pytest.mark.parametrize("using_bn", [False, True])
def test_switchable_backward_of_an_empty_batch(using_bn):
    x = np.zeros((0, 3, 4), np.float32)
    logits = np.zeros(3 if using_bn else 2)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    running = (np.zeros(3, np.float32), np.ones(3, np.float32)) if using_bn else (None, None)
    y, stats = nn.switchable_norm(x, logits, logits, *running, w, b, using_bn=using_bn, return_stats=True)
    grads = nn.switchable_norm_backward(x, x, stats, logits, logits, w)
    assert y.shape == grads.input.shape == x.shape
    np.testing.assert_array_equal(grads.weight, np.zeros(3))
    np.testing.assert_array_equal(grads.bias, np.zeros(3))
    np.testing.assert_array_equal(grads.mean_weight, np.zeros(logits.size))


# found by the differential tests: few channels and a row count that does not fold summed one
# float32 chain of 2048 values per column
@pytest.mark.parametrize("rows", [2029, 2048])
def test_float32_statistics_of_few_channels_keep_their_digits(rows):
    x = (-1000 + 0.01 * np.random.default_rng(0).standard_normal((rows, 2))).astype(np.float32)
    exact = x.astype(np.float64)
    _, var = nn.moments(x, 0)
    assert _relative_error(var, exact.var(0)) < 1e-6
    y = nn.batch_norm(x, None, None, training=True, channel_axis=-1)
    expected = (exact - exact.mean(0)) / np.sqrt(exact.var(0) + 1e-5)
    assert np.abs(y - expected).max() < 2e-6


@pytest.mark.parametrize("shape,axes", [((1025, 2, 4), ()), ((3000, 3, 2), (1,)), ((40, 30, 20, 9), (0, 2))])
def test_moments_place_every_cell_past_8192_cells(shape, axes, rng):
    # the kernels' states are merged straight into the result's cells; NumPy's
    # ravel_multi_index misplaced those past 8192 of an (N, 1) index array, leaving zeros
    x = rng.normal(size=shape)
    mean, var = nn.moments(x, axes)
    np.testing.assert_allclose(mean, x.mean(axis=axes), rtol=0, atol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=axes), rtol=1e-12, atol=1e-14)
