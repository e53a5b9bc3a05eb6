"""CUDA backend: the public functions on GPU arrays.

Every function served here (``_served``: the named norms and their backwards, switchable norm,
`normalize`, `batch_normalization`, weight standardization, `moments` and `welford`) takes the
device data path (issue #14): this module checks the arguments and plans the layout -- shapes,
strides and groupings, no data -- then hands the whole pipeline to the CUDA device
(``_cuda_pipelines.Device``) passed explicitly.  Layouts the grid and row pipelines read as runs
(``(A, C, S)`` geometries, rows) use them; other groupings and broadcast parameters (`normalize`,
`batch_normalization`, `moments`/`welford` of any axes) are planned as shapes and element strides
for the strided kernels.  Nothing in a call copies between host and device or synchronizes; the
forward's ``stats`` (and `welford`'s `Moments`, float64 arrays of the kept axes' shape) are device
arrays of the input's family; running statistics (and a device ``num_batches_tracked``) are
updated in place by a kernel; results are allocated by the input's library and kernels launch on
the caller's current stream.  A public function not served here is a NotImplementedError naming
it (``_dispatch``).

Rules for the arguments of one call:

* the input decides: any argument with ``__cuda_array_interface__`` (Numba device arrays, CuPy
  arrays, PyTorch CUDA tensors) is used in place, zero-copy;
* full-size arrays (input, grad_output, out) must be C-contiguous float16/float32/float64 device
  arrays; float16 is computed in float32 (float64 accumulations, float64 stats) and stored as
  float16, and the named norms' weight/bias gradients are float32, as on the CPU;
* small arrays (weight, bias, running statistics, stats, logits) must be device arrays too;
* a host array (NumPy, a CPU tensor) among device arrays is a TypeError naming it -- no silent
  copies -- except ``num_batches_tracked``, an integer counter (a host one is incremented on the
  host, a device one by the kernel);
* results come back in the input's family (CuPy in, CuPy out; torch in, torch out; Numba in, Numba
  out).
"""

import math

import numpy as np

from . import _arguments
from . import _checks as chk
from . import _functional as F
from . import _normalize
from ._dispatch import backend_of


def _cuda():
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError("a CUDA array was given, but Numba finds no usable GPU (no device, driver or "
                           "CUDA runtime); check `python -m numbanorm info`")
    return cuda


def _family(value):
    root = type(value).__module__.partition(".")[0]
    return root if root in ("torch", "cupy") else "numba"


def _as_numba(cuda, name, value):
    if chk.is_device_array(value):
        return value
    if _family(value) == "torch" and getattr(value, "requires_grad", False):
        raise TypeError(f"{name} is a torch tensor that requires grad; pass {name}.detach() (numbanorm "
                        "computes gradients itself, with the *_backward functions)")
    # The interface is read once here (``as_cuda_array`` reads it; the checks before read only
    # the type).  No stream synchronization for torch and CuPy: the kernels launch on the
    # caller's current stream (``_stream_of``), which is the stream CuPy's interface names
    # (torch's names none), so stream order already puts them after the producer's work, and
    # ``sync=True`` would block the host until that stream drains, at every call.  Another
    # producer's stream may not be the one launched on: the interface's rule (synchronize)
    # stays.
    return cuda.as_cuda_array(value, sync=_family(value) not in ("torch", "cupy"))


def _is_host_array(value):
    return isinstance(value, np.ndarray) or (
        backend_of(value) is None and (hasattr(value, "__array__") or hasattr(value, "__array_interface__")))


# -- the device data path: checks and layout here, the whole pipeline on the device ----------------

