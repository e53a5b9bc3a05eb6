"""Bad input: a clear TypeError/ValueError naming the argument, and nothing modified."""

import numpy as np
import pytest

import numbanorm as nn


@pytest.fixture
def x(rng):
    return rng.normal(size=(4, 6, 5)).astype(np.float32)


@pytest.fixture
def running():
    return np.zeros(6), np.ones(6)


def _bn(x, running, **kw):
    rm, rv = running
    args = dict(training=True)
    args.update(kw)
    return nn.batch_norm(x, rm, rv, **args)


CASES = [
    # (description, call, exception, words the message must contain)
    ("1-D input", lambda x, r: _bn(x[0, 0], r), ValueError, ["input", "at least 2 dimensions"]),
    ("integer input", lambda x, r: _bn(x.astype(np.int32), r), TypeError, ["input", "int32"]),
    ("bool input", lambda x, r: nn.layer_norm(x > 0, 5), TypeError, ["input", "bool"]),
    ("complex input", lambda x, r: nn.group_norm(x.astype(np.complex64), 2), TypeError, ["input", "complex64"]),
    ("object input", lambda x, r: nn.moments(x.astype(object), 0), TypeError, ["x", "object"]),
    ("weight length", lambda x, r: _bn(x, r, weight=np.ones(5)), ValueError, ["weight", "(6,)", "(5,)"]),
    ("bias length", lambda x, r: nn.group_norm(x, 2, None, np.ones(7)), ValueError, ["bias", "(6,)", "(7,)"]),
    ("weight dtype", lambda x, r: nn.instance_norm(x, weight=np.ones(6, np.int64)), TypeError, ["weight", "int64"]),
    ("running_mean length", lambda x, r: _bn(x, (np.zeros(5), r[1])), ValueError, ["running_mean", "(6,)", "(5,)"]),
    ("running_var dtype", lambda x, r: _bn(x, (r[0], np.ones(6, np.int64))), TypeError, ["running_var", "int64"]),
    ("non-contiguous running_mean", lambda x, r: _bn(x, (np.zeros(12)[::2], r[1])), ValueError, ["running_mean", "contiguous"]),
    ("running stats half given", lambda x, r: _bn(x, (r[0], None)), ValueError, ["running_mean", "running_var", "both"]),
    ("eval without running stats", lambda x, r: nn.batch_norm(x, None, None), ValueError, ["running_mean", "training=False"]),
    ("groups not dividing C", lambda x, r: nn.group_norm(x, 4), ValueError, ["num_groups", "divisor", "6", "4"]),
    ("groups not an integer", lambda x, r: nn.group_norm(x, 2.0), TypeError, ["num_groups", "integer"]),
    ("normalized_shape mismatch", lambda x, r: nn.layer_norm(x, (6,)), ValueError, ["normalized_shape", "(6,)", "(4, 6, 5)"]),
    ("normalized_shape too long", lambda x, r: nn.layer_norm(x, (1, 4, 6, 5)), ValueError, ["normalized_shape"]),
    ("normalized_shape empty", lambda x, r: nn.layer_norm(x, ()), ValueError, ["normalized_shape", "non-empty"]),
    ("normalized_shape of floats", lambda x, r: nn.layer_norm(x, (6.0, 5.0)), TypeError, ["normalized_shape", "integer"]),
    ("normalized_shape an array", lambda x, r: nn.layer_norm(x, np.ones(5, np.float32)), TypeError, ["normalized_shape", "integer"]),
    ("axes out of range", lambda x, r: nn.moments(x, (0, 3)), ValueError, ["axes", "3"]),
    ("axes repeated", lambda x, r: nn.moments(x, (1, -2)), ValueError, ["axes", "repeat"]),
    ("axes not integers", lambda x, r: nn.moments(x, "a"), TypeError, ["axes"]),
    ("negative eps", lambda x, r: _bn(x, r, eps=-1e-5), ValueError, ["eps", ">= 0", "-1e-05"]),
    ("nan eps", lambda x, r: nn.layer_norm(x, 5, eps=float("nan")), ValueError, ["eps"]),
    ("eps not a number", lambda x, r: nn.group_norm(x, 2, eps="small"), TypeError, ["eps", "real number"]),
    ("momentum above 1", lambda x, r: _bn(x, r, momentum=1.5), ValueError, ["momentum", "[0, 1]", "1.5"]),
    ("momentum below 0", lambda x, r: _bn(x, r, momentum=-0.1), ValueError, ["momentum", "[0, 1]"]),
    ("momentum None without a counter", lambda x, r: _bn(x, r, momentum=None), ValueError, ["num_batches_tracked"]),
    ("channel_axis 0", lambda x, r: _bn(x, r, channel_axis=0), ValueError, ["channel_axis", "batch axis"]),
    ("channel_axis out of range", lambda x, r: _bn(x, r, channel_axis=3), ValueError, ["channel_axis", "3"]),
    ("channel_axis -ndim is the batch axis", lambda x, r: _bn(x, r, channel_axis=-3), ValueError, ["channel_axis", "batch axis", "-3"]),
    ("channel_axis below -ndim", lambda x, r: _bn(x, r, channel_axis=-4), ValueError, ["channel_axis", "-4"]),
    ("channel_axis a float", lambda x, r: _bn(x, r, channel_axis=1.0), TypeError, ["channel_axis", "integer"]),
    ("one value per channel", lambda x, r: _bn(x[:1, :, :1], r), ValueError, ["more than 1 value per channel"]),
    ("one spatial value", lambda x, r: nn.instance_norm(x[:, :, :1]), ValueError, ["more than 1 spatial element"]),
    ("out of the wrong dtype", lambda x, r: nn.layer_norm(x, 5, out=np.empty(x.shape)), TypeError, ["out", "float32", "float64"]),
    ("out of the wrong shape", lambda x, r: nn.layer_norm(x, 5, out=np.empty((4, 6), np.float32)), ValueError, ["out", "shape"]),
    ("batch_normalization mean too big", lambda x, r: nn.batch_normalization(x, np.zeros(7), np.ones(5), None, None, 1e-3), ValueError, ["mean", "broadcast"]),
    ("grad_output dtype", lambda x, r: nn.layer_norm_backward(x.astype(np.float64), x, nn.layer_norm(x, 5, return_stats=True)[1], 5), TypeError, ["grad_output", "dtype"]),
    ("grad_output shape", lambda x, r: nn.group_norm_backward(x[:2], x, nn.group_norm(x, 2, return_stats=True)[1], 2), ValueError, ["grad_output", "shape"]),
    ("stats of another op", lambda x, r: nn.group_norm_backward(x, x, nn.layer_norm(x, 5, return_stats=True)[1], 2), ValueError, ["stats.mean", "shape"]),
    ("stats not stats", lambda x, r: nn.batch_norm_backward(x, x, (1, 2)), TypeError, ["stats", "NormStats"]),
]


