"""Switchable norm: a softmax mixture of instance, layer and batch statistics."""

from typing import Literal, Optional, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _checks as chk
from . import _cpu_pipelines as cpu
from . import _engine
from ._arguments import (
    _backward_inputs, _batch_counter, _bessel, _grid_affine_params, _input, _maybe_stats, _running_pair,
    _update_running, dispatch,
)
from ._types import Array, InPlace, SwitchableGrads, SwitchableStats


def _softmax_logits(name, logits, terms):
    z = chk.float_array(name, logits).astype(np.float64)
    if z.shape != (terms,):
        which = "instance, layer, batch" if terms == 3 else "instance, layer (using_bn=False)"
        raise ValueError(f"{name} must be {terms} logits ({which}), got shape {z.shape}")
    e = np.exp(z - z.max())
    return e / e.sum()


@overload
def switchable_norm(input: ArrayLike, mean_weight: ArrayLike, var_weight: ArrayLike,
                    running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                    weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
                    momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                    using_bn: bool = ..., return_stats: Literal[False] = ..., out: Optional[InPlace] = ...,
                    num_batches_tracked: Optional[Array] = ...,
                    running_var_unbiased: bool = ...) -> Array: ...


@overload
def switchable_norm(input: ArrayLike, mean_weight: ArrayLike, var_weight: ArrayLike,
                    running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                    weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
                    momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                    using_bn: bool = ..., return_stats: Literal[True], out: Optional[InPlace] = ...,
                    num_batches_tracked: Optional[Array] = ...,
                    running_var_unbiased: bool = ...) -> tuple[Array, SwitchableStats]: ...


@overload
def switchable_norm(input: ArrayLike, mean_weight: ArrayLike, var_weight: ArrayLike,
                    running_mean: Optional[InPlace] = ..., running_var: Optional[InPlace] = ...,
                    weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ..., training: bool = ...,
                    momentum: Optional[float] = ..., eps: float = ..., *, channel_axis: int = ...,
                    using_bn: bool = ..., return_stats: bool = ..., out: Optional[InPlace] = ...,
                    num_batches_tracked: Optional[Array] = ...,
                    running_var_unbiased: bool = ...) -> Union[Array, tuple[Array, SwitchableStats]]: ...


