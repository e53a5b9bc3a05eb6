"""numbanorm's public functions inside users' ``@njit`` code (``numba.extending.overload``).

``import numbanorm`` registers these; nothing compiles until a user's function that calls one
is compiled.  A call from compiled code runs the serial kernels of ``_serial.py`` on the calling
thread (a user's ``prange`` loop may call it once per sample), with the Python functions'
arguments and results: ``NormStats``, ``Grads`` and ``Moments`` are the same classes.

Differences, forced by compilation (the README's "Inside @njit code" lists them):

* Errors that depend only on the argument *types* -- a dtype other than float32/float64, too
  few dimensions, an argument of the wrong kind, a non-constant ``return_stats`` -- are raised
  when Numba compiles the call, as a ``TypingError`` carrying the Python function's message.
  Errors that depend on *values* (shapes, eps < 0, num_groups not dividing C, momentum outside
  [0, 1], ...) raise the same exception type at run time, with the same message except that
  floating-point values are not printed (Numba cannot format them).
* ``return_stats`` must be a compile-time constant (a literal True/False).
* float16, Dask and CUDA arrays, ``switchable_norm`` and ``normalize`` (and their backwards) and
  ``Moments.finalize`` are not available.
* A backward's ``Grads.bias`` is typed ``Optional`` when ``stats.has_bias`` is not a constant
  (stats that came from Python): test it against None before use.
"""

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload
from numba.np.numpy_support import as_dtype
from numba.np.unsafe.ndarray import to_fixed_tuple

from . import _functional as F
from . import _serial as S
from . import _tfstats as T

NormStats, Grads, Moments = F.NormStats, F.Grads, F.Moments
_FLOATS = (types.float32, types.float64)


# -- typing-time helpers --------------------------------------------------------------------------

class _Runtime:
    """Marks an argument whose value is known only at run time."""


RUNTIME = _Runtime()


def _value(t):
    """The compile-time value of a typer argument (a Python default, an Omitted, a literal or
    None), or RUNTIME."""
    if isinstance(t, types.Omitted):
        return t.value
    if isinstance(t, types.NoneType):
        return None
    if isinstance(t, types.Literal):
        return t.literal_value
    if not isinstance(t, types.Type):
        return t
    return RUNTIME


def _is_none(t):
    return _value(t) is None


def _fail(message):
    raise TypingError(f"numbanorm inside @njit: {message}")


def _float_array(name, t, min_ndim=0):
    if not isinstance(t, types.Array):
        _fail(f"{name} must be an array of floating point numbers, got {t}")
    if t.dtype not in _FLOATS:
        _fail(f"{name} must have dtype float32 or float64 inside @njit code (float16 is not "
              f"supported there), got dtype {t.dtype}")
    if t.ndim < min_ndim:
        _fail(f"{name} must have at least {min_ndim} dimensions, got an array of {t.ndim}")
    return t


def _optional_float_array(name, t, ndim=None):
    if _is_none(t):
        return None
    _float_array(name, t)
    if ndim is not None and t.ndim != ndim:
        _fail(f"{name} must have {ndim} dimension(s), got an array of {t.ndim}")
    return t


def _literal_bool(name, t):
    v = _value(t)
    if v is RUNTIME or not isinstance(v, (bool, int)):
        _fail(f"{name} must be a compile-time constant True or False inside @njit code, got {t}")
    return bool(v)


def _same_full(name, t, like):
    """A full-size companion of the input (grad_output, out): same dtype and ndim."""
    if not isinstance(t, types.Array):
        _fail(f"{name} must be an array like the input, got {t}")
    if t.dtype != like.dtype:
        _fail(f"{name} must have the dtype of input ({like.dtype}), got dtype {t.dtype}")
    if t.ndim != like.ndim:
        _fail(f"{name} must have the shape of input (an array of {like.ndim} dimensions), got an array "
              f"of {t.ndim}")


def _check_out_type(out, like):
    if _is_none(out):
        return False
    _same_full("out", out, like)
    if not out.mutable:
        _fail("out must be writable, got a read-only array")
    return True


def _norm_rank(t):
    if isinstance(t, types.Integer) or isinstance(_value(t), int) and not isinstance(_value(t), bool):
        return 1
    if isinstance(t, types.UniTuple) and isinstance(t.dtype, types.Integer) and t.count > 0:
        return t.count
    if isinstance(t, types.Tuple) and t.count > 0 and all(isinstance(d, types.Integer) for d in t.types):
        return t.count
    _fail(f"normalized_shape must be an integer or a non-empty tuple of integers inside @njit code, got {t}")


def _stats_fields(name, t, extra=()):
    if not isinstance(t, types.BaseNamedTuple) or not {"mean", "rstd"} <= set(t.fields):
        _fail(f"{name} must be the NormStats returned by the forward with return_stats=True, got {t}")
    for field in ("mean", "rstd"):
        ft = t.types[t.fields.index(field)]
        if not isinstance(ft, types.Array) or not isinstance(ft.dtype, types.Float):
            _fail(f"{name}.{field} must be a float array, got {ft}")
    flags = {}
    for field, default in (("batch_stats", True), ("has_bias", False)):
        if field in t.fields:
            ft = t.types[t.fields.index(field)]
            v = ft.literal_value if isinstance(ft, types.Literal) else RUNTIME
            flags[field] = v if v is RUNTIME else bool(v)
        else:
            flags[field] = default
    return flags


# -- small compiled helpers (checks and views) ---------------------------------------------------

class _ValueError(ValueError):
    """``raise _ValueError(template, *values)`` in compiled code raises a plain ValueError whose
    message Python formats when it is raised: Numba passes the values out as they are, and
    compiling its own string formatting (ints only, no floats or tuples) cost seconds per call
    site."""

    def __new__(cls, template, *args):
        return ValueError(template.format(*args))


class _TypeError(TypeError):
    """As `_ValueError`, for a TypeError."""

    def __new__(cls, template, *args):
        return TypeError(template.format(*args))


def _shape_tuple(normalized_shape):
    pass


@overload(_shape_tuple, inline="always")
def _ov_shape_tuple(normalized_shape):
    if isinstance(normalized_shape, types.Integer):
        return lambda normalized_shape: (normalized_shape,)
    return lambda normalized_shape: normalized_shape


@njit(cache=False, inline="always")
def _check_trailing(shape, xshape):
    k = len(shape)
    lead = len(xshape) - k
    for i in range(k):
        if shape[i] != xshape[lead + i]:
            raise _ValueError("normalized_shape {} must be non-empty and match the trailing dimensions of "
                              "input of shape {}", shape, xshape)


@njit(cache=False, inline="always")
def _check_shape(name, shape, expected, suffix=""):
    for i in range(len(shape)):
        if shape[i] != expected[i]:
            raise _ValueError("{} must have shape {}{}, got shape {}", name, expected, suffix, shape)


