"""TensorFlow's statistics API (issue #16 B) against float64 NumPy references of TensorFlow's
documented formulas, finite differences, and exact merging of weighted Welford states."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numbanorm as nn
from numbanorm import reference as ref

from conftest import numeric_grad  # references: numbanorm.reference (TensorFlow's formulas)


# -- weighted_moments ----------------------------------------------------------------------------

WEIGHT_SHAPES = [(), (4, 1, 1, 1), (1, 3, 1, 1), (5, 1), (4, 3, 5, 1), (4, 3, 5, 2)]


@pytest.mark.parametrize("wshape", WEIGHT_SHAPES)
@pytest.mark.parametrize("axes", [(0,), (0, 2, 3), (1, 2), (3,), (0, 1, 2, 3), -1])
def test_weighted_moments_matches_tensorflows_formula(wshape, axes):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 2))
    w = rng.uniform(0, 3, wshape)
    for keepdims in (False, True):
        mean, var = nn.weighted_moments(x, axes, w, keepdims=keepdims)
        rmean, rvar = ref.weighted_moments(np.asarray(x, np.longdouble), axes, w, keepdims)
        assert mean.shape == rmean.shape and var.shape == rvar.shape and mean.dtype == np.float64
        np.testing.assert_allclose(mean, rmean, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(var, rvar, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dtype,offset,tol", [(np.float32, 1e4, 2e-6), (np.float64, 1e8, 1e-14),
                                              (np.float16, 10.0, 2e-3)])
def test_weighted_moments_keep_the_digits_of_offset_data(dtype, offset, tol):
    rng = np.random.default_rng(1)
    x = (offset + rng.standard_normal((64, 257))).astype(dtype)
    w = rng.integers(0, 5, (64, 1)).astype(np.float32)
    mean, var = nn.weighted_moments(x, 0, w)
    rmean, rvar = ref.weighted_moments(np.asarray(x, np.longdouble), 0, w)
    assert mean.dtype == dtype
    # the result can be no closer than rounding to the output dtype
    assert np.max(np.abs(var - rvar) / rvar) <= tol
    assert np.max(np.abs(mean - rmean)) <= np.spacing(dtype(offset)) + tol


def test_weighted_moments_with_zero_total_weight_is_zero_as_tensorflows_div_no_nan():
    x = np.arange(12.0).reshape(3, 4)
    w = np.array([[0.0], [0.0], [0.0]])
    mean, var = nn.weighted_moments(x, 0, w)
    assert np.all(mean == 0) and np.all(var == 0)
    w = np.array([[1.0, 0, 0, 0]] * 3)
    mean, var = nn.weighted_moments(x, 0, w)
    np.testing.assert_array_equal(mean, [4.0, 0, 0, 0])
    np.testing.assert_allclose(var, [32.0 / 3, 0, 0, 0])


def test_integer_frequency_weights_are_repetitions():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 3))
    counts = np.array([0, 1, 3, 2, 0, 5, 1])
    repeated = np.repeat(x, counts, axis=0)
    mean, var = nn.weighted_moments(x, 0, counts[:, None])
    np.testing.assert_allclose(mean, repeated.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(var, repeated.var(axis=0), rtol=1e-13)
    state = nn.welford(x, 0, weights=counts[:, None])
    plain = nn.welford(repeated, 0)
    for a, b in zip(state, plain):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    mean, var = nn.weighted_moments(x, 0, (counts > 0)[:, None])  # bools select
    np.testing.assert_allclose(mean, x[counts > 0].mean(axis=0), rtol=1e-14)


def test_weighted_welford_states_merge_exactly():
    rng = np.random.default_rng(3)
    x = 1e4 + rng.standard_normal((10, 6))
    w = rng.uniform(0, 2, (10, 1))
    whole = nn.welford(x, 0, weights=w)
    parts = [nn.welford(x[a:b], 0, weights=w[a:b]) for a, b in ((0, 3), (3, 4), (4, 4), (4, 10))]
    merged = parts[0]
    for p in parts[1:]:
        merged = nn.merge(merged, p)
    for a, b in zip(merged, whole):  # to rounding: m2 ~ 5 next to an offset of 1e4 in float64
        np.testing.assert_allclose(a, b, rtol=1e-10)
    assert whole.count.dtype == np.float64 and np.allclose(whole.count, w.sum())
    # a weighted state merges with an unweighted one: weight 1 each
    mixed = nn.merge(nn.welford(x[:4], 0), nn.welford(x[4:], 0, weights=np.ones((6, 1))))
    for a, b in zip(mixed, nn.welford(x, 0)):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    # keepdims and an empty block
    state = nn.welford(x[:0], (0,), keepdims=True, weights=np.ones((0, 1)))
    assert state.count.shape == (1, 6) and np.all(state.count == 0)


@pytest.mark.parametrize("weights,exc,words", [
    (-np.ones((4, 1)), ValueError, ["frequency_weights", ">= 0", "-1"]),
    (np.full((4, 1), np.nan), ValueError, ["frequency_weights", "finite"]),
    (np.ones((4, 1), complex), TypeError, ["frequency_weights", "complex"]),
    (np.ones((3, 1)), ValueError, ["frequency_weights", "broadcast", "(4, 5)", "(3, 1)"]),
    (np.ones((2, 4, 5)), ValueError, ["frequency_weights", "broadcast"]),
    (np.ma.masked_array(np.ones((4, 1))), TypeError, ["frequency_weights", "masked"]),
    (None, TypeError, ["frequency_weights"]),
    ("abc", TypeError, ["frequency_weights"]),
])
def test_bad_weights_are_refused_clearly(weights, exc, words):
    x = np.ones((4, 5))
    with pytest.raises(exc) as info:
        nn.weighted_moments(x, 0, weights)
    for word in words:
        assert word in str(info.value)


def test_weighted_moments_bad_x_and_axes():
    with pytest.raises(TypeError, match="x must have dtype"):
        nn.weighted_moments(np.ones((3, 2), int), 0, 1.0)
    with pytest.raises(ValueError, match="axes"):
        nn.weighted_moments(np.ones((3, 2)), 2, 1.0)
    with pytest.raises(TypeError, match="weights"):
        nn.welford(np.ones((3, 2)), 0, weights=np.ones(2, complex))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_weighted_moments_property(shape, data):
    ndim = len(shape)
    axes = data.draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    wshape = tuple(d if data.draw(st.booleans()) else 1 for d in shape)[data.draw(st.integers(0, ndim)):]
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    x = 100 + rng.standard_normal(shape)
    w = rng.uniform(0, 2, wshape) * (rng.uniform(size=wshape) > 0.2)
    mean, var = nn.weighted_moments(x, axes, w, keepdims=True)
    rmean, rvar = ref.weighted_moments(np.asarray(x, np.longdouble), tuple(axes), w, True)
    np.testing.assert_allclose(mean, rmean, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(var, rvar, rtol=1e-10, atol=1e-11)


# -- sufficient_statistics / normalize_moments -------------------------------------------------------

@pytest.mark.parametrize("shift", [None, "scalar", "per channel"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sufficient_statistics_and_normalize_moments_follow_tensorflow(shift, keepdims):
    rng = np.random.default_rng(4)
    x = 5 + rng.standard_normal((4, 6, 3))
    axes = (0, 1)
    s = {None: None, "scalar": np.float64(5.0), "per channel": x[0, 0] * 1.0}[shift]
    count, mean_ss, var_ss, shift_out = nn.sufficient_statistics(x, axes, shift=s, keepdims=keepdims)
    rcount, rmean_ss, rvar_ss, _ = ref.sufficient_statistics(x, axes, s, keepdims)
    assert count.shape == () and count == rcount == 24 and count.dtype == x.dtype
    np.testing.assert_allclose(mean_ss, rmean_ss, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(var_ss, rvar_ss, rtol=1e-14)
    assert (shift_out is None) == (s is None)
    if s is not None:
        np.testing.assert_array_equal(shift_out, s)
    mean, var = nn.normalize_moments(count, mean_ss, var_ss, shift_out)
    rmean, rvar = ref.normalize_moments(rcount, rmean_ss, rvar_ss, s)
    np.testing.assert_allclose(mean, rmean, rtol=1e-14)
    np.testing.assert_allclose(var, rvar, rtol=1e-11)
    # and they are the moments
    emean, evar = nn.moments(x, axes, keepdims=keepdims)
    np.testing.assert_allclose(mean, emean, rtol=1e-13)
    np.testing.assert_allclose(var, evar, rtol=1e-9)


def test_sufficient_statistics_dtypes_and_a_shift_near_the_mean_on_offset_float32():
    rng = np.random.default_rng(5)
    x = (1e4 + rng.standard_normal((1000, 3))).astype(np.float32)
    count, m, v, s = nn.sufficient_statistics(x, 0, shift=np.float32(1e4))
    assert m.dtype == v.dtype == count.dtype == s.dtype == np.float32
    mean, var = nn.normalize_moments(count, m, v, s)
    assert mean.dtype == np.float32
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=0), rtol=1e-5)


def test_normalize_moments_bad_arguments():
    with pytest.raises(ValueError, match="counts must be > 0"):
        nn.normalize_moments(0.0, np.ones(3), np.ones(3), None)
    with pytest.raises(ValueError, match="broadcast together"):
        nn.normalize_moments(2.0, np.ones(3), np.ones(4), None)
    with pytest.raises(TypeError, match="mean_ss"):
        nn.normalize_moments(2.0, "a", np.ones(3), None)
    with pytest.raises(ValueError, match="shift must broadcast"):
        nn.sufficient_statistics(np.ones((3, 4)), 0, shift=np.ones(3))


# -- moments_backward / batch_normalization_backward -------------------------------------------------

@pytest.mark.parametrize("axes", [(0,), (0, 2), (1, 2), (0, 1, 2)])
def test_moments_backward_matches_finite_differences(axes):
    rng = np.random.default_rng(6)
    x = 3 + rng.standard_normal((3, 4, 5))
    gm_shape = nn.moments(x, axes)[0].shape
    gm, gv = rng.standard_normal(gm_shape), rng.standard_normal(gm_shape)
    f = lambda a: (gm * a.mean(axis=axes)).sum() + (gv * a.var(axis=axes)).sum()
    expected = numeric_grad(f, x)
    dx = nn.moments_backward(gm, gv, x, axes)
    np.testing.assert_allclose(dx, expected, rtol=1e-6, atol=1e-8)
    keep = nn.moments(x, axes, keepdims=True)[0].shape
    np.testing.assert_allclose(nn.moments_backward(gm.reshape(keep), gv.reshape(keep), x, axes), dx, rtol=1e-14)
    np.testing.assert_allclose(nn.moments_backward(None, gv, x, axes) + nn.moments_backward(gm, None, x, axes),
                               dx, rtol=1e-12, atol=1e-15)
    dx32 = nn.moments_backward(gm, gv, x.astype(np.float32), axes)
    assert dx32.dtype == np.float32
    np.testing.assert_allclose(dx32, expected, rtol=1e-4, atol=1e-5)


def test_moments_backward_bad_grad_shape():
    with pytest.raises(ValueError, match=r"grad_variance must have the shape of the moments, \(4,\)"):
        nn.moments_backward(np.ones(4), np.ones(3), np.ones((3, 4)), 0)


BN_SHAPES = [  # (mean, variance, offset, scale) shapes against x (2, 3, 4, 5)
    ((5,), (5,), (5,), (5,)),
    ((1, 3, 1, 1), (3, 1, 1), (1, 1, 4, 1), ()),
    ((2, 1, 1, 1), (2, 3, 1, 1), None, (5,)),
    ((2, 3, 4, 5), (), (3, 1, 5), None),
    ((), (), None, None),
]


@pytest.mark.parametrize("shapes", BN_SHAPES)
def test_batch_normalization_backward_matches_finite_differences(shapes):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4, 5)) + 2
    eps = 1e-3
    args = [None if s is None else rng.standard_normal(s) for s in shapes]
    args[0] = None if args[0] is None else args[0] + 2
    args[1] = np.abs(args[1]) + 0.5
    dy = rng.standard_normal(x.shape)
    grads = nn.batch_normalization_backward(dy, x, *args, eps)
    assert isinstance(grads, nn.BatchNormalizationGrads)
    allv = [x] + args

    def loss(i):
        def f(a):
            values = list(allv)
            values[i] = a
            return (dy * ref.batch_normalization(values[0], *values[1:], eps)).sum()
        return f

    for i, name in enumerate(("x", "mean", "variance", "offset", "scale")):
        g = getattr(grads, name)
        if allv[i] is None:
            assert g is None, name
            continue
        assert g.shape == np.shape(allv[i]), name
        np.testing.assert_allclose(g, numeric_grad(loss(i), allv[i]), rtol=1e-6, atol=1e-7, err_msg=name)
    y = nn.batch_normalization(x, *args, eps)
    np.testing.assert_allclose(y, ref.batch_normalization(x, *args, eps), rtol=1e-13)


def test_batch_normalization_backward_dtypes_and_errors():
    x = np.random.default_rng(8).standard_normal((3, 4)).astype(np.float32)
    g = nn.batch_normalization_backward(np.ones_like(x), x, np.zeros(4), np.ones(4), None, np.ones(4), 1e-3)
    assert g.x.dtype == g.mean.dtype == g.variance.dtype == g.scale.dtype == np.float32 and g.offset is None
    with pytest.raises(ValueError, match=r"scale must broadcast to x's shape \(3, 4\), got shape \(3,\)"):
        nn.batch_normalization_backward(np.ones_like(x), x, np.zeros(4), np.ones(4), None, np.ones(3), 1e-3)
    with pytest.raises(TypeError, match="grad_output must have the dtype of x"):
        nn.batch_normalization_backward(np.ones((3, 4)), x, np.zeros(4), np.ones(4), None, None, 1e-3)
    with pytest.raises(ValueError, match="variance_epsilon"):
        nn.batch_normalization_backward(np.ones_like(x), x, np.zeros(4), np.ones(4), None, None, -1.0)


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 2, 3), (1, 2)])
def test_chaining_the_backwards_is_tensorflows_manual_backprop(axes):
    """moments -> batch_normalization, backpropagated as TensorFlow's GradientTape does: the
    gradients reaching mean and variance flow on through moments_backward."""
    rng = np.random.default_rng(9)
    x = 1 + rng.standard_normal((3, 4, 5, 6))
    scale, offset = rng.standard_normal(6), rng.standard_normal(6)
    dy = rng.standard_normal(x.shape)
    mean, var = nn.moments(x, axes, keepdims=True)
    g = nn.batch_normalization_backward(dy, x, mean, var, offset, scale, 1e-3)
    dx = g.x + nn.moments_backward(g.mean, g.variance, x, axes)

    def f(a):
        m, v = a.mean(axis=axes, keepdims=True), a.var(axis=axes, keepdims=True)
        return (dy * ref.batch_normalization(a, m, v, offset, scale, 1e-3)).sum()

    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-5, atol=1e-7)


# -- other backends ------------------------------------------------------------------------------

def test_cuda_arrays_are_not_implemented_yet():
    """The TensorFlow statistics API and the NaN-omitting paths compute on the host; `normalize`
    itself runs on CUDA arrays (tests/test_normalize.py)."""
    from numba import cuda

    x = cuda.to_device(np.ones((3, 4)))
    with pytest.raises(NotImplementedError, match="weighted_moments does not take CUDA arrays"):
        nn.weighted_moments(x, 0, 1.0)
    with pytest.raises(NotImplementedError, match="moments_backward does not take CUDA arrays"):
        nn.moments_backward(None, None, x, 0)
    with pytest.raises(NotImplementedError, match="normalize with nan_policy='omit' does not take CUDA arrays"):
        nn.normalize(x, 0, nan_policy="omit")
    with pytest.raises(NotImplementedError, match="welford with weights or nan_policy='omit' does not take CUDA"):
        nn.welford(x, 0, weights=cuda.to_device(np.ones((3, 4))))
    with pytest.raises(NotImplementedError, match="moments with nan_policy='omit' does not take CUDA"):
        nn.moments(x, 0, nan_policy="omit")


# -- TensorFlow itself, where it is installed ------------------------------------------------------

@pytest.mark.parametrize("axes", [(0,), (0, 2), (1, 2)])
def test_tensorflow_itself_agrees(axes):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(21)
    x = rng.normal(3.0, 2.0, (4, 5, 6))
    w = rng.uniform(0.0, 2.0, (4, 5, 1))
    close = lambda ours, theirs: np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-10,
                                                              atol=1e-12)
    for ours, theirs in zip(nn.weighted_moments(x, axes, w), tf.nn.weighted_moments(tf.constant(x), axes, w)):
        close(ours, theirs)
    for ours, theirs in zip(nn.moments(x, axes), tf.nn.moments(tf.constant(x), axes)):
        close(ours, theirs)
    stats = nn.sufficient_statistics(x, axes, shift=3.0)
    tf_stats = tf.nn.sufficient_statistics(tf.constant(x), axes, shift=tf.constant(3.0, tf.float64))
    for ours, theirs in zip(stats, tf_stats):
        close(ours, theirs)
    for ours, theirs in zip(nn.normalize_moments(*stats), tf.nn.normalize_moments(*tf_stats)):
        close(ours, theirs)
    mean, var = nn.moments(x, axes, keepdims=True)
    offset, scale = rng.normal(size=(1, 5, 1)), rng.normal(size=(1, 5, 1))
    dy = rng.normal(size=x.shape)
    args = [tf.Variable(a) for a in (x, mean, var, offset, scale)]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.batch_normalization(*args, 1e-3) * dy)
    for ours, theirs in zip(nn.batch_normalization_backward(dy, x, mean, var, offset, scale, 1e-3),
                            tape.gradient(loss, args)):
        close(ours, theirs)
    g_mean, g_var = rng.normal(size=mean.shape), rng.normal(size=var.shape)
    X = tf.Variable(x)
    with tf.GradientTape() as tape:
        m, v = tf.nn.moments(X, axes, keepdims=True)
        loss = tf.reduce_sum(m * g_mean) + tf.reduce_sum(v * g_var)
    close(nn.moments_backward(g_mean, g_var, x, axes), tape.gradient(loss, X))