@dispatch
def switchable_norm(input: ArrayLike, mean_weight: ArrayLike, var_weight: ArrayLike,
                    running_mean: Optional[InPlace] = None, running_var: Optional[InPlace] = None,
                    weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, training: bool = False,
                    momentum: Optional[float] = 0.1, eps: float = 1e-5, *, channel_axis: int = 1,
                    using_bn: bool = True, return_stats: bool = False, out: Optional[InPlace] = None,
                    num_batches_tracked: Optional[Array] = None,
                    running_var_unbiased: bool = True) -> Union[Array, tuple[Array, SwitchableStats]]:
    """Switchable normalization (Luo et al. 2018): normalize by a softmax mixture of the instance,
    layer and batch statistics, ``mean = sum_k softmax(mean_weight)_k * mean_k`` and likewise the
    (biased) variances with ``var_weight``.

    The instance statistics are computed in one pass; the layer and batch statistics are merged
    from them with Chan's formula.  The batch term uses the batch (training) or the running
    statistics (eval), which training updates as `batch_norm` does.  ``using_bn=False`` drops the
    batch term: the logits then have length 2.  Other arguments as `batch_norm`; the stats for
    `switchable_norm_backward` are a `SwitchableStats`.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 2-D
        ``(N, C, *spatial)`` or, with ``channel_axis=-1``, ``(N, *spatial, C)``.  NumPy and
        CUDA arrays; Dask arrays are not supported yet.
    mean_weight, var_weight : array_like (3,) or (2,)
        The mixture logits of the means and of the variances, in the order instance, layer,
        batch (length 2 without the batch term, ``using_bn=False``).
    running_mean, running_var : ndarray (C,) or None
        The batch term's running statistics: updated in place when training (as `batch_norm`),
        required for eval when ``using_bn``.
    weight, bias : array_like (C,) or None
        Per-channel affine parameters.
    training : bool
        Batch term from the input (and running statistics updated) or from the running
        statistics.
    momentum : float in [0, 1] or None
        As `batch_norm`: PyTorch's direction, None the cumulative average.
    eps : float >= 0
        Added to the mixed variance inside the square root.
    channel_axis : int, keyword-only
        Any axis but the batch axis 0.
    using_bn : bool, keyword-only
        Include the batch term.
    return_stats : bool, keyword-only
        Also return a `SwitchableStats` for `switchable_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).
    num_batches_tracked : integer ndarray of one element, optional, keyword-only
        As `batch_norm`.

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : SwitchableStats
        Only with ``return_stats=True``, as ``(y, stats)``.

    Raises
    ------
    TypeError
        As `batch_norm`, and if a logits argument is not a float array.
    ValueError
        As `batch_norm`, and if ``mean_weight`` or ``var_weight`` does not have 3 elements (2
        with ``using_bn=False``).
    NotImplementedError
        For a Dask input.

    See Also
    --------
    switchable_norm_backward, SwitchableNorm, batch_norm, instance_norm, layer_norm

    Notes
    -----
    numbanorm follows the paper's formula with *biased* variances for every term and
    PyTorch's momentum convention for the running statistics (``(1 - momentum)*old +
    momentum*new``, default 0.1, unbiased running variance).  The paper's reference code
    instead uses a 0.9 decay, unbiased instance variances and zero-initialised running
    statistics.  The layer term is over C and the spatial axes of each sample.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> rm, rv = np.zeros(3), np.ones(3)
    >>> y = nn.switchable_norm(x, np.zeros(3), np.zeros(3), rm, rv, training=True)
    >>> y.shape
    (4, 3, 5)

    Logits that put all the weight on the instance term give instance norm:

    >>> only_in = np.array([50.0, 0.0, 0.0])
    >>> y = nn.switchable_norm(x, only_in, only_in, rm, rv, training=True)
    >>> bool(np.allclose(y, nn.instance_norm(x)))
    True
    """
    x, xk = _input("input", input, 2)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    terms = 3 if using_bn else 2
    unbiased = chk.flag("running_var_unbiased", running_var_unbiased)
    mix_mean = _softmax_logits("mean_weight", mean_weight, terms)
    mix_var = _softmax_logits("var_weight", var_weight, terms)
    weight, bias = _grid_affine_params(weight, bias, c, xk.dtype)
    eps = chk.eps_value("eps", eps)
    momentum = chk.momentum_value(momentum)
    out = chk.out_array(out, x.shape, x.dtype)
    rm = rv = nbt = None
    if using_bn and training:
        rm, rv = _running_pair(running_mean, running_var, c)
        nbt = _batch_counter(num_batches_tracked, momentum is None and rm is not None)
        if x.size // c < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")
    elif using_bn:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False, got None")
        eval_mean = chk.parameter("running_mean", running_mean, (c,), np.float64)
        eval_var = chk.parameter("running_var", running_var, (c,), np.float64)
    plan = cpu.grid_plan(xk, ch)
    states = _engine.CPU.states(xk, plan)  # one statistics pass, merged three ways: IN, LN, BN
    count_in, mean_in, m2_in = cpu.Grouping(c, False).merge_states(states, plan, ch, n)
    count_ln, mean_ln, m2_ln = cpu.Grouping(1, False).merge_states(states, plan, ch, n)
    means = [mean_in, np.broadcast_to(mean_ln, (n, c))]
    variances = [m2_in / count_in, np.broadcast_to(m2_ln / count_ln, (n, c))]
    if using_bn:
        if training:
            count_bn, mean_bn, m2_bn = cpu.Grouping(c, True).merge_states(states, plan, ch, n)
            var_bn = m2_bn / count_bn
        else:
            mean_bn, var_bn = eval_mean[None], eval_var[None]
        means.append(np.broadcast_to(mean_bn, (n, c)))
        variances.append(np.broadcast_to(var_bn, (n, c)))
    means, variances = np.stack(means), np.stack(variances)
    mean = (mix_mean @ means.reshape(terms, -1)).reshape(n, c)
    var = (mix_var @ variances.reshape(terms, -1)).reshape(n, c)
    y, mean, rstd = cpu.grid_apply(x, xk, ch, cpu.Grouping(c, False), mean, var, weight, bias, eps, out, plan)
    if rm is not None:
        if nbt is not None:
            nbt += 1
        _update_running(rm, mean_bn[0], momentum, nbt)
        _update_running(rv, (var_bn * _bessel(count_bn, unbiased))[0], momentum, nbt)
    stats = SwitchableStats(mean, rstd, bool(training), bias is not None, means, variances)
    return _maybe_stats(y, stats, return_stats)