class _Call:
    """One call's CUDA context: the input's family (results are allocated by its library), the
    stream to launch on (the caller's current one) and the device that runs the pipeline."""

    def __init__(self, first_name, first):
        self.cuda = _cuda()
        self.family = _family(first)
        self.first_name = first_name
        self.torch_device = getattr(first, "device", None)
        self.stream = _stream_of(self.cuda, self.family)
        from ._cuda_pipelines import device

        self.device = device()

    def view(self, name, value):
        """``value`` as a Numba device array (zero-copy); a host array is a TypeError."""
        if backend_of(value) == "cuda" or chk.is_device_array(value):
            return _as_numba(self.cuda, name, value)
        if _is_host_array(value):
            raise TypeError(f"{name} is a host array but {self.first_name} is on the GPU: pass a device array "
                            "(numbanorm makes no silent copies between host and device)")
        raise TypeError(f"{name} must be a CUDA array like {self.first_name}, got {chk._describe(value)}")

    def full(self, name, value, like=None):
        """A full-size array (input, grad_output, out): float32/float64, C-contiguous, shaped like ``like``."""
        d = self.view(name, value)
        if d.dtype not in (np.float16, np.float32, np.float64):
            raise TypeError(f"{name} on the GPU must be float16, float32 or float64, got dtype {d.dtype}")
        if like is not None:
            if tuple(d.shape) != tuple(like.shape):
                raise ValueError(f"{name} must have the shape of input {tuple(like.shape)}, got shape {tuple(d.shape)}")
            if d.dtype != like.dtype:
                raise TypeError(f"{name} must have the dtype of input ({like.dtype}), got dtype {d.dtype}")
        if not d.is_c_contiguous():
            raise ValueError(f"{name} on the GPU must be C-contiguous (copy it first), got strides {d.strides}")
        return d

    def small(self, name, value, shape, writable=False):
        """A per-channel (or per-row-element) array of ``shape``, as a flat device view; None stays None."""
        if value is None:
            return None
        d = self.view(name, value)
        if d.dtype.kind != "f":
            raise TypeError(f"{name} must have dtype float16, float32 or float64, got dtype {d.dtype}")
        if tuple(d.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {tuple(d.shape)}")
        if not d.is_c_contiguous():
            raise ValueError(f"{name} must be contiguous{' (it is updated in place)' if writable else ''}, got "
                             f"strides {d.strides}")
        return d.reshape(-1) if len(shape) != 1 else d

    def empty(self, shape, dtype):
        """A new result in the input's library: (what the caller gets, a flat Numba view)."""
        shape = tuple(int(s) for s in shape)
        if self.family == "torch":
            import torch

            t = torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), device=self.torch_device)
            return t, self.cuda.as_cuda_array(t, sync=False).reshape(-1)
        if self.family == "cupy":
            import cupy

            a = cupy.empty(shape, dtype)
            return a, self.cuda.as_cuda_array(a, sync=False).reshape(-1)
        a = self.cuda.device_array(shape, dtype, stream=self.stream)
        return a, a.reshape(-1)

    def out(self, out, x):
        """``out`` checked against ``x``: (user, flat view), or a new array when None."""
        if out is None:
            return self.empty(x.shape, x.dtype)
        return out, self.full("out", out, like=x).reshape(-1)


_streams = {}


def _stream_of(cuda, family):
    """The caller's current stream: torch's or CuPy's current one (wrapped once per pointer), Numba's
    default otherwise."""
    ptr = 0
    if family == "torch":
        import torch

        ptr = torch.cuda.current_stream().cuda_stream
    elif family == "cupy":
        import cupy

        ptr = cupy.cuda.get_current_stream().ptr
    if not ptr:
        return 0
    stream = _streams.get(ptr)
    if stream is None:
        stream = _streams[ptr] = cuda.external_stream(ptr)
    return stream


def _host_counter(nbt, required):
    """``num_batches_tracked``: None, a host integer array (incremented here, on the host) or a
    device integer array (incremented by the kernel): (host, device)."""
    if nbt is None:
        if required:
            raise ValueError("num_batches_tracked must be given when momentum is None (it is "
                             "the count of the cumulative average), got None")
        return None, None
    if backend_of(nbt) == "cuda" or chk.is_device_array(nbt):
        return None, nbt
    return _arguments._batch_counter(nbt, required), None


