"""Batch, instance and group norm: the public functions (checks, then the CPU device's grid
pipelines)."""

import math
from typing import Literal, Optional, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _checks as chk
from . import _cpu_pipelines as cpu
from . import _prepared, _small
from ._arguments import (
    _backward_inputs, _batch_counter, _bessel, dispatch, _grads, _grid_affine_params, _input, _maybe_stats,
    _num_groups, _running_pair, _stats_arg, _update_running,
)
from ._types import Array, Grads, InPlace, NormStats


# the public functions' lanes (see ``dispatch``): each makes its public function, of its exact
# signature, around the routed one; the lane takes batch statistics only, nothing to track,
# nothing to write but the output

def _batch_statistics(route, over_batch, input, running_mean, running_var, weight, bias, from_input, momentum, eps,
                      channel_axis, return_stats, out, num_batches_tracked, running_var_unbiased):
    """Batch norm (``over_batch``) or instance norm, their arguments in their order: in the lane
    when it normalizes with the input's statistics (``training``, ``use_input_stats``) and has no
    running statistics, counter or ``out`` and options its checks pass as they are, else routed."""
    if (from_input is True and running_mean is None and running_var is None and out is None
            and num_batches_tracked is None and type(running_var_unbiased) is bool
            and (momentum is None or type(momentum) is float and 0.0 <= momentum <= 1.0)
            and (y := _small.grid_norm(input, None, weight, bias, eps, channel_axis, over_batch,
                                       return_stats)) is not None):
        return y
    return route(input, running_mean, running_var, weight, bias, from_input, momentum, eps, channel_axis=channel_axis,
                 return_stats=return_stats, out=out, num_batches_tracked=num_batches_tracked,
                 running_var_unbiased=running_var_unbiased)


def _batch_norm_lane(route):
    def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
                   *, channel_axis=1, return_stats=False, out=None, num_batches_tracked=None,
                   running_var_unbiased=True):
        return _batch_statistics(route, True, input, running_mean, running_var, weight, bias, training, momentum, eps,
                                 channel_axis, return_stats, out, num_batches_tracked, running_var_unbiased)

    return batch_norm


def _instance_norm_lane(route):
    def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                      momentum=0.1, eps=1e-5, *, channel_axis=1, return_stats=False, out=None,
                      num_batches_tracked=None, running_var_unbiased=True):
        return _batch_statistics(route, False, input, running_mean, running_var, weight, bias, use_input_stats,
                                 momentum, eps, channel_axis, return_stats, out, num_batches_tracked,
                                 running_var_unbiased)

    return instance_norm


def _group_norm_lane(route):
    def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, return_stats=False,
                   out=None):
        if out is None and (y := _small.grid_norm(input, num_groups, weight, bias, eps, channel_axis, False,
                                                  return_stats)) is not None:
            return y
        return route(input, num_groups, weight, bias, eps, channel_axis=channel_axis, return_stats=return_stats,
                     out=out)

    return group_norm


def _batch_norm_backward_lane(route):
    def batch_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
        if (grads := _small.grid_grads(grad_output, input, stats, None, weight, channel_axis, True)) is not None:
            return grads
        return route(grad_output, input, stats, weight, channel_axis=channel_axis)

    return batch_norm_backward


def _instance_norm_backward_lane(route):
    def instance_norm_backward(grad_output, input, stats, weight=None, *, channel_axis=1):
        if (grads := _small.grid_grads(grad_output, input, stats, None, weight, channel_axis, False)) is not None:
            return grads
        return route(grad_output, input, stats, weight, channel_axis=channel_axis)

    return instance_norm_backward


def _group_norm_backward_lane(route):
    def group_norm_backward(grad_output, input, stats, num_groups, weight=None, *, channel_axis=1):
        if (grads := _small.grid_grads(grad_output, input, stats, num_groups, weight, channel_axis,
                                       False)) is not None:
            return grads
        return route(grad_output, input, stats, num_groups, weight, channel_axis=channel_axis)

    return group_norm_backward


@overload
def batch_norm(input: ArrayLike, running_mean: Optional[InPlace], running_var: Optional[InPlace],
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
               return_stats: Literal[False] = ..., out: Optional[InPlace] = ...,
               num_batches_tracked: Optional[Array] = ...,
               running_var_unbiased: bool = ...) -> Array: ...