@pytest.mark.parametrize("what,call,exc,words", [c for c in CASES if c[2] is not None], ids=[c[0] for c in CASES if c[2] is not None])
def test_bad_input_is_refused_clearly_and_changes_nothing(what, call, exc, words, x, running):
    rm, rv = running
    before = (x.copy(), rm.copy(), rv.copy())
    with pytest.raises(exc) as info:
        call(x, running)
    message = str(info.value)
    for word in words:
        assert word in message, f"{what}: {message!r} lacks {word!r}"
    assert np.array_equal(x, before[0]) and np.array_equal(rm, before[1]) and np.array_equal(rv, before[2])


def test_read_only_running_stats_are_refused_and_untouched(x):
    rm, rv = np.zeros(6), np.ones(6)
    rv.flags.writeable = False
    with pytest.raises(ValueError, match="running_var.*writable"):
        nn.batch_norm(x, rm, rv, training=True)
    assert np.all(rm == 0)


def test_running_stats_untouched_when_a_later_argument_is_bad(x):
    rm, rv = np.zeros(6), np.ones(6)
    for kwargs in (dict(weight=np.ones(3)), dict(eps=-1.0), dict(out=np.empty(3)), dict(momentum=2.0)):
        with pytest.raises((TypeError, ValueError)):
            nn.batch_norm(x, rm, rv, training=True, **kwargs)
        with pytest.raises((TypeError, ValueError)):
            nn.instance_norm(x, rm, rv, **kwargs)
    assert np.all(rm == 0) and np.all(rv == 1)


def test_mixed_dtypes_policy(x):
    # small parameters of another float dtype are cast; the result keeps the input's dtype
    y = nn.batch_norm(x, None, None, np.ones(6, np.float64), np.zeros(6, np.float16), training=True)
    assert y.dtype == np.float32
    # full-size companions must match
    with pytest.raises(TypeError, match="out"):
        nn.group_norm(x, 2, out=np.empty(x.shape, np.float16))