def _grid_geometry(shape, ch, over_batch, groups):
    a = math.prod(shape[:ch])
    s = math.prod(shape[ch + 1:])
    c = shape[ch]
    return (a, c, s, a if over_batch else a // shape[0], groups)


def _norm_stats(mean, rstd, batch_stats, has_bias, eps):
    return F.NormStats(mean, rstd, bool(batch_stats), bool(has_bias), eps)


def _tracked_grid_norm(input, running_mean, running_var, weight, bias, batch_stats, momentum, eps, channel_axis,
                       return_stats, out, num_batches_tracked, over_batch, running_var_unbiased):
    call = _Call("input", input)
    x = call.full("input", input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    w, b = call.small("weight", weight, (c,)), call.small("bias", bias, (c,))
    eps = chk.eps_value("eps", eps)
    momentum = chk.momentum_value(momentum)
    unbiased = chk.flag("running_var_unbiased", running_var_unbiased)
    rm = call.small("running_mean", running_mean, (c,), writable=True)
    rv = call.small("running_var", running_var, (c,), writable=True)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean and running_var must both be given or both be None, got "
                         f"running_mean={'None' if rm is None else 'an array'} and "
                         f"running_var={'None' if rv is None else 'an array'}")
    user, y = call.out(out, x)
    geometry = _grid_geometry(x.shape, ch, over_batch, c)
    cells = 1 if over_batch else n
    mean_u, mean = call.empty((cells, c) if cells > 1 or not over_batch else (c,), np.float64)
    rstd_u, rstd = call.empty(tuple(mean_u.shape), np.float64)
    dev = call.device
    if batch_stats:
        host_nbt, dev_nbt = _host_counter(num_batches_tracked, momentum is None and rm is not None)
        if over_batch and x.size // c < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")
        if not over_batch and n and math.prod(x.shape) // (n * c) < 2:
            raise ValueError(f"Expected more than 1 spatial element when training, got input of shape {x.shape}")
        if x.size == 0:
            return _maybe(user, mean_u, rstd_u, batch_stats, b, eps, return_stats)
        running = None
        if rm is not None:
            m = -1.0 if momentum is None else momentum
            if host_nbt is not None:
                host_nbt += 1
                if momentum is None:
                    m = 1.0 / float(host_nbt.reshape(-1)[0])
            count = x.size // (cells * c)
            running = (rm, rv, dev_nbt, m, _arguments._bessel(count, unbiased))
        _, var = call.empty((cells * c,), np.float64)
        dev.grid_forward(x.reshape(-1), y, geometry, w, b, eps, mean, var, rstd, call.stream, running)
    else:
        if rm is None:
            flag = "training=False" if over_batch else "use_input_stats=False"
            raise ValueError(f"running_mean and running_var are required when {flag}, got None")
        if x.size:
            dev.grid_forward_running(x.reshape(-1), y, geometry, w, b, eps, rm, rv, mean, rstd, call.stream)
    return _maybe(user, mean_u, rstd_u, batch_stats, b, eps, return_stats)


def _maybe(user, mean, rstd, batch_stats, bias, eps, return_stats):
    return (user, _norm_stats(mean, rstd, batch_stats, bias is not None, eps)) if return_stats else user


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5, *,
               channel_axis=1, return_stats=False, out=None, num_batches_tracked=None, running_var_unbiased=True):
    return _tracked_grid_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                              return_stats, out, num_batches_tracked, True, running_var_unbiased)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, *, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None,
                  running_var_unbiased=True):
    return _tracked_grid_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                              channel_axis, return_stats, out, num_batches_tracked, False, running_var_unbiased)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, return_stats=False, out=None):
    call = _Call("input", input)
    x = call.full("input", input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    groups = _arguments._num_groups(num_groups, c)
    w, b = call.small("weight", weight, (c,)), call.small("bias", bias, (c,))
    eps = chk.eps_value("eps", eps)
    user, y = call.out(out, x)
    mean_u, mean = call.empty((n, groups), np.float64)
    rstd_u, rstd = call.empty((n, groups), np.float64)
    if x.size:
        _, var = call.empty((n * groups,), np.float64)
        call.device.grid_forward(x.reshape(-1), y, _grid_geometry(x.shape, ch, False, groups), w, b, eps, mean, var,
                                 rstd, call.stream)
    return _maybe(user, mean_u, rstd_u, True, b, eps, return_stats)


def _stats_views(call, stats, shape):
    if not (hasattr(stats, "mean") and hasattr(stats, "rstd")):
        raise TypeError(f"stats must be the NormStats returned by the forward with return_stats=True, "
                        f"got {chk._describe(stats)}")
    views = []
    for name, value in (("stats.mean", stats.mean), ("stats.rstd", stats.rstd)):
        d = call.view(name, value)
        if tuple(d.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} for this input, got shape {tuple(d.shape)}")
        if d.dtype != np.float64 or not d.is_c_contiguous():
            raise TypeError(f"{name} must be a contiguous float64 device array (the forward's stats), got dtype "
                            f"{d.dtype}")
        views.append(d.reshape(-1))
    return views[0], views[1], bool(getattr(stats, "batch_stats", True)), bool(getattr(stats, "has_bias", False))


def _grid_backward(grad_output, input, stats, weight, channel_axis, over_batch, num_groups=None):
    call = _Call("input", input)
    x = call.full("input", input)
    dy = call.full("grad_output", grad_output, like=x)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    groups = c if num_groups is None else _arguments._num_groups(num_groups, c)
    w = call.small("weight", weight, (c,))
    shape = (c,) if over_batch else (n, groups)
    mean, rstd, batch_stats, has_bias = _stats_views(call, stats, shape)
    if num_groups is not None:
        batch_stats = True
    user, dx = call.empty(x.shape, x.dtype)
    gw_u, gw = call.empty((c,), chk.compute_dtype(x.dtype)) if w is not None else (None, None)
    gb_u, gb = call.empty((c,), chk.compute_dtype(x.dtype)) if has_bias else (None, None)
    if x.size == 0:
        raise ValueError("the CUDA backward of an empty batch is not supported")
    call.device.grid_backward(dy.reshape(-1), x.reshape(-1), dx, _grid_geometry(x.shape, ch, over_batch, groups),
                              mean, rstd, w, batch_stats, gw, gb, call.stream)
    return F.Grads(user, gw_u, gb_u)


def batch_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
    return _grid_backward(grad_output, input, stats, weight, channel_axis, True)


def instance_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
    return _grid_backward(grad_output, input, stats, weight, channel_axis, False)


def group_norm_backward(grad_output, input, stats, num_groups, weight=None, *, channel_axis=1):
    return _grid_backward(grad_output, input, stats, weight, channel_axis, False, num_groups)


def _row_norm(input, normalized_shape, weight, bias, eps, centered, out, return_stats):
    call = _Call("input", input)
    x = call.full("input", input)
    shape = chk.normalized_shape_of(normalized_shape, tuple(x.shape))
    w, b = call.small("weight", weight, shape), call.small("bias", bias, shape)
    eps = chk.eps_value("eps", np.finfo(x.dtype).eps if eps is None else eps)
    user, y = call.out(out, x)
    lead = tuple(x.shape[: x.ndim - len(shape)])
    length = math.prod(shape)
    rows = math.prod(lead)
    mean_u, mean = call.empty(lead, np.float64)
    rstd_u, rstd = call.empty(lead, np.float64)
    if x.size:
        call.device.row_forward(x.reshape(-1), y, rows, length, w, b, eps, centered, mean, rstd, call.stream)
    return _maybe(user, mean_u, rstd_u, True, b, eps, return_stats)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, return_stats=False, out=None):
    return _row_norm(input, normalized_shape, weight, bias, eps, True, out, return_stats)