def _param(name, value, shape, dtype):
    pass


@overload(_param, inline="always")
def _ov_param(name, value, shape, dtype):
    """A parameter (weight, bias, running statistic read for eval) of ``shape``, as a flat 1-D array
    of ``dtype`` (copied only when its dtype or layout needs it); None stays None."""
    if _is_none(value):
        return lambda name, value, shape, dtype: None
    if value.ndim != len(shape):
        def bad(name, value, shape, dtype):
            if len(name) >= 0:  # always: a bare raise would leave the function without a return type
                raise _ValueError("{} must have shape {}, got shape {}", name, shape, value.shape)
            return np.empty(0, dtype)
        return bad
    target = as_dtype(dtype.dtype) if isinstance(dtype, types.DTypeSpec) else None
    same = target is not None and as_dtype(value.dtype) == target
    if value.ndim == 1 and same:
        def impl(name, value, shape, dtype):
            _check_shape(name, value.shape, shape)
            return value
    elif value.layout == "C" and same:
        def impl(name, value, shape, dtype):
            _check_shape(name, value.shape, shape)
            return value.reshape(value.size)
    else:
        def impl(name, value, shape, dtype):
            _check_shape(name, value.shape, shape)
            return np.ascontiguousarray(value).astype(dtype).reshape(value.size)
    return impl


def _len_or(value, n):
    pass


@overload(_len_or, inline="always")
def _ov_len_or(value, n):
    """``len(value)``, or ``n`` for None: decided when typing, where an inlined ``value is None``
    would not be."""
    if _is_none(value):
        return lambda value, n: n
    return lambda value, n: value.shape[0]


def _float_or(value, default):
    pass


@overload(_float_or, inline="always")
def _ov_float_or(value, default):
    if _is_none(value):
        return lambda value, default: default
    return lambda value, default: float(value)


@njit(cache=False)
def _row_errors(input, normalized_shape, weight, bias, eps, out):
    """The one-row fast path's errors, raised as the general path raises them (in its order)."""
    n = input.shape[0]
    _check_trailing(_shape_tuple(normalized_shape), input.shape)
    if weight is not None:
        _check_shape("weight", weight.shape, (n,))
    if bias is not None:
        _check_shape("bias", bias.shape, (n,))
    _eps("eps", eps, 0.0)
    _check_shape("out", out.shape, input.shape)


def _eps(name, eps, default):
    pass


@overload(_eps, inline="always")
def _ov_eps(name, eps, default):
    if _is_none(eps):
        return lambda name, eps, default: default
    if isinstance(eps, types.Boolean) or not isinstance(eps, (types.Integer, types.Float)):
        _fail(f"eps must be a real number, got {eps}")

    def impl(name, eps, default):
        e = float(eps)
        if not (e >= 0.0 and e < np.inf):
            raise _ValueError("{} must be finite and >= 0, got {}", name, eps)
        return e
    return impl


def _momentum(momentum):
    pass


@overload(_momentum)
def _ov_momentum(momentum):
    if _is_none(momentum):
        return lambda momentum: None
    if isinstance(momentum, types.Boolean) or not isinstance(momentum, (types.Integer, types.Float)):
        _fail(f"momentum must be a real number in [0, 1] or None, got {momentum}")

    def impl(momentum):
        m = float(momentum)
        if not (0.0 <= m <= 1.0):
            raise _ValueError("momentum must be in [0, 1] or None, got {}", momentum)
        return m
    return impl


@njit(cache=False)  # not inlined: "out is not None" must be pruned on its own argument
def _check_out_shape(out, shape):
    if out is not None:
        _check_shape("out", out.shape, shape)


def _view(a, shape):
    pass


@overload(_view)
def _ov_view(a, shape):
    """``a`` reshaped to ``shape`` without a copy when its type says it is C-contiguous, else a
    C-contiguous copy reshaped (serial kernels read it once; a copy costs one more pass)."""
    if _is_none(a):
        return lambda a, shape: None
    if a.layout == "C":
        return lambda a, shape: a.reshape(shape)
    return lambda a, shape: np.ascontiguousarray(a).reshape(shape)


def _result(out, shape, dtype):
    pass


@overload(_result)
def _ov_result(out, shape, dtype):
    """Where a kernel writes: ``out`` itself (reshaped) when it is C-contiguous, else a new array
    (copied into ``out`` by ``_deliver``)."""
    if not _is_none(out) and out.layout == "C":
        return lambda out, shape, dtype: out.reshape(shape)
    return lambda out, shape, dtype: np.empty(shape, dtype)


def _deliver(out, y, shape):
    pass


@overload(_deliver)
def _ov_deliver(out, y, shape):
    if _is_none(out):
        return lambda out, y, shape: y.reshape(shape)
    if out.layout == "C":
        return lambda out, y, shape: out

    def impl(out, y, shape):
        out[...] = y.reshape(shape)
        return out
    return impl


@njit(cache=False)
def _prod(shape, start, stop):
    p = 1
    for i in range(start, stop):
        p *= shape[i]
    return p


@njit(cache=False)
def _axis(name, axis, ndim, lowest):
    positive = axis + ndim if axis < 0 else axis
    if not (lowest <= positive < ndim):
        which = "an axis other than the batch axis 0" if lowest else "an axis"
        raise _ValueError("{} must be {} of an array with {} dimensions (from {} to {}), got {}", name, which, ndim,
                          lowest - ndim if lowest else -ndim, ndim - 1, axis)
    return positive


def _int_arg(name, t):
    if isinstance(t, types.Boolean) or not (isinstance(t, types.Integer) or isinstance(_value(t), int)):
        _fail(f"{name} must be an integer, got {t}")


def _cast(a, dtype, shape):
    pass


@overload(_cast)
def _ov_cast(a, dtype, shape):
    """A float64 gradient in the result's dtype and shape; None stays None."""
    if _is_none(a):
        return lambda a, dtype, shape: None
    return lambda a, dtype, shape: a.astype(dtype).reshape(shape)


@njit(cache=False)
def _flat64(a, n):
    """A statistic as a flat float64 array of ``n`` (a copy: the caller's array is left alone)."""
    return np.ascontiguousarray(a).astype(np.float64).reshape(n)


# -- layer norm and RMS norm -----------------------------------------------------------------------

