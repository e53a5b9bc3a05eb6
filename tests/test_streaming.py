"""Outputs larger than the caches are written with non-temporal stores (``_cpu._streams``): the
same numbers as ordinary stores, and a clean fallback where the output is not aligned for them."""
import numpy as np
import pytest

import numbanorm as nn
from numbanorm import _cpu, reference as ref
from numbanorm._plan import aligned_empty
from conftest import assert_close

# channels-last (N, H, W, C) inputs whose result reaches STREAM_BYTES in either precision
SHAPE = (8, 64, 64, 64)


def _unaligned(shape, dtype):
    """An empty C-ordered array whose data start off every vector boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(int(np.prod(shape)) * dtype.itemsize + _cpu.STREAM_ALIGN, np.uint8)
    start = -raw.ctypes.data % _cpu.STREAM_ALIGN + dtype.itemsize
    return raw[start:start + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)


def test_aligned_empty_aligns_only_what_can_stream():
    big = aligned_empty((3, _cpu.STREAM_BYTES // 8 + 5), np.float32)
    assert big.ctypes.data % _cpu.STREAM_ALIGN == 0
    assert big.shape == (3, _cpu.STREAM_BYTES // 8 + 5) and big.dtype == np.float32 and big.flags.c_contiguous
    small = aligned_empty((4, 5), np.float64)
    assert small.shape == (4, 5) and small.base is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streams_needs_size_alignment_and_rows_on_vector_boundaries(dtype):
    n = _cpu.STREAM_BYTES // np.dtype(dtype).itemsize
    assert _cpu._streams(aligned_empty((n // 64, 64), dtype))
    assert not _cpu._streams(aligned_empty((n // 64 - 1, 64), dtype))  # below STREAM_BYTES
    assert not _cpu._streams(_unaligned((n // 64, 64), dtype))
    assert not _cpu._streams(aligned_empty((n // 63 + 1, 63), dtype))  # rows off the boundaries
    wide = aligned_empty((n // 32, 128), dtype)
    assert _cpu._streams(wide[:, :64])  # strided rows, each whole vectors on a boundary
    assert not _cpu._streams(wide[:, :60])  # the last vector of a row would spill past it
    assert not _cpu._streams(wide[:, ::2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["group_norm", "instance_norm", "batch_norm"])
def test_streamed_result_equals_cached_stores(op, dtype, rng):
    """The same bits whether the result is streamed (a fresh, aligned array) or stored through
    the caches (an unaligned ``out``), and both match the float64 reference."""
    x = (rng.standard_normal(SHAPE) * 3 + 100).astype(dtype)
    w, b = rng.standard_normal((2, SHAPE[-1])).astype(dtype)
    call = {"group_norm": lambda **k: nn.group_norm(x, 16, w, b, channel_axis=-1, **k),
            "instance_norm": lambda **k: nn.instance_norm(x, w, b, channel_axis=-1, **k),
            "batch_norm": lambda **k: nn.batch_norm(x, None, None, w, b, training=True, channel_axis=-1, **k)}[op]
    streamed = call()
    assert streamed.nbytes >= _cpu.STREAM_BYTES and streamed.ctypes.data % _cpu.STREAM_ALIGN == 0
    cached = call(out=_unaligned(x.shape, dtype))
    assert cached.ctypes.data % _cpu.STREAM_ALIGN != 0
    np.testing.assert_array_equal(streamed, cached)
    expected = {"group_norm": lambda: ref.group_norm(x, 16, w, b, channel_axis=-1),
                "instance_norm": lambda: ref.instance_norm(x, w, b, channel_axis=-1),
                "batch_norm": lambda: ref.batch_norm(x, None, None, w, b, training=True, channel_axis=-1)}[op]()
    assert_close(streamed, expected, 2e-5 if dtype == np.float32 else 1e-12, what=op)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["layer_norm long rows", "layer_norm short rows", "rms_norm", "group_norm nchw",
                                  "group_norm nchw, segments off the vectors"])
def test_streamed_rows_equal_cached_stores(case, dtype, rng):
    """The row kernels stream too: layer and RMS norm (rows longer and shorter than ROW_CHUNK) and
    channels-first group norm, whose weights change every H*W elements -- streamed only when
    those segments start on vector boundaries (``_streams_rows``): 2x2 pixels do not."""
    elements = _cpu.STREAM_BYTES // np.dtype(dtype).itemsize
    spatial = (2, 2) if "off" in case else (16, 16)
    shape = {"layer_norm": (elements // 2048, 2048), "rms_norm": (elements // 512, 512),
             "group_norm": (elements // (32 * spatial[0] * spatial[1]), 32) + spatial}[case.split()[0]]
    if case == "layer_norm short rows":
        shape = (elements // 64, 64)
    x = (rng.standard_normal(shape) * 2 + 30).astype(dtype)
    w, b = rng.standard_normal((2, 32) if case.startswith("group") else (2, shape[-1])).astype(dtype)
    call, expected = {
        "layer_norm": (lambda **k: nn.layer_norm(x, shape[-1:], w, b, **k), lambda: ref.layer_norm(x, shape[-1:], w, b)),
        "rms_norm": (lambda **k: nn.rms_norm(x, shape[-1:], w, **k), lambda: ref.rms_norm(x, shape[-1:], w)),
        "group_norm": (lambda **k: nn.group_norm(x, 8, w, b, **k), lambda: ref.group_norm(x, 8, w, b)),
    }[case.split()[0]]
    streamed = call()
    if case.startswith("group"):  # the kernel's rows: (sample, group), 4 channels of H*W each
        segment = spatial[0] * spatial[1]
        rows = streamed.reshape(-1, 4 * segment)
        assert _cpu._streams(rows) and _cpu._streams_rows(rows, segment) == ("off" not in case)
    else:
        assert _cpu._streams_rows(streamed.reshape(-1, shape[-1]), 1)
    cached = call(out=_unaligned(x.shape, dtype))
    np.testing.assert_array_equal(streamed, cached)
    assert_close(streamed, expected(), 2e-5 if dtype == np.float32 else 1e-12, what=case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["group_norm", "batch_norm"])
def test_streamed_input_gradient_equals_cached_stores(op, dtype, rng):
    x = (rng.standard_normal(SHAPE) * 3 + 100).astype(dtype)
    dy = rng.standard_normal(SHAPE).astype(dtype)
    w = rng.standard_normal(SHAPE[-1]).astype(dtype)
    if op == "group_norm":
        _, stats = nn.group_norm(x, 16, w, None, channel_axis=-1, return_stats=True)
        grads = nn.group_norm_backward(dy, x, stats, 16, w, channel_axis=-1)
        expected = ref.group_norm_backward(dy, x, stats, 16, w, channel_axis=-1)
    else:
        _, stats = nn.batch_norm(x, None, None, w, None, training=True, channel_axis=-1, return_stats=True)
        grads = nn.batch_norm_backward(dy, x, stats, w, channel_axis=-1)
        expected = ref.batch_norm_backward(dy, x, stats, w, channel_axis=-1)
    assert grads.input.ctypes.data % _cpu.STREAM_ALIGN == 0
    assert_close(grads.input, expected.input, 1e-4 if dtype == np.float32 else 1e-10, what=op)
    assert_close(grads.weight, expected.weight, 1e-4 if dtype == np.float32 else 1e-10, what=op)


@pytest.mark.parametrize("params", [True, False])
@pytest.mark.parametrize("length", [1024, 128])
def test_streamed_row_input_gradient_equals_cached_stores(length, params, rng):
    """``row_normalize_backward`` streams its input gradient in rows of STREAM_GRAD_ROW_BYTES and
    more (the parameter terms then in a loop of their own): the same bits, gradients of the
    parameters included, as ordinary stores; shorter rows keep ordinary stores."""
    x = (rng.standard_normal((_cpu.STREAM_BYTES // (4 * length), length)) + 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(length).astype(np.float32)
    mean, rstd = x.mean(axis=1), 1 / np.sqrt(x.var(axis=1) + 1e-5)
    blocks, width = 6, length if params else 0
    results = []
    for out in (aligned_empty(x.shape, x.dtype), _unaligned(x.shape, x.dtype)):
        out.fill(np.nan)
        sums = np.full((2, blocks, width), np.nan)
        _cpu.row_normalize_backward(dy, x, w, mean.copy(), rstd.copy(), True, False, 1e-5, params, blocks, out,
                                    sums[0], sums[1], np.empty((blocks, 2, width), x.dtype))
        results.append((out, sums))
    assert _cpu._streams(results[0][0]) and not _cpu._streams(results[1][0])
    assert not np.isnan(results[0][0]).any()
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy * w
    expected = rstd[:, None] * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    np.testing.assert_allclose(results[0][0], expected, rtol=1e-3, atol=1e-4)
    if params:
        np.testing.assert_allclose(results[0][1][1].sum(axis=0), (dy * xhat).sum(axis=0), rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("kernel", ["col_affine", "col_input_grad", "col_normalize", "col_normalize_backward"])
def test_streamed_kernels_write_every_element_as_cached_stores_do(kernel, rng):
    """Each kernel, into an aligned output (streamed) and an unaligned one (cached stores): the
    same bits everywhere, none left unwritten (the outputs start as NaN)."""
    a, c = 4, 32
    x = rng.standard_normal((a, _cpu.STREAM_BYTES // (4 * a * c), c)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    k = rng.standard_normal((5, a, c)).astype(np.float32)
    w, b = rng.standard_normal((2, c)).astype(np.float32)
    stats = rng.random((2, a, 8)) + 0.5
    results = []
    for out in (aligned_empty(x.shape, x.dtype), _unaligned(x.shape, x.dtype)):
        out.fill(np.nan)
        if kernel == "col_affine":
            _cpu.col_affine(x, k[0], k[1], k[2], k[3], 3, out)
        elif kernel == "col_input_grad":
            _cpu.col_input_grad(dy, x, k[0], k[1], k[2], k[3], k[4], 3, out)
        elif kernel == "col_normalize":
            _cpu.col_normalize(x, w, b, 8, 1e-5, 1, out, *np.empty((3, a, 8)))
        else:
            _cpu.col_normalize_backward(dy, x, w, 8, stats[0], stats[1], 1, out, *np.empty((2, a, c)))
        results.append(out)
    assert _cpu._streams(results[0]) and not _cpu._streams(results[1])
    assert not np.isnan(results[0]).any()
    np.testing.assert_array_equal(results[0], results[1])
