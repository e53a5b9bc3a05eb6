"""Switchable norm and RMS norm against float64 references and finite differences."""

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import reference as ref
from conftest import assert_close


def _fd(f, x, d, h=1e-6):
    return (f(x + h * d) - f(x - h * d)) / (2 * h)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,k", [((16, 8), 1), ((3, 4, 6), 2), ((2, 5), 1), ((7,), 1)])
def test_rms_norm_matches_reference(shape, k, dtype, rng):
    x = (rng.normal(size=shape) + 1.5).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    ns = shape[len(shape) - k:]
    w = rng.normal(size=ns).astype(dtype)
    y, st = nn.rms_norm(x, ns, w, return_stats=True)
    eps = np.finfo(dtype).eps
    assert y.dtype == dtype
    y_ref, st_ref = ref.rms_norm(x, ns, w, eps, return_stats=True)
    assert_close(y, y_ref, 1e-10 if dtype == np.float64 else 2e-5)
    g = nn.rms_norm_backward(dy, x, st, ns, w)
    dx, dw, _ = ref.rms_norm_backward(dy, x, st_ref, ns, w)
    assert g.bias is None
    assert_close(g.input, dx, 1e-10 if dtype == np.float64 else 2e-5)
    assert_close(g.weight, dw, 1e-9 if dtype == np.float64 else 2e-4)


def test_rms_norm_gradient_by_finite_differences(rng):
    x = rng.normal(size=(5, 6))
    w, r = rng.normal(size=6), rng.normal(size=(5, 6))
    _, st = nn.rms_norm(x, 6, w, eps=1e-6, return_stats=True)
    g = nn.rms_norm_backward(r, x, st, 6, w)
    loss = lambda x_: float((r * nn.rms_norm(x_, 6, w, eps=1e-6)).sum())
    for _ in range(3):
        d = rng.normal(size=x.shape)
        assert abs(_fd(loss, x, d) - (g.input * d).sum()) < 1e-6


@pytest.mark.parametrize("ca", [1, -1])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("using_bn", [True, False])
def test_switchable_forward_and_gradients(ca, training, using_bn, rng):
    x = rng.normal(size=(3, 4, 5, 2)) * 2 + 1
    if ca == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    terms = 3 if using_bn else 2
    zm, zv = rng.normal(size=terms), rng.normal(size=terms)
    w, b, r = rng.normal(size=4), rng.normal(size=4), rng.normal(size=x.shape)
    rm, rv = rng.normal(size=4), rng.uniform(0.5, 2, 4)
    run = lambda x_=x, zm_=zm, zv_=zv, w_=w, b_=b, stats=False: nn.switchable_norm(
        x_, zm_, zv_, rm.copy(), rv.copy(), w_, b_, training=training, channel_axis=ca, using_bn=using_bn,
        return_stats=stats)
    reference = lambda x_=x, zm_=zm, zv_=zv, w_=w, b_=b: ref.switchable_norm(
        x_, zm_, zv_, rm.copy(), rv.copy(), w_, b_, training=training, channel_axis=ca, using_bn=using_bn)
    y, st = run(stats=True)
    assert_close(y, reference(), 1e-11)
    g = nn.switchable_norm_backward(r, x, st, zm, zv, w, channel_axis=ca)
    # every gradient against central differences of the plain-NumPy definition
    for name, base, grad in [("input", x, g.input), ("mean_weight", zm, g.mean_weight),
                             ("var_weight", zv, g.var_weight), ("weight", w, g.weight), ("bias", b, g.bias)]:
        key = {"input": "x_", "mean_weight": "zm_", "var_weight": "zv_", "weight": "w_", "bias": "b_"}[name]
        loss = lambda v: float((r * reference(**{key: v})).sum())
        for _ in range(2):
            d = rng.normal(size=base.shape)
            assert abs(_fd(loss, base, d) - (grad * d).sum()) < 2e-6, name