@overload
def batch_norm(input: ArrayLike, running_mean: Optional[InPlace], running_var: Optional[InPlace],
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
               return_stats: Literal[True], out: Optional[InPlace] = ...,
               num_batches_tracked: Optional[Array] = ...,
               running_var_unbiased: bool = ...) -> tuple[Array, NormStats]: ...


@overload
def batch_norm(input: ArrayLike, running_mean: Optional[InPlace], running_var: Optional[InPlace],
               weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
               momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
               return_stats: bool = ..., out: Optional[InPlace] = ...,
               num_batches_tracked: Optional[Array] = ...,
               running_var_unbiased: bool = ...) -> Union[Array, tuple[Array, NormStats]]: ...


@dispatch(lane=_batch_norm_lane)
def batch_norm(input: ArrayLike, running_mean: Optional[InPlace], running_var: Optional[InPlace],
               weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, training: bool = False,
               momentum: Optional[float] = 0.1, eps: float = 1e-5, *, channel_axis: int = 1,
               return_stats: bool = False, out: Optional[InPlace] = None,
               num_batches_tracked: Optional[Array] = None,
               running_var_unbiased: bool = True) -> Union[Array, tuple[Array, NormStats]]:
    """Batch normalization (``torch.nn.functional.batch_norm``), statistics over every axis but
    ``channel_axis``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, with the batch's mean and
    biased variance (``training=True``) or the running statistics (``training=False``).

    Parameters
    ----------
    input : array_like, float16/32/64, at least 2-D
        Laid out ``(N, C, *spatial)`` (``channel_axis=1``) or ``(N, *spatial, C)``
        (``channel_axis=-1``); any strides.  A Dask or CUDA array runs on that backend.
    running_mean, running_var : ndarray (C,) or None
        Training: updated in place as ``(1 - momentum)*old + momentum*batch`` (running_var with
        the unbiased batch variance) when given; writable, contiguous 1-D float arrays, updated
        in their own dtype.  Eval: used for normalization (required).
    weight, bias : array_like (C,) or None
        The affine parameters; cast to the compute dtype.  None: no scale, no shift.
    training : bool
        Normalize with the batch statistics (and update the running ones) rather than with the
        running statistics.
    momentum : float in [0, 1] or None
        The weight of the new batch value in the running update (PyTorch's direction).  None:
        cumulative average over the batches counted in ``num_batches_tracked``.
    eps : float >= 0
        Added to the variance inside the square root.
    channel_axis : int, keyword-only
        The channel axis: any axis but the batch axis 0, negative allowed.
    return_stats : bool, keyword-only
        Also return a `NormStats` for `batch_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).
    num_batches_tracked : integer ndarray of one element, optional, keyword-only
        Incremented in place by each training call that updates running statistics (as the
        PyTorch module's buffer); required when ``momentum`` is None.
    running_var_unbiased : bool, keyword-only
        True (PyTorch): ``running_var`` is updated with the unbiased (n - 1) batch variance.
        False: with the biased one that normalizes, as Keras, Flax and ONNX store it (with
        ``momentum = 1 - their momentum``).

    Returns
    -------
    y : ndarray
        The normalized input, with its shape and dtype (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: per-channel ``mean`` and ``rstd``
        of shape ``(C,)`` in float64.

    Raises
    ------
    TypeError
        If an array argument is not of a float16/32/64 dtype (integer, bool, complex, object,
        None or a string where an array is needed); if a running statistic is not a NumPy
        array; if ``out`` is not an array or has another dtype than the input; if ``eps`` or
        ``momentum`` is not a real number (a bool is refused), ``channel_axis`` is not an
        integer, or ``num_batches_tracked`` is not an integer NumPy array of one element; if
        the arrays of the call live in different places (a NumPy array among CUDA arrays).
    ValueError
        If the input has fewer than 2 dimensions; ``channel_axis`` is the batch axis or out of
        range; ``weight``, ``bias`` or a running statistic does not have shape ``(C,)``; a
        running statistic is read-only or not contiguous; only one of ``running_mean`` and
        ``running_var`` is given; they are missing with ``training=False``; ``eps`` is negative
        or not finite; ``momentum`` is outside [0, 1]; ``momentum`` is None with running
        statistics but no ``num_batches_tracked``; training sees a single value per channel;
        ``out`` has another shape or is read-only; ``num_batches_tracked`` is read-only.
        Nothing is written when a check fails.

    See Also
    --------
    batch_norm_backward, BatchNorm, instance_norm, moments

    Notes
    -----
    Conventions beside other frameworks:

    - **momentum** is PyTorch's: ``running = (1 - momentum)*running + momentum*batch``,
      default 0.1.  Keras and Flax use a decay ``m`` (default 0.99) on the *old* value: pass
      ``momentum = 1 - m``.
    - **variance**: normalization uses the biased batch variance (divided by n), the running
      variance stores the unbiased one (n - 1), as PyTorch.  Keras and Flax store the biased
      one.
    - **eps** is inside the square root, ``(x - mean) / sqrt(var + eps)``, as everywhere;
      defaults differ: 1e-5 here and in PyTorch, 1e-3 in Keras, 1e-6 in Flax.
    - **channel axis**: 1 as PyTorch (NCHW); ``channel_axis=-1`` for the channels-last layout
      of Keras and Flax.

    Statistics are computed in one pass per chunk in the input precision (float32 at least)
    and merged in float64 with Chan's formula; ``stats`` are float64.  float16 input is computed
    in float32 and returned as float16.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    >>> running_mean, running_var = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y, stats = nn.batch_norm(x, running_mean, running_var, training=True, return_stats=True)
    >>> y.shape, y.dtype, stats.mean.shape
    ((8, 3, 4, 4), dtype('float32'), (3,))
    >>> bool(np.allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-6))
    True
    >>> bool(np.allclose(running_mean, 0.1 * x.mean(axis=(0, 2, 3)), atol=1e-6))
    True

    Channels-last data give the same result with ``channel_axis=-1``:

    >>> x_nhwc = np.moveaxis(x, 1, -1)
    >>> y_nhwc = nn.batch_norm(x_nhwc, None, None, training=True, channel_axis=-1)
    >>> bool(np.allclose(np.moveaxis(y_nhwc, -1, 1), y, atol=1e-6))
    True
    """
    return _tracked_grid_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                              channel_axis, return_stats, out, num_batches_tracked, over_batch=True,
                              running_var_unbiased=running_var_unbiased)


