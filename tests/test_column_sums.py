"""Per-column chunk sums of the cols view (channels-last statistics and gradient sums): rows that
fit a few vector registers take an intrinsic whose sums stay in registers, its last vector
masked to the row's end (``_cpu._register_sums``); wider rows take plain loops.  Both give the
float64 sums, on every width either side of the switch, and write nothing past a row's end."""

import numba
import numpy as np
import pytest

from numbanorm import _cpu

DTYPES = (np.float32, np.float64)


def _widths(dtype):
    edge = _edge(dtype)
    return sorted({*range(1, 18), edge - 1, edge, edge + 1, edge + 7, 2 * edge + 3})


def _tolerance(dtype):
    return 2e-6 if dtype == np.float32 else 1e-14


def _edge(dtype):
    return _cpu.REGISTER_VECTORS * _cpu._REGISTER_BYTES // np.dtype(dtype).itemsize


@numba.njit
def _fits(width, x, y):
    return _cpu._fits_registers(width, x, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_fit_the_registers_up_to_the_edge_with_columns_side_by_side(dtype):
    x = np.zeros((4, 2 * _edge(dtype) + 2), dtype)
    assert _edge(dtype) >= _cpu._REGISTER_BYTES // np.dtype(dtype).itemsize
    assert _fits(_edge(dtype), x, x[0]) and not _fits(_edge(dtype) + 1, x, x[0])
    assert not _fits(3, x[:, ::2], x[0]) and not _fits(3, x, x[0, ::2]) and _fits(3, x[::2, 1:], x[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_shifted_sums_equal_float64_sums_at_every_width(dtype, rng):
    tol = _tolerance(dtype)
    for width in _widths(dtype):
        for rows in (1, 2, 3, 4, 5, 7, 9, 64):
            x = (rng.standard_normal((rows, width)) + 5).astype(dtype)
            shift = x[rows // 2].copy()
            out = np.full((2, width + 1), np.nan, dtype)
            _cpu._slab_shifted_sums(x, shift, out[0, :width], out[1, :width])
            d = x.astype(np.float64) - shift
            scale = np.sqrt(rows) * 5
            np.testing.assert_allclose(out[0, :width], d.sum(0), rtol=tol, atol=tol * scale, err_msg=f"{width=}")
            np.testing.assert_allclose(out[1, :width], (d * d).sum(0), rtol=tol, atol=tol * scale, err_msg=f"{width=}")
            assert np.isnan(out[:, width]).all(), f"wrote past the row's end at {width=}, {rows=}"
            strided = np.zeros((2, width), dtype)
            _cpu._slab_shifted_sums(np.repeat(x, 2, axis=1)[:, ::2], shift, strided[0], strided[1])
            np.testing.assert_allclose(strided, out[:, :width], rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dot_sums_equal_float64_sums_at_every_width(dtype, rng):
    tol = _tolerance(dtype)
    for width in _widths(dtype):
        for rows in (1, 2, 3, 5, 9, 300):
            x = (rng.standard_normal((rows, width)) - 3).astype(dtype)
            dy = rng.standard_normal((rows, width)).astype(dtype)
            hi = x.mean(0).astype(dtype)
            lo = (x.astype(np.float64).mean(0) - hi).astype(dtype)
            sums = np.full((2, width + 1), 0.5)
            scratch = np.full((2, width + 1), np.nan, dtype)
            _cpu._slab_dot_sums(dy, x, hi, lo, sums[0, :width], sums[1, :width], scratch[:, :width])
            centred = x.astype(np.float64) - (hi.astype(np.float64) + lo)
            scale = np.sqrt(rows) * 5
            np.testing.assert_allclose(sums[0, :width] - 0.5, dy.astype(np.float64).sum(0), rtol=tol,
                                       atol=tol * scale, err_msg=f"{width=}")
            np.testing.assert_allclose(sums[1, :width] - 0.5, (dy * centred).sum(0), rtol=tol, atol=tol * scale,
                                       err_msg=f"{width=}")
            assert sums[:, width].tolist() == [0.5, 0.5] and np.isnan(scratch[:, width]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_col_moments_keep_an_offset_s_digits_in_registers(dtype, rng):
    # 1e4 + N(0, 1): the chunks' sums are taken around a shift, which the register path keeps
    x = (1e4 + rng.standard_normal((3, 4000, _edge(dtype)))).astype(dtype)
    count, mean, m2 = np.empty((3, 3, 2, x.shape[2]))
    _cpu.col_moments(x, 2, count, mean, m2)
    n = count.sum(1)
    mu = (count * mean).sum(1) / n
    total = (m2 + count * (mean - mu[:, None]) ** 2).sum(1)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mu, x64.mean(1), rtol=1e-13 if dtype == np.float64 else 1e-10)
    np.testing.assert_allclose(total / n, x64.var(1), rtol=1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("features, expected", [
    ("+avx512f,+avx2,+avx,+sse4.2", (64, 32)),
    ("-avx512f,+avx2,+avx,+sse4.2", (32, 16)),
    ("-avx512f,-avx2,-avx,+sse4.2", (16, None)),
])
def test_vector_registers_follow_the_compiled_features(monkeypatch, features, expected):
    monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
    size, count = _cpu._vector_registers()
    assert size == expected[0]
    assert count == expected[1] if expected[1] else count in (16, 32)
