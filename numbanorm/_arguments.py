"""The front's shared argument handling: the checked input, results delivered in the caller's
dtype or ``out``, running-statistics updates, a forward's ``stats`` read back by its backward.

Every check runs before anything is computed or written (see ``_checks``)."""

from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, overload

import numpy as np

from . import _checks as chk
from ._types import Grads

if TYPE_CHECKING:
    _F = TypeVar("_F", bound=Callable[..., Any])

    @overload
    def dispatch(fn: _F) -> _F: ...

    @overload
    def dispatch(*, lane: Optional[Callable[..., Any]] = None) -> Callable[[_F], _F]: ...

    def dispatch(fn: Any = None, *, lane: Any = None) -> Any:
        """``_dispatch.dispatch`` wraps with ``functools.wraps``: the signature stays the function's."""
        return fn
else:
    from ._dispatch import dispatch  # noqa: F401 (the family modules import it from here)


def _is_c(a):
    """A C-contiguous NumPy array (the fused CPU kernels' precondition)."""
    return isinstance(a, np.ndarray) and a.flags.c_contiguous


def _input(name, value, min_ndim):
    """The checked input ``x`` and ``xk``, x as the kernels take it (float16 widened to float32).
    (In the kernels ``xk`` is a centred value, ``x - mean``.)"""
    x = chk.float_array(name, value, min_ndim)
    return x, (x.astype(np.float32) if x.dtype == np.float16 else x)


def _deliver(y, dtype, out):
    """The result in the caller's dtype, written into ``out`` when one was given."""
    if out is not None:
        if y is not out:
            np.copyto(out, y, casting="unsafe")
        return out
    return y if y.dtype == dtype else y.astype(dtype)


def _rstd(var, eps):
    """``1/sqrt(var + eps)``; a constant group with eps=0 gives inf (NaN output), as in NumPy and
    PyTorch, without a divide-by-zero warning."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)


def _update_running(running, batch_value, momentum, num_batches_tracked):
    """``(1 - m)*old + m*new`` in place; ``momentum=None`` is the cumulative average."""
    if running is None:
        return
    if momentum is None:
        momentum = 1.0 / float(num_batches_tracked.reshape(-1)[0])
    running[...] = (1.0 - momentum) * running.astype(np.float64) + momentum * batch_value


def _bessel(count, unbiased):
    """The factor from the biased variance of ``count`` values to the stored running variance:
    ``count / (count - 1)`` (``running_var_unbiased=True``, PyTorch) or 1 (Keras, Flax, ONNX)."""
    return count / (count - 1) if unbiased else 1.0


def _batch_counter(num_batches_tracked, required):
    if num_batches_tracked is None:
        if required:
            raise ValueError("num_batches_tracked must be given when momentum is None (it is "
                             "the count of the cumulative average), got None")
        return None
    nbt = num_batches_tracked
    if not isinstance(nbt, np.ndarray) or nbt.dtype.kind not in "iu" or nbt.size != 1:
        raise TypeError("num_batches_tracked must be an integer NumPy array of one element, got "
                        f"{chk._describe(nbt)}")
    if not nbt.flags.writeable:
        raise ValueError("num_batches_tracked must be writable (it is incremented in place)")
    return nbt


def _running_pair(running_mean, running_var, channels):
    rm = chk.running_stat("running_mean", running_mean, channels)
    rv = chk.running_stat("running_var", running_var, channels)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean and running_var must both be given or both be None, got "
                         f"running_mean={'None' if rm is None else 'an array'} and "
                         f"running_var={'None' if rv is None else 'an array'}")
    return rm, rv


def _grid_affine_params(weight, bias, c, dtype):
    return (chk.parameter("weight", weight, (c,), dtype), chk.parameter("bias", bias, (c,), dtype))


def _maybe_stats(y, stats, return_stats):
    return (y, stats) if return_stats else y


def _num_groups(num_groups, channels):
    if isinstance(num_groups, (bool, np.bool_)) or not isinstance(num_groups, (int, np.integer)):
        raise TypeError(f"num_groups must be an integer, got {chk._describe(num_groups)}")
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"num_groups must be a positive divisor of the number of channels "
                         f"{channels}, got {num_groups}")
    return int(num_groups)


def _stats_arg(stats, shape, kind="NormStats returned by the forward", why="for this input"):
    """A forward's stats checked against the shape its ``mean``/``rstd`` must have: (mean, rstd)
    as float64, ``batch_stats`` and ``has_bias``."""
    if not (hasattr(stats, "mean") and hasattr(stats, "rstd")):
        raise TypeError(f"stats must be the {kind} with return_stats=True, got {chk._describe(stats)}")
    # C-ordered float64 copies whatever the caller's layout: the kernels compile once for them
    mean = np.array(chk.float_array("stats.mean", stats.mean), np.float64, order="C")
    rstd = np.array(chk.float_array("stats.rstd", stats.rstd), np.float64, order="C")
    for name, a in (("stats.mean", mean), ("stats.rstd", rstd)):
        if a.shape != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} {why}, got shape {a.shape}")
    return mean, rstd, bool(getattr(stats, "batch_stats", True)), bool(getattr(stats, "has_bias", False))


def _backward_inputs(grad_output, input, min_ndim=2):
    x, xk = _input("input", input, min_ndim)
    dy = chk.same_array("grad_output", grad_output, x)
    return x, xk, (dy.astype(np.float32) if dy.dtype == np.float16 else dy)


def _grads(x, dx, grad_weight, grad_bias):
    return Grads(dx if dx.dtype == x.dtype else dx.astype(x.dtype), grad_weight, grad_bias)

