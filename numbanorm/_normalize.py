"""`normalize`: statistics over any set of axes, parameters of any broadcasting shape.

The statistics come from the engine's moments over the kept axes (the axes not in ``axes``).  The
normalization and the backward's elementwise pass run on a second plan whose kept axes are the
union of those and the axes the weight or bias vary along, so a per-channel scale of a layer norm
over ``(H, W, C)`` is one coefficient per (sample, channel): ``y = (x - mean)*(rstd*w) + b`` with the
mean carried to float64 accuracy, as in the named norms.

Two cases take other kernels.  Over the trailing axes with parameters constant along the others,
`normalize` is a layer norm and runs the row kernels (``_cpu_pipelines.row_forward``).  On small
inputs whose parameters vary only along the kept axes, each statistic is one channel of
``_small``'s grid drivers, on a view or a transposed copy of x (``_Lane``): one serial call in place
of the planned passes.
"""

import functools
import math
from typing import TYPE_CHECKING, Any, Callable, Literal, NamedTuple, Optional, TypeVar, Union, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _arguments
from . import _checks as chk
from . import _engine
from . import _functional as F
from . import _prepared
from . import _small
from ._types import Array, AxesLike, Grads, InPlace
from ._cpu_pipelines import row_backward, row_forward
from ._plan import Plan
from ._tfstats import _host_only, broadcast_param, nan_policy_value, omit_states, reduce_to

if TYPE_CHECKING:
    _F = TypeVar("_F", bound=Callable[..., Any])

    def dispatch(fn: _F) -> _F:
        """``_dispatch.dispatch`` wraps with ``functools.wraps``: the signature stays the function's."""
        return fn
else:
    from ._dispatch import dispatch


class NormalizeStats(NamedTuple):
    """What `normalize` keeps for `normalize_backward` (float64, whatever the input's dtype).

    Returned by `normalize` called with ``return_stats=True`` and passed to `normalize_backward`.

    Attributes
    ----------
    mean, rstd : ndarray of float64
        Keepdims-shaped: x's shape with length 1 along ``axes``.  ``rstd`` is
        ``1 / sqrt(var + eps)``.
    batch_stats : bool
        Always True (the statistics come from the input).
    has_bias : bool
        Whether the forward had a bias, so the backward returns its gradient.
    eps : float
        The forward's eps.
    bias_shape : tuple of int or None
        The bias's own shape (the backward returns its gradient in it), None without a bias.
    nan_policy : {"propagate", "omit"}
        The forward's: with "omit" the backward, too, leaves out the NaN inputs.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 5, 6, 3))
    >>> y, stats = nn.normalize(x, (1, 2, 3), np.ones(3), np.zeros(3), return_stats=True)
    >>> stats.mean.shape, stats.rstd.dtype, stats.has_bias, stats.bias_shape, stats.nan_policy
    ((4, 1, 1, 1), dtype('float64'), True, (3,), 'propagate')
    """

    mean: NDArray[np.float64]
    rstd: NDArray[np.float64]
    batch_stats: bool = True
    has_bias: bool = False
    eps: float = 1e-5
    bias_shape: Optional[tuple[int, ...]] = None
    nan_policy: str = "propagate"


def _param(name, value, shape, dtype, like_name):
    """(own shape, values in ``dtype`` with x's number of dimensions), or (None, None)."""
    if value is None:
        return None, None
    return broadcast_param(name, value, shape, like_name, dtype)


def _union_kept(shape, axes, *own_shapes):
    """Kept axes of the elementwise plan: the statistics' and every axis a parameter (of its own
    shape, or None) varies along."""
    ndim = len(shape)
    full = [(1,) * (ndim - len(s)) + tuple(s) for s in own_shapes if s is not None]
    return [i not in axes or any(s[i] != 1 for s in full) for i in range(ndim)]


