"""Layer norm, RMS norm and weight standardization: statistics per row, parameters along the
row (the public functions: checks, then the CPU device's row pipelines)."""

from typing import Literal, Optional, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _checks as chk
from . import _prepared, _small
from ._arguments import _backward_inputs, dispatch, _grads, _input, _stats_arg
from ._cpu_pipelines import prepare_row_forward, row_backward, row_backward_recomputing, row_forward
from ._types import Array, Grads, InPlace, NormStats, ShapeLike


def _row_norm(input, normalized_shape, weight, bias, eps, centered, out, return_stats):
    """Layer norm (``centered``) or RMS norm over the trailing ``normalized_shape`` dimensions:
    y, or (y, NormStats) with ``return_stats``."""
    key = _row_key(input, normalized_shape, weight, bias, eps, centered, out)
    if (result := _prepared.served(key, input, weight, bias, return_stats)) is not None:
        return result
    return _checked_row_norm(input, normalized_shape, weight, bias, eps, centered, out, return_stats, key)


def _checked_row_norm(input, normalized_shape, weight, bias, eps, centered, out, return_stats, key):
    """`_row_norm` past its prepared call: the checks, then the kernels; a call prepared under
    ``key`` (None: none) where the checks hand the arrays on unchanged."""
    x, xk = _input("input", input, 1)
    shape = chk.normalized_shape_of(normalized_shape, x.shape)
    given = weight, bias
    weight = chk.parameter("weight", weight, shape, xk.dtype)
    bias = chk.parameter("bias", bias, shape, xk.dtype)
    eps = chk.eps_value("eps", np.finfo(x.dtype).eps if eps is None else eps)
    out = chk.out_array(out, x.shape, x.dtype)
    lead = x.shape[: x.ndim - len(shape)]
    _prepared.offer(key, (input, *given), (xk, weight, bias), prepare_row_forward, x, len(shape), eps, centered)
    y, mean, rstd = row_forward(x, xk, len(shape), weight, bias, eps, centered, out)
    if not return_stats:
        return y
    return y, NormStats(mean.reshape(lead), rstd.reshape(lead), True, bias is not None, eps)


def _row_key(input, normalized_shape, weight, bias, eps, centered, out):
    """The call's signature for a prepared call (see ``_prepared``), or None where none is kept:
    ``out`` given, or an argument of another type than the usual (the checks decide those)."""
    if type(input) is not np.ndarray or out is not None or (eps is not None and type(eps) is not float):
        return None
    if not _prepared.exact_ints(normalized_shape):
        return None
    return ("rows", _prepared.array_key(input), normalized_shape, _prepared.array_key(weight),
            _prepared.array_key(bias), eps, centered)


def _row_norm_backward(grad_output, input, stats, normalized_shape, weight, centered):
    x, xk, dy = _backward_inputs(grad_output, input, 1)
    shape = chk.normalized_shape_of(normalized_shape, x.shape)
    weight = chk.parameter("weight", weight, shape, xk.dtype)
    mean, rstd, _, has_bias = _stats_arg(stats, x.shape[: x.ndim - len(shape)])
    dx, grad_weight, grad_bias = row_backward(dy, xk, len(shape), mean, rstd, weight, has_bias, centered)
    return _grads(x, dx, grad_weight, grad_bias)


# the public functions' lanes (see ``dispatch``): each makes its public function, of its exact
# signature, around the routed one

def _layer_norm_lane(route):
    def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, return_stats=False, out=None):
        if out is None and (y := _small.row_norm(input, normalized_shape, weight, bias, eps, True,
                                                 return_stats)) is not None:
            return y
        return route(input, normalized_shape, weight, bias, eps, return_stats=return_stats, out=out)

    return layer_norm


def _rms_norm_lane(route):
    def rms_norm(input, normalized_shape, weight=None, eps=None, *, return_stats=False, out=None):
        if out is None and (y := _small.row_norm(input, normalized_shape, weight, None, eps, False,
                                                 return_stats)) is not None:
            return y
        return route(input, normalized_shape, weight, eps, return_stats=return_stats, out=out)

    return rms_norm