def _row_norm_impl(input, normalized_shape, weight, bias, eps, return_stats, out, centered, default_eps):
    _float_array("input", input, 1)
    k = _norm_rank(normalized_shape)
    if k > input.ndim:
        _fail(f"normalized_shape has {k} dimensions, more than input's {input.ndim}")
    _optional_float_array("weight", weight, k)
    _optional_float_array("bias", bias, k)
    stats = _literal_bool("return_stats", return_stats)
    _check_out_type(out, input)
    dtype = input.dtype
    lead_nd = input.ndim - k
    has_bias = not _is_none(bias)

    if input.ndim == 1:  # one row: no views, no statistics arrays unless asked (the per-sample path)
        def body(input, normalized_shape, weight, bias, eps, out):
            shape = _shape_tuple(normalized_shape)
            _check_trailing(shape, input.shape)
            w = _param("weight", weight, shape, dtype)
            b = _param("bias", bias, shape, dtype)
            e = _eps("eps", eps, default_eps)
            _check_out_shape(out, input.shape)
            y = np.empty(input.shape, dtype) if out is None else out
            m, inv = S.norm_row(input, w, b, e, centered, y)
            return y, m, inv, e
        body = njit(cache=False, inline="always")(body)
        if stats:
            def impl(input, normalized_shape, weight=None, bias=None, eps=1e-5, return_stats=False, out=None):
                y, m, inv, e = body(input, normalized_shape, weight, bias, eps, out)
                mean = np.empty(())
                rstd = np.empty(())
                mean[()] = m
                rstd[()] = inv
                return y, NormStats(mean, rstd, True, has_bias, e)
        elif _is_none(out) or not all(_is_none(p) or (p.ndim == 1 and p.dtype == dtype) for p in (weight, bias)):
            def impl(input, normalized_shape, weight=None, bias=None, eps=1e-5, return_stats=False, out=None):
                return body(input, normalized_shape, weight, bias, eps, out)[0]
        else:  # the per-sample loop's call: checks, then the row kernel straight into ``out``
            norm_row = S.norm_row if _is_none(weight) or _is_none(bias) else S.norm_row_inline

            def impl(input, normalized_shape, weight=None, bias=None, eps=1e-5, return_stats=False, out=None):
                n = input.shape[0]
                e = _float_or(eps, default_eps)
                # every raise lives in a called function: in the inlined loop body it costs time.  No
                # "is None" tests here: inlined into the caller they are not pruned (see _len_or)
                if (_shape_tuple(normalized_shape)[0] != n or out.shape[0] != n or not (0.0 <= e < np.inf)
                        or _len_or(weight, n) != n or _len_or(bias, n) != n):
                    _row_errors(input, normalized_shape, weight, bias, eps, out)
                norm_row(input, weight, bias, e, centered, out)
                return out
        return impl

    def body(input, normalized_shape, weight, bias, eps, out):
        shape = _shape_tuple(normalized_shape)
        _check_trailing(shape, input.shape)
        w = _param("weight", weight, shape, dtype)
        b = _param("bias", bias, shape, dtype)
        e = _eps("eps", eps, default_eps)
        _check_out_shape(out, input.shape)
        rows = _prod(input.shape, 0, lead_nd)
        length = _prod(input.shape, lead_nd, input.ndim)
        x2 = _view(input, (rows, length))
        y2 = _result(out, (rows, length), dtype)
        mean = np.empty(rows)
        rstd = np.empty(rows)
        S.norm_rows(x2, _filled(w, length, dtype, 1.0), _filled(b, length, dtype, 0.0), e, centered, y2, mean, rstd)
        return _deliver(out, y2, input.shape), mean, rstd, e
    body = njit(cache=False, inline="always")(body)
    if stats:
        def impl(input, normalized_shape, weight=None, bias=None, eps=1e-5, return_stats=False, out=None):
            y, mean, rstd, e = body(input, normalized_shape, weight, bias, eps, out)
            lead = input.shape[:lead_nd]
            return y, NormStats(mean.reshape(lead), rstd.reshape(lead), True, has_bias, e)
    else:
        def impl(input, normalized_shape, weight=None, bias=None, eps=1e-5, return_stats=False, out=None):
            return body(input, normalized_shape, weight, bias, eps, out)[0]
    return impl


@overload(F.layer_norm, prefer_literal=True, inline="always")
def _ov_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, return_stats=False, out=None):
    return _row_norm_impl(input, normalized_shape, weight, bias, eps, return_stats, out, True, 1e-5)


def _rms_eps(input):
    return float(np.finfo(as_dtype(input.dtype)).eps) if isinstance(input, types.Array) and \
        input.dtype in _FLOATS else 0.0


@overload(F.rms_norm, prefer_literal=True)
def _ov_rms_norm(input, normalized_shape, weight=None, eps=None, return_stats=False, out=None):
    inner = _row_norm_impl(input, normalized_shape, weight, None, eps, return_stats, out, False, _rms_eps(input))
    inner = njit(cache=False, inline="always")(inner)

    def impl(input, normalized_shape, weight=None, eps=None, return_stats=False, out=None):
        return inner(input, normalized_shape, weight, None, eps, return_stats, out)
    return impl


def _row_backward_impl(grad_output, input, stats, normalized_shape, weight, centered):
    _float_array("input", input, 1)
    _same_full("grad_output", grad_output, input)
    k = _norm_rank(normalized_shape)
    if k > input.ndim:
        _fail(f"normalized_shape has {k} dimensions, more than input's {input.ndim}")
    _optional_float_array("weight", weight, k)
    flags = _stats_fields("stats", stats)
    dtype = input.dtype
    lead_nd = input.ndim - k
    has_weight = not _is_none(weight)
    has_bias = flags["has_bias"]

    def body(grad_output, input, stats, normalized_shape, weight):
        shape = _shape_tuple(normalized_shape)
        _check_trailing(shape, input.shape)
        if grad_output.shape != input.shape:
            raise _ValueError("grad_output must have the shape of input {}, got shape {}", input.shape,
                              grad_output.shape)
        w = _param("weight", weight, shape, dtype)
        lead = input.shape[:lead_nd]
        _check_shape("stats.mean", stats.mean.shape, lead, " for this input")
        _check_shape("stats.rstd", stats.rstd.shape, lead, " for this input")
        rows = _prod(input.shape, 0, lead_nd)
        length = _prod(input.shape, lead_nd, input.ndim)
        x2 = _view(input, (rows, length))
        dy2 = _view(grad_output, (rows, length))
        dx2 = np.empty((rows, length), dtype)
        gw = np.zeros(length) if has_weight else None
        gb = np.zeros(length)
        S.norm_rows_backward(dy2, x2, w, _flat64(stats.mean, rows), _flat64(stats.rstd, rows), centered, dx2, gw, gb)
        return dx2.reshape(input.shape), gw, gb
    body = njit(cache=False, inline="always")(body)

    if has_bias is RUNTIME:
        def impl(grad_output, input, stats, normalized_shape, weight=None):
            dx, gw, gb = body(grad_output, input, stats, normalized_shape, weight)
            shape = _shape_tuple(normalized_shape)
            grad_weight = _cast(gw, dtype, shape)
            grad_bias = gb.astype(dtype).reshape(shape) if stats.has_bias else None
            return Grads(dx, grad_weight, grad_bias)
    elif has_bias:
        def impl(grad_output, input, stats, normalized_shape, weight=None):
            dx, gw, gb = body(grad_output, input, stats, normalized_shape, weight)
            shape = _shape_tuple(normalized_shape)
            grad_weight = _cast(gw, dtype, shape)
            return Grads(dx, grad_weight, gb.astype(dtype).reshape(shape))
    else:
        def impl(grad_output, input, stats, normalized_shape, weight=None):
            dx, gw, gb = body(grad_output, input, stats, normalized_shape, weight)
            shape = _shape_tuple(normalized_shape)
            grad_weight = _cast(gw, dtype, shape)
            return Grads(dx, grad_weight, None)
    return impl