@overload
def instance_norm(input: ArrayLike, running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                  weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., use_input_stats: bool = ...,
                  momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                  return_stats: Literal[False] = ..., out: Optional[InPlace] = ...,
                  num_batches_tracked: Optional[Array] = ...,
                  running_var_unbiased: bool = ...) -> Array: ...


@overload
def instance_norm(input: ArrayLike, running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                  weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., use_input_stats: bool = ...,
                  momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                  return_stats: Literal[True], out: Optional[InPlace] = ...,
                  num_batches_tracked: Optional[Array] = ...,
                  running_var_unbiased: bool = ...) -> tuple[Array, NormStats]: ...


@overload
def instance_norm(input: ArrayLike, running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                  weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., use_input_stats: bool = ...,
                  momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                  return_stats: bool = ..., out: Optional[InPlace] = ...,
                  num_batches_tracked: Optional[Array] = ...,
                  running_var_unbiased: bool = ...) -> Union[Array, tuple[Array, NormStats]]: ...


@dispatch(lane=_instance_norm_lane)
def instance_norm(input: ArrayLike, running_mean: Optional[InPlace] = None, running_var: Optional[InPlace] = None,
                  weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, use_input_stats: bool = True,
                  momentum: Optional[float] = 0.1, eps: float = 1e-5, *, channel_axis: int = 1,
                  return_stats: bool = False, out: Optional[InPlace] = None,
                  num_batches_tracked: Optional[Array] = None,
                  running_var_unbiased: bool = True) -> Union[Array, tuple[Array, NormStats]]:
    """Instance normalization (``torch.nn.functional.instance_norm``): statistics per sample and
    channel over the spatial axes.

    With ``use_input_stats`` and running statistics given, these are updated like PyTorch's: the
    batch value is the mean over samples of the per-instance mean and unbiased variance.  With
    ``use_input_stats=False`` the running statistics normalize every instance.  Other arguments
    as `batch_norm`.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 2-D
        ``(N, C, *spatial)`` or, with ``channel_axis=-1``, ``(N, *spatial, C)``; any strides.
    running_mean, running_var : ndarray (C,) or None
        Updated in place when given and ``use_input_stats`` (see above); required with
        ``use_input_stats=False``.
    weight, bias : array_like (C,) or None
        Per-channel affine parameters.
    use_input_stats : bool
        Normalize each instance with its own statistics (True, the default) or with the
        running statistics.
    momentum : float in [0, 1] or None
        As `batch_norm` (PyTorch's direction; None is the cumulative average).
    eps : float >= 0
        Added to the variance inside the square root.
    channel_axis : int, keyword-only
        Any axis but the batch axis 0.
    return_stats : bool, keyword-only
        Also return a `NormStats` for `instance_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).
    num_batches_tracked : integer ndarray of one element, optional, keyword-only
        Incremented in place by each call that updates running statistics; required when
        ``momentum`` is None and running statistics are given.

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: ``mean`` and ``rstd`` of shape
        ``(N, C)``.

    Raises
    ------
    TypeError
        As `batch_norm`: a non-float array, a running statistic that is not a NumPy array, a
        wrong ``out``, ``eps``, ``momentum``, ``channel_axis`` or ``num_batches_tracked``
        type.
    ValueError
        As `batch_norm`; with ``use_input_stats`` an input with a single spatial element per
        instance, and with ``use_input_stats=False`` missing running statistics.

    See Also
    --------
    instance_norm_backward, InstanceNorm, group_norm

    Notes
    -----
    The normalizing variance is biased (divided by the number of spatial elements), eps is
    inside the square root, and the running update follows PyTorch's momentum direction, as in
    `batch_norm`.  An empty batch (N = 0) returns an empty result and tracks nothing.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    >>> y = nn.instance_norm(x)
    >>> bool(np.allclose(y.mean(axis=(2, 3)), 0)), bool(np.allclose(y.var(axis=(2, 3)), 1, atol=1e-3))
    (True, True)

    With running statistics, updated from the per-instance values:

    >>> rm, rv = np.zeros(3), np.ones(3)
    >>> _ = nn.instance_norm(x, rm, rv)
    >>> bool(np.allclose(rm, 0.1 * x.mean(axis=(2, 3)).mean(axis=0)))
    True
    """
    return _tracked_grid_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                              channel_axis, return_stats, out, num_batches_tracked, over_batch=False,
                              running_var_unbiased=running_var_unbiased)