def _layer_norm_backward_lane(route):
    def layer_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
        if (grads := _small.row_grads(grad_output, input, stats, normalized_shape, weight, True)) is not None:
            return grads
        return route(grad_output, input, stats, normalized_shape, weight)

    return layer_norm_backward


def _rms_norm_backward_lane(route):
    def rms_norm_backward(grad_output, input, stats, normalized_shape, weight=None):
        if (grads := _small.row_grads(grad_output, input, stats, normalized_shape, weight, False)) is not None:
            return grads
        return route(grad_output, input, stats, normalized_shape, weight)

    return rms_norm_backward


def _weight_standardization_backward_lane(route):
    def weight_standardization_backward(grad_output, weight, eps=1e-5):
        if (dx := _small.weight_grads(grad_output, weight, eps)) is not None:
            return dx
        return route(grad_output, weight, eps)

    return weight_standardization_backward


def _weight_standardization_lane(route):
    def weight_standardization(weight, eps=1e-5):
        # eps None is the row norms' default but refused here: only a float eps goes ahead.  A
        # plain weight (C-contiguous, see `_small.row_norm`) is the lane's one row per output
        # channel as it is: a view of it as such rows, and of the result back, cost less than
        # comparing the trailing axes
        if type(weight) is np.ndarray and type(eps) is float and weight.ndim > 1 and weight.flags.carray:
            rows = weight.shape[0]
            if rows and (y := _small.row_norm(weight.reshape(rows, weight.size // rows), weight.size // rows, None,
                                              None, eps, True, False)) is not None:
                return y.reshape(weight.shape)
        return route(weight, eps)

    return weight_standardization


@overload
def layer_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, return_stats: Literal[False] = ...,
               out: Optional[InPlace] = ...) -> Array: ...


@overload
def layer_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, return_stats: Literal[True],
               out: Optional[InPlace] = ...) -> tuple[Array, NormStats]: ...


@overload
def layer_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
               bias: Optional[ArrayLike] = ..., eps: float = ..., *, return_stats: bool = ...,
               out: Optional[InPlace] = ...) -> Union[Array, tuple[Array, NormStats]]: ...


@dispatch(lane=_layer_norm_lane)
def layer_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5, *, return_stats: bool = False,
               out: Optional[InPlace] = None) -> Union[Array, tuple[Array, NormStats]]:
    """Layer normalization (``torch.nn.functional.layer_norm``) over the trailing
    ``normalized_shape`` dimensions; ``weight``/``bias`` have that shape.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 1-D
        Any layout and strides.
    normalized_shape : int or sequence of int
        The trailing dimensions to normalize over; must match the end of the input's shape.
    weight, bias : array_like of shape ``normalized_shape``, or None
        Elementwise affine parameters.
    eps : float >= 0
        Added to the variance inside the square root.
    return_stats : bool, keyword-only
        Also return a `NormStats` for `layer_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: ``mean`` and ``rstd`` of the leading
        (not normalized) shape.

    Raises
    ------
    TypeError
        If an array argument is not of a float16/32/64 dtype; ``normalized_shape`` is not an
        integer or a sequence of integers; ``eps`` is not a real number; ``out`` is not an
        array or has another dtype than the input.
    ValueError
        If ``normalized_shape`` is empty or does not match the trailing dimensions of the
        input; ``weight`` or ``bias`` does not have shape ``normalized_shape``; ``eps`` is
        negative or not finite; ``out`` has another shape or is read-only.

    See Also
    --------
    layer_norm_backward, LayerNorm, rms_norm

    Notes
    -----
    Biased variance and eps inside the square root, as PyTorch (default 1e-5) and Keras'
    ``LayerNormalization`` (which normalizes over ``axis=-1`` and defaults to 1e-3); Flax's
    LayerNorm defaults to 1e-6.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 10, 16)).astype(np.float32)
    >>> y = nn.layer_norm(x, 16)
    >>> y.shape, y.dtype
    ((4, 10, 16), dtype('float32'))
    >>> bool(np.allclose(y.mean(axis=-1), 0, atol=1e-6)), bool(np.allclose(y.std(axis=-1), 1, atol=1e-3))
    (True, True)

    Over the two trailing dimensions, with parameters of that shape:

    >>> y, stats = nn.layer_norm(x, (10, 16), np.ones((10, 16)), np.zeros((10, 16)), return_stats=True)
    >>> stats.mean.shape
    (4,)
    """
    return _row_norm(input, normalized_shape, weight, bias, eps, True, out, return_stats)