@overload(F.layer_norm_backward, prefer_literal=True)
def _ov_layer_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    return _row_backward_impl(grad_output, input, stats, normalized_shape, weight, True)


@overload(F.rms_norm_backward, prefer_literal=True)
def _ov_rms_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    return _row_backward_impl(grad_output, input, stats, normalized_shape, weight, False)


# -- batch, instance and group norm: statistics per (sample, channel), grouped -------------------

_grid_shape = S.grid_shape4


def _check_running_types(running_mean, running_var, num_batches_tracked):
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if not _is_none(t):
            _float_array(name, t)
            if not t.mutable:
                _fail(f"{name} must be writable (it is updated in place), got a read-only array")
    if not _is_none(num_batches_tracked):
        t = num_batches_tracked
        if not isinstance(t, types.Array) or not isinstance(t.dtype, types.Integer):
            _fail(f"num_batches_tracked must be an integer array of one element, got {t}")
        if not t.mutable:
            _fail("num_batches_tracked must be writable (it is incremented in place)")


@njit(cache=False)
def _check_running(name, a, c):
    if a is not None:
        _check_shape(name, a.shape, (c,))
        if not a.flags.c_contiguous:
            raise _ValueError("{} must be contiguous (it is updated in place), got strides {}", name, a.strides)


def _eval_stats(running_mean, running_var, s_, c, eps, flag):
    pass


@overload(_eval_stats)
def _ov_eval_stats(running_mean, running_var, s_, c, eps, flag):
    """Eval: the running statistics as (S, C) float64 mean and rstd."""
    if _is_none(running_mean) or _is_none(running_var):
        def missing(running_mean, running_var, s_, c, eps, flag):
            if c >= 0:  # always: a bare raise would leave the function without a return type
                raise _ValueError("running_mean and running_var are required when {}, got None", flag)
            return np.empty((s_, c)), np.empty((s_, c))
        return missing

    def impl(running_mean, running_var, s_, c, eps, flag):
        _check_shape("running_mean", running_mean.shape, (c,))
        _check_shape("running_var", running_var.shape, (c,))
        mean = np.empty((s_, c))
        rstd = np.empty((s_, c))
        for s in range(s_):
            for j in range(c):
                mean[s, j] = running_mean[j]
                rstd[s, j] = 1.0 / np.sqrt(np.float64(running_var[j]) + eps)
        return mean, rstd
    return impl


def _momentum_now(momentum, num_batches_tracked):
    pass


@overload(_momentum_now)
def _ov_momentum_now(momentum, num_batches_tracked):
    """The momentum of this update: ``1 / num_batches_tracked`` (already incremented) for None."""
    if not _is_none(momentum):
        return lambda momentum, num_batches_tracked: momentum
    if _is_none(num_batches_tracked):
        return lambda momentum, num_batches_tracked: 1.0  # unreachable: refused before
    return lambda momentum, num_batches_tracked: 1.0 / float(num_batches_tracked.flat[0])


def _batch_stats(stats):
    pass


@overload(_batch_stats)
def _ov_batch_stats(stats):
    if "batch_stats" in stats.fields:
        return lambda stats: bool(stats.batch_stats)
    return lambda stats: True


@njit(cache=False)
def _update(running, batch, momentum):
    for i in range(running.shape[0]):
        running[i] = (1.0 - momentum) * np.float64(running[i]) + momentum * batch[i]


@njit(cache=False)
def _running_update(running_mean, running_var, momentum, num_batches_tracked, mean, unbiased):
    if num_batches_tracked is not None:
        num_batches_tracked += 1
    m = _momentum_now(momentum, num_batches_tracked)
    _update(running_mean, mean, m)
    _update(running_var, unbiased, m)


def _grid_forward_impl(input, running_mean, running_var, weight, bias, batch_stats, momentum, eps, channel_axis,
                       return_stats, out, num_batches_tracked, over_batch, fname):
    """batch_norm (``over_batch``) and instance_norm."""
    _float_array("input", input, 2)
    _int_arg("channel_axis", channel_axis)
    _optional_float_array("weight", weight, 1)
    _optional_float_array("bias", bias, 1)
    _check_running_types(running_mean, running_var, num_batches_tracked)
    stats_wanted = _literal_bool("return_stats", return_stats)
    _check_out_type(out, input)
    dtype = input.dtype
    ndim = input.ndim
    has_bias = not _is_none(bias)
    one_running = _is_none(running_mean) != _is_none(running_var)
    one_message = ("running_mean and running_var must both be given or both be None, got "
                   f"running_mean={'None' if _is_none(running_mean) else 'an array'} and "
                   f"running_var={'None' if _is_none(running_var) else 'an array'}")
    counter_dtype = "" if _is_none(num_batches_tracked) else str(as_dtype(num_batches_tracked.dtype))
    need_counter = _is_none(momentum) and not _is_none(running_mean) and _is_none(num_batches_tracked)
    flag = "training=False" if over_batch else "use_input_stats=False"

    def body(input, running_mean, running_var, weight, bias, batch_stats, momentum, eps, channel_axis, out,
             num_batches_tracked):
        ch = _axis("channel_axis", channel_axis, ndim, 1)
        n = input.shape[0]
        c = input.shape[ch]
        w = _param("weight", weight, (c,), dtype)
        b = _param("bias", bias, (c,), dtype)
        e = _eps("eps", eps, 0.0)
        m = _momentum(momentum)
        _check_out_shape(out, input.shape)
        shape4 = _grid_shape(input.shape, ch)
        s_ = 1 if over_batch else n
        if batch_stats:
            _check_running("running_mean", running_mean, c)
            _check_running("running_var", running_var, c)
            if one_running:
                raise ValueError(one_message)
            if need_counter:
                raise ValueError("num_batches_tracked must be given when momentum is None (it is the count of the "
                                 "cumulative average), got None")
            if num_batches_tracked is not None and num_batches_tracked.size != 1:
                raise _TypeError("num_batches_tracked must be an integer NumPy array of one element, got an array "
                                 "of dtype {} and shape {}", counter_dtype, num_batches_tracked.shape)
            if over_batch and input.size // c < 2:
                raise _ValueError("Expected more than 1 value per channel when training, got input of shape {}",
                                  input.shape)
            if not over_batch and n and input.size // (n * c) < 2:
                raise _ValueError("Expected more than 1 spatial element when training, got input of shape {}",
                                  input.shape)
            x4 = _view(input, shape4)
            y4 = _result(out, shape4, dtype)
            count, base, offset, var, rstd = S.grid_stats(x4, c, over_batch, e)
            S.grid_normalize(x4, y4, base, offset, rstd, w, b)
            mean = base + offset
            if running_mean is not None and running_var is not None and n:
                k = count[0, 0]
                unbiased = var * k / (k - 1)
                if over_batch:
                    _running_update(running_mean, running_var, m, num_batches_tracked, mean[0], unbiased[0])
                else:  # the mean over samples of the per-instance values
                    _running_update(running_mean, running_var, m, num_batches_tracked, mean.sum(axis=0) / n,
                                    unbiased.sum(axis=0) / n)
        else:
            mean, rstd = _eval_stats(running_mean, running_var, s_, c, e, flag)
            x4 = _view(input, shape4)
            y4 = _result(out, shape4, dtype)
            S.grid_normalize(x4, y4, mean, np.zeros((s_, c)), rstd, w, b)
        y = _deliver(out, y4, input.shape)
        return y, mean, rstd, e
    body = njit(cache=False, inline="always")(body)

    def call(input, running_mean, running_var, weight, bias, batch_stats, momentum, eps, channel_axis, out,
             num_batches_tracked):
        y, mean, rstd, e = body(input, running_mean, running_var, weight, bias, batch_stats, momentum, eps,
                                channel_axis, out, num_batches_tracked)
        if over_batch:
            return y, NormStats(mean[0].copy(), rstd[0].copy(), bool(batch_stats), has_bias, e)
        return y, NormStats(mean, rstd, bool(batch_stats), has_bias, e)
    call = njit(cache=False, inline="always")(call)
    return call, stats_wanted


