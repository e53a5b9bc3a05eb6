"""Argument checks shared by every public function.

Every check runs before anything is computed or written, so a bad call changes nothing.
Messages name the argument, what was expected and what came.

Dtype policy: the input decides.  float32 and float64 are computed in their own precision;
float16 is computed in float32 and returned as float16.  Small parameter arrays (weight, bias,
mean, variance, offset, scale) of another floating dtype are cast to the compute dtype; full-size
companions (``grad_output``, ``out``) must have the input's dtype; running statistics are
updated in their own floating dtype.  Integer, bool, complex and object arrays are refused.
"""

import math
import numbers

import numpy as np

FLOATS = (np.float16, np.float32, np.float64)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"{type(value).__name__} {value!r}"[:120]


def is_device_array(value):
    """A Numba CUDA device array (real or simulated): checked in place, never copied to the host."""
    return type(value).__module__.startswith("numba.cuda")


class _WritableAlias:
    """Holds a read-only array's ``__array_interface__`` with the read-only mark cleared."""

    def __init__(self, array):
        interface = dict(array.__array_interface__)
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface
        self.base = array  # keeps the memory alive as long as the alias


def kernel_view(value):
    """A read-only NumPy array as the kernels take it: the same memory, typed writable.

    Numba compiles a kernel once per combination of its arguments' writeable flags; the kernels
    never write their inputs, so a read-only input (a read-only memory map, a broadcast, an array
    marked read-only) runs the writable input's compiled code instead of compiling its own.  The
    view never leaves numbanorm: results are new arrays."""
    if type(value) is np.ndarray and not value.flags.writeable:
        return np.asarray(_WritableAlias(value))
    return value


def refuse_masked(name, value):
    """Masked arrays are refused: the kernels would read the masked-out values as data."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain array, got a masked array (numbanorm does not honour "
                        f"masks): pass {name}.filled(np.nan) with nan_policy='omit' (moments, welford, "
                        "weighted_moments, normalize), fill it otherwise, or select the values first")


def float_array(name, value, min_ndim=0):
    """``value`` as an ndarray of float16/32/64 with at least ``min_ndim`` dimensions.

    What the kernels cannot take directly is converted once here: a non-native byte order
    (``x.astype('>f4')``) to the native one, an ndarray subclass (``np.matrix``, ``np.memmap``)
    to a plain ndarray view.  Masked arrays are refused (see `refuse_masked`)."""
    if type(value) is not np.ndarray:
        refuse_masked(name, value)
        if not isinstance(value, np.ndarray) and not is_device_array(value):
            if value is None or isinstance(value, (str, bytes, dict)):
                raise TypeError(f"{name} must be an array of floating point numbers, got {_describe(value)}")
            value = np.asarray(value)
        elif isinstance(value, np.ndarray):
            value = np.asarray(value)
    if value.dtype.type not in FLOATS:
        raise TypeError(f"{name} must have dtype float16, float32 or float64, got dtype {value.dtype}")
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    if len(value.shape) < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {value.shape}")
    return kernel_view(value)


def compute_dtype(dtype):
    """Kernels run in float32 or float64; float16 is widened to float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def parameter(name, value, shape, dtype):
    """A small read-only parameter (weight, bias, ...) of ``shape``, cast to ``dtype``; None stays None."""
    if value is None:
        return None
    if type(value) is np.ndarray and value.dtype == dtype and value.shape == shape and value.flags.c_contiguous:
        return kernel_view(value)  # the common case, quickly
    value = float_array(name, value)
    if value.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {value.shape}")
    return np.ascontiguousarray(value, dtype=dtype)  # float_array's view or a new array: writable


def running_stat(name, value, length):
    """A running statistic updated in place: a writable, contiguous 1-D float array of ``length``."""
    if value is None:
        return None
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array (it is updated in place), got {_describe(value)}")
    float_array(name, value)
    if value.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got shape {value.shape}")
    if not value.flags.writeable:
        raise ValueError(f"{name} must be writable (it is updated in place), got a read-only array")
    if not value.flags.c_contiguous:
        raise ValueError(f"{name} must be contiguous (it is updated in place), got strides {value.strides}")
    return value