@dispatch(lane=_layer_norm_backward_lane)
def layer_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats, normalized_shape: ShapeLike,
                        weight: Optional[ArrayLike] = None) -> Grads:
    """Gradients of `layer_norm` given its `NormStats`; returns `Grads(input, weight, bias)`.

    The weight and bias gradients are summed in the same pass that writes the input gradient.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 1-D
        The forward's input.
    stats : NormStats
        The forward's statistics: ``mean`` and ``rstd`` of the leading shape.
    normalized_shape : int or sequence of int
        The forward's ``normalized_shape``.
    weight : array_like of shape ``normalized_shape``, or None
        The forward's weight.

    Returns
    -------
    Grads
        ``input`` (input's shape and dtype), ``weight`` and ``bias`` of shape
        ``normalized_shape`` (None where the forward had none).

    Raises
    ------
    TypeError
        If ``input``, ``grad_output`` or ``weight`` is not a float16/32/64 array,
        ``grad_output`` has another dtype than the input, ``stats`` is not a `NormStats`, or
        ``normalized_shape`` is not an integer or a sequence of integers.
    ValueError
        If ``grad_output`` has another shape than the input, ``normalized_shape`` does not
        match its trailing dimensions, or ``stats`` or ``weight`` has the wrong shape.

    See Also
    --------
    layer_norm, LayerNorm.backward

    Notes
    -----
    ``dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat))`` over each normalized row.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 8))
    >>> w, b = np.ones(8), np.zeros(8)
    >>> y, stats = nn.layer_norm(x, 8, w, b, return_stats=True)
    >>> dy = np.random.default_rng(1).standard_normal(x.shape)
    >>> g = nn.layer_norm_backward(dy, x, stats, 8, w)
    >>> bool(np.allclose(g.bias, dy.sum(axis=0))), bool(np.allclose(g.weight, (dy * y).sum(axis=0)))
    (True, True)
    """
    return _row_norm_backward(grad_output, input, stats, normalized_shape, weight, True)


@overload
def rms_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, return_stats: Literal[False] = ...,
             out: Optional[InPlace] = ...) -> Array: ...


@overload
def rms_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, return_stats: Literal[True],
             out: Optional[InPlace] = ...) -> tuple[Array, NormStats]: ...


@overload
def rms_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = ...,
             eps: Optional[float] = ..., *, return_stats: bool = ...,
             out: Optional[InPlace] = ...) -> Union[Array, tuple[Array, NormStats]]: ...


@dispatch(lane=_rms_norm_lane)
def rms_norm(input: ArrayLike, normalized_shape: ShapeLike, weight: Optional[ArrayLike] = None,
             eps: Optional[float] = None, *, return_stats: bool = False,
             out: Optional[InPlace] = None) -> Union[Array, tuple[Array, NormStats]]:
    """RMS normalization (``torch.nn.functional.rms_norm``): ``x / sqrt(mean(x**2) + eps) * weight``
    over the trailing ``normalized_shape`` dimensions; ``eps=None`` is the machine epsilon of the
    input's dtype.  The stats' ``mean`` is zero.

    Parameters
    ----------
    input : array_like, float16/32/64, at least 1-D
        Any layout and strides.
    normalized_shape : int or sequence of int
        The trailing dimensions to normalize over.
    weight : array_like of shape ``normalized_shape``, or None
        Elementwise scale; there is no bias.
    eps : float >= 0 or None
        Added to the mean square inside the square root; None: ``np.finfo(input.dtype).eps``
        (of float16 for float16 input).
    return_stats : bool, keyword-only
        Also return a `NormStats` for `rms_norm_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (same shape and dtype as input).

    Returns
    -------
    y : ndarray
        The normalized input (``out`` when given).
    stats : NormStats
        Only with ``return_stats=True``, as ``(y, stats)``: ``rstd`` of the leading shape and a
        zero ``mean``.

    Raises
    ------
    TypeError
        As `layer_norm`.
    ValueError
        As `layer_norm`.

    See Also
    --------
    rms_norm_backward, RMSNorm, layer_norm

    Notes
    -----
    Follows ``torch.nn.functional.rms_norm``, eps default included; the mean square is
    accumulated exactly as layer norm's statistics (mean and spread merged in float64).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((3, 8))
    >>> y = nn.rms_norm(x, 8)
    >>> bool(np.allclose(np.sqrt((y ** 2).mean(axis=-1)), 1))
    True
    >>> bool(np.allclose(y, x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + np.finfo(x.dtype).eps)))
    True
    """
    return _row_norm(input, normalized_shape, weight, None, eps, False, out, return_stats)