@overload(F.batch_norm, prefer_literal=True)
def _ov_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                   eps=1e-5, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None):
    call, stats = _grid_forward_impl(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                     channel_axis, return_stats, out, num_batches_tracked, True, "batch_norm")
    if stats:
        def impl(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                 eps=1e-5, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None):
            return call(input, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out,
                        num_batches_tracked)
    else:
        def impl(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                 eps=1e-5, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None):
            return call(input, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis, out,
                        num_batches_tracked)[0]
    return impl


@overload(F.instance_norm, prefer_literal=True)
def _ov_instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                      momentum=0.1, eps=1e-5, channel_axis=1, return_stats=False, out=None,
                      num_batches_tracked=None):
    call, stats = _grid_forward_impl(input, running_mean, running_var, weight, bias, use_input_stats, momentum,
                                     eps, channel_axis, return_stats, out, num_batches_tracked, False,
                                     "instance_norm")
    if stats:
        def impl(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                 momentum=0.1, eps=1e-5, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None):
            return call(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                        channel_axis, out, num_batches_tracked)
    else:
        def impl(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                 momentum=0.1, eps=1e-5, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None):
            return call(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                        channel_axis, out, num_batches_tracked)[0]
    return impl


@njit(cache=False)
def _num_groups(num_groups, channels):
    if num_groups < 1 or channels % num_groups:
        raise _ValueError("num_groups must be a positive divisor of the number of channels {}, got {}", channels,
                          num_groups)
    return num_groups


@overload(F.group_norm, prefer_literal=True)
def _ov_group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, channel_axis=1, return_stats=False,
                   out=None):
    _float_array("input", input, 2)
    _int_arg("num_groups", num_groups)
    _int_arg("channel_axis", channel_axis)
    _optional_float_array("weight", weight, 1)
    _optional_float_array("bias", bias, 1)
    stats = _literal_bool("return_stats", return_stats)
    _check_out_type(out, input)
    dtype = input.dtype
    ndim = input.ndim
    has_bias = not _is_none(bias)

    @njit(cache=False, inline="always")
    def body(input, num_groups, weight, bias, eps, channel_axis, out):
        ch = _axis("channel_axis", channel_axis, ndim, 1)
        c = input.shape[ch]
        groups = _num_groups(num_groups, c)
        w = _param("weight", weight, (c,), dtype)
        b = _param("bias", bias, (c,), dtype)
        e = _eps("eps", eps, 0.0)
        _check_out_shape(out, input.shape)
        shape4 = _grid_shape(input.shape, ch)
        x4 = _view(input, shape4)
        y4 = _result(out, shape4, dtype)
        _, base, offset, _, rstd = S.grid_stats(x4, groups, False, e)
        S.grid_normalize(x4, y4, base, offset, rstd, w, b)
        return _deliver(out, y4, input.shape), base + offset, rstd, e

    if stats:
        def impl(input, num_groups, weight=None, bias=None, eps=1e-5, channel_axis=1, return_stats=False,
                 out=None):
            y, mean, rstd, e = body(input, num_groups, weight, bias, eps, channel_axis, out)
            return y, NormStats(mean, rstd, True, has_bias, e)
    else:
        def impl(input, num_groups, weight=None, bias=None, eps=1e-5, channel_axis=1, return_stats=False,
                 out=None):
            return body(input, num_groups, weight, bias, eps, channel_axis, out)[0]
    return impl


@njit(cache=False)
def _check_stats_shape(stats, c, n, groups, over_batch):
    if over_batch:
        _check_shape("stats.mean", stats.mean.shape, (c,), " for this input")
        _check_shape("stats.rstd", stats.rstd.shape, (c,), " for this input")
    else:
        _check_shape("stats.mean", stats.mean.shape, (n, groups), " for this input")
        _check_shape("stats.rstd", stats.rstd.shape, (n, groups), " for this input")


