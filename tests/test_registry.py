"""Every op of the registry (``numbanorm._ops``), in every layout, dtype and backend it names,
against its reference, PyTorch and the CPU result; a backend it does not name refuses clearly."""

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import reference as ref
from numbanorm._ops import OPS

from conftest import assert_close

SHAPES = {"nchw": (3, 4, 5, 7), "nhwc": (3, 5, 7, 4), "rows": (6, 33), "weight": (8, 3, 3, 2)}
TOL = {"float16": 2e-2, "float32": 2e-5, "float64": 1e-10}
CASES = [(op, layout, dtype) for op in OPS.values() for layout in op.layouts for dtype in op.dtypes]


def _inputs(op, layout, dtype, seed=0):
    rng = np.random.default_rng(seed)
    shape = SHAPES[layout]
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    param_shape = op.param_shape(shape, layout)
    if param_shape is None:
        return x, dy, None, None, 1
    w, b = (rng.normal(size=param_shape).astype(dtype) for _ in range(2))
    return x, dy, w, b, -1 if layout == "nhwc" else 1


def _fields(grads):
    return [np.asarray(g, np.float64) if g is not None else None for g in grads]


@pytest.mark.parametrize("op, layout, dtype", CASES, ids=lambda v: getattr(v, "name", v))
def test_op_matches_its_reference(op, layout, dtype):
    x, dy, w, b, ca = _inputs(op, layout, dtype)
    y, stats = op.run_forward(nn, x, w, b, ca, 2)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert op.stats is None or type(stats) is op.stats
    y_ref, stats_ref = op.run_forward(ref, x, w, b, ca, 2)
    assert_close(y, y_ref, TOL[dtype], what=f"{op.name} forward")
    grads = op.run_backward(nn, dy, x, stats, w, ca, 2)
    assert grads[0].dtype == x.dtype
    for field, got, expected in zip(grads._fields, _fields(grads), _fields(op.run_backward(ref, dy, x, stats_ref, w, ca, 2))):
        assert (got is None) == (expected is None), field
        if got is not None:
            assert_close(got, expected, TOL[dtype] * 10 * max(1.0, np.abs(expected).max()), what=f"{op.name} {field}")


@pytest.mark.parametrize("op", [op for op in OPS.values() if op.torch is not None], ids=lambda op: op.name)
def test_op_matches_its_pytorch_peer(op):
    torch = pytest.importorskip("torch")
    layout = op.layouts[0]
    x, dy, w, b, ca = _inputs(op, layout, "float64")
    y, stats = op.run_forward(nn, x, w, b, ca, 2)
    X = torch.tensor(x, requires_grad=True)
    W, B = (None if p is None else torch.tensor(p, requires_grad=True) for p in (w, b))
    Y = op.torch(torch.nn.functional, X, W, B, 2)
    Y.backward(torch.tensor(dy))
    assert_close(y, Y.detach().numpy(), 1e-12, what="forward")
    grads = op.run_backward(nn, dy, x, stats, w, ca, 2)
    assert_close(grads[0], X.grad.numpy(), 1e-10, what="input gradient")
    if W is not None:
        assert_close(grads[1], W.grad.numpy(), 1e-10, what="weight gradient")


@pytest.mark.parametrize("op", [op for op in OPS.values() if "cuda" in op.backends], ids=lambda op: op.name)
def test_op_on_cuda_matches_the_cpu(op):
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda (the cuda extra) is not installed")
    layout = op.layouts[-1]
    x, dy, w, b, ca = _inputs(op, layout, "float64")
    y, stats = op.run_forward(nn, x, w, b, ca, 2)
    grads = op.run_backward(nn, dy, x, stats, w, ca, 2)
    to_device = lambda a: None if a is None else cuda.to_device(a)
    X, DY, W, B = (to_device(a) for a in (x, dy, w, b))
    y_dev, stats_dev = op.run_forward(nn, X, W, B, ca, 2)
    assert_close(y_dev.copy_to_host(), y, 1e-12, what="forward")
    for field, got, expected in zip(grads._fields, op.run_backward(nn, DY, X, stats_dev, W, ca, 2), grads):
        assert (got is None) == (expected is None), field
        if got is not None:
            assert_close(got.copy_to_host(), expected, 1e-10, what=field)


