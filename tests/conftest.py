import os

# The CUDA tests run under Numba's CUDA simulator unless NUMBANORM_TEST_GPU=1 asks for a real GPU.
# Both must be set before Numba is imported.
if os.environ.get("NUMBANORM_TEST_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    os.environ.setdefault("NUMBANORM_CUDA_THREADS", "16")

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import reference as ref


class Op:
    """Uniform access to one normalization for the tests: forward, backward and reference."""

    def __init__(self, name, groups=None):
        self.name, self.groups = name, groups

    def __repr__(self):
        return self.name

    def forward(self, x, w, b, ca, **kw):
        if self.name == "batch":
            return nn.batch_norm(x, None, None, w, b, training=True, channel_axis=ca, return_stats=True, **kw)
        if self.name == "instance":
            return nn.instance_norm(x, None, None, w, b, channel_axis=ca, return_stats=True, **kw)
        return nn.group_norm(x, self.groups, w, b, channel_axis=ca, return_stats=True, **kw)

    def backward(self, dy, x, stats, w, ca):
        if self.name == "batch":
            return nn.batch_norm_backward(dy, x, stats, w, channel_axis=ca)
        if self.name == "instance":
            return nn.instance_norm_backward(dy, x, stats, w, channel_axis=ca)
        return nn.group_norm_backward(dy, x, stats, self.groups, w, channel_axis=ca)

    def reference(self, x, w, b, ca):
        return ref.grid_forward(x, self.name, w, b, groups=self.groups, channel_axis=ca)

    def reference_backward(self, dy, x, w, ca):
        return ref.grid_backward(dy, x, self.name, w, groups=self.groups, channel_axis=ca)


GRID_OPS = [Op("batch"), Op("instance"), Op("group", 2)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_close(actual, expected, rtol, atol=None, what=""):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    err = float(np.abs(actual - expected).max(initial=0))
    assert err <= (atol if atol is not None else rtol * scale), f"{what}: max error {err:.3g}"