def rms_norm(input, normalized_shape, weight=None, eps=None, *, return_stats=False, out=None):
    return _row_norm(input, normalized_shape, weight, None, eps, False, out, return_stats)


def _row_backward(grad_output, input, stats, normalized_shape, weight, centered):
    call = _Call("input", input)
    x = call.full("input", input)
    dy = call.full("grad_output", grad_output, like=x)
    shape = chk.normalized_shape_of(normalized_shape, tuple(x.shape))
    lead = tuple(x.shape[: x.ndim - len(shape)])
    w = call.small("weight", weight, shape)
    mean, rstd, _, has_bias = _stats_views(call, stats, lead)
    user, dx = call.empty(x.shape, x.dtype)
    gw_u, gw = call.empty(shape, chk.compute_dtype(x.dtype)) if w is not None else (None, None)
    gb_u, gb = call.empty(shape, chk.compute_dtype(x.dtype)) if has_bias else (None, None)
    if x.size:
        call.device.row_backward(dy.reshape(-1), x.reshape(-1), dx, math.prod(lead), math.prod(shape), mean, rstd, w,
                                 centered, gw, gb, call.stream)
    return F.Grads(user, gw_u, gb_u)


def layer_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    return _row_backward(grad_output, input, stats, normalized_shape, weight, True)


def rms_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
    return _row_backward(grad_output, input, stats, normalized_shape, weight, False)


def _moments_geometry(shape, axes):
    """(A, C, S, apn, C) for kept/reduced runs of the form [kept][reduced][kept][reduced], or None."""
    runs = []
    for i, size in enumerate(shape):
        if size == 1:
            continue
        kept = i not in axes
        if runs and runs[-1][0] == kept:
            runs[-1][1] *= size
        else:
            runs.append([kept, size])
    roles = [k for k, _ in runs]
    sizes = [s for _, s in runs]
    k1 = r1 = k2 = r2 = 1
    if roles[:1] == [True]:
        k1 = sizes.pop(0)
        roles.pop(0)
    if roles[:1] == [False]:
        r1 = sizes.pop(0)
        roles.pop(0)
    if roles[:1] == [True]:
        k2 = sizes.pop(0)
        roles.pop(0)
    if roles[:1] == [False]:
        r2 = sizes.pop(0)
        roles.pop(0)
    if roles:
        return None
    return (k1 * r1, k2, r2, r1, k2)