class _Lane(NamedTuple):
    """A small input as the grid drivers' ``(1, P, K, Q)``, reduced over all but ``K``: one
    statistic (and one parameter value) per kept cell.  A C-contiguous input whose kept axes
    are adjacent is that view as it is (reduced axes before them in ``P``, after them in
    ``Q``); any other is copied transposed, the kept axes first: ``(1, 1, K, L)``."""

    order: Optional[tuple]  # the transposition of the copy; None for a view
    shape4: tuple
    keep: tuple  # keepdims shape of the statistics

    @classmethod
    @functools.lru_cache(maxsize=256)
    def of(cls, shape, axes, c_contiguous):
        kept = [i for i in range(len(shape)) if i not in axes]
        keep = tuple(1 if i in axes else d for i, d in enumerate(shape))
        cells = math.prod(keep)
        adjacent = not kept or kept == list(range(kept[0], kept[-1] + 1))
        if c_contiguous and adjacent:
            first, stop = (kept[0], kept[-1] + 1) if kept else (len(shape), len(shape))
            return cls(None, (1, math.prod(shape[:first]), cells, math.prod(shape[stop:])), keep)
        return cls(tuple(kept) + tuple(axes), (1, 1, cells, math.prod(shape[a] for a in axes)), keep)

    def rows(self, a):
        if self.order is None:
            return a.reshape(self.shape4)
        return np.ascontiguousarray(a.transpose(self.order)).reshape(self.shape4)

    def per_cell(self, param):
        """A parameter constant along the reduced axes, one value a kept cell (None stays None)."""
        if param is None:
            return None
        return (param if param.shape == self.keep else np.broadcast_to(param, self.keep)).reshape(self.shape4[2])

    def back(self, rows, like):
        """The drivers' result in the shape and axis order of ``like`` (x), laid out like it."""
        if self.order is None:
            return rows.reshape(like.shape)
        target = np.empty_like(like)
        target.transpose(self.order)[...] = rows.reshape(tuple(like.shape[i] for i in self.order))
        return target


def _small_lane(xk, axes, kept_u, kept):
    """The `_Lane` of a call that takes the small lane, else None: a small NumPy input whose
    parameters vary only along the kept axes (one value a statistic).  Like batch norm's, the
    lane pays off on inputs ``_small.OVER_BATCH_FACTOR`` times the other norms' (the planned path
    merges partial states of the reduced axes it leaves outside its kernel run); a transposed
    copy, which gathers x with strides, only on a quarter of that."""
    if list(kept_u) != kept or type(xk) is not np.ndarray:
        return None
    limit = _small.SMALL_ELEMENTS * _small.OVER_BATCH_FACTOR
    if not 0 < xk.size <= limit:
        return None
    lane = _Lane.of(xk.shape, axes, xk.flags.c_contiguous)
    return lane if lane.order is None or 4 * xk.size <= limit else None


def _trailing(ndim, axes, *own_shapes):
    """How many trailing axes a layer norm would normalize over when `normalize` is one: ``axes``
    the trailing axes (at least one) and every parameter constant along the others; else 0."""
    k = len(axes)
    if not k or axes != tuple(range(ndim - k, ndim)):
        return 0
    return k if all(math.prod(s[: max(0, len(s) - k)]) == 1 for s in own_shapes if s is not None) else 0


def _along_row(param, shape, k):
    """A parameter (x's number of dimensions, constant along the leading axes) as a row of the
    trailing ``k`` axes of ``shape``, C-contiguous."""
    if param is None:
        return None
    return np.ascontiguousarray(np.broadcast_to(param.reshape(param.shape[len(shape) - k:]), shape[len(shape) - k:]))


def _check_axes(arr, axes):
    axes = chk.axes_tuple("axes", axes, arr.ndim)
    if any(arr.shape[a] == 0 for a in axes):
        raise ValueError(f"axes {axes} must not include an axis of length 0 (input of shape {arr.shape}): "
                         "there would be no values to take statistics of")
    return axes