@dispatch(lane=_rms_norm_backward_lane)
def rms_norm_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormStats, normalized_shape: ShapeLike,
                      weight: Optional[ArrayLike] = None) -> Grads:
    """Gradients of `rms_norm` given its `NormStats`; returns `Grads(input, weight, None)`.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64, at least 1-D
        The forward's input.
    stats : NormStats
        The forward's statistics.
    normalized_shape : int or sequence of int
        The forward's ``normalized_shape``.
    weight : array_like of shape ``normalized_shape``, or None
        The forward's weight.

    Returns
    -------
    Grads
        ``input`` (input's shape and dtype), ``weight`` of shape ``normalized_shape`` or None,
        ``bias`` None.

    Raises
    ------
    TypeError
        As `layer_norm_backward`.
    ValueError
        As `layer_norm_backward`.

    See Also
    --------
    rms_norm, RMSNorm.backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((3, 8))
    >>> y, stats = nn.rms_norm(x, 8, np.ones(8), return_stats=True)
    >>> g = nn.rms_norm_backward(np.ones_like(y), x, stats, 8, np.ones(8))
    >>> g.input.shape, g.weight.shape, g.bias
    ((3, 8), (8,), None)
    """
    return _row_norm_backward(grad_output, input, stats, normalized_shape, weight, False)


def _weight_arrays(weight, grad_output=None):
    """The checked ``weight`` (float16/32/64, at least 2-D) and ``grad_output`` (its shape and
    dtype), or None without one."""
    w = chk.float_array("weight", weight, 2)
    return w, None if grad_output is None else chk.same_array("grad_output", grad_output, w, "weight")


@dispatch(lane=_weight_standardization_lane)
def weight_standardization(weight: ArrayLike, eps: float = 1e-5) -> Array:
    """Weight standardization (Qiao et al. 2019): ``(w - mean) / sqrt(var + eps)`` over every axis
    of ``weight`` but the first (the output channels), with the biased variance.

    A layer norm of the weight tensor over its trailing axes, without affine parameters:
    ``weight_standardization(w)`` is ``layer_norm(w, w.shape[1:])``.  Apply it to a convolution's
    or a linear layer's weight before using it, and chain the gradient reaching the standardized
    weight through `weight_standardization_backward`.

    Parameters
    ----------
    weight : array_like, float16/32/64, at least 2-D
        A weight tensor with the output channels first: ``(C_out, C_in, *kernel)`` for a
        convolution (PyTorch's layout), ``(out_features, in_features)`` for a linear layer.
        Any layout and strides; a CUDA array runs on the GPU.
    eps : float >= 0
        Added to the variance inside the square root.

    Returns
    -------
    ndarray
        The standardized weight, of weight's shape and dtype: zero mean and unit (biased)
        variance over each output channel, up to ``eps``.

    Raises
    ------
    TypeError
        If ``weight`` is not of a float16/32/64 dtype, or ``eps`` is not a real number (a bool
        is refused).
    ValueError
        If ``weight`` has fewer than 2 dimensions, or a trailing axis of length 0 (an output
        channel without values); if ``eps`` is negative or not finite.
    NotImplementedError
        If ``weight`` is a Dask array (compute it first).

    See Also
    --------
    weight_standardization_backward, layer_norm

    Notes
    -----
    The paper's formula (Qiao et al. 2019, "Micro-Batch Training with Batch-Channel
    Normalization and Weight Standardization"): statistics over all axes but the first, the
    *biased* variance (divided by the ``n`` values per output channel), eps inside the square
    root -- as timm's ``StdConv2d``, which standardizes with ``F.batch_norm`` (its eps defaults to
    1e-6).  The paper's PyTorch reference code divides by ``w.std() + 1e-5`` instead (the
    unbiased standard deviation, eps outside the root): its results differ from these by the
    factor ``sqrt((n - 1) / n)`` and by O(eps).

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    >>> ws = nn.weight_standardization(w)
    >>> ws.shape, ws.dtype
    ((8, 3, 3, 3), dtype('float32'))
    >>> bool(np.allclose(ws.mean(axis=(1, 2, 3)), 0, atol=1e-6)), bool(np.allclose(ws.var(axis=(1, 2, 3)), 1, atol=1e-3))
    (True, True)
    >>> bool(np.allclose(ws, nn.layer_norm(w, (3, 3, 3))))
    True
    """
    # a repeated call goes to its prepared layer norm before the weight's own checks (that call
    # was kept only for a weight that those checks handed on unchanged)
    key = _row_key(weight, weight.shape[1:], None, None, eps, True, None) if type(weight) is np.ndarray else None
    if (result := _prepared.served(key, weight, None, None, False)) is not None:
        return result
    w, _ = _weight_arrays(weight)
    return _checked_row_norm(w, w.shape[1:], None, None, chk.eps_value("eps", eps), True, None, False,
                             key if w is weight else None)


