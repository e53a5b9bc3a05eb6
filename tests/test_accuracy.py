"""Numerical behaviour: large offsets, constant input, NaN containment, long reductions."""

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import reference as ref
from conftest import GRID_OPS



def _err(actual, expected):
    return float(np.abs(np.asarray(actual, np.float64) - expected).max())


@pytest.mark.parametrize("dtype,offset,tol", [(np.float32, 1e4, 2e-5), (np.float64, 1e8, 6e-8)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_large_offsets_keep_their_digits(dtype, offset, tol, layout, rng):
    x64 = offset + rng.normal(size=(8, 4, 16, 16))
    ca = 1
    if layout == "nhwc":
        x64, ca = np.ascontiguousarray(np.moveaxis(x64, 1, -1)), -1
    x = x64.astype(dtype)
    for op in GRID_OPS:
        y, _ = op.forward(x, None, None, ca)
        assert _err(y, op.reference(x, None, None, ca)) < tol, op
    y = nn.layer_norm(x, x.shape[-2:])
    assert _err(y, ref.layer_norm(x, x.shape[-2:])) < tol
    m, v = nn.moments(x, (0, 2, 3) if ca == 1 else (0, 1, 2))
    exact = x.astype(np.float64)
    axes = (0, 2, 3) if ca == 1 else (0, 1, 2)
    assert _err(v, exact.var(axes)) / exact.var(axes).max() < 1e-5


def test_long_float32_reduction_is_accurate(rng):
    x = (3.0 + rng.normal(size=(4, 8, 160, 160))).astype(np.float32)  # 102400 values per channel
    m, v = nn.moments(x, (0, 2, 3))
    exact = x.astype(np.float64)
    assert _err(m, exact.mean((0, 2, 3))) < 1e-6
    assert _err(v, exact.var((0, 2, 3))) < 1e-5


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_outliers_do_not_cost_the_variance_its_digits(layout, rng):
    # a chunk's deviations are summed around the previous chunk's mean (the first chunk: around
    # its first value); an outlier there puts that shift far from the chunk's own mean, which
    # must then take a second pass, or float32 cancellation costs ~5 digits of M2
    x = rng.normal(size=(2, 4, 64, 64))
    x[:, :, 0, 0] = 3e3
    x[:, :, 32, 5] = -2e3
    axes, ca = (0, 2, 3), 1
    if layout == "nhwc":
        x, axes, ca = np.ascontiguousarray(np.moveaxis(x, 1, -1)), (0, 1, 2), -1
    x = x.astype(np.float32)
    exact = x.astype(np.float64)
    _, v = nn.moments(x, axes)
    assert _err(v, exact.var(axes)) / exact.var(axes).max() < 1e-6
    _, st = nn.instance_norm(x, channel_axis=ca, return_stats=True, eps=0.0)
    per_sample = exact.var(axes[1:])
    assert _err(1 / st.rstd.reshape(per_sample.shape) ** 2, per_sample) / per_sample.max() < 1e-6


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_constant_input_gives_finite_output(dtype):
    x = np.full((4, 6, 5, 5), 7.0, dtype)
    for op in GRID_OPS:
        y, st = op.forward(x, None, None, 1)
        assert np.isfinite(y.astype(np.float64)).all() and np.all(y == 0), op
        g = op.backward(np.ones_like(x), x, st, None, 1)
        assert np.isfinite(g.input.astype(np.float64)).all()
    assert np.all(nn.layer_norm(x, (5, 5)) == 0)
    assert np.all(nn.layer_norm(np.zeros((3, 8), dtype), 8) == 0)


def test_nan_spoils_only_its_own_group(rng):
    x = rng.normal(size=(4, 6, 5, 5))
    x[1, 2, 3, 3] = np.nan
    y, _ = nn.instance_norm(x, return_stats=True)
    bad = np.isnan(y)
    assert bad[1, 2].all() and bad.sum() == 25
    y = nn.group_norm(x, 3)
    bad = np.isnan(y)
    assert bad[1, 2:4].all() and bad.sum() == 50
    y = nn.layer_norm(x, (5, 5))
    assert np.isnan(y).sum() == 25
    y = nn.batch_norm(x, None, None, training=True)
    assert np.isnan(y[:, 2]).all() and np.isnan(y).sum() == 4 * 25


@pytest.mark.parametrize("length", [512, 20_000], ids=["one-chunk rows", "many-chunk rows"])
def test_float64_row_centres_keep_digits_below_float64(length, rng):
    """Layer norm rows of 1e8 + N(0, 1) in float64: the centre is carried as a base and an
    offset (two float64s), so the result is exact to far below 1e8's ulp (1.5e-8), where a
    float64 mean -- the NumPy reference's, PyTorch's -- errs by up to half of it.  Checked
    against a long-double reference."""
    x = 1e8 + rng.normal(size=(8, length))
    xl = x.astype(np.longdouble)
    mean = xl.mean(axis=1, keepdims=True)
    exact = (xl - mean) / np.sqrt(((xl - mean) ** 2).mean(axis=1, keepdims=True) + np.longdouble(1e-5))
    y = nn.layer_norm(x, (length,))
    assert float(np.abs(y.astype(np.longdouble) - exact).max()) < 2e-9


@pytest.mark.parametrize("copies", [1, 25], ids=["serial lane", "parallel rows"])
def test_float64_short_rows_whose_means_jump_keep_their_digits(copies, rng):
    """Float64 rows of at most ROW_CHUNK sum their deviations around the previous rows' mean in
    one pass, unless their own mean lies further from it than their spread.  Rows whose means
    jump by 1e6, drift, or equal that shift exactly (a constant row), and NaN and inf rows
    between them, all keep the two-pass result's digits; the non-finite rows spoil only
    themselves."""
    block = rng.normal(size=(24, 128))
    block[3:6] += 1e6
    block[6] = block[5].mean()  # constant
    block[7] = np.nan
    block[8, 5] = np.inf
    block[10] = -1e3  # constant, far from its neighbours
    block[12:] += np.arange(12)[:, None] * 3.0
    x = np.concatenate([block] * copies)
    y, stats = nn.layer_norm(x, 128, return_stats=True)
    bad = np.zeros(len(block), bool)
    bad[7:9] = True
    bad = np.tile(bad, copies)
    assert np.isnan(y[bad]).all() and np.isnan(stats.rstd[bad]).all()
    xl = x[~bad].astype(np.longdouble)
    mean = xl.mean(axis=1, keepdims=True)
    exact = (xl - mean) / np.sqrt(((xl - mean) ** 2).mean(axis=1, keepdims=True) + np.longdouble(1e-5))
    assert float(np.abs(y[~bad].astype(np.longdouble) - exact).max()) < 2e-15
    assert np.all(y[6::24] == 0) and np.all(y[10::24] == 0)


@pytest.mark.parametrize("copies", [1, 25], ids=["serial lane", "parallel rows"])
def test_float32_short_rows_have_float64_exact_statistics(copies, rng):
    """Float32 rows of at most ROW_CHUNK sum their deviations from their first element in float64,
    where each deviation and its square are exact: the statistics match float64 arithmetic on the
    same float32 values to about 1e-15, where float32 sums would err by about 1e-7.  Rows far
    from zero, rows whose first element is an outlier, constant rows, and NaN and inf rows between
    them (which spoil only themselves)."""
    block = rng.normal(size=(24, 128))
    block[3:6] += 1e4
    block[6] = -7.25  # constant
    block[7] = np.nan
    block[8, 5] = np.inf
    block[10, 0] = 3e3  # the shift an outlier
    block[11, 0] = -1e6
    block[12:] *= np.logspace(-3, 3, 12)[:, None]
    x = np.concatenate([block] * copies).astype(np.float32)
    y, stats = nn.layer_norm(x, 128, return_stats=True)
    bad = np.tile((np.arange(len(block)) == 7) | (np.arange(len(block)) == 8), copies)
    assert np.isnan(y[bad]).all() and np.isnan(stats.rstd[bad]).all()
    constant = np.tile(np.arange(len(block)) == 6, copies)
    assert np.all(y[constant] == 0) and np.all(stats.mean[constant] == -7.25)
    good = ~bad & ~constant
    exact = x[good].astype(np.float64)
    mean, std = exact.mean(axis=1), np.sqrt(exact.var(axis=1) + 1e-5)
    assert np.all(np.abs(stats.mean[good] - mean) <= 1e-14 * (np.abs(mean) + std))
    assert np.all(np.abs(stats.rstd[good] * std - 1) <= 1e-13)
    rms = nn.rms_norm(x[good], 128, eps=1e-5, return_stats=True)[1]
    assert np.all(np.abs(rms.rstd * np.sqrt((exact ** 2).mean(axis=1) + 1e-5) - 1) <= 1e-13)