# -- any grouping and broadcast parameters: planned here as shapes and element strides -------------

def _c_strides(shape):
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _grouping(shape, axes):
    """(gshape, rshape, x strides) of the groups kept by ``axes`` reduced, see ``_strided_stats``."""
    gshape = tuple(1 if i in axes else d for i, d in enumerate(shape))
    rshape = tuple(d if i in axes else 1 for i, d in enumerate(shape))
    return gshape, rshape, _c_strides(shape)


def _broadcast_strides(own, shape):
    """Element strides over ``shape``'s axes of a C-contiguous array of shape ``own`` broadcast to
    it (0 along the axes it is broadcast over)."""
    full = (1,) * (len(shape) - len(own)) + tuple(own)
    return tuple(0 if f == 1 else s for f, s in zip(full, _c_strides(full)))


def _broadcast_param(call, name, value, shape, like_name):
    """A float device array that broadcasts to ``shape`` without enlarging it: (its own shape, a
    flat view, its strides over ``shape``), or (None, None, zero strides)."""
    if value is None:
        return None, None, (0,) * len(shape)
    d = call.view(name, value)
    if d.dtype.kind != "f":
        raise TypeError(f"{name} must have dtype float16, float32 or float64, got dtype {d.dtype}")
    own = tuple(d.shape)
    try:
        fits = len(own) <= len(shape) and np.broadcast_shapes(own, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name} must broadcast to {like_name}'s shape {tuple(shape)}, got shape {own}")
    if not d.is_c_contiguous():
        raise ValueError(f"{name} on the GPU must be contiguous, got strides {d.strides}")
    return own, d.reshape(-1), _broadcast_strides(own, shape)


def _at_least_1d(shape):
    return tuple(shape) if len(shape) else (1,)


def _refuse_omit(what, nan_policy):
    from ._tfstats import nan_policy_value

    if nan_policy_value(nan_policy) != "propagate":
        raise NotImplementedError(f"{what} with nan_policy='omit' does not take CUDA arrays yet: copy x to the "
                                  "host (a NumPy array) first")


def moments(x, axes, keepdims=False, *, nan_policy="propagate"):
    _refuse_omit("moments", nan_policy)
    call = _Call("x", x)
    d = call.full("x", x)
    axes_t = chk.axes_tuple("axes", axes, d.ndim)
    if d.size == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(d.shape)}")
    kept_shape = tuple(1 if i in axes_t else s for i, s in enumerate(d.shape))
    shape = kept_shape if keepdims else tuple(s for i, s in enumerate(d.shape) if i not in axes_t)
    mean_u, mean = call.empty(shape, d.dtype)
    var_u, var = call.empty(shape, d.dtype)
    geometry = _moments_geometry(tuple(d.shape), axes_t)
    if geometry is not None:  # [kept][reduced][kept][reduced]: reductions that read runs
        call.device.moments(d.reshape(-1), geometry, mean, var, call.stream)
    else:
        full = _at_least_1d(d.shape)
        call.device.strided_stats(d.reshape(-1), _grouping(full, axes_t), 0.0, mean, var, stream=call.stream)
    return mean_u, var_u


def welford(x, axes, keepdims=False, *, weights=None, nan_policy="propagate"):
    """The `Moments` of a CUDA array: ``count``, ``mean`` and ``m2`` are float64 device arrays of
    the input's family, of the kept axes' shape (0-d for a full reduction), as the CPU's arrays."""
    from ._tfstats import nan_policy_value

    if weights is not None or nan_policy_value(nan_policy) != "propagate":
        raise NotImplementedError("welford with weights or nan_policy='omit' does not take CUDA arrays yet: copy x "
                                  "to the host (a NumPy array) first")
    call = _Call("x", x)
    d = call.full("x", x)
    axes_t = chk.axes_tuple("axes", axes, d.ndim)
    kept_shape = tuple(1 if i in axes_t else s for i, s in enumerate(d.shape))
    shape = kept_shape if keepdims else tuple(s for i, s in enumerate(d.shape) if i not in axes_t)
    results = [call.empty(shape, np.float64) for _ in range(3)]
    if math.prod(kept_shape):
        (_, count), (_, mean), (_, m2) = results
        call.device.strided_stats(d.reshape(-1), _grouping(_at_least_1d(d.shape), axes_t), 0.0, mean, m2,
                                  count=count, m2=True, stream=call.stream)
    return F.Moments(*(user for user, _ in results))


