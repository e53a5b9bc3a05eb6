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
from numbanorm._ops import OPS, of_kind


class Op:
    """A grid op of the registry (``numbanorm._ops``) with the tests' choice of groups, beside
    its reference: the same calls with ``numbanorm.reference`` in place of numbanorm."""

    def __init__(self, name, groups=2):
        self.spec, self.groups = OPS[name], groups
        self.name = name

    def __repr__(self):
        return self.name

    def forward(self, x, w, b, ca, **options):
        return self.spec.run_forward(nn, x, w, b, ca, self.groups, **options)

    def backward(self, dy, x, stats, w, ca):
        return self.spec.run_backward(nn, dy, x, stats, w, ca, self.groups)

    def reference(self, x, w, b, ca):
        return self.spec.run_forward(ref, x, w, b, ca, self.groups)[0]

    def reference_backward(self, dy, x, w, ca):
        """(dx, dweight, dbias), the bias gradient as if the forward had a bias."""
        _, stats = self.spec.run_forward(ref, x, w, np.zeros(x.shape[ca]), ca, self.groups)
        return self.spec.run_backward(ref, dy, x, stats, w, ca, self.groups)[:3]


GRID_OPS = [Op(op.name) for op in of_kind("grid")]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_close(actual, expected, rtol, atol=None, what=""):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    err = float(np.abs(actual - expected).max(initial=0))
    assert err <= (atol if atol is not None else rtol * scale), f"{what}: max error {err:.3g}"


def numeric_grad(f, a, h=1e-6):
    """Central differences of the scalar ``f`` with respect to every element of ``a`` (float64)."""
    a = np.array(a, np.float64)
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + h
        up = f(a)
        flat[i] = keep - h
        down = f(a)
        flat[i] = keep
        gflat[i] = (up - down) / (2 * h)
    return g