@dispatch(lane=_weight_standardization_backward_lane)
def weight_standardization_backward(grad_output: ArrayLike, weight: ArrayLike, eps: float = 1e-5) -> Array:
    """Gradient of `weight_standardization` with respect to ``weight`` (its statistics
    recomputed, as the forward returns none).

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the standardized weight: weight's shape and dtype.
    weight : array_like, float16/32/64, at least 2-D
        The forward's weight (not the standardized one).
    eps : float >= 0
        The forward's eps.

    Returns
    -------
    ndarray
        The gradient with respect to ``weight``, of its shape and dtype.

    Raises
    ------
    TypeError
        If ``weight`` or ``grad_output`` is not of a float16/32/64 dtype, ``grad_output`` has
        another dtype than ``weight``, or ``eps`` is not a real number; if the two arrays live
        in different places (a NumPy array and a CUDA array).
    ValueError
        If ``weight`` has fewer than 2 dimensions or a trailing axis of length 0,
        ``grad_output`` has another shape than ``weight``, or ``eps`` is negative or not finite.
    NotImplementedError
        If ``weight`` is a Dask array (compute it first).

    See Also
    --------
    weight_standardization, layer_norm_backward

    Notes
    -----
    Per output channel, ``dw = rstd * (dy - mean(dy) - what * mean(dy * what))`` with ``what``
    the standardized weight and the means over the trailing axes: the layer norm backward
    without affine parameters.  So each output channel's gradient has zero sum and is
    orthogonal to its standardized weight.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> w = np.random.default_rng(0).standard_normal((8, 3, 3, 3))
    >>> dy = np.random.default_rng(1).standard_normal(w.shape)
    >>> dw = nn.weight_standardization_backward(dy, w)
    >>> dw.shape, dw.dtype
    ((8, 3, 3, 3), dtype('float64'))
    >>> bool(np.allclose(dw.sum(axis=(1, 2, 3)), 0))
    True
    >>> _, stats = nn.layer_norm(w, (3, 3, 3), return_stats=True)
    >>> bool(np.allclose(dw, nn.layer_norm_backward(dy, w, stats, (3, 3, 3)).input))
    True
    """
    w, dy = _weight_arrays(weight, grad_output)
    eps = chk.eps_value("eps", eps)
    shape = chk.normalized_shape_of(w.shape[1:], w.shape)
    _, wk = _input("weight", w, 2)
    dx = row_backward_recomputing(dy if dy.dtype == wk.dtype else dy.astype(wk.dtype), wk, len(shape), eps)
    return dx if dx.dtype == w.dtype else dx.astype(w.dtype)