def batch_normalization(x, mean, variance, offset, scale, variance_epsilon):
    call = _Call("x", x)
    d = call.full("x", x)
    eps = chk.eps_value("variance_epsilon", variance_epsilon)
    shape = _at_least_1d(d.shape)
    if mean is None or variance is None:
        raise TypeError(f"{'mean' if mean is None else 'variance'} must be a float array, got None")
    params = [_broadcast_param(call, name, value, tuple(d.shape), "x")
              for name, value in (("mean", mean), ("variance", variance), ("scale", scale), ("offset", offset))]
    user, y = call.empty(d.shape, d.dtype)
    if d.size:
        call.device.broadcast_affine(d.reshape(-1), y, shape, params[0][1], params[1][1], params[2][1], params[3][1],
                                     tuple(_at_least_1d(p[2]) for p in params), eps, True, call.stream)
    return user


def normalize(x, axes, weight=None, bias=None, eps=1e-5, *, return_stats=False, out=None, nan_policy="propagate"):
    _refuse_omit("normalize", nan_policy)
    call = _Call("x", x)
    d = call.full("x", x)
    axes = _normalize._check_axes(d, axes)
    shape = tuple(d.shape)
    w_shape, w, ws = _broadcast_param(call, "weight", weight, shape, "x")
    b_shape, b, bs = _broadcast_param(call, "bias", bias, shape, "x")
    eps = chk.eps_value("eps", eps)
    user, y = call.out(out, d)
    keep = tuple(1 if i in axes else s for i, s in enumerate(shape))
    mean_u, mean = call.empty(keep, np.float64)
    rstd_u, rstd = call.empty(keep, np.float64)
    if d.size:
        full = _at_least_1d(shape)
        grouping = _grouping(full, axes)
        var = call.device.scratch("normalize_var", (math.prod(keep),), np.float64, call.stream)
        call.device.strided_stats(d.reshape(-1), grouping, eps, mean, var, rstd=rstd, stream=call.stream)
        ss = _at_least_1d(_broadcast_strides(keep, shape))
        call.device.broadcast_affine(d.reshape(-1), y, full, mean, rstd, w, b, (ss, ss, _at_least_1d(ws),
                                     _at_least_1d(bs)), eps, False, call.stream)
    stats = _normalize.NormalizeStats(mean_u, rstd_u, True, b is not None, eps, b_shape, "propagate")
    return (user, stats) if return_stats else user


def normalize_backward(grad_output, input, stats, axes, weight=None):
    call = _Call("input", input)
    x = call.full("input", input)
    dy = call.full("grad_output", grad_output, like=x)
    axes = _normalize._check_axes(x, axes)
    shape = tuple(x.shape)
    w_shape, w, ws = _broadcast_param(call, "weight", weight, shape, "input")
    keep = tuple(1 if i in axes else s for i, s in enumerate(shape))
    mean, rstd, _, has_bias = _stats_views(call, stats, keep)
    if getattr(stats, "nan_policy", "propagate") != "propagate":
        _refuse_omit("normalize_backward", stats.nan_policy)
    b_shape = getattr(stats, "bias_shape", None)
    b_shape = (tuple(b_shape) if b_shape is not None else ()) if has_bias else None
    if x.size == 0:
        raise ValueError("the CUDA backward of an empty input is not supported")
    user, dx = call.empty(shape, x.dtype)
    gw_u, gw = call.empty(w_shape, x.dtype) if w is not None else (None, None)
    gb_u, gb = call.empty(b_shape, x.dtype) if has_bias else (None, None)
    full = _at_least_1d(shape)
    ss = _at_least_1d(_broadcast_strides(keep, shape))
    ws = _at_least_1d(ws)
    dev, flat_dy, flat_x = call.device, dy.reshape(-1), x.reshape(-1)
    groups = math.prod(keep)
    kb = dev.scratch("normalize_kb", (groups,), np.float64, call.stream)
    kc = dev.scratch("normalize_kc", (groups,), np.float64, call.stream)
    dev.strided_sums(flat_dy, flat_x, _grouping(full, axes), ss, ws, mean, rstd, w, kb, kc, True, False,
                     call.stream)
    dev.broadcast_input_grad(flat_dy, flat_x, dx, full, ss, ws, mean, rstd, w, kb, kc, call.stream)
    # the parameter gradients: sums over the axes each parameter was broadcast along
    owners = [(w_shape, gw, None), (b_shape, None, gb)]
    if w is not None and has_bias and _padded(w_shape, shape) == _padded(b_shape, shape):
        owners = [(w_shape, gw, gb)]
    for own, out1, out2 in owners:
        if own is None:
            continue
        padded = _padded(own, shape)
        reduced = tuple(i for i, (p, s) in enumerate(zip(padded, shape)) if p == 1 and s != 1)
        dev.strided_sums(flat_dy, flat_x, _grouping(full, reduced), ss, ws, mean, rstd, None, out1, out2, False, True,
                         call.stream)
    return F.Grads(user, gw_u, gb_u)