def _normalize_key(x, axes, weight, bias, eps, out, nan_policy):
    """The call's signature for a prepared call (see ``_prepared``), or None where none is kept:
    ``out`` given, NaN omitted, or an argument of another type than the usual (the checks decide
    those)."""
    if type(x) is not np.ndarray or out is not None or type(eps) is not float or nan_policy != "propagate":
        return None
    if not _prepared.exact_ints(axes):
        return None
    return ("normalize", _prepared.array_key(x), axes, _prepared.array_key(weight), _prepared.array_key(bias), eps)


def _as_given(param, checked):
    """Whether the checks took a parameter as it came, but for a view with x's number of
    dimensions (which a prepared call makes again): none, or a writable array of the compute
    dtype that they neither copied nor cast (a read-only one they wrap, see
    ``_checks.kernel_view``, as the other prepared calls' checks do)."""
    return param is None or (type(param) is np.ndarray and param.flags.writeable and checked.dtype == param.dtype
                             and np.may_share_memory(checked, param))


class _Normalization(NamedTuple):
    """`normalize` past its checks: which kernels a call signature takes, worked out once, and
    the prepared call of the signature (see ``_prepared``) where the checks took x and the
    parameters as they came.

    Three cases, by the axes and the parameters' shapes: over the trailing axes with parameters
    constant along the others a layer norm (``trailing`` > 0, its row kernels); a small input
    whose parameters vary only along the kept axes the small lane (``lane``); any other the
    engine's moments, then the affine pass on a plan whose kept axes also hold the parameters'."""

    axes: tuple
    keep: tuple  # the statistics' keepdims shape
    kept: list  # the statistics' kept axes
    kept_u: list  # ... and every axis a parameter varies along
    trailing: int
    lane: Optional[_Lane]
    w_full: Optional[tuple]  # the parameters' shapes with x's number of dimensions (None: absent)
    b_full: Optional[tuple]
    b_shape: Optional[tuple]  # the bias's own shape
    eps: float
    policy: str

    @classmethod
    def of(cls, xk, axes, w_shape, b_shape, eps, policy):
        ndim = xk.ndim
        kept = [i not in axes for i in range(ndim)]
        kept_u = _union_kept(xk.shape, axes, w_shape, b_shape)
        full = [None if s is None else (1,) * (ndim - len(s)) + s for s in (w_shape, b_shape)]
        omit = policy == "omit"
        return cls(axes, tuple(1 if i in axes else d for i, d in enumerate(xk.shape)), kept, kept_u,
                   0 if omit else _trailing(ndim, axes, w_shape, b_shape),
                   None if omit else _small_lane(xk, axes, kept_u, kept), full[0], full[1], b_shape, eps, policy)

    def __call__(self, x, weight, bias):
        """The prepared call: (y, stats) of x and the parameters as given."""
        return self.run(x, x, None if weight is None else weight.reshape(self.w_full),
                        None if bias is None else bias.reshape(self.b_full), None)

    def run(self, arr, xk, w, b, out):
        """(y, stats) of the checked x (``xk`` as the kernels take it) and parameters (x's number
        of dimensions, the compute dtype)."""
        axes, keep, kept, kept_u, k, lane, _, _, b_shape, eps, policy = self
        if policy == "omit":
            _host_only("normalize with nan_policy='omit'", arr)
            count, mean, m2, present = omit_states(xk, np.ones((1,) * arr.ndim), axes)
            none = present == 0  # a group of NaN only: NaN statistics
            mean, m2, count = np.where(none, np.nan, mean), np.where(none, np.nan, m2), np.where(none, 1.0, count)
            rstd = _arguments._rstd(m2 / count, eps)
        elif k:
            y, mean, rstd = row_forward(arr, xk, k, _along_row(w, arr.shape, k), _along_row(b, arr.shape, k), eps,
                                        True, out)
            return y, NormalizeStats(mean.reshape(keep), rstd.reshape(keep), True, b is not None, eps, b_shape, policy)
        elif lane is not None:
            y, st = _small.grid_forward(lane.rows(xk), 2, lane.shape4[2], True, lane.per_cell(w), lane.per_cell(b),
                                        eps, None)
            y = _arguments._deliver(lane.back(y, xk), arr.dtype, out)
            return y, NormalizeStats(st[1].reshape(keep), st[3].reshape(keep), True, b is not None, eps, b_shape,
                                     policy)
        else:
            count, mean, m2 = _engine.CPU.moments(xk, kept)
            rstd = _arguments._rstd(m2 / count, eps)
        plan = Plan.of(xk, kept_u)
        alpha = rstd if w is None else rstd * w.astype(np.float64)
        beta = np.zeros(()) if b is None else b
        direct_out = out if out is not None and out.dtype == xk.dtype else None
        y = _arguments._deliver(_engine.CPU.affine(xk, plan, mean, alpha, beta, out=direct_out), arr.dtype, out)
        return y, NormalizeStats(np.asarray(mean, np.float64).reshape(keep), np.asarray(rstd).reshape(keep), True,
                                 b is not None, eps, b_shape, policy)


