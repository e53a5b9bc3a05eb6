import os
import sys
import threading

# The CUDA tests run under Numba's CUDA simulator unless NUMBANORM_TEST_GPU=1 asks for a real GPU.
# Both must be set before Numba is imported.
if os.environ.get("NUMBANORM_TEST_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    os.environ.setdefault("NUMBANORM_CUDA_THREADS", "16")
    # The simulator runs a block's threads as Python threads, watched by a loop that polls them
    # without releasing the GIL: at the default 5 ms switch interval each handover of the GIL to a
    # kernel thread waits out that loop's slice, which made a small kernel take 4x as long.
    sys.setswitchinterval(1e-4)

import numpy as np
import pytest

_sim = None
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    try:
        from numba.cuda.simulator import kernelapi as _sim
    except ImportError:  # numba-cuda (the cuda extra) is absent: the CUDA tests skip themselves
        pass

if _sim is not None:
    _shared_lock = threading.Lock()
    _sim_shared_array = _sim.FakeCUDAShared.array

    def _shared_array(self, shape, dtype, alignment=None):
        """The simulator's ``cuda.shared.array``, with its first allocation under a lock.

        The simulator keys a block's shared arrays by the calling line and allocates one on the
        first thread's call, by a check-then-set that is not atomic: a thread switched out between
        the two got an array of its own, and its block read another thread's uninitialized
        memory (seen as wrong results on a kernel's first launch once the switch interval is
        short).  The lock cannot wrap the original call, whose key is its caller's line."""
        if shape == 0 or alignment is not None:
            return _sim_shared_array(self, shape, dtype, alignment)
        if isinstance(dtype, _sim.types.Type):
            dtype = _sim.numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with _shared_lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    _sim.FakeCUDAShared.array = _shared_array

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