@dispatch
def switchable_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: SwitchableStats,
                             mean_weight: ArrayLike, var_weight: ArrayLike, weight: Optional[ArrayLike] = None, *,
                             channel_axis: int = 1) -> "SwitchableGrads":
    """Gradients of `switchable_norm` given its `SwitchableStats`: returns
    `SwitchableGrads(input, weight, bias, mean_weight, var_weight)`, the last two with respect to
    the logits.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 2-D
        The forward's input.
    stats : SwitchableStats
        The forward's statistics (``return_stats=True``).
    mean_weight, var_weight : array_like (3,) or (2,)
        The forward's mixture logits.
    weight : array_like (C,) or None
        The forward's weight.
    channel_axis : int, keyword-only
        The forward's channel axis.

    Returns
    -------
    SwitchableGrads
        ``input`` (input's shape and dtype), ``weight`` and ``bias`` ``(C,)`` or None,
        ``mean_weight`` and ``var_weight`` (float64, the logits' shape).

    Raises
    ------
    TypeError
        If ``stats`` is not a `SwitchableStats`, or as `batch_norm_backward`.
    ValueError
        If ``stats`` belongs to an input of another ``(N, C)``, the logits do not have the
        stats' number of terms, or as `batch_norm_backward`.
    NotImplementedError
        For a Dask input.

    See Also
    --------
    switchable_norm, SwitchableNorm.backward

    Notes
    -----
    Running statistics (eval) are constants; the batch term depends on the input only when it
    came from the batch.  The logits' gradients go through the softmax Jacobian.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5))
    >>> logits = np.zeros(3)
    >>> y, stats = nn.switchable_norm(x, logits, logits, training=True, return_stats=True)
    >>> dy = np.random.default_rng(1).standard_normal(x.shape)
    >>> g = nn.switchable_norm_backward(dy, x, stats, logits, logits)
    >>> g.input.shape, g.mean_weight.shape, g.weight
    ((4, 3, 5), (3,), None)

    The logits' gradients sum to zero (a common shift of the logits changes nothing):

    >>> bool(abs(g.mean_weight.sum()) < 1e-12), bool(abs(g.var_weight.sum()) < 1e-12)
    (True, True)
    """
    x, xk, dy = _backward_inputs(grad_output, input)
    ch = chk.channel_axis(channel_axis, x.ndim)
    n, c = x.shape[0], x.shape[ch]
    if not isinstance(stats, SwitchableStats):
        raise TypeError(f"stats must be the SwitchableStats returned by switchable_norm with "
                        f"return_stats=True, got {chk._describe(stats)}")
    terms = stats.means.shape[0]
    if stats.mean.shape != (n, c) or stats.means.shape != (terms, n, c) or terms not in (2, 3):
        raise ValueError(f"stats must belong to an input with (N, C) = {(n, c)}, got stats.mean of shape "
                         f"{stats.mean.shape} and stats.means of shape {stats.means.shape}")
    mix_mean = _softmax_logits("mean_weight", mean_weight, terms)
    mix_var = _softmax_logits("var_weight", var_weight, terms)
    weight = chk.parameter("weight", weight, (c,), xk.dtype)
    if x.size == 0:  # an empty batch: nothing depends on the parameters or the mixture
        zeros = np.zeros(c, x.dtype)
        return SwitchableGrads(np.empty_like(x), None if weight is None else zeros,
                               zeros.copy() if stats.has_bias else None, np.zeros(terms), np.zeros(terms))
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    mean, rstd = stats.mean, stats.rstd
    plan = cpu.grid_plan(xk, ch)
    sum_dy, sum_dy_xc = cpu.grid_sums(dy, xk, plan, ch, cpu.on_grid(mean, xk, ch))
    d_mean = -rstd * w * sum_dy  # dL/dmean per (sample, channel)
    d_var = -0.5 * rstd ** 3 * w * sum_dy_xc  # dL/dvar
    spatial = x.size // (n * c)
    # each term's statistic is a mean over its group of `size` values: IN (spatial), LN (C*spatial),
    # BN (N*spatial, only when it came from this batch); its gradient reaches x as
    # d_mean_k/size + d_var_k*2*(x - mean_k)/size, with d_*_k summed over the term's group.
    # The variance terms are applied around the instance mean, the centre nearest every value:
    # around the mixed mean, which may lie far from the data (stale running statistics), each
    # term would split into two large pieces that cancel in the input precision.
    reduce = [lambda a: a, lambda a: a.sum(axis=1, keepdims=True), lambda a: a.sum(axis=0, keepdims=True)]
    sizes = [spatial, c * spatial, n * spatial]
    centre = stats.means[0]
    kb = np.zeros((n, c))
    kc = np.zeros((n, c))
    for k in range(terms):
        if k == 2 and not stats.batch_stats:
            continue  # running statistics are constants
        var_coef = mix_var[k] * 2.0 * reduce[k](d_var) / sizes[k]
        kb = kb + var_coef
        kc = kc + mix_mean[k] * reduce[k](d_mean) / sizes[k] + var_coef * (centre - stats.means[k])
    dx, _, _ = _engine.CPU.input_grad(dy, xk, plan, *(cpu.on_grid(a, xk, ch) for a in (centre, rstd * w, kb, kc)))
    # logits: softmax Jacobian of sum_nc dL/dmean * mean_k; deviations from the mixture keep the
    # digits that a large common offset would cancel (the Jacobian ignores a common shift)
    var_mix = (mix_var @ stats.variances.reshape(terms, -1)).reshape(n, c)
    g_mean = np.array([(d_mean * (stats.means[k] - mean)).sum() for k in range(terms)])
    g_var = np.array([(d_var * (stats.variances[k] - var_mix)).sum() for k in range(terms)])
    grad_mean_weight = mix_mean * (g_mean - mix_mean @ g_mean)
    grad_var_weight = mix_var * (g_var - mix_var @ g_var)
    grad_weight = None if weight is None else (sum_dy_xc * rstd).sum(axis=0).astype(xk.dtype)
    grad_bias = sum_dy.sum(axis=0).astype(xk.dtype) if stats.has_bias else None
    return SwitchableGrads(dx if dx.dtype == x.dtype else dx.astype(x.dtype), grad_weight, grad_bias, grad_mean_weight,
                           grad_var_weight)