def _padded(own, shape):
    return (1,) * (len(shape) - len(own)) + tuple(own)


def weight_standardization(weight, eps=1e-5):
    call, w, rows, length, eps = _weight_rows(weight, eps)
    user, y = call.empty(w.shape, w.dtype)
    mean = call.device.scratch("ws_mean", (rows,), np.float64, call.stream)
    rstd = call.device.scratch("ws_rstd", (rows,), np.float64, call.stream)
    call.device.row_forward(w.reshape(-1), y, rows, length, None, None, eps, True, mean, rstd, call.stream)
    return user


def weight_standardization_backward(grad_output, weight, eps=1e-5):
    call, w, rows, length, eps = _weight_rows(weight, eps)
    dy = call.full("grad_output", grad_output, like=w)
    user, dw = call.empty(w.shape, w.dtype)
    mean = call.device.scratch("ws_mean", (rows,), np.float64, call.stream)
    rstd = call.device.scratch("ws_rstd", (rows,), np.float64, call.stream)
    flat = w.reshape(-1)
    call.device.row_forward(flat, None, rows, length, None, None, eps, True, mean, rstd, call.stream)
    call.device.row_backward(dy.reshape(-1), flat, dw, rows, length, mean, rstd, None, True, None, None, call.stream)
    return user


def _weight_rows(weight, eps):
    """Weight standardization is a layer norm of each output filter (row)."""
    call = _Call("weight", weight)
    w = call.full("weight", weight)
    if w.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions (output channels first), got shape {tuple(w.shape)}")
    length = math.prod(w.shape[1:])
    if length == 0:
        raise ValueError(f"weight must have no trailing axis of length 0 (an output channel without values), got "
                         f"shape {tuple(w.shape)}")
    return call, w, int(w.shape[0]), int(length), chk.eps_value("eps", eps)


# -- switchable norm ------------------------------------------------------------------------------

def _logits(call, name, value, terms):
    d = call.view(name, value)
    if d.dtype.kind != "f":
        raise TypeError(f"{name} must have a float dtype, got dtype {d.dtype}")
    if tuple(d.shape) != (terms,):
        which = "instance, layer, batch" if terms == 3 else "instance, layer (using_bn=False)"
        raise ValueError(f"{name} must be {terms} logits ({which}), got shape {tuple(d.shape)}")
    return d


