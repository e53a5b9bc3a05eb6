"""The op registry: one entry per normalization, and everything the package's tools know of it.

``bench``, the asv suite, the tests and the accuracy table iterate over ``OPS``; none of them
names an op.  An entry says how to call the op's forward and backward in one uniform way, for
numbanorm and for ``numbanorm.reference`` alike (the reference mirrors the public API name for
name, so one call serves both), how to call its PyTorch peer, and which layouts, dtypes and
backends it takes.  Adding a normalization means: its functions, its reference, its entry here.
"""

from typing import Callable, NamedTuple, Optional

import numpy as np

from ._functional import Grads, NormStats, SwitchableStats
from ._normalize import NormalizeStats

GROUPS = 32  # group norm's groups where the caller does not choose (bench, asv)


class Op(NamedTuple):
    """One normalization.

    ``forward(fn, x, weight, bias, channel_axis, groups, **options)`` calls the public forward
    ``fn`` (or its reference) with the options (``return_stats=``, ``out=``) and returns what it
    returns: ``(y, stats)`` with ``return_stats=True`` (`run_forward`'s default; stats None for an
    op that keeps none), else ``y``.  ``backward(fn, grad_output, x, stats, weight, channel_axis,
    groups)`` calls the backward ``fn`` and returns its gradients, input first.
    ``torch(F, X, W, B, groups)`` is the PyTorch peer on NCHW (or row) tensors, None if there is
    none.  ``kind`` says what the input looks like: "grid" ``(N, C, *spatial)`` with a channel
    axis (layouts "nchw", "nhwc"), "rows" normalized over the trailing axis (layout "rows"),
    "weight" a weight tensor ``(out, *rest)`` normalized over ``rest`` (layout "weight")."""

    name: str
    kind: str
    forward: Callable
    backward: Callable
    torch: Optional[Callable]
    backends: tuple = ("cpu", "cuda", "dask")
    dtypes: tuple = ("float16", "float32", "float64")
    affine: bool = True  # takes weight and bias
    stats: Optional[type] = NormStats

    @property
    def layouts(self):
        return {"grid": ("nchw", "nhwc"), "rows": ("rows",), "weight": ("weight",)}[self.kind]

    def functions(self, api):
        """The (forward, backward) functions of ``api``: the ``numbanorm`` or ``reference`` module."""
        return getattr(api, self.name), getattr(api, self.name + "_backward")

    def run_forward(self, api, x, weight=None, bias=None, channel_axis=1, groups=GROUPS, return_stats=True,
                    **options):
        return self.forward(self.functions(api)[0], x, weight, bias, channel_axis, groups, return_stats=return_stats,
                            **options)

    def run_backward(self, api, grad_output, x, stats, weight=None, channel_axis=1, groups=GROUPS):
        return self.backward(self.functions(api)[1], grad_output, x, stats, weight, channel_axis, groups)

    def param_shape(self, shape, layout):
        """The shape of the op's weight and bias for an input of ``shape``, None without them."""
        if not self.affine:
            return None
        if self.kind == "rows":
            return tuple(shape[-1:])
        return (shape[1 if layout == "nchw" else -1],)


def _grid_backward(fn, dy, x, stats, w, ca, groups):
    return fn(dy, x, stats, w, channel_axis=ca)


def _logits(x, sign):
    """Switchable norm's mixture logits for the registry's calls, where ``x`` lives (all arrays
    of a call live in one place)."""
    z = sign * np.array([0.5, -0.25, 0.25])
    family = type(x).__module__.partition(".")[0]
    if family in ("numpy", "dask"):
        return z
    if family == "torch":
        import torch

        return torch.as_tensor(z, device=x.device)
    if family == "cupy":
        import cupy

        return cupy.asarray(z)
    from numba import cuda

    return cuda.to_device(z)


def _over_batch_and_height(x, ca, weight):
    """`normalize`'s axes in the registry: the batch and the first spatial axis (statistics per
    channel and width: an axis set no named norm covers), and the per-channel weight shaped to
    broadcast in the layout."""
    height = () if x.ndim < 3 else (2,) if ca == 1 else (1,)
    if ca == 1:
        return (0, *height), None if weight is None else weight.reshape(-1, *([1] * (x.ndim - 2)))
    return (0, *height), weight