@pytest.mark.parametrize("op", list(OPS.values()), ids=lambda op: op.name)
def test_op_on_dask_matches_the_cpu_or_refuses_clearly(op):
    da = pytest.importorskip("dask.array")
    layout = op.layouts[0]
    x, dy, w, b, ca = _inputs(op, layout, "float64")
    X = da.from_array(x, chunks=2)
    if "dask" not in op.backends:
        with pytest.raises(NotImplementedError, match=f"{op.name} does not take Dask arrays"):
            op.run_forward(nn, X, w, b, ca, 2)
        return
    y, stats = op.run_forward(nn, x, w, b, ca, 2)
    y_dask, stats_dask = op.run_forward(nn, X, w, b, ca, 2)
    assert_close(np.asarray(y_dask), y, 1e-12, what="forward")
    grads = op.run_backward(nn, da.from_array(dy, chunks=2), X, stats_dask, w, ca, 2)
    assert_close(np.asarray(grads[0]), op.run_backward(nn, dy, x, stats, w, ca, 2)[0], 1e-10, what="input gradient")


def test_weight_standardization_standardizes_each_output_channel():
    w = np.random.default_rng(5).normal(3.0, 2.0, (16, 8, 3, 3)).astype(np.float32)
    v = nn.weight_standardization(w)
    assert_close(v.reshape(16, -1).mean(axis=1), np.zeros(16), 1e-6)
    var = w.astype(np.float64).reshape(16, -1).var(axis=1)
    assert_close(v.reshape(16, -1).std(axis=1), np.sqrt(var / (var + 1e-5)), 1e-5)
    with pytest.raises(ValueError, match="weight must have at least 2 dimensions"):
        nn.weight_standardization(np.ones(5))
    with pytest.raises(ValueError, match="grad_output must have the shape of weight"):
        nn.weight_standardization_backward(np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="eps must be finite"):
        nn.weight_standardization(w, eps=-1.0)
    with pytest.raises(TypeError, match="eps must be a real number, got NoneType"):
        nn.weight_standardization_backward(w, w, eps=None)


def test_weight_standardization_gradient_by_finite_differences():
    rng = np.random.default_rng(6)
    w, r = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 4, 2))
    g = nn.weight_standardization_backward(r, w)
    direction = rng.normal(size=w.shape)
    h = 1e-6
    loss = lambda v: float((r * nn.weight_standardization(v)).sum())
    numeric = (loss(w + h * direction) - loss(w - h * direction)) / (2 * h)
    assert abs(numeric - float((g * direction).sum())) < 1e-6


@pytest.mark.parametrize("shape,order", [((8, 4, 3, 3), "C"),  # the small lane
                                         ((64, 32, 3, 3), "C"),  # fused rows
                                         ((64, 32, 3, 3), "F")])  # the planned path
def test_weight_standardization_backward_on_every_statistics_path(shape, order):
    # the backward takes the statistics alone (no output) and sums no parameter gradients
    rng = np.random.default_rng(7)
    w = np.asarray(rng.normal(1.0, 2.0, shape), order=order)
    dy = rng.normal(size=shape)
    assert_close(nn.weight_standardization_backward(dy, w), ref.weight_standardization_backward(dy, w), 1e-11)
    x = np.ascontiguousarray(w.reshape(shape[0], -1))
    _, stats = nn.layer_norm(x, x.shape[1:], return_stats=True)
    grads = nn.layer_norm_backward(dy.reshape(x.shape), x, stats, x.shape[1:])
    assert grads.weight is None and grads.bias is None
    assert_close(grads.input, ref.weight_standardization_backward(dy.reshape(x.shape), x), 1e-11)


def test_reference_mirrors_the_public_api():
    """numbanorm.reference: every public function, name for name and signature for signature."""
    import inspect

    functions = [name for name in nn.__all__ if inspect.isfunction(inspect.unwrap(getattr(nn, name)))]
    assert len(functions) >= 25
    for name in functions:
        assert hasattr(ref, name), f"reference lacks {name}"
        public = inspect.signature(getattr(nn, name)).parameters.values()
        mirror = inspect.signature(getattr(ref, name)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in public] == [(p.name, p.kind, p.default) for p in mirror], name