@overload
def normalize(x: ArrayLike, axes: AxesLike, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
              eps: float = ..., *, return_stats: Literal[False] = ..., out: Optional[InPlace] = ...,
              nan_policy: str = ...) -> Array: ...
@overload
def normalize(x: ArrayLike, axes: AxesLike, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
              eps: float = ..., *, return_stats: Literal[True], out: Optional[InPlace] = ...,
              nan_policy: str = ...) -> tuple[Array, NormalizeStats]: ...
@overload
def normalize(x: ArrayLike, axes: AxesLike, weight: Optional[ArrayLike] = ..., bias: Optional[ArrayLike] = ...,
              eps: float = ..., *, return_stats: bool = ..., out: Optional[InPlace] = ...,
              nan_policy: str = ...) -> Union[Array, tuple[Array, NormalizeStats]]: ...
@dispatch
def normalize(x: ArrayLike, axes: AxesLike, weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None,
              eps: float = 1e-5, *, return_stats: bool = False, out: Optional[InPlace] = None,
              nan_policy: str = "propagate") -> Union[Array, tuple[Array, NormalizeStats]]:
    """Normalize ``x`` by its mean and (biased) variance over ``axes``:
    ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Batch norm is ``axes`` = every axis but the channel axis, layer norm the trailing axes,
    instance norm the spatial axes -- and any other set, with parameters of any shape: a layer
    norm over ``(H, W, C)`` with a per-channel scale, TensorFlow's
    ``tf.nn.batch_normalization(x, *tf.nn.moments(x, axes, keepdims=True), bias, weight, eps)``.

    Parameters
    ----------
    x : array_like, float16/32/64
        Any layout and strides.  A Dask or CUDA array runs on that backend.
    axes : int or sequence of int
        The axes the statistics are taken over (negative allowed; none of length 0).
    weight, bias : array_like or None
        Broadcast against ``x`` (NumPy's rules; any shape that broadcasts to ``x.shape``
        without enlarging it): ``(C,)`` for a per-channel parameter of channels-last data,
        ``(C, 1, 1)`` for NCHW data, x's trailing shape for a per-element one.  Cast to the
        compute dtype.  None: no scale, no shift.
    eps : float >= 0
        Added to the variance inside the square root.
    return_stats : bool, keyword-only
        Also return a `NormalizeStats` for `normalize_backward`.
    out : ndarray, optional, keyword-only
        Where to write the result (x's shape and dtype).
    nan_policy : {"propagate", "omit"}, keyword-only
        "propagate": a NaN spoils its group.  "omit": statistics of the values that are not
        NaN (NaN where a group has none); NaN inputs stay NaN in the output.

    Returns
    -------
    y : ndarray
        The normalized input, with its shape and dtype (``out`` when given).
    stats : NormalizeStats
        Only with ``return_stats=True``, as ``(y, stats)``: ``mean`` and ``rstd`` in float64,
        x's shape with length 1 along ``axes``.

    Raises
    ------
    TypeError
        If ``x``, ``weight`` or ``bias`` is not of a float16/32/64 dtype (a masked array is
        refused too); ``axes`` is not an integer or a sequence of integers; ``eps`` is not a
        real number (a bool is refused); ``out`` is not an array or has another dtype than
        ``x``, or is given with a Dask array (whose result is lazy); the arrays of the call
        live in different places (a NumPy array among CUDA arrays).
    ValueError
        If an axis is out of range, repeated or of length 0; ``weight`` or ``bias`` does not
        broadcast to x's shape; ``eps`` is negative or not finite; ``out`` has another shape
        or is read-only; ``nan_policy`` is neither "propagate" nor "omit".
    NotImplementedError
        If ``x`` is a CUDA array and ``nan_policy="omit"`` (copy it to the host first).

    See Also
    --------
    normalize_backward, NormalizeStats, moments, batch_normalization, layer_norm, batch_norm

    Notes
    -----
    TensorFlow writes this normalization by hand, ``mean, var = tf.nn.moments(x, axes,
    keepdims=True)`` then ``tf.nn.batch_normalization(x, mean, var, offset, scale, eps)``;
    `normalize` is that in one call, with ``offset`` as ``bias`` and ``scale`` as ``weight``,
    and its backward is what TensorFlow's autograd gives through both (see `moments_backward`
    and `batch_normalization_backward` for the two steps apart).  The variance is biased, eps is
    inside the square root.

    Statistics are the engine's (exact chunked sums merged with Chan's formula in float64),
    and the normalization is ``(x - mean) * (rstd * weight) + bias`` with the mean carried to
    float64 accuracy, as in the named norms; float16 input is computed in float32.

    Examples
    --------
    A layer norm over ``(H, W, C)`` of channels-last data with a per-channel scale and shift:

    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 5, 6, 3)).astype(np.float32)
    >>> w, b = np.full(3, 2.0, np.float32), np.ones(3, np.float32)
    >>> y, stats = nn.normalize(x, (1, 2, 3), w, b, return_stats=True)
    >>> y.shape, y.dtype, stats.mean.shape
    ((4, 5, 6, 3), dtype('float32'), (4, 1, 1, 1))
    >>> bool(np.allclose(y, 2 * nn.layer_norm(x, (5, 6, 3)) + 1, atol=1e-5))
    True

    Batch norm of the same data is every axis but the channel axis:

    >>> y_bn = nn.normalize(x, (0, 1, 2))
    >>> bool(np.allclose(y_bn, nn.batch_norm(x, None, None, training=True, channel_axis=-1), atol=1e-5))
    True

    With ``nan_policy="omit"`` the NaN values are left out of the statistics:

    >>> nn.normalize(np.array([[1.0, np.nan, 3.0]]), 1, eps=0.0, nan_policy="omit")
    array([[-1., nan,  1.]])
    """
    key = _normalize_key(x, axes, weight, bias, eps, out, nan_policy)
    if key is not None and (prepared := _prepared.lookup(key)) is not None:
        y, stats = prepared(x, weight, bias)
        return (y, stats) if return_stats else y
    arr, xk = _arguments._input("x", x, 0)
    axes = _check_axes(arr, axes)
    w_shape, w = _param("weight", weight, arr.shape, xk.dtype, "x")
    b_shape, b = _param("bias", bias, arr.shape, xk.dtype, "x")
    eps = chk.eps_value("eps", eps)
    out = chk.out_array(out, arr.shape, arr.dtype)
    policy = nan_policy_value(nan_policy)
    if arr.size == 0:
        keep = tuple(1 if i in axes else d for i, d in enumerate(arr.shape))
        y = np.empty_like(arr) if out is None else out
        stats = NormalizeStats(np.zeros(keep), np.zeros(keep), True, b is not None, eps, b_shape, policy)
        return (y, stats) if return_stats else y
    plan = _Normalization.of(xk, axes, w_shape, b_shape, eps, policy)
    if key is not None and xk is x and _as_given(weight, w) and _as_given(bias, b):
        _prepared.keep(key, plan)
    y, stats = plan.run(arr, xk, w, b, out)
    return (y, stats) if return_stats else y


