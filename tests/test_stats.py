"""moments, batch_normalization and running statistics."""

import numpy as np

import numbanorm as nn
from conftest import assert_close


def test_moments_matches_numpy(rng):
    x = rng.normal(size=(3, 4, 5)).astype(np.float32)
    m, v = nn.moments(x, (0, -1))
    assert m.dtype == np.float32 and m.shape == (4,)
    assert_close(m, x.astype(np.float64).mean((0, 2)), 1e-6)
    assert_close(v, x.astype(np.float64).var((0, 2)), 1e-6)
    m, v = nn.moments(x, 1, keepdims=True)
    assert m.shape == (3, 1, 5)
    m, v = nn.moments(x, (0, 1, 2))
    assert m.shape == () and abs(float(m) - x.astype(np.float64).mean()) < 1e-6


def test_moments_one_long_row_uses_every_piece(rng):
    x = rng.normal(5.0, 2.0, 1_000_003)
    m, v = nn.moments(x, 0)
    assert abs(m - x.mean()) < 1e-12 and abs(v - x.var()) < 1e-10


def test_batch_normalization_broadcasts(rng):
    x = rng.normal(size=(4, 5, 3))
    mean, var = rng.normal(size=3), rng.uniform(1, 2, 3)
    offset, scale = rng.normal(size=(5, 1)), rng.normal(size=3)
    y = nn.batch_normalization(x, mean, var, offset, scale, 1e-3)
    assert_close(y, (x - mean) / np.sqrt(var + 1e-3) * scale + offset, 1e-12)
    y = nn.batch_normalization(x, mean, var, None, None, 0.0)
    assert_close(y, (x - mean) / np.sqrt(var), 1e-12)
    m, v = nn.moments(x, (0, 1), keepdims=True)
    y = nn.batch_normalization(x.astype(np.float32), m, v, None, None, 1e-5)
    assert y.dtype == np.float32
    assert_close(y, (x - m) / np.sqrt(v + 1e-5), 1e-5)


def test_batch_norm_running_stats_pytorch_convention(rng):
    x = rng.normal(2.0, 3.0, size=(5, 3, 4))
    rm, rv = np.zeros(3), np.ones(3)
    nn.batch_norm(x, rm, rv, training=True, momentum=0.25)
    batch_mean = x.mean((0, 2))
    batch_var_unbiased = x.var((0, 2), ddof=1)
    assert_close(rm, 0.25 * batch_mean, 1e-12)
    assert_close(rv, 0.75 + 0.25 * batch_var_unbiased, 1e-12)


def test_batch_norm_cumulative_average_with_momentum_none(rng):
    batches = [rng.normal(i, 1 + i, size=(4, 2, 3)) for i in range(3)]
    rm, rv = np.zeros(2), np.ones(2)
    count = np.zeros((), np.int64)
    for b in batches:
        nn.batch_norm(b, rm, rv, training=True, momentum=None, num_batches_tracked=count)
    assert int(count) == 3
    assert_close(rm, np.mean([b.mean((0, 2)) for b in batches], axis=0), 1e-12)
    assert_close(rv, np.mean([b.var((0, 2), ddof=1) for b in batches], axis=0), 1e-12)


def test_instance_norm_running_stats(rng):
    x = rng.normal(1.0, 2.0, size=(3, 2, 6))
    rm, rv = np.zeros(2), np.ones(2)
    nn.instance_norm(x, rm, rv, momentum=0.5)
    assert_close(rm, 0.5 * x.mean(2).mean(0), 1e-12)
    assert_close(rv, 0.5 + 0.5 * x.var(2, ddof=1).mean(0), 1e-12)


def test_running_stats_in_float32_are_updated_in_their_dtype(rng):
    x = rng.normal(size=(8, 3, 5))
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    nn.batch_norm(x, rm, rv, training=True)
    assert rm.dtype == np.float32
    assert_close(rm, 0.1 * x.mean((0, 2)), 1e-6)


def test_eval_mode_leaves_running_stats_alone(rng):
    x = rng.normal(size=(4, 3, 5))
    rm, rv = rng.normal(size=3), rng.uniform(1, 2, 3)
    before = rm.copy(), rv.copy()
    nn.batch_norm(x, rm, rv, training=False)
    assert np.array_equal(rm, before[0]) and np.array_equal(rv, before[1])


def test_merge_groups_of_uneven_parts_with_empty_ones(rng):
    """Parts of any sizes (some empty) merged into groups give each group's exact statistics,
    also around a 1e8 offset (the merge weighs offsets from a non-empty part's mean)."""
    from numbanorm import _cpu
    groups = 3
    values = [rng.normal(1e8, 1.0, size) for size in (0, 5, 1, 0, 17, 9, 2, 30, 0, 4)]
    group_of = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    # states as the kernels give them, (K, P, W): here 5 outer indices, 1 piece, 2 columns
    count = np.array([float(v.size) for v in values]).reshape(5, 1, 2)
    mean = np.array([v.mean() if v.size else 0.0 for v in values]).reshape(5, 1, 2)
    m2 = np.array([((v - v.mean()) ** 2).sum() if v.size else 0.0 for v in values]).reshape(5, 1, 2)
    n, mu, q = np.empty(groups), np.empty(groups), np.empty(groups)
    _cpu.merge_groups(count, mean, m2, group_of.reshape(5, 2), n, mu, q)
    for g in range(groups):
        members = np.concatenate([v for v, k in zip(values, group_of) if k == g])
        assert n[g] == members.size
        assert abs(mu[g] - members.mean()) < 1e-7  # float64 ulp at 1e8 is 1.5e-8
        assert abs(q[g] / n[g] - members.var()) < 1e-6 * members.var()