def _tracked_grid_norm(input, running_mean, running_var, weight, bias, batch_stats, momentum, eps,
                       channel_axis, return_stats, out, num_batches_tracked, over_batch,
                       running_var_unbiased=True):
    """Batch norm (``over_batch``) or instance norm: batch statistics, which update the running
    ones when given, or the running statistics themselves."""
    key = None
    if (batch_stats is True and running_mean is None and running_var is None and num_batches_tracked is None
            and (momentum is None or type(momentum) is float) and type(running_var_unbiased) is bool):
        key = _grid_key("batch" if over_batch else "instance", input, weight, bias, eps, channel_axis, out,
                        momentum, running_var_unbiased)
    if (result := _prepared.served(key, input, weight, bias, return_stats)) is not None:
        return result  # batch statistics, nothing to track
    x, xk = _input("input", input, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    given = weight, bias
    weight, bias = _grid_affine_params(weight, bias, c, xk.dtype)
    eps = chk.eps_value("eps", eps)
    momentum = chk.momentum_value(momentum)
    unbiased = chk.flag("running_var_unbiased", running_var_unbiased)
    out = chk.out_array(out, x.shape, x.dtype)
    grouping = cpu.Grouping(c, over_batch)
    if n == 0 and not over_batch:  # no instances: nothing to normalize, no statistics to track
        y = np.empty_like(x) if out is None else out
        return _maybe_stats(y, NormStats(np.empty((0, c)), np.empty((0, c)), bool(batch_stats), bias is not None,
                                         eps), return_stats)
    if batch_stats:
        rm, rv = _running_pair(running_mean, running_var, c)
        nbt = _batch_counter(num_batches_tracked, momentum is None and rm is not None)
        if over_batch and x.size // c < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")
        if not over_batch and n and math.prod(x.shape) // (n * c) < 2:
            raise ValueError(f"Expected more than 1 spatial element when training, got input of shape {x.shape}")
        _prepared.offer(key, (input, *given), (xk, weight, bias), cpu.prepare_grid_forward, xk, ch, grouping, eps)
        y, count, mean, var, rstd = cpu.grid_forward(x, xk, ch, grouping, weight, bias, eps, out)
        if rm is not None:  # instance norm: the mean over samples of the per-instance values
            if nbt is not None:
                nbt += 1
            _update_running(rm, mean.mean(axis=0), momentum, nbt)
            _update_running(rv, (var * _bessel(count, unbiased)).mean(axis=0), momentum, nbt)
    else:
        if running_mean is None or running_var is None:
            flag = "training=False" if over_batch else "use_input_stats=False"
            raise ValueError(f"running_mean and running_var are required when {flag}, got None")
        shape = (1 if over_batch else n, c)
        mean = np.broadcast_to(chk.parameter("running_mean", running_mean, (c,), np.float64), shape)
        var = np.broadcast_to(chk.parameter("running_var", running_var, (c,), np.float64), shape)
        y, mean, rstd = cpu.grid_apply(x, xk, ch, grouping, mean, var, weight, bias, eps, out,
                                      cpu.grid_plan(xk, ch, over_batch))
    if not return_stats:
        return y
    mean, rstd = (mean[0], rstd[0]) if over_batch else (np.array(mean), np.array(rstd))
    return y, NormStats(mean, rstd, bool(batch_stats), bias is not None, eps)


@overload
def group_norm(input: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
               eps: float = ..., *, channel_axis: int = ..., return_stats: Literal[False] = ...,
               out: Optional[InPlace] = ...) -> Array: ...


@overload
def group_norm(input: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
               eps: float = ..., *, channel_axis: int = ..., return_stats: Literal[True],
               out: Optional[InPlace] = ...) -> tuple[Array, NormStats]: ...


@overload
def group_norm(input: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
               eps: float = ..., *, channel_axis: int = ..., return_stats: bool = ...,
               out: Optional[InPlace] = ...) -> Union[Array, tuple[Array, NormStats]]: ...


@dispatch(lane=_group_norm_lane)
def group_norm(input: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, channel_axis: int = 1,
               return_stats: bool = False, out: Optional[InPlace] = None) -> Union[Array, tuple[Array, NormStats]]:
    """Group normalization (``torch.nn.functional.group_norm``): statistics per sample over each
    of ``num_groups`` groups of consecutive channels and the spatial axes.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 2-D
        ``(N, C, *spatial)`` or, with ``channel_axis=-1``, ``(N, *spatial, C)``; any strides.
    num_groups : int
        A positive divisor of the number of channels C.  ``num_groups=C`` is instance norm
        (without running statistics); ``num_groups=1`` normalizes each sample over C and the
        spatial axes.
    weight, bias : array_like (C,) or None
        Per-channel affine parameters.
    eps : float >= 0
        Added to the variance inside the square root.
    channel_axis : int, keyword-only
        Any axis but the batch axis 0.
    return_stats : bool, keyword-only
        Also return a `NormStats` for `group_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: ``mean`` and ``rstd`` of shape
        ``(N, num_groups)``.

    Raises
    ------
    TypeError
        If an array argument is not of a float16/32/64 dtype; ``num_groups`` or
        ``channel_axis`` is not an integer; ``eps`` is not a real number; ``out`` is not an
        array or has another dtype than the input.
    ValueError
        If the input has fewer than 2 dimensions; ``num_groups`` is not a positive divisor of
        C; ``channel_axis`` is the batch axis or out of range; ``weight`` or ``bias`` does not
        have shape ``(C,)``; ``eps`` is negative or not finite; ``out`` has another shape or
        is read-only.

    See Also
    --------
    group_norm_backward, GroupNorm, instance_norm, layer_norm

    Notes
    -----
    Biased variance, eps inside the square root (default 1e-5 as PyTorch; Flax's GroupNorm
    uses 1e-6), channel axis 1 as PyTorch or -1 as Keras' ``GroupNormalization`` and Flax.
    Groups are consecutive channels, as in all of them.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((2, 6, 4, 4))
    >>> y, stats = nn.group_norm(x, 3, return_stats=True)
    >>> y.shape, stats.mean.shape
    ((2, 6, 4, 4), (2, 3))
    >>> groups = y.reshape(2, 3, -1)
    >>> bool(np.allclose(groups.mean(axis=-1), 0)), bool(np.allclose(groups.var(axis=-1), 1, atol=1e-3))
    (True, True)
    """
    key = None if type(num_groups) is not int else _grid_key("group", input, weight, bias, eps, channel_axis, out,
                                                             num_groups)
    if (result := _prepared.served(key, input, weight, bias, return_stats)) is not None:
        return result
    x, xk = _input("input", input, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    groups = _num_groups(num_groups, c)
    given = weight, bias
    weight, bias = _grid_affine_params(weight, bias, c, xk.dtype)
    eps = chk.eps_value("eps", eps)
    out = chk.out_array(out, x.shape, x.dtype)
    grouping = cpu.Grouping(groups, False)
    _prepared.offer(key, (input, *given), (xk, weight, bias), cpu.prepare_grid_forward, xk, ch, grouping, eps)
    y, _, mean, _, rstd = cpu.grid_forward(x, xk, ch, grouping, weight, bias, eps, out)
    return (y, NormStats(mean, rstd, True, bias is not None, eps)) if return_stats else y


def _grid_key(family, input, weight, bias, eps, channel_axis, out, *options):
    """The call's signature for a prepared call (see ``_prepared``), or None where none is kept:
    ``out`` given, or an argument of another type than the usual (the checks decide those)."""
    if type(input) is not np.ndarray or out is not None or type(eps) is not float or type(channel_axis) is not int:
        return None
    return (family, _prepared.array_key(input), _prepared.array_key(weight), _prepared.array_key(bias),
            eps, channel_axis, *options)


@dispatch(lane=_batch_norm_backward_lane)
def batch_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats,
                        weight: Optional[ArrayLike] = None, *, channel_axis: int = 1) -> Grads:
    """Gradients of `batch_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    Training statistics (``stats.batch_stats``) depend on the input; running statistics are
    constants.

    Parameters
    ----------
    grad_output : array_like
        The gradient of the loss with respect to the forward's output: the input's shape and
        dtype.
    input : array_like, float16/32/64, at least 2-D
        The forward's input.
    stats : NormStats
        The forward's statistics (``return_stats=True``): ``mean`` and ``rstd`` of shape ``(C,)``.
    weight : array_like (C,) or None
        The forward's weight; None when it had none.
    channel_axis : int, keyword-only
        The forward's channel axis.

    Returns
    -------
    Grads
        ``input``: the input gradient (input's shape and dtype); ``weight``: ``(C,)``, None
        without a weight; ``bias``: ``(C,)``, None when the forward had no bias.

    Raises
    ------
    TypeError
        If ``input``, ``grad_output`` or ``weight`` is not a float16/32/64 array,
        ``grad_output`` has another dtype than the input, ``stats`` is not a `NormStats`
        (anything without ``mean`` and ``rstd``), or ``channel_axis`` is not an integer.
    ValueError
        If ``grad_output`` has another shape than the input, ``stats.mean``/``stats.rstd`` do
        not have shape ``(C,)``, ``weight`` does not, or ``channel_axis`` is out of range or 0.

    See Also
    --------
    batch_norm, BatchNorm.backward

    Notes
    -----
    The same gradients as PyTorch's autograd through ``F.batch_norm`` (the tests use it as an
    oracle).  With ``stats.batch_stats`` the input gradient is
    ``rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat))`` per channel; with running
    statistics it is ``rstd * w * dy``.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
    >>> w, b = np.full(3, 2.0), np.zeros(3)
    >>> y, stats = nn.batch_norm(x, None, None, w, b, training=True, return_stats=True)
    >>> grads = nn.batch_norm_backward(np.ones_like(y), x, stats, w)
    >>> grads.input.shape, grads.weight.shape, grads.bias.tolist()
    ((8, 3, 5), (3,), [40.0, 40.0, 40.0])

    A constant upstream gradient does not reach the input through batch statistics:

    >>> bool(np.allclose(grads.input, 0))
    True
    """
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    c = x.shape[ch]
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    mean, rstd, batch_stats, has_bias = _stats_arg(stats, (c,))
    grads = cpu.grid_backward(dy, xk, ch, cpu.Grouping(c, True), mean[None], rstd[None], weight,
                           batch_stats, has_bias)
    return _grads(x, *grads)


@dispatch(lane=_instance_norm_backward_lane)
def instance_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats,
                           weight: Optional[ArrayLike] = None, *, channel_axis: int = 1) -> Grads:
    """Gradients of `instance_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 2-D
        The forward's input.
    stats : NormStats
        The forward's statistics: ``mean`` and ``rstd`` of shape ``(N, C)``.  With
        ``stats.batch_stats`` False (``use_input_stats=False``) they are constants.
    weight : array_like (C,) or None
        The forward's weight.
    channel_axis : int, keyword-only
        The forward's channel axis.

    Returns
    -------
    Grads
        ``input`` (input's shape and dtype), ``weight`` ``(C,)`` or None, ``bias`` ``(C,)`` or
        None when the forward had no bias.

    Raises
    ------
    TypeError
        As `batch_norm_backward`.
    ValueError
        As `batch_norm_backward`, with ``stats`` of shape ``(N, C)``.

    See Also
    --------
    instance_norm, InstanceNorm.backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 6))
    >>> y, stats = nn.instance_norm(x, return_stats=True)
    >>> dy = np.random.default_rng(1).standard_normal(x.shape)
    >>> g = nn.instance_norm_backward(dy, x, stats)
    >>> g.input.shape, g.weight, g.bias
    ((2, 3, 6), None, None)
    >>> bool(np.allclose(g.input.sum(axis=-1), 0))
    True
    """
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    mean, rstd, batch_stats, has_bias = _stats_arg(stats, (n, c))
    grads = cpu.grid_backward(dy, xk, ch, cpu.Grouping(c, False), mean, rstd, weight, batch_stats, has_bias)
    return _grads(x, *grads)


