"""asv benchmarks: numbanorm beside ``x.copy()``, plain NumPy and PyTorch CPU.

Every class shares one parameter grid -- op x layout x dtype x size -- and builds its contenders
through ``numbanorm.bench.contenders``, the same code as ``python -m numbanorm bench``.  Setup
runs each callable once, so compilation never lands in a timed method.  The kernels are
parallel, so time is wall-clock.
"""

import timeit

import numpy as np

from numbanorm import bench

OPS = list(bench.OPS)
LAYOUTS = ["nchw", "nhwc"]
DTYPES = ["float32", "float64"]
# small stays in L2, medium in the last-level cache, large streams from memory on most machines
GRID_SIZES = {"small": (8, 32, 16, 16), "medium": (32, 64, 28, 28), "large": (32, 64, 56, 56)}
ROW_SIZES = {"small": (256, 256), "medium": (4096, 512), "large": (8192, 1024)}
WEIGHT_SIZES = {"small": (64, 32, 3, 3), "medium": (256, 256, 3, 3), "large": (1024, 512, 3, 3)}


def make_case(op, layout, size):
    kind = bench.OPS[op].kind
    if kind != "grid" and layout != "nchw":
        raise NotImplementedError(f"{kind} ops have one layout")  # asv skips the case
    if kind == "rows":
        return bench.Case(op, ROW_SIZES[size], "rows")
    if kind == "weight":
        return bench.Case(op, WEIGHT_SIZES[size], "weight")
    n, c, h, w = GRID_SIZES[size]
    return bench.Case(op, (n, c, h, w) if layout == "nchw" else (n, h, w, c), layout)


class _Grid:
    params = [OPS, LAYOUTS, DTYPES, list(GRID_SIZES)]
    param_names = ["op", "layout", "dtype", "size"]
    timer = timeit.default_timer
    peers = ()
    needs = ()

    def case(self, op, layout, size):
        return make_case(op, layout, size)

    def setup(self, op, layout, dtype, size):
        self.fns = bench.contenders(self.case(op, layout, size), np.dtype(dtype), self.peers)
        missing = [name for name in self.needs if name not in self.fns]
        if missing:
            raise NotImplementedError(f"not available here: {missing}")
        for fn in self.fns.values():
            fn()  # compile and warm up outside the timed methods


class Numbanorm(_Grid):
    def time_forward(self, *params):
        self.fns["forward"]()

    def time_forward_backward(self, *params):
        self.fns["forward_backward"]()

    def peakmem_forward_backward(self, *params):
        self.fns["forward_backward"]()


class Copy(_Grid):
    """The memory-traffic floor: an allocating copy of the same tensor."""

    def time_copy(self, *params):
        self.fns["copy"]()


class Torch(_Grid):
    peers = ("torch",)
    needs = ("torch_forward",)

    def time_forward(self, *params):
        self.fns["torch_forward"]()

    def time_forward_backward(self, *params):
        self.fns["torch_forward_backward"]()


class NumPy(_Grid):
    peers = ("numpy",)
    needs = ("numpy_forward",)
    params = [OPS, LAYOUTS, DTYPES, ["small", "medium"]]  # the float64 reference is slow

    def time_forward(self, *params):
        self.fns["numpy_forward"]()


class Cuda(_Grid):
    """numbanorm and PyTorch on the GPU; skipped without one.  Timed methods synchronise."""

    def setup(self, op, layout, dtype, size):
        try:
            from numba import cuda
        except ImportError:
            raise NotImplementedError("numba-cuda is not installed")
        if not cuda.is_available() or __import__("numba").config.ENABLE_CUDASIM:
            raise NotImplementedError("no GPU")
        self.fns = bench._on_device(bench._device_contenders(make_case(op, layout, size), np.dtype(dtype),
                                                             ("torch",), "cuda"), "cuda")
        for fn in self.fns.values():
            fn()

    def time_forward(self, *params):
        self.fns["forward"]()

    def time_forward_backward(self, *params):
        self.fns["forward_backward"]()

    def time_copy(self, *params):
        self.fns["copy"]()


SMALL_ELEMENTS = ["64", "2K", "16K", "64K"]  # the four shapes of each kind in bench.SMALL_SHAPES


class _SmallGrid(_Grid):
    """Calls of 64 to 64 K elements (``python -m numbanorm bench --small``): there a call's time
    is mostly what surrounds its arithmetic."""

    params = [OPS, LAYOUTS, DTYPES, SMALL_ELEMENTS]
    param_names = ["op", "layout", "dtype", "elements"]

    def case(self, op, layout, elements):
        if bench.OPS[op].kind != "grid" and layout != "nchw":
            raise NotImplementedError(f"{bench.OPS[op].kind} ops have one layout")  # asv skips the case
        return bench.small_cases([op], [layout])[SMALL_ELEMENTS.index(elements)]


class SmallNumbanorm(_SmallGrid, Numbanorm):
    pass


class SmallTorch(_SmallGrid, Torch):
    pass