def _torch_normalize(F, X, W, B, groups):
    """`normalize`'s registry call in PyTorch ops (NCHW): statistics over (0, 2)."""
    import torch

    var, mean = torch.var_mean(X, dim=(0, 2) if X.dim() > 2 else (0,), keepdim=True, correction=0)
    y = (X - mean) * torch.rsqrt(var + 1e-5)
    shape = (-1,) + (1,) * (X.dim() - 2)
    return y if W is None else y * W.view(shape) + B.view(shape)


def _normalize_forward(fn, x, w, b, ca, groups, **kw):
    axes, weight = _over_batch_and_height(x, ca, w)
    return fn(x, axes, weight, _over_batch_and_height(x, ca, b)[1], **kw)


def _normalize_backward(fn, dy, x, stats, w, ca, groups):
    axes, weight = _over_batch_and_height(x, ca, w)
    grads = fn(dy, x, stats, axes, weight)
    return grads._replace(weight=None if w is None else grads.weight.reshape(np.shape(w)),
                          bias=None if grads.bias is None else grads.bias.reshape(-1))


OPS = {op.name: op for op in (
    Op("batch_norm", "grid",
       lambda fn, x, w, b, ca, groups, **kw: fn(x, None, None, w, b, training=True, channel_axis=ca, **kw),
       _grid_backward,
       lambda F, X, W, B, groups: F.batch_norm(X, None, None, W, B, training=True)),
    Op("instance_norm", "grid",
       lambda fn, x, w, b, ca, groups, **kw: fn(x, None, None, w, b, channel_axis=ca, **kw),
       _grid_backward,
       lambda F, X, W, B, groups: F.instance_norm(X, None, None, W, B)),
    Op("group_norm", "grid",
       lambda fn, x, w, b, ca, groups, **kw: fn(x, groups, w, b, channel_axis=ca, **kw),
       lambda fn, dy, x, stats, w, ca, groups: fn(dy, x, stats, groups, w, channel_axis=ca),
       lambda F, X, W, B, groups: F.group_norm(X, groups, W, B)),
    Op("switchable_norm", "grid",
       lambda fn, x, w, b, ca, groups, **kw: fn(x, _logits(x, 1), _logits(x, -1), None, None, w, b, training=True,
                                                channel_axis=ca, **kw),
       lambda fn, dy, x, stats, w, ca, groups: fn(dy, x, stats, _logits(x, 1), _logits(x, -1), w, channel_axis=ca),
       None, backends=("cpu", "cuda"), stats=SwitchableStats),
    Op("layer_norm", "rows",
       lambda fn, x, w, b, ca, groups, **kw: fn(x, x.shape[-1:], w, b, **kw),
       lambda fn, dy, x, stats, w, ca, groups: fn(dy, x, stats, x.shape[-1:], w),
       lambda F, X, W, B, groups: F.layer_norm(X, X.shape[-1:], W, B)),
    Op("rms_norm", "rows",
       lambda fn, x, w, b, ca, groups, **kw: fn(x, x.shape[-1:], w, **kw),
       lambda fn, dy, x, stats, w, ca, groups: fn(dy, x, stats, x.shape[-1:], w),
       lambda F, X, W, B, groups: F.rms_norm(X, X.shape[-1:], W)),
    Op("normalize", "grid", _normalize_forward, _normalize_backward, _torch_normalize, stats=NormalizeStats),
    Op("weight_standardization", "weight",
       lambda fn, x, w, b, ca, groups, return_stats=False, **kw: (fn(x, **kw), None) if return_stats
       else fn(x, **kw),
       lambda fn, dy, x, stats, w, ca, groups: Grads(fn(dy, x)),
       lambda F, X, W, B, groups: F.layer_norm(X, X.shape[1:]),
       backends=("cpu", "cuda"), affine=False, stats=None),
)}

STATS_TYPES = tuple({op.stats for op in OPS.values() if op.stats is not None})


def of_kind(*kinds):
    return [op for op in OPS.values() if op.kind in kinds]
