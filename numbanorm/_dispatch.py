"""The input decides the backend: NumPy arrays run the CPU kernels, Dask arrays build a lazy Dask
graph (``numbanorm._dask``), CUDA arrays run the CUDA kernels (``numbanorm._cuda``).

Backends are imported on first use, so ``import numbanorm`` needs neither Dask nor CUDA.
"""

import contextlib
import functools
import importlib
import inspect
import threading

import numba
import numpy as np

from ._types import NormStats

_BACKENDS = {"dask": "numbanorm._dask", "cuda": "numbanorm._cuda"}
_workqueue_lock = threading.Lock()
_layer = None


# types that are never a Dask or CUDA array: checked first, since every argument of every call
# goes through here (hasattr on a plain number costs an AttributeError).  A forward's `NormStats`
# is a tuple, whatever arrays it holds: the backward it is passed to is routed by its first
# argument, as before
_HOST_TYPES = frozenset({type(None), bool, int, float, str, tuple, list, np.ndarray, NormStats})


def backend_of(value):
    """"dask", "cuda" or None (NumPy and anything NumPy converts)."""
    if type(value) in _HOST_TYPES or isinstance(value, (np.ndarray, np.generic)):
        return None
    module = type(value).__module__
    root = module.partition(".")[0]
    if root == "dask":
        return "dask"
    if module.startswith("numba.cuda"):  # device arrays, the simulator's included
        return "cuda"
    if root == "torch":
        return "cuda" if getattr(value, "is_cuda", False) else None
    # CuPy arrays by their class: their interface is a property that builds the dict (and looks
    # up the current stream) at every read, and an argument is asked here several times per call.
    # Not for any class: some (JAX's, torch's) raise from that property for host arrays.
    if root == "cupy" and hasattr(type(value), "__cuda_array_interface__"):
        return "cuda"
    if hasattr(value, "__cuda_array_interface__"):
        return "cuda"
    return None


@numba.njit(parallel=True, cache=False)
def _touch(out):
    for i in numba.prange(out.shape[0]):
        out[i] = i


def _threading_layer():
    global _layer
    if _layer is None:
        _touch(np.empty(2))  # the layer is chosen at the first parallel launch
        _layer = numba.threading_layer()
    return _layer


NO_GUARD = contextlib.nullcontext()
_guard = None


def launch_guard():
    """A lock around the kernels where Numba's threading layer cannot take concurrent launches.

    The ``tbb`` and ``omp`` layers are thread-safe; ``workqueue`` (the fallback when neither TBB
    nor an OpenMP runtime is present) aborts the process when two threads launch parallel
    kernels at once, so there calls from several threads (Dask's threaded scheduler) take turns.
    """
    global _guard
    if _guard is None:
        _guard = _workqueue_lock if _threading_layer() == "workqueue" else NO_GUARD
    return _guard


def _host_only(args, kwargs):
    """Every argument of a type that is never a Dask or CUDA array (``map`` keeps the loop in C)."""
    return _HOST_TYPES.issuperset(map(type, args)) and (
        not kwargs or _HOST_TYPES.issuperset(map(type, kwargs.values())))


def _refuse_mixed(signature, args, kwargs, backend, first):
    """A Dask or CUDA argument where the first argument chose another backend: no silent copies."""
    values = list(args) + list(kwargs.values())
    if all(backend_of(value) in (None, backend) for value in values):
        return  # the common case, without the cost of binding the arguments to their names
    for name, value in signature.bind_partial(*args, **kwargs).arguments.items():
        other = backend_of(value)
        if other is not None and other != backend:
            raise TypeError(f"{name} is a {other} array but {first} is "
                            f"{'a ' + backend + ' array' if backend else 'a NumPy array'}: "
                            "arrays of one call must live in one place")


_NAMES = {"dask": "Dask", "cuda": "CUDA"}


def dispatch(fn=None, *, route_by=None, lane=None):
    """Route a public function by the type of its first argument (or of the argument named
    ``route_by``); guard the CPU kernels.  A backend without the function is a NotImplementedError
    naming both.

    ``lane(route)``, if given, makes the public function itself: a function of the same
    parameters that computes a plain NumPy call in one serial compiled call (``_small``) and
    passes every other call on to ``route``, the routed ``fn``.  Such a call has no Dask or CUDA
    array to route, and launches a parallel kernel (a row norm past the serial crossover) only
    where `launch_guard` is `NO_GUARD`; on a few hundred elements a wrapper's ``*args, **kwargs``
    in front of it would cost a tenth of it."""
    if fn is None:
        return lambda f: dispatch(f, route_by=route_by, lane=lane)
    name = fn.__name__
    signature = inspect.signature(fn)
    first = route_by or next(iter(signature.parameters))

    def decider(args, kwargs):
        if route_by is None:
            return args[0] if args else kwargs.get(first)
        return signature.bind_partial(*args, **kwargs).arguments.get(first)

    @functools.wraps(fn)
    def routed(*args, **kwargs):
        if _host_only(args, kwargs):
            if _guard is NO_GUARD:  # under a thread-safe layer, the common case goes straight through
                return fn(*args, **kwargs)
            backend = None
        else:
            backend = backend_of(decider(args, kwargs))
            _refuse_mixed(signature, args, kwargs, backend, first)
        if backend is not None:
            implementation = getattr(importlib.import_module(_BACKENDS[backend]), name, None)
            if implementation is None:
                raise NotImplementedError(f"{name} does not take {_NAMES[backend]} arrays yet: compute {first} "
                                          "into a NumPy array first")
            return implementation(*args, **kwargs)
        guard = launch_guard()
        if guard is NO_GUARD:
            return fn(*args, **kwargs)
        with guard:
            return fn(*args, **kwargs)

    routed.cpu = fn
    if lane is None:
        return routed
    public = functools.update_wrapper(lane(routed), fn)
    public.cpu, public.route = fn, routed
    return public
