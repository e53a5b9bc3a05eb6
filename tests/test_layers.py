"""Stateful layers: modes, gradients by name, state round trips, clear misuse errors."""

import numpy as np
import pytest

import numbanorm as nn
from conftest import assert_close

LAYERS = [
    ("BatchNorm", lambda: nn.BatchNorm(4, dtype=np.float64), (6, 4, 5)),
    ("InstanceNorm", lambda: nn.InstanceNorm(4, affine=True, track_running_stats=True, dtype=np.float64), (6, 4, 5)),
    ("LayerNorm", lambda: nn.LayerNorm((4, 5), dtype=np.float64), (6, 4, 5)),
    ("GroupNorm", lambda: nn.GroupNorm(2, 4, dtype=np.float64), (6, 4, 5)),
    ("RMSNorm", lambda: nn.RMSNorm(5, dtype=np.float64), (6, 4, 5)),
    ("SwitchableNorm", lambda: nn.SwitchableNorm(4, dtype=np.float64), (6, 4, 5)),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[l[0] for l in LAYERS])
def test_layer_forward_backward_and_state_round_trip(name, make, shape, rng, tmp_path):
    layer = make()
    x = rng.normal(size=shape)
    for param in layer.params.values():
        param[...] = rng.normal(size=param.shape)
    y = layer(x)
    assert y.shape == x.shape
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape
    assert set(layer.grads) == set(layer.params)
    for key, grad in layer.grads.items():
        assert grad.shape == layer.params[key].shape
    # a parameter's gradient matches a finite difference of the loss sum(r * y)
    r = rng.normal(size=shape)
    layer(x)
    layer.backward(r)
    key = "weight"
    d = rng.normal(size=layer.params[key].shape)
    base = layer.params[key].copy()
    losses = []
    for sign in (1, -1):
        layer.params[key][...] = base + sign * 1e-6 * d
        losses.append(float((r * layer(x)).sum()))
    layer.params[key][...] = base
    assert abs((losses[0] - losses[1]) / 2e-6 - (layer.grads[key] * d).sum()) < 1e-5
    # state round trip through an .npz file, exactly
    path = tmp_path / "state.npz"
    layer.save(path)
    other = make()
    other.load(path)
    for key, value in layer.state_dict().items():
        assert np.array_equal(other.state_dict()[key], value) and other.state_dict()[key].dtype == value.dtype
    other.eval()
    layer.eval()
    assert np.array_equal(other(x), layer(x))


def test_batch_norm_layer_modes_and_running_stats(rng):
    layer = nn.BatchNorm(3, momentum=None, dtype=np.float64)
    batches = [rng.normal(i, 1, size=(5, 3, 4)) for i in range(3)]
    for x in batches:
        layer(x)
    assert int(layer.buffers["num_batches_tracked"]) == 3
    assert_close(layer.buffers["running_mean"], np.mean([b.mean((0, 2)) for b in batches], axis=0), 1e-12)
    layer.eval()
    x = rng.normal(size=(2, 3, 4))
    before = layer.state_dict()
    y = layer(x)
    expected = (x - before["running_mean"][:, None]) / np.sqrt(before["running_var"][:, None] + 1e-5)
    assert_close(y, expected, 1e-12)
    for key, value in layer.state_dict().items():
        assert np.array_equal(value, before[key])  # eval changes nothing
    untracked = nn.BatchNorm(3, track_running_stats=False, dtype=np.float64).eval()
    assert_close(untracked(x), nn.batch_norm(x, None, None, training=True), 1e-12)


def test_backward_without_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before a forward"):
        nn.LayerNorm(4).backward(np.ones((2, 4), np.float32))


def test_backward_after_mode_switch_is_a_clear_error(rng):
    layer = nn.BatchNorm(3, dtype=np.float64).eval()
    x = rng.normal(size=(4, 3, 2))
    layer(x)
    layer.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        layer.backward(np.ones_like(x))
    layer.eval()
    dx = layer.backward(np.ones_like(x))  # eval backward: running statistics are constants
    assert_close(dx, np.ones_like(x) / np.sqrt(1 + 1e-5), 1e-12)


def test_load_state_dict_refuses_mismatches():
    layer = nn.GroupNorm(2, 4)
    state = layer.state_dict()
    with pytest.raises(ValueError, match="missing"):
        layer.load_state_dict({"weight": state["weight"]})
    with pytest.raises(ValueError, match="shape"):
        layer.load_state_dict({"weight": np.ones(5, np.float32), "bias": state["bias"]})
    with pytest.raises(TypeError, match="dtype"):
        layer.load_state_dict({"weight": np.ones(4), "bias": state["bias"]})
    assert np.array_equal(layer.params["weight"], np.ones(4, np.float32))


def test_layer_dtype_must_be_floating():
    with pytest.raises(TypeError, match="dtype"):
        nn.BatchNorm(3, dtype=np.int32)