def _grid_backward_impl(grad_output, input, stats, weight, channel_axis, kind):
    """batch (``kind`` 0), instance (1) and group (2) norm backward; the group one takes
    ``num_groups`` as an extra argument."""
    _float_array("input", input, 2)
    _same_full("grad_output", grad_output, input)
    _int_arg("channel_axis", channel_axis)
    _optional_float_array("weight", weight, 1)
    flags = _stats_fields("stats", stats)
    dtype = input.dtype
    ndim = input.ndim
    has_weight = not _is_none(weight)
    over_batch = kind == 0

    @njit(cache=False, inline="always")
    def body(grad_output, input, stats, num_groups, weight, channel_axis):
        ch = _axis("channel_axis", channel_axis, ndim, 1)
        n = input.shape[0]
        c = input.shape[ch]
        groups = _num_groups(num_groups, c) if kind == 2 else c
        if grad_output.shape != input.shape:
            raise _ValueError("grad_output must have the shape of input {}, got shape {}", input.shape,
                              grad_output.shape)
        w = _param("weight", weight, (c,), dtype)
        s_ = 1 if over_batch else n
        _check_stats_shape(stats, c, n, groups, over_batch)
        mean = _flat64(stats.mean, s_ * groups).reshape((s_, groups))
        rstd = _flat64(stats.rstd, s_ * groups).reshape((s_, groups))
        batch_stats = True if kind == 2 else _batch_stats(stats)
        shape4 = _grid_shape(input.shape, ch)
        x4 = _view(input, shape4)
        dy4 = _view(grad_output, shape4)
        grad_weight = np.empty(c)
        grad_bias = np.empty(c)
        dx4 = np.empty(shape4, dtype)
        S.grid_backward(dy4, x4, mean, rstd, w, over_batch, batch_stats, dx4, grad_weight, grad_bias)
        gw = grad_weight.astype(dtype) if has_weight else None
        return dx4.reshape(input.shape), gw, grad_bias.astype(dtype)
    return body, flags["has_bias"]


def _grads_impl(body, has_bias, group):
    if has_bias is RUNTIME:
        def finish(dx, gw, gb, stats):
            return Grads(dx, gw, gb if stats.has_bias else None)
    elif has_bias:
        def finish(dx, gw, gb, stats):
            return Grads(dx, gw, gb)
    else:
        def finish(dx, gw, gb, stats):
            return Grads(dx, gw, None)
    finish = njit(cache=False, inline="always")(finish)

    def grouped(grad_output, input, stats, num_groups, weight=None, channel_axis=1):
        dx, gw, gb = body(grad_output, input, stats, num_groups, weight, channel_axis)
        return finish(dx, gw, gb, stats)

    def per_channel(grad_output, input, stats, weight=None, channel_axis=1):
        dx, gw, gb = body(grad_output, input, stats, 0, weight, channel_axis)
        return finish(dx, gw, gb, stats)

    return grouped if group else per_channel


@overload(F.batch_norm_backward, prefer_literal=True)
def _ov_batch_norm_backward(grad_output, input, stats, weight=None, channel_axis=1):
    return _grads_impl(*_grid_backward_impl(grad_output, input, stats, weight, channel_axis, 0), False)


@overload(F.instance_norm_backward, prefer_literal=True)
def _ov_instance_norm_backward(grad_output, input, stats, weight=None, channel_axis=1):
    return _grads_impl(*_grid_backward_impl(grad_output, input, stats, weight, channel_axis, 1), False)


@overload(F.group_norm_backward, prefer_literal=True)
def _ov_group_norm_backward(grad_output, input, stats, num_groups, weight=None, channel_axis=1):
    _int_arg("num_groups", num_groups)
    return _grads_impl(*_grid_backward_impl(grad_output, input, stats, weight, channel_axis, 2), True)


# -- statistics: moments, welford, merge, batch_normalization ------------------------------------------

@njit(cache=False)
def _reduced_mask(axes, ndim):
    """The reduced axes as flags, negative axes allowed; ValueError for out of range or repeats."""
    reduced = np.zeros(ndim, np.bool_)
    for a in axes:
        p = _axis("axes", a, ndim, 0)
        if reduced[p]:
            raise _ValueError("axes must not repeat an axis, got {}", axes)
        reduced[p] = True
    return reduced


def _axes_tuple(axes):
    pass


@overload(_axes_tuple)
def _ov_axes_tuple(axes):
    if isinstance(axes, types.Integer):
        return lambda axes: (axes,)
    return lambda axes: axes


def _axes_count(axes):
    if isinstance(axes, types.Integer) and not isinstance(axes, types.Boolean):
        return 1
    if isinstance(axes, types.UniTuple) and isinstance(axes.dtype, types.Integer):
        return axes.count
    if isinstance(axes, types.Tuple) and all(isinstance(t, types.Integer) for t in axes.types):
        return axes.count
    _fail(f"axes must be an integer or a tuple of integers inside @njit code, got {axes}")


@njit(cache=False)
def _state_of(x, reduced):
    """(count, mean, M2) float64 over the ``reduced`` axes, each of the kept axes' sizes flattened:
    a rows view when the reduced axes trail in memory, a slab view when they form one block,
    else a C copy with the reduced axes moved last."""
    ndim = x.ndim
    first = ndim
    last = -1
    for i in range(ndim):
        if reduced[i]:
            first = min(first, i)
            last = max(last, i)
    block = True
    for i in range(first, last + 1):
        block = block and reduced[i]
    kept = _prod_mask(x.shape, reduced, False)
    total = _prod_mask(x.shape, reduced, True)
    count = np.empty(kept)
    mean = np.empty(kept)
    m2 = np.empty(kept)
    if last < 0:  # nothing reduced: each value its own state
        xs = np.ascontiguousarray(x).reshape(kept)
        for i in range(kept):
            count[i] = 1.0
            mean[i] = xs[i]
            m2[i] = 0.0
        return count, mean, m2
    if block:
        a = _prod(x.shape, 0, first)
        c = _prod(x.shape, last + 1, ndim)
        xc = np.ascontiguousarray(x)
        if c == 1:
            S.rows_moments(xc.reshape((a, total)), count, mean, m2)
        else:
            S.slabs_moments(xc.reshape((a, total, c)), count.reshape((a, c)), mean.reshape((a, c)),
                            m2.reshape((a, c)))
        return count, mean, m2
    perm = np.empty(ndim, np.int64)
    j = 0
    for i in range(ndim):
        if not reduced[i]:
            perm[j] = i
            j += 1
    for i in range(ndim):
        if reduced[i]:
            perm[j] = i
            j += 1
    moved = np.ascontiguousarray(np.transpose(x, to_fixed_tuple(perm, ndim)))
    S.rows_moments(moved.reshape((kept, total)), count, mean, m2)
    return count, mean, m2


def _prod_mask(shape, mask, which):
    pass


@overload(_prod_mask)
def _ov_prod_mask(shape, mask, which):
    def impl(shape, mask, which):
        p = 1
        for i in range(len(shape)):
            if mask[i] == which:
                p *= shape[i]
        return p
    return impl


@njit(cache=False)
def _stat_dims(shape, reduced, keepdims):
    """The shape of statistics over the ``reduced`` axes of ``shape``, as an int64 array (at
    least one entry; its first ``ndim`` or ``ndim - len(axes)`` make the shape): length 1 along
    the reduced axes with ``keepdims``, those axes dropped without."""
    dims = np.empty(max(len(shape), 1), np.int64)
    j = 0
    for i in range(len(shape)):
        if keepdims or not reduced[i]:
            dims[j] = 1 if reduced[i] else shape[i]
            j += 1
    return dims


