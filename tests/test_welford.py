"""The streaming statistics API: welford, merge, Moments.finalize."""

import numpy as np
import pytest

import numbanorm as nn
from conftest import assert_close


def test_merging_blocks_equals_the_whole(rng):
    x = rng.normal(5.0, 3.0, size=(40, 6, 7))
    blocks = np.array_split(x, [3, 4, 20, 39], axis=0)  # uneven, one of length 1
    state = nn.welford(blocks[0], (0, 2))
    for block in blocks[1:]:
        state = nn.merge(state, nn.welford(block, (0, 2)))
    mean, var = state.finalize()
    assert_close(state.count, np.full(6, 40 * 7), 0)
    assert_close(mean, x.mean((0, 2)), 1e-13)
    assert_close(var, x.var((0, 2)), 1e-13)
    assert_close(state.finalize(ddof=1)[1], x.var((0, 2), ddof=1), 1e-13)


def test_merge_with_empty_state_is_identity(rng):
    x = rng.normal(size=(5, 3))
    state = nn.welford(x, 0)
    empty = nn.welford(np.empty((0, 3)), 0)
    assert np.all(empty.count == 0)
    for merged in (nn.merge(state, empty), nn.merge(empty, state)):
        assert_close(merged.mean, state.mean, 1e-15)
        assert_close(merged.m2, state.m2, 1e-15)
    both_empty = nn.merge(empty, empty)
    assert np.all(both_empty.count == 0) and np.all(np.isnan(both_empty.finalize()[1]))


def test_welford_keepdims_and_float32(rng):
    x = rng.normal(1e4, 1.0, size=(8, 5, 64)).astype(np.float32)
    state = nn.welford(x, (0, 2), keepdims=True)
    assert state.mean.shape == (1, 5, 1) and state.mean.dtype == np.float64
    exact = x.astype(np.float64)
    assert_close(state.finalize()[1].ravel(), exact.var((0, 2)), 1e-6)


def test_merge_refuses_non_states():
    with pytest.raises(TypeError, match="Moments"):
        nn.merge((1, 2, 3), nn.welford(np.ones(3), 0))
