"""PyTorch's autograd as an oracle (skipped when torch is not installed), and accuracy on
large offsets no worse than PyTorch's."""

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import reference as ref

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(a, grad=True):
    return torch.tensor(np.asarray(a), requires_grad=grad)


@pytest.mark.parametrize("ca", [1, -1])
@pytest.mark.parametrize("name", ["batch", "instance", "group", "batch-eval"])
def test_matches_torch_forward_backward_and_running_stats(name, ca, rng):
    x = rng.normal(0.5, 2.0, (4, 6, 5, 7))
    w, b, dy = rng.normal(size=6), rng.normal(size=6), rng.normal(size=x.shape)
    rm, rv = rng.normal(size=6), rng.uniform(0.5, 2.0, 6)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    X, W, B = _t(x), _t(w), _t(b)
    xn = x if ca == 1 else np.ascontiguousarray(np.moveaxis(x, 1, -1))
    dyn = dy if ca == 1 else np.ascontiguousarray(np.moveaxis(dy, 1, -1))
    back = (lambda a: a) if ca == 1 else (lambda a: np.moveaxis(a, -1, 1))
    if name == "batch":
        Y = F.batch_norm(X, trm, trv, W, B, training=True, momentum=0.2)
        y, st = nn.batch_norm(xn, rm, rv, w, b, training=True, momentum=0.2, channel_axis=ca, return_stats=True)
        g = nn.batch_norm_backward(dyn, xn, st, w, channel_axis=ca)
    elif name == "batch-eval":
        Y = F.batch_norm(X, trm, trv, W, B, training=False)
        y, st = nn.batch_norm(xn, rm, rv, w, b, training=False, channel_axis=ca, return_stats=True)
        g = nn.batch_norm_backward(dyn, xn, st, w, channel_axis=ca)
    elif name == "instance":
        Y = F.instance_norm(X, trm, trv, W, B, use_input_stats=True, momentum=0.3)
        y, st = nn.instance_norm(xn, rm, rv, w, b, momentum=0.3, channel_axis=ca, return_stats=True)
        g = nn.instance_norm_backward(dyn, xn, st, w, channel_axis=ca)
    else:
        Y = F.group_norm(X, 3, W, B)
        y, st = nn.group_norm(xn, 3, w, b, channel_axis=ca, return_stats=True)
        g = nn.group_norm_backward(dyn, xn, st, 3, w, channel_axis=ca)
    Y.backward(torch.tensor(dy))
    np.testing.assert_allclose(back(y), Y.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(back(g.input), X.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(g.weight, W.grad.numpy(), atol=1e-11)
    np.testing.assert_allclose(g.bias, B.grad.numpy(), atol=1e-11)
    np.testing.assert_allclose(rm, trm.numpy(), atol=1e-14)
    np.testing.assert_allclose(rv, trv.numpy(), atol=1e-14)


def test_layer_norm_matches_torch(rng):
    x = rng.normal(size=(3, 4, 5, 6))
    w, b, dy = rng.normal(size=(5, 6)), rng.normal(size=(5, 6)), rng.normal(size=x.shape)
    X, W, B = _t(x), _t(w), _t(b)
    Y = F.layer_norm(X, (5, 6), W, B)
    Y.backward(torch.tensor(dy))
    y, st = nn.layer_norm(x, (5, 6), w, b, return_stats=True)
    g = nn.layer_norm_backward(dy, x, st, (5, 6), w)
    np.testing.assert_allclose(y, Y.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(g.input, X.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(g.weight, W.grad.numpy(), atol=1e-11)
    np.testing.assert_allclose(g.bias, B.grad.numpy(), atol=1e-11)


@pytest.mark.parametrize("dtype,offset", [(np.float32, 1e4), (np.float64, 1e8)])
def test_large_offset_error_no_worse_than_torch(dtype, offset, rng):
    x = (offset + rng.normal(size=(8, 16, 24, 24))).astype(dtype)
    xt = torch.from_numpy(x)
    cases = [
        ("batch", lambda: nn.batch_norm(x, None, None, training=True),
         lambda: F.batch_norm(xt, None, None, training=True), ref.batch_norm(x, None, None, training=True)),
        ("instance", lambda: nn.instance_norm(x), lambda: F.instance_norm(xt), ref.instance_norm(x)),
        ("group", lambda: nn.group_norm(x, 4), lambda: F.group_norm(xt, 4), ref.group_norm(x, 4)),
        ("layer", lambda: nn.layer_norm(x, (24, 24)), lambda: F.layer_norm(xt, (24, 24)), ref.layer_norm(x, (24, 24))),
    ]
    for name, ours, theirs, exact in cases:
        err_ours = np.abs(ours().astype(np.float64) - exact).max()
        err_torch = np.abs(theirs().numpy().astype(np.float64) - exact).max()
        assert err_ours <= err_torch * 1.01 + 1e-12, (name, err_ours, err_torch)


def test_rms_norm_matches_torch(rng):
    x = rng.normal(size=(6, 4, 8)).astype(np.float32)
    w, dy = rng.normal(size=8).astype(np.float32), rng.normal(size=x.shape).astype(np.float32)
    X, W = _t(x), _t(w)
    Y = F.rms_norm(X, (8,), W)
    Y.backward(torch.tensor(dy))
    y, st = nn.rms_norm(x, 8, w, return_stats=True)
    g = nn.rms_norm_backward(dy, x, st, 8, w)
    np.testing.assert_allclose(y, Y.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(g.input, X.grad.numpy(), atol=2e-5)
    np.testing.assert_allclose(g.weight, W.grad.numpy(), atol=2e-5)