def _moments_impl(x, axes, keepdims, finish):
    _float_array("x", x, 1)
    k = _axes_count(axes)
    keep = _literal_bool("keepdims", keepdims)
    ndim = x.ndim
    out_nd = ndim if keep else ndim - k
    if out_nd < 0:
        _fail(f"axes has {k} entries, more than x's {ndim} dimensions")

    @njit(cache=False, inline="always")
    def body(x, axes):
        reduced = _reduced_mask(_axes_tuple(axes), ndim)
        shape = to_fixed_tuple(_stat_dims(x.shape, reduced, keep), out_nd)
        count, mean, m2 = _state_of(x, reduced)
        return count.reshape(shape), mean.reshape(shape), m2.reshape(shape)

    def impl(x, axes, keepdims=False):
        count, mean, m2 = body(x, axes)
        return finish(x, count, mean, m2)
    return impl


@njit(cache=False)
def _moments_finish(x, count, mean, m2):
    if x.size == 0:
        raise _ValueError("x must not be empty, got shape {}", x.shape)
    return _mean_var(count, mean, m2, x.dtype)


@njit(cache=False)
def _mean_var(count, mean, m2, dtype):
    """(mean, m2 / count) in ``dtype``, loops for any number of dimensions (0-d arrays included,
    where Numba's astype and array arithmetic give scalars)."""
    out_mean = np.empty(mean.shape, dtype)
    out_var = np.empty(mean.shape, dtype)
    fm, fv = out_mean.reshape(mean.size), out_var.reshape(mean.size)
    c, m, q = count.reshape(mean.size), mean.reshape(mean.size), m2.reshape(mean.size)
    for i in range(mean.size):
        fm[i] = m[i]
        fv[i] = q[i] / c[i]
    return out_mean, out_var


@njit(cache=False)
def _welford_finish(x, count, mean, m2):
    if x.size == 0:
        return Moments(np.zeros_like(count), np.zeros_like(mean), np.zeros_like(m2))
    return Moments(count, mean, m2)


@overload(F.moments, prefer_literal=True)
def _ov_moments(x, axes, keepdims=False):
    return _moments_impl(x, axes, keepdims, _moments_finish)


@overload(F.welford, prefer_literal=True)
def _ov_welford(x, axes, keepdims=False):
    return _moments_impl(x, axes, keepdims, _welford_finish)


@overload(F.merge)
def _ov_merge(a, b):
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, types.BaseNamedTuple) or not {"count", "mean", "m2"} <= set(t.fields):
            _fail(f"{name} must be a Moments (count, mean, m2), got {t}")

    def impl(a, b):
        n = a.count + b.count
        frac = np.where(n > 0, b.count / np.where(n > 0, n, 1.0), 0.0)
        delta = b.mean - a.mean
        return Moments(n, a.mean + delta * frac, a.m2 + b.m2 + delta * delta * a.count * frac)
    return impl


def _bn_param(name, t, ndim):
    if _is_none(t):
        return None
    if isinstance(t, (types.Float, types.Integer)) and not isinstance(t, types.Boolean):
        return t
    _float_array(name, t)
    if t.ndim > ndim:
        _fail(f"{name} must broadcast to x's shape (at most {ndim} dimensions), got an array of {t.ndim}")
    return t


@njit(cache=False)
def _check_broadcast(name, p, xshape):
    shape = np.asarray(p).shape
    lead = len(xshape) - len(shape)
    for i in range(len(shape)):
        if shape[i] != 1 and shape[i] != xshape[lead + i]:
            raise _ValueError("{} must broadcast to x's shape {}, got shape {}", name, xshape, shape)


def _as64(p):
    pass


@overload(_as64)
def _ov_as64(p):
    if _is_none(p):
        return lambda p: None
    return lambda p: np.asarray(p).astype(np.float64)


def _filled(param, length, dtype, value):
    pass


@overload(_filled, inline="always")
def _ov_filled(param, length, dtype, value):
    """A flat parameter, or for None ``length`` copies of ``value`` (scaling by 1 and adding 0
    change no bit): the serial row driver takes arrays only."""
    if _is_none(param):
        return lambda param, length, dtype, value: np.full(length, value, dtype)
    return lambda param, length, dtype, value: param


def _scale_or_one(scale):
    pass


@overload(_scale_or_one)
def _ov_scale_or_one(scale):
    """The scale as float64, ones(1) for None: one type whether the product with another
    broadcast argument gains dimensions or not (a variable reassigned under ``if scale is not
    None`` would not unify)."""
    if _is_none(scale):
        return lambda scale: np.ones(1)
    return lambda scale: np.asarray(scale).astype(np.float64)


def _bn_types(x, mean, variance, offset, scale):
    """batch_normalization's argument types (its backward's too): x's dtype, or a TypingError."""
    _float_array("x", x, 1)
    for name, t in (("mean", mean), ("variance", variance)):
        if _is_none(t):
            _fail(f"{name} must be an array of floating point numbers, got None")
        _bn_param(name, t, x.ndim)
    _bn_param("offset", offset, x.ndim)
    _bn_param("scale", scale, x.ndim)
    return as_dtype(x.dtype)


@njit(cache=False)
def _bn_arguments(x, mean, variance, offset, scale, variance_epsilon):
    """batch_normalization's argument values: the checked epsilon, or the Python ValueError."""
    e = _eps("variance_epsilon", variance_epsilon, 0.0)
    _check_broadcast("mean", mean, x.shape)
    _check_broadcast("variance", variance, x.shape)
    if offset is not None:
        _check_broadcast("offset", offset, x.shape)
    if scale is not None:
        _check_broadcast("scale", scale, x.shape)
    return e


@overload(F.batch_normalization)
def _ov_batch_normalization(x, mean, variance, offset, scale, variance_epsilon):
    dtype = _bn_types(x, mean, variance, offset, scale)

    def impl(x, mean, variance, offset, scale, variance_epsilon):
        e = _bn_arguments(x, mean, variance, offset, scale, variance_epsilon)
        m64 = _as64(mean)
        hi = m64.astype(dtype)
        lo = (m64 - hi.astype(np.float64)).astype(dtype)
        alpha64 = 1.0 / np.sqrt(_as64(variance) + e) * _scale_or_one(scale)
        alpha = alpha64.astype(dtype)
        if offset is None:
            return ((x - hi) - lo) * alpha
        beta = _as64(offset).astype(dtype)
        return ((x - hi) - lo) * alpha + beta
    return impl


# -- the backwards of the statistics: moments_backward, batch_normalization_backward ------------------

