"""CUDA backend: the public functions on GPU arrays, by the same code as on the CPU.

Every public function runs its own (CPU-side) logic -- argument checks, planning, the small
per-channel arithmetic -- with the CUDA engine in place of the CPU one, so the kernels that touch
the big arrays run on the GPU (``_cuda_kernels``) and nothing else differs.

Rules for the arguments of one call:

* the input decides: any argument with ``__cuda_array_interface__`` (Numba device arrays, CuPy
  arrays, PyTorch CUDA tensors) is used in place, zero-copy;
* full-size arrays (input, grad_output, out) must be C-contiguous float32/float64 device arrays;
* small arrays (weight, bias, running statistics, logits) must be device arrays too: they are read
  to the host for the per-channel arithmetic, and running statistics are written back in place;
* a host array (NumPy, a CPU tensor) among device arrays is a TypeError naming it -- no silent
  copies -- except ``num_batches_tracked``, an integer counter;
* results come back in the input's family (CuPy in, CuPy out; torch in, torch out; Numba in, Numba
  out); the ``stats`` of a forward are small host NumPy arrays.
"""

import inspect

import numpy as np

from . import _checks as chk
from . import _engine
from . import _functional as F
from . import _normalize
from ._dispatch import backend_of
from ._ops import STATS_TYPES

_FULL_SIZE = {"input", "x", "grad_output", "out"}
_WRITTEN = {"running_mean", "running_var"}
_HOST_OK = {"num_batches_tracked"}
_engine_cache = []


def _cuda():
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError("a CUDA array was given, but Numba finds no usable GPU (no device, driver or "
                           "CUDA runtime); check `python -m numbanorm info`")
    return cuda


def _engine_for_cuda():
    if not _engine_cache:
        from ._cuda_kernels import CUDADevice

        _engine_cache.append(_engine.Engine(CUDADevice))
    return _engine_cache[0]


def _family(value):
    root = type(value).__module__.partition(".")[0]
    return root if root in ("torch", "cupy") else "numba"


def _as_numba(cuda, name, value):
    if chk.is_device_array(value):
        return value
    if _family(value) == "torch" and getattr(value, "requires_grad", False):
        raise TypeError(f"{name} is a torch tensor that requires grad; pass {name}.detach() (numbanorm "
                        "computes gradients itself, with the *_backward functions)")
    return cuda.as_cuda_array(value)


def _is_host_array(value):
    return isinstance(value, np.ndarray) or (
        backend_of(value) is None and (hasattr(value, "__array__") or hasattr(value, "__array_interface__")))


def _back_to(cuda, value, family):
    """Results in the input's family; forward stats stay on the host."""
    if isinstance(value, STATS_TYPES) or value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, tuple):
        converted = [_back_to(cuda, v, family) for v in value]
        return type(value)(*converted) if hasattr(value, "_fields") else tuple(converted)
    if isinstance(value, np.ndarray):
        value = cuda.to_device(np.ascontiguousarray(value))
    if family == "torch":
        import torch

        return torch.as_tensor(value, device="cuda")
    if family == "cupy":
        import cupy

        return cupy.asarray(value)
    return value


def _served(name):
    """The CPU-side code of the public function ``name`` where it runs on CUDA arrays: the named
    norms and statistics, and `normalize` (the TensorFlow statistics API does not yet)."""
    for module in (F, _normalize):
        fn = getattr(module, name, None)
        if callable(fn) and hasattr(fn, "cpu"):
            return fn.cpu
    return None


def _call(name, args, kwargs):
    cuda = _cuda()
    fn = _served(name)
    signature = inspect.signature(fn)
    bound = signature.bind(*args, **kwargs)
    first = next(iter(signature.parameters))
    family = _family(bound.arguments[first])
    written = []
    for pname, value in list(bound.arguments.items()):
        if backend_of(value) == "cuda" or chk.is_device_array(value):
            device = _as_numba(cuda, pname, value)
            if pname in _FULL_SIZE:
                if device.dtype not in (np.float32, np.float64):
                    raise TypeError(f"{pname} on the GPU must be float32 or float64, got dtype {device.dtype}")
                if not device.is_c_contiguous():
                    raise ValueError(f"{pname} on the GPU must be C-contiguous (copy it first), got strides "
                                     f"{device.strides}")
                bound.arguments[pname] = device
            else:
                host = device.copy_to_host()
                bound.arguments[pname] = host
                if pname in _WRITTEN:
                    written.append((device, host))
        elif _is_host_array(value) and pname not in _HOST_OK:
            raise TypeError(f"{pname} is a host array but {first} is on the GPU: pass a device array "
                            "(numbanorm makes no silent copies between host and device)")
    F._current.engine = _engine_for_cuda()
    try:
        result = fn(*bound.args, **bound.kwargs)
    finally:
        del F._current.engine
    for device, host in written:
        device.copy_to_device(host)
    return _back_to(cuda, result, family)


def __getattr__(name):
    if name.startswith("_") or _served(name) is None:
        raise AttributeError(name)
    return lambda *args, **kwargs: _call(name, args, kwargs)