@dispatch(lane=_group_norm_backward_lane)
def group_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats, num_groups: int,
                        weight: Optional[ArrayLike] = None, *, channel_axis: int = 1) -> Grads:
    """Gradients of `group_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 2-D
        The forward's input.
    stats : NormStats
        The forward's statistics: ``mean`` and ``rstd`` of shape ``(N, num_groups)``.
    num_groups : int
        The forward's number of groups.
    weight : array_like (C,) or None
        The forward's weight.
    channel_axis : int, keyword-only
        The forward's channel axis.

    Returns
    -------
    Grads
        ``input`` (input's shape and dtype), ``weight`` ``(C,)`` or None, ``bias`` ``(C,)`` or
        None when the forward had no bias.

    Raises
    ------
    TypeError
        As `batch_norm_backward`, and if ``num_groups`` is not an integer.
    ValueError
        As `batch_norm_backward` with ``stats`` of shape ``(N, num_groups)``, and if
        ``num_groups`` is not a positive divisor of C.

    See Also
    --------
    group_norm, GroupNorm.backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((2, 4, 3, 3))
    >>> w, b = np.ones(4), np.zeros(4)
    >>> y, stats = nn.group_norm(x, 2, w, b, return_stats=True)
    >>> g = nn.group_norm_backward(2 * y, x, stats, 2, w)
    >>> g.input.shape, g.weight.shape, g.bias.shape
    ((2, 4, 3, 3), (4,), (4,))
    >>> bool(np.allclose(g.weight, 2 * (y * y).sum(axis=(0, 2, 3))))
    True
    """
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    groups = _num_groups(num_groups, c)
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    mean, rstd, _, has_bias = _stats_arg(stats, (n, groups))
    grads = cpu.grid_backward(dy, xk, ch, cpu.Grouping(groups, False), mean, rstd, weight, True, has_bias)
    return _grads(x, *grads)