def test_switchable_one_hot_reduces_to_in_ln_bn(rng):
    x = rng.normal(size=(4, 6, 5, 5)) + 3
    w, b = rng.normal(size=6), rng.normal(size=6)
    one_hot = lambda k: np.array([50.0 if i == k else 0.0 for i in range(3)])
    rm, rv = np.zeros(6), np.ones(6)
    y = nn.switchable_norm(x, one_hot(0), one_hot(0), rm, rv, w, b, training=True)
    assert_close(y, nn.instance_norm(x, None, None, w, b), 1e-12)
    y = nn.switchable_norm(x, one_hot(1), one_hot(1), rm, rv, w, b, training=True)
    assert_close(y, nn.layer_norm(x, (6, 5, 5)) * w[:, None, None] + b[:, None, None], 1e-12)
    rm_bn, rv_bn = np.zeros(6), np.ones(6)
    rm_sn, rv_sn = np.zeros(6), np.ones(6)
    y = nn.switchable_norm(x, one_hot(2), one_hot(2), rm_sn, rv_sn, w, b, training=True, momentum=0.3)
    assert_close(y, nn.batch_norm(x, rm_bn, rv_bn, w, b, training=True, momentum=0.3), 1e-12)
    assert_close(rm_sn, rm_bn, 1e-15) and assert_close(rv_sn, rv_bn, 1e-15)
    y = nn.switchable_norm(x, one_hot(2), one_hot(2), rm_sn, rv_sn, w, b, training=False)
    assert_close(y, nn.batch_norm(x, rm_bn, rv_bn, w, b, training=False), 1e-12)


def test_switchable_cumulative_running_stats(rng):
    batches = [rng.normal(i, 1, size=(3, 2, 4)) for i in range(3)]
    rm, rv, count = np.zeros(2), np.ones(2), np.zeros((), np.int64)
    for x in batches:
        nn.switchable_norm(x, np.zeros(3), np.zeros(3), rm, rv, training=True, momentum=None,
                           num_batches_tracked=count)
    assert int(count) == 3
    assert_close(rm, np.mean([x.mean((0, 2)) for x in batches], axis=0), 1e-12)
    assert_close(rv, np.mean([x.var((0, 2), ddof=1) for x in batches], axis=0), 1e-12)


def test_switchable_large_offset_float32(rng):
    x = (1e4 + rng.normal(size=(8, 8, 12, 12))).astype(np.float32)
    zm, zv = rng.normal(size=3), rng.normal(size=3)
    y = nn.switchable_norm(x, zm, zv, np.zeros(8), np.ones(8), training=True)
    assert_close(y, ref.switchable_norm(x, zm, zv, np.zeros(8), np.ones(8), training=True), 2e-5)


@pytest.mark.parametrize("call,exc,words", [
    (lambda x: nn.switchable_norm(x, np.zeros(2), np.zeros(3), training=True), ValueError, ["mean_weight", "3 logits", "(2,)"]),
    (lambda x: nn.switchable_norm(x, np.zeros(3), np.zeros(3), using_bn=False), ValueError, ["mean_weight", "2 logits"]),
    (lambda x: nn.switchable_norm(x, np.zeros(3), np.zeros((3, 1)), np.zeros(4), np.ones(4)), ValueError, ["var_weight"]),
    (lambda x: nn.switchable_norm(x, np.zeros(3, int), np.zeros(3), np.zeros(4), np.ones(4)), TypeError, ["mean_weight", "int"]),
    (lambda x: nn.switchable_norm(x, np.zeros(3), np.zeros(3)), ValueError, ["running_mean", "training=False"]),
    (lambda x: nn.switchable_norm_backward(x, x, nn.batch_norm(x, None, None, training=True, return_stats=True)[1],
                                           np.zeros(3), np.zeros(3)), TypeError, ["SwitchableStats"]),
    (lambda x: nn.switchable_norm_backward(x[:1], x[:1], nn.switchable_norm(x, np.zeros(3), np.zeros(3), training=True,
                                           return_stats=True)[1], np.zeros(3), np.zeros(3)), ValueError, ["stats", "(N, C)"]),
    (lambda x: nn.rms_norm(x, (3,)), ValueError, ["normalized_shape"]),
])
def test_bad_switchable_and_rms_input(call, exc, words, rng):
    x = rng.normal(size=(2, 4, 5))
    with pytest.raises(exc) as info:
        call(x)
    for word in words:
        assert word in str(info.value)