def same_array(name, value, like, like_name="input"):
    """A full-size companion of ``like`` (grad_output): same shape and dtype."""
    value = float_array(name, value)
    if value.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {like.shape}, got shape {value.shape}")
    if value.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({like.dtype}), got dtype {value.dtype}")
    return value


def out_array(out, shape, dtype):
    if out is None:
        return None
    refuse_masked("out", out)
    if not isinstance(out, np.ndarray) and not is_device_array(out):
        raise TypeError(f"out must be an array like the input, got {_describe(out)}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got shape {out.shape}")
    if out.dtype.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):  # either byte order
        raise TypeError(f"out must have dtype {dtype}, got dtype {out.dtype}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError("out must be writable, got a read-only array")
    return out


def eps_value(name, eps):
    if type(eps) is float and 0 <= eps < math.inf:
        return eps  # the common case, quickly
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(eps)}")
    if not (eps >= 0 and np.isfinite(eps)):
        raise ValueError(f"{name} must be finite and >= 0, got {eps}")
    return float(eps)


def flag(name, value):
    """A yes/no option: a bool (NumPy's included), as a Python bool."""
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_describe(value)}")
    return bool(value)


def momentum_value(momentum):
    if momentum is None:
        return None
    if type(momentum) is float and 0 <= momentum <= 1:
        return momentum  # the common case, quickly
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a real number in [0, 1] or None, got {_describe(momentum)}")
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
    return float(momentum)


def axis_index(name, axis, ndim, lowest=0):
    if type(axis) is int:  # the common case, quickly
        positive = axis + ndim if axis < 0 else axis
        if lowest <= positive < ndim:
            return positive
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_describe(axis)}")
    positive = axis + ndim if axis < 0 else axis
    if not lowest <= positive < ndim:
        which = "an axis other than the batch axis 0" if lowest else "an axis"
        raise ValueError(f"{name} must be {which} of an array with {ndim} dimensions "
                         f"(from {lowest - ndim if lowest else -ndim} to {ndim - 1}), got {axis}")
    return int(positive)


def axes_tuple(name, axes, ndim):
    """Distinct axes in range, negative ones allowed, as a sorted tuple."""
    if isinstance(axes, numbers.Integral) and not isinstance(axes, (bool, np.bool_)):
        axes = (axes,)
    try:
        axes = tuple(axes)
    except TypeError:
        raise TypeError(f"{name} must be an integer or a sequence of integers, got {_describe(axes)}") from None
    fixed = tuple(axis_index(name, a, ndim) for a in axes)
    if len(set(fixed)) != len(fixed):
        raise ValueError(f"{name} must not repeat an axis, got {axes}")
    return tuple(sorted(fixed))


def channel_axis(value, ndim):
    return axis_index("channel_axis", value, ndim, lowest=1)


def normalized_shape_of(normalized_shape, shape):
    if type(normalized_shape) is tuple and shape[len(shape) - len(normalized_shape):] == normalized_shape \
            and normalized_shape and all(type(d) is int and d > 0 for d in normalized_shape):
        return normalized_shape  # the common case, quickly
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, (bool, np.bool_)):
        normalized_shape = (normalized_shape,)
    try:
        normalized = tuple(normalized_shape)
    except TypeError:
        normalized = None
    if normalized is None or not all(isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_))
                                     for d in normalized):
        raise TypeError("normalized_shape must be an integer or a sequence of integers, got "
                        f"{_describe(normalized_shape)}")
    normalized = tuple(int(d) for d in normalized)
    if not normalized or len(normalized) > len(shape) or tuple(shape[len(shape) - len(normalized):]) != normalized:
        raise ValueError(f"normalized_shape {normalized} must be non-empty and match the trailing "
                         f"dimensions of input of shape {tuple(shape)}")
    if 0 in normalized:  # no values to normalize over: no mean, no variance
        raise ValueError(f"normalized_shape {normalized} must not contain 0: each row would have no values "
                         "to take statistics of")
    return normalized