@dispatch
def normalize_backward(grad_output: ArrayLike, input: ArrayLike, stats: NormalizeStats, axes: AxesLike,
                       weight: Optional[ArrayLike] = None) -> Grads:
    """Gradients of `normalize` given its `NormalizeStats`; returns `Grads(input, weight, bias)`.

    Parameters
    ----------
    grad_output : array_like
        The gradient with respect to the forward's output: the input's shape and dtype.
    input : array_like, float16/32/64
        The forward's ``x``.
    stats : NormalizeStats
        The forward's statistics (``return_stats=True``): ``mean`` and ``rstd`` of x's shape
        with length 1 along ``axes``.
    axes : int or sequence of int
        The forward's ``axes``.
    weight : array_like or None
        The forward's ``weight``.

    Returns
    -------
    Grads(input, weight, bias)
        ``input`` of the input's shape and dtype; ``weight``/``bias`` gradients summed over the
        axes they were broadcast along, in their own shapes (None where the forward had none),
        in the input's dtype.

    Raises
    ------
    TypeError
        If ``input``, ``grad_output`` or ``weight`` is not of a float16/32/64 dtype,
        ``grad_output`` has another dtype than the input, ``stats`` is not a `NormalizeStats`
        (has no ``mean`` and ``rstd``), or ``axes`` is not an integer or a sequence of
        integers; if the arrays of the call live in different places.
    ValueError
        If ``grad_output`` has another shape than the input; an axis is out of range, repeated
        or of length 0; ``weight`` does not broadcast to the input's shape; ``stats.mean`` or
        ``stats.rstd`` does not have the input's shape with length 1 along ``axes``.
    NotImplementedError
        If the input is a Dask array and the forward had ``nan_policy="omit"``.

    See Also
    --------
    normalize, NormalizeStats, batch_normalization_backward, moments_backward

    Notes
    -----
    With ``xhat = (x - mean) * rstd`` and the means over ``axes``:
    ``dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat))``, ``dweight = sum(dy * xhat)``
    and ``dbias = sum(dy)``, each parameter's summed over the axes it was broadcast along -- what
    TensorFlow's autograd gives through ``tf.nn.moments`` and ``tf.nn.batch_normalization``.
    After a forward with ``nan_policy="omit"`` the NaN inputs get gradient 0, and their
    ``grad_output`` is left out of the sums.

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> x = np.random.default_rng(0).standard_normal((4, 5, 6, 3))
    >>> w, b = np.full(3, 2.0), np.zeros(3)
    >>> y, stats = nn.normalize(x, (1, 2, 3), w, b, return_stats=True)
    >>> dy = np.random.default_rng(1).standard_normal(x.shape)
    >>> g = nn.normalize_backward(dy, x, stats, (1, 2, 3), w)
    >>> g.input.shape, g.weight.shape, g.bias.shape
    ((4, 5, 6, 3), (3,), (3,))
    >>> xhat = (x - stats.mean) * stats.rstd
    >>> bool(np.allclose(g.weight, (dy * xhat).sum(axis=(0, 1, 2)))), bool(np.allclose(g.bias, dy.sum(axis=(0, 1, 2))))
    (True, True)
    """
    arr, xk, dy = _arguments._backward_inputs(grad_output, input, 0)
    axes = _check_axes(arr, axes)
    w_shape, w = _param("weight", weight, arr.shape, xk.dtype, "input")
    keep = tuple(1 if i in axes else d for i, d in enumerate(arr.shape))
    mean, rstd, _, has_bias = _arguments._stats_arg(stats, keep, "NormalizeStats returned by normalize",
                                           f"(input's shape with 1 along axes {axes})")
    b_shape = getattr(stats, "bias_shape", None)
    b_shape = tuple(b_shape) if b_shape is not None else (() if has_bias else None)
    if arr.size == 0:
        zeros = lambda own: None if own is None else np.zeros(own, arr.dtype)
        return F.Grads(np.empty_like(arr), zeros(w_shape), zeros(b_shape) if has_bias else None)
    if getattr(stats, "nan_policy", "propagate") == "omit":
        return _omit_backward(arr, xk, dy, axes, mean, rstd, w, w_shape, b_shape if has_bias else None)
    if k := _trailing(arr.ndim, axes, w_shape, b_shape):
        dx, grad_w, grad_b = row_backward(dy, xk, k, mean, rstd, _along_row(w, arr.shape, k), has_bias, True)
        row = (1,) * (arr.ndim - k) + arr.shape[arr.ndim - k:]
        grad_weight = None if w is None else reduce_to(grad_w.reshape(row), w_shape, arr.ndim).astype(arr.dtype)
        grad_bias = reduce_to(grad_b.reshape(row), b_shape, arr.ndim).astype(arr.dtype) if has_bias else None
        return _arguments._grads(arr, dx, grad_weight, grad_bias)
    kept_u = _union_kept(arr.shape, axes, w_shape, b_shape)
    if t := _small_lane(xk, axes, kept_u, [i not in axes for i in range(arr.ndim)]):
        dx, grad_w, grad_b = _small.grid_backward(t.rows(dy), t.rows(xk), 2, mean.reshape(1, -1), rstd.reshape(1, -1),
                                                  t.per_cell(w), True, True)
        grad_weight = None if w is None else reduce_to(grad_w.reshape(keep), w_shape, arr.ndim).astype(arr.dtype)
        grad_bias = reduce_to(grad_b.reshape(keep), b_shape, arr.ndim).astype(arr.dtype) if has_bias else None
        return _arguments._grads(arr, t.back(dx, xk), grad_weight, grad_bias)
    plan = Plan.of(xk, kept_u)
    s1, s2 = _engine.CPU.grad_sums(dy, xk, plan, mean)
    # per union cell: sum(dy) and sum(dy*(x - mean)); the weight is constant on each cell
    wf = np.ones((1,) * arr.ndim) if w is None else w.astype(np.float64)
    inner = tuple(i for i in axes if kept_u[i])  # reduced axes the weight varies along
    sum_g = (wf * s1).sum(axis=inner, keepdims=True) if inner else wf * s1  # sum(dy*w) per statistic
    sum_g_xhat = (wf * s2 * rstd).sum(axis=inner, keepdims=True) if inner else wf * s2 * rstd
    n = math.prod(arr.shape[a] for a in axes)
    # dx = rstd*(dy*w - mean(dy*w) - xhat*mean(dy*w*xhat)), xhat = (x - mean)*rstd
    dx, _, _ = _engine.CPU.input_grad(dy, xk, plan, mean, rstd * wf, -rstd * rstd * sum_g_xhat / n, -rstd * sum_g / n)
    grad_weight = None if w is None else reduce_to(s2 * rstd, w_shape, arr.ndim).astype(arr.dtype)
    grad_bias = reduce_to(s1, b_shape, arr.ndim).astype(arr.dtype) if has_bias else None
    return _arguments._grads(arr, dx, grad_weight, grad_bias)


def _omit_backward(arr, xk, dy, axes, mean, rstd, w, w_shape, b_shape):
    """The backward of ``nan_policy="omit"``: each statistic is over its present (non-NaN) values
    only, so the sums are too; a NaN input gets gradient 0 and its ``grad_output`` is left out."""
    present = ~np.isnan(xk)
    n = present.sum(axis=axes, keepdims=True)
    xhat = np.where(present, (xk.astype(np.float64) - mean) * rstd, 0.0)
    dyf = np.where(present, dy, 0.0)
    g = dyf if w is None else dyf * w.astype(np.float64)
    safe = np.where(n > 0, n, 1)
    dx = rstd * (g - g.sum(axis=axes, keepdims=True) / safe - xhat * (g * xhat).sum(axis=axes, keepdims=True) / safe)
    dx = np.where(present, dx, 0.0)
    grad_weight = None if w is None else reduce_to(dyf * xhat, w_shape, arr.ndim).astype(arr.dtype)
    grad_bias = None if b_shape is None else reduce_to(dyf, b_shape, arr.ndim).astype(arr.dtype)
    return F.Grads(dx.astype(arr.dtype), grad_weight, grad_bias)