def switchable_norm(input, mean_weight, var_weight, running_mean=None, running_var=None, weight=None, bias=None,
                    training=False, momentum=0.1, eps=1e-5, *, channel_axis=1, using_bn=True, return_stats=False,
                    out=None, num_batches_tracked=None, running_var_unbiased=True):
    call = _Call("input", input)
    x = call.full("input", input)
    if x.ndim < 2:
        raise ValueError(f"input must have at least 2 dimensions, got shape {tuple(x.shape)}")
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    terms = 3 if using_bn else 2
    unbiased = chk.flag("running_var_unbiased", running_var_unbiased)
    mean_logits = _logits(call, "mean_weight", mean_weight, terms)
    var_logits = _logits(call, "var_weight", var_weight, terms)
    w, b = call.small("weight", weight, (c,)), call.small("bias", bias, (c,))
    eps = chk.eps_value("eps", eps)
    momentum = chk.momentum_value(momentum)
    user, y = call.out(out, x)
    running = eval_running = None
    if using_bn:
        rm = call.small("running_mean", running_mean, (c,), writable=True)
        rv = call.small("running_var", running_var, (c,), writable=True)
        if training:
            if (rm is None) != (rv is None):
                raise ValueError("running_mean and running_var must both be given or both be None")
            if x.size // c < 2:
                raise ValueError(f"Expected more than 1 value per channel when training, got input of shape "
                                 f"{tuple(x.shape)}")
            if rm is not None:
                host_nbt, dev_nbt = _host_counter(num_batches_tracked, momentum is None)
                m = -1.0 if momentum is None else momentum
                if host_nbt is not None:
                    host_nbt += 1
                    if momentum is None:
                        m = 1.0 / float(host_nbt.reshape(-1)[0])
                running = (rm, rv, dev_nbt, m, _arguments._bessel(x.size // c, unbiased))
        elif rm is None or rv is None:
            raise ValueError("running_mean and running_var are required when training=False, got None")
        else:
            eval_running = (rm, rv)
    if x.size == 0:
        raise ValueError("switchable_norm of an empty batch is not supported on CUDA")
    means_u, means = call.empty((terms, n, c), np.float64)
    variances_u, variances = call.empty((terms, n, c), np.float64)
    mean_u, mean = call.empty((n, c), np.float64)
    rstd_u, rstd = call.empty((n, c), np.float64)
    call.device.switchable_forward(x.reshape(-1), y, _grid_geometry(x.shape, ch, False, c), mean_logits,
                                   var_logits, terms, w, b, eps, means.reshape(terms, n * c),
                                   variances.reshape(terms, n * c), mean, rstd, call.stream, running, eval_running)
    stats = F.SwitchableStats(mean_u, rstd_u, bool(training), b is not None, means_u, variances_u)
    return (user, stats) if return_stats else user


def switchable_norm_backward(grad_output, input, stats, mean_weight, var_weight, weight=None, *, channel_axis=1):
    call = _Call("input", input)
    x = call.full("input", input)
    dy = call.full("grad_output", grad_output, like=x)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    if not all(hasattr(stats, f) for f in ("mean", "rstd", "means", "variances")):
        raise TypeError(f"stats must be the SwitchableStats returned by switchable_norm with return_stats=True, "
                        f"got {chk._describe(stats)}")
    terms = int(stats.means.shape[0])
    if terms not in (2, 3):
        raise ValueError(f"stats.means must have 2 or 3 terms, got shape {tuple(stats.means.shape)}")
    mean, rstd, _, has_bias = _stats_views(call, stats, (n, c))
    batch_stats = bool(stats.batch_stats)
    terms_views = []
    for name, value in (("stats.means", stats.means), ("stats.variances", stats.variances)):
        d = call.view(name, value)
        if tuple(d.shape) != (terms, n, c) or d.dtype != np.float64 or not d.is_c_contiguous():
            raise ValueError(f"{name} must be a contiguous float64 device array of shape {(terms, n, c)}, got shape "
                             f"{tuple(d.shape)} and dtype {d.dtype}")
        terms_views.append(d.reshape(terms, n * c))
    mean_logits = _logits(call, "mean_weight", mean_weight, terms)
    var_logits = _logits(call, "var_weight", var_weight, terms)
    w = call.small("weight", weight, (c,))
    if x.size == 0:
        raise ValueError("the CUDA backward of an empty batch is not supported")
    user, dx = call.empty(x.shape, x.dtype)
    gw_u, gw = call.empty((c,), chk.compute_dtype(x.dtype)) if w is not None else (None, None)
    gb_u, gb = call.empty((c,), chk.compute_dtype(x.dtype)) if has_bias else (None, None)
    gm_u, gm = call.empty((terms,), np.float64)
    gv_u, gv = call.empty((terms,), np.float64)
    call.device.switchable_backward(dy.reshape(-1), x.reshape(-1), dx, _grid_geometry(x.shape, ch, False, c), mean,
                                    rstd, *terms_views, mean_logits, var_logits, terms, w, batch_stats, gw, gb, gm, gv,
                                    call.stream)
    return F.SwitchableGrads(user, gw_u, gb_u, gm_u, gv_u)


_PORTED = {f.__name__: f for f in (batch_norm, instance_norm, group_norm, batch_norm_backward, instance_norm_backward,
                                  group_norm_backward, layer_norm, rms_norm, layer_norm_backward, rms_norm_backward,
                                  moments, welford, batch_normalization, normalize, normalize_backward,
                                  weight_standardization, weight_standardization_backward, switchable_norm,
                                  switchable_norm_backward)}



def _served(name):
    """The CUDA implementation of the public function ``name``, or None where CUDA does not run it
    (the dispatcher then raises NotImplementedError naming it)."""
    return _PORTED.get(name)