@njit(cache=False)
def _reduce_to(g, shape):
    """``g`` summed over the axes that an argument of ``shape`` (right-aligned against g's
    dimensions) was broadcast along, in that shape: the gradient of a broadcast argument."""
    out = np.zeros(shape)
    flat = out.reshape(out.size)
    lead = g.ndim - len(shape)
    for idx in np.ndindex(g.shape):
        t = 0
        for j in range(len(shape)):
            d = shape[j]
            t = t * d + (idx[lead + j] if d != 1 else 0)
        flat[t] += g[idx]
    return out


def _stat_grad(name, grad, keep, squeezed):
    pass


@overload(_stat_grad)
def _ov_stat_grad(name, grad, keep, squeezed):
    """A gradient with respect to a statistic, None (zero) or of the moments' shape with or
    without keepdims, as float64 keepdims-shaped."""
    if _is_none(grad):
        return lambda name, grad, keep, squeezed: np.zeros(keep)
    keepdims = grad.ndim == len(keep)

    def impl(name, grad, keep, squeezed):
        if (grad.shape != keep) if keepdims else (grad.shape != squeezed):
            raise _ValueError("{} must have the shape of the moments, {} (or {} with keepdims), got shape {}", name,
                              squeezed, keep, grad.shape)
        return np.asarray(grad).astype(np.float64).reshape(keep)
    return impl


@overload(T.moments_backward, prefer_literal=True)
def _ov_moments_backward(grad_mean, grad_variance, x, axes):
    _float_array("x", x, 1)
    k = _axes_count(axes)
    ndim = x.ndim
    for name, t in (("grad_mean", grad_mean), ("grad_variance", grad_variance)):
        if _optional_float_array(name, t) is not None and t.ndim not in (ndim, ndim - k):
            _fail(f"{name} must have the shape of the moments (an array of {ndim - k} dimensions, or {ndim} with "
                  f"keepdims), got an array of {t.ndim}")
    dtype = as_dtype(x.dtype)
    kept_nd = ndim - k

    def impl(grad_mean, grad_variance, x, axes):
        reduced = _reduced_mask(_axes_tuple(axes), ndim)
        keep = to_fixed_tuple(_stat_dims(x.shape, reduced, True), ndim)
        squeezed = to_fixed_tuple(_stat_dims(x.shape, reduced, False), kept_nd)
        gm = _stat_grad("grad_mean", grad_mean, keep, squeezed)
        gv = _stat_grad("grad_variance", grad_variance, keep, squeezed)
        if x.size == 0:
            return np.empty_like(x)
        _, mean, _ = _state_of(x, reduced)
        n = _prod_mask(x.shape, reduced, True)
        # d mean / dx = 1/n, d var / dx = 2 (x - mean)/n
        return (gm / n + gv * (2.0 / n) * (x - mean.reshape(keep))).astype(dtype)
    return impl


def _grad_of(value, g, dtype):
    pass


@overload(_grad_of)
def _ov_grad_of(value, g, dtype):
    """The gradient ``g`` (x's shape) of an argument ``value`` broadcast against x, in the
    argument's own shape and ``dtype``; None for a None argument."""
    if _is_none(value):
        return lambda value, g, dtype: None
    return lambda value, g, dtype: _reduce_to(g, np.asarray(value).shape).astype(dtype)


@overload(T.batch_normalization_backward)
def _ov_batch_normalization_backward(grad_output, x, mean, variance, offset, scale, variance_epsilon):
    dtype = _bn_types(x, mean, variance, offset, scale)
    _same_full("grad_output", grad_output, x)

    def impl(grad_output, x, mean, variance, offset, scale, variance_epsilon):
        if grad_output.shape != x.shape:
            raise _ValueError("grad_output must have the shape of x {}, got shape {}", x.shape, grad_output.shape)
        e = _bn_arguments(x, mean, variance, offset, scale, variance_epsilon)
        rstd = 1.0 / np.sqrt(_as64(variance) + e)
        scaled = _scale_or_one(scale) * rstd
        dy = grad_output.astype(np.float64)
        dy_xc = dy * (x - _as64(mean))  # (x - mean) in float64: no digits lost to the offset
        return T.BatchNormalizationGrads(
            (dy * scaled).astype(dtype),
            _reduce_to(-dy * scaled, np.asarray(mean).shape).astype(dtype),
            _reduce_to(-0.5 * dy_xc * scaled * rstd * rstd, np.asarray(variance).shape).astype(dtype),
            _grad_of(offset, dy, dtype),
            _grad_of(scale, dy_xc * rstd, dtype))
    return impl


# -- weight standardization ----------------------------------------------------------------------------

@njit(cache=False)
def _weight_rows(weight, dtype):
    """The weight as C-contiguous rows (output channel, the rest), with the Python message for a
    trailing axis of length 0; and the ones and zeros of a layer norm without parameters."""
    rows = weight.shape[0]
    length = _prod(weight.shape, 1, weight.ndim)
    if length == 0 and rows:
        raise _ValueError("normalized_shape {} must not contain 0: each row would have no values to take "
                          "statistics of", weight.shape[1:])
    return _view(weight, (rows, length)), np.ones(length, dtype), np.zeros(length, dtype)


@overload(F.weight_standardization)
def _ov_weight_standardization(weight, eps=1e-5):
    _float_array("weight", weight, 2)
    dtype = as_dtype(weight.dtype)

    def impl(weight, eps=1e-5):
        e = _eps("eps", eps, 1e-5)
        x2, ones, zeros = _weight_rows(weight, dtype)
        y2 = np.empty(x2.shape, dtype)
        S.norm_rows(x2, ones, zeros, e, True, y2, np.empty(x2.shape[0]), np.empty(x2.shape[0]))
        return y2.reshape(weight.shape)
    return impl


@overload(F.weight_standardization_backward)
def _ov_weight_standardization_backward(grad_output, weight, eps=1e-5):
    _float_array("weight", weight, 2)
    _float_array("grad_output", grad_output)
    if grad_output.dtype != weight.dtype:
        _fail(f"grad_output must have the dtype of weight ({weight.dtype}), got dtype {grad_output.dtype}")
    if grad_output.ndim != weight.ndim:
        _fail(f"grad_output must have the shape of weight (an array of {weight.ndim} dimensions), got an array "
              f"of {grad_output.ndim}")
    dtype = as_dtype(weight.dtype)

    def impl(grad_output, weight, eps=1e-5):
        e = _eps("eps", eps, 1e-5)
        if grad_output.shape != weight.shape:
            raise _ValueError("grad_output must have the shape of weight {}, got shape {}", weight.shape,
                              grad_output.shape)
        x2, ones, _ = _weight_rows(weight, dtype)
        rows = x2.shape[0]
        dx2 = np.empty(x2.shape, dtype)
        # the forward keeps no statistics: recomputed, row by row in the same pass
        S.norm_rows_backward(_view(grad_output, x2.shape), x2, ones, np.empty(rows), np.empty(rows), True, dx2, None,
                             None, True, e)
        return dx2.reshape(weight.shape)
    return impl
