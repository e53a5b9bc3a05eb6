"""Stateful layers for hand-written training loops: parameters, running statistics, gradients.

Each layer's ``layer(x)`` runs the forward and keeps what its backward needs;
``layer.backward(grad_output)`` returns the input gradient and stores the parameter gradients in
``layer.grads`` (same names as ``layer.params``).  ``train()``/``eval()`` switch the mode;
``state_dict()``/``load_state_dict()`` and ``save(path)``/``load(path)`` (an ``.npz`` file) round-trip
parameters and buffers exactly.  Constructor arguments follow ``torch.nn``.

Examples
--------
>>> import numpy as np
>>> import numbanorm as nn
>>> layer = nn.LayerNorm(8)
>>> x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
>>> y = layer(x)
>>> dx = layer.backward(np.ones_like(y))
>>> dx.shape, sorted(layer.grads)
((4, 8), ['bias', 'weight'])
"""

from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _functional as F

if TYPE_CHECKING:
    import os

Array = NDArray[Any]
_L = TypeVar("_L", bound="_Layer")


class _Layer:
    """Common state handling; subclasses define ``_forward(x)`` and ``_backward(dy, x, stats)``."""

    if TYPE_CHECKING:
        def _forward(self, x: ArrayLike) -> tuple[Array, Any]: ...
        def _backward(self, dy: ArrayLike, x: ArrayLike, stats: Any) -> Any: ...

    def __init__(self, dtype: DTypeLike) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.type not in (np.float16, np.float32, np.float64):
            raise TypeError(f"dtype must be float16, float32 or float64, got {self.dtype}")
        self.params: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.training = True
        self._saved: Optional[tuple[Any, Any, bool]] = None

    # -- modes --------------------------------------------------------------------------------
    def train(self: _L, mode: bool = True) -> _L:
        """Set training mode (``mode=True``) or eval mode (``mode=False``), as ``torch.nn.Module.train``.

        In training mode the forward normalizes with the batch statistics and updates the
        running statistics; in eval mode it uses the running statistics (where the layer tracks
        them).

        Parameters
        ----------
        mode : bool
            True for training, False for eval.

        Returns
        -------
        layer
            The layer itself, for chaining.

        Examples
        --------
        >>> import numbanorm as nn
        >>> nn.BatchNorm(4).train(False).training
        False
        """
        self.training = bool(mode)
        return self

    def eval(self: _L) -> _L:
        """Set eval mode: ``train(False)``.

        Returns
        -------
        layer
            The layer itself.

        Examples
        --------
        >>> import numbanorm as nn
        >>> layer = nn.BatchNorm(4).eval()
        >>> layer.training
        False
        """
        return self.train(False)

    # -- running ------------------------------------------------------------------------------
    def __call__(self, x: ArrayLike) -> Array:
        """The forward: normalize ``x`` and keep what `backward` needs.

        Parameters
        ----------
        x : array_like, float16/32/64
            The input, in the layout the layer was built for.

        Returns
        -------
        ndarray
            The normalized input, with its shape and dtype.

        Raises
        ------
        TypeError, ValueError
            As the layer's function (`batch_norm`, `layer_norm`, ...) for a bad input.

        Examples
        --------
        >>> import numpy as np
        >>> import numbanorm as nn
        >>> y = nn.GroupNorm(2, 4)(np.ones((3, 4, 5), np.float32))
        >>> y.shape, y.dtype
        ((3, 4, 5), dtype('float32'))
        """
        y, stats = self._forward(x)
        self._saved = (x, stats, self.training)
        return y

    def backward(self, grad_output: ArrayLike) -> Array:
        """The backward of the last forward: returns the input gradient and stores the parameter
        gradients in ``self.grads`` (keyed as ``self.params``, in the parameters' dtypes).

        Parameters
        ----------
        grad_output : array_like
            The gradient with respect to the last forward's output: its shape and dtype.

        Returns
        -------
        ndarray
            The gradient with respect to the last forward's input.

        Raises
        ------
        RuntimeError
            If no forward ran yet, or the mode changed (`train`/`eval`) since the forward.
        TypeError, ValueError
            If ``grad_output`` does not have the input's dtype or shape.

        Examples
        --------
        >>> import numpy as np
        >>> import numbanorm as nn
        >>> layer = nn.BatchNorm(3)
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 4)).astype(np.float32)
        >>> y = layer(x)
        >>> dx = layer.backward(np.ones_like(y))
        >>> dx.shape, layer.grads["bias"].tolist()
        ((8, 3, 4), [32.0, 32.0, 32.0])
        >>> nn.BatchNorm(3).backward(np.ones_like(y))
        Traceback (most recent call last):
        ...
        RuntimeError: BatchNorm.backward called before a forward: call the layer on an input first
        """
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before a forward: call the "
                               "layer on an input first")
        x, stats, training = self._saved
        if training != self.training:
            raise RuntimeError(f"{type(self).__name__}: the forward ran in {'training' if training else 'eval'} "
                               f"mode but the layer is now in {'training' if self.training else 'eval'} mode; "
                               "run the forward again before backward")
        grads = self._backward(grad_output, x, stats)
        self.grads = {name: np.asarray(getattr(grads, name), dtype=param.dtype)
                      for name, param in self.params.items()}
        return grads.input

    def zero_grad(self) -> None:
        """Forget the stored gradients: ``self.grads`` becomes empty.

        Examples
        --------
        >>> import numbanorm as nn
        >>> layer = nn.LayerNorm(4)
        >>> layer.zero_grad()
        >>> layer.grads
        {}
        """
        self.grads = {}

    def _param(self, name):
        return self.params.get(name)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Array]:
        """Copies of the parameters and buffers, by name.

        Returns
        -------
        dict of str to ndarray
            ``weight``, ``bias`` (where affine), the running statistics and
            ``num_batches_tracked`` (where tracked), ``mean_weight``/``var_weight`` (switchable
            norm): copies, which later training does not change.

        Examples
        --------
        >>> import numbanorm as nn
        >>> sorted(nn.BatchNorm(4).state_dict())
        ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
        """
        return {name: np.array(value, copy=True) for name, value in {**self.params, **self.buffers}.items()}

    def load_state_dict(self: _L, state: Mapping[str, ArrayLike]) -> _L:
        """Copy ``state`` (as `state_dict` returns it) into the parameters and buffers, in place.

        Parameters
        ----------
        state : mapping of str to array_like
            Exactly the layer's keys, each value of the target's shape and dtype.

        Returns
        -------
        layer
            The layer itself.

        Raises
        ------
        ValueError
            If a key is missing or unexpected, or a value has another shape.
        TypeError
            If a value has another dtype.  Nothing is written when a check fails.

        Examples
        --------
        >>> import numpy as np
        >>> import numbanorm as nn
        >>> a, b = nn.BatchNorm(3), nn.BatchNorm(3)
        >>> _ = a(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
        >>> bool(np.array_equal(b.load_state_dict(a.state_dict()).buffers["running_mean"],
        ...                     a.buffers["running_mean"]))
        True
        """
        expected = {**self.params, **self.buffers}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state for {type(self).__name__} must have keys {sorted(expected)}; "
                             f"missing {missing}, unexpected {unexpected}")
        for name, target in expected.items():
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(f"state[{name!r}] must have shape {target.shape}, got {value.shape}")
            if value.dtype != target.dtype:
                raise TypeError(f"state[{name!r}] must have dtype {target.dtype}, got {value.dtype}")
        for name, target in expected.items():
            target[...] = state[name]
        return self

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write `state_dict` to an ``.npz`` file (``numpy.savez``; NumPy adds the ``.npz``
        suffix when ``path`` has none).

        Parameters
        ----------
        path : str or path-like
            The file to write.

        Examples
        --------
        >>> import os, tempfile
        >>> import numbanorm as nn
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "bn.npz")
        ...     nn.BatchNorm(4).save(path)
        ...     layer = nn.BatchNorm(4).load(path)
        >>> layer.buffers["running_var"].tolist()
        [1.0, 1.0, 1.0, 1.0]
        """
        np.savez(path, **self.state_dict())  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle

    def load(self: _L, path: Union[str, "os.PathLike[str]"]) -> _L:
        """Load a file written by `save` into the parameters and buffers (`load_state_dict`):
        an exact round trip.

        Parameters
        ----------
        path : str or path-like
            The ``.npz`` file.

        Returns
        -------
        layer
            The layer itself.

        Raises
        ------
        ValueError, TypeError
            As `load_state_dict`, when the file belongs to another layer.
        OSError
            If the file cannot be read.
        """
        with np.load(path) as data:
            return self.load_state_dict({name: data[name] for name in data.files})


def _affine(layer, shape, affine, bias=True):
    if affine:
        layer.params["weight"] = np.ones(shape, layer.dtype)
        if bias:
            layer.params["bias"] = np.zeros(shape, layer.dtype)


def _running(layer, num_features):
    layer.buffers["running_mean"] = np.zeros(num_features, layer.dtype)
    layer.buffers["running_var"] = np.ones(num_features, layer.dtype)
    layer.buffers["num_batches_tracked"] = np.zeros((), np.int64)


class _Tracked(_Layer):
    """Per-channel parameters and, when tracked, running statistics."""

    def __init__(self, num_features: int, eps: float, momentum: Optional[float], affine: bool,
                 track_running_stats: bool, channel_axis: int, dtype: DTypeLike,
                 running_var_unbiased: bool = True) -> None:
        super().__init__(dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.running_var_unbiased = running_var_unbiased
        self.channel_axis, self.track_running_stats = channel_axis, track_running_stats
        _affine(self, (num_features,), affine)
        if track_running_stats:
            _running(self, num_features)

    def _counter(self):
        return self.buffers.get("num_batches_tracked") if self.training else None


class BatchNorm(_Tracked):
    """``torch.nn.BatchNorm{1,2,3}d``: running statistics in eval mode when tracked.

    One class for every number of spatial axes: the input is ``(N, C, *spatial)``, or
    ``(N, *spatial, C)`` with ``channel_axis=-1``.  The forward is `batch_norm`, the backward
    `batch_norm_backward`.

    Parameters
    ----------
    num_features : int
        The number of channels C.
    eps : float
        Added to the variance inside the square root.
    momentum : float or None
        The weight of the new batch value in the running update (PyTorch's direction: Keras'
        ``momentum=0.99`` is ``momentum=0.01`` here); None: the cumulative average over
        ``num_batches_tracked`` batches.
    affine : bool
        Learnable ``weight`` (ones) and ``bias`` (zeros) of shape ``(C,)``.
    track_running_stats : bool
        Keep ``running_mean`` (zeros), ``running_var`` (ones, unbiased) and
        ``num_batches_tracked``, used in eval mode; without them eval uses the batch
        statistics too.
    channel_axis : int
        1 for ``(N, C, *spatial)``, -1 for channels-last; any axis but 0.
    dtype : dtype
        Of the parameters and buffers: float16, float32 or float64.
    running_var_unbiased : bool
        True (PyTorch's): ``running_var`` takes the unbiased batch variance; False: the biased
        one, as Keras, Flax and ONNX keep it (their conventions exactly with ``momentum = 1 -
        their momentum``).

    Raises
    ------
    TypeError
        If ``dtype`` is not float16, float32 or float64.

    Attributes
    ----------
    params : dict of str to ndarray
        The learnable parameters, updated in place by the training loop.
    buffers : dict of str to ndarray
        The running statistics and ``num_batches_tracked`` (a 0-d int64 counter), where tracked.
    grads : dict of str to ndarray
        The parameter gradients of the last `backward`, keyed as ``params``.
    training : bool
        The mode: True after construction and `train`, False after `eval`.

    See Also
    --------
    batch_norm, batch_norm_backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> layer = nn.BatchNorm(3)
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    >>> y = layer(x)
    >>> dx = layer.backward(np.ones_like(y))
    >>> for name, p in layer.params.items():
    ...     p -= 0.1 * layer.grads[name]
    >>> int(layer.buffers["num_batches_tracked"]), sorted(layer.params)
    (1, ['bias', 'weight'])
    >>> y_eval = layer.eval()(x)   # running statistics from now on
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, channel_axis: int = 1, dtype: DTypeLike = np.float32,
                 running_var_unbiased: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, channel_axis, dtype,
                         running_var_unbiased)

    def _forward(self, x):
        tracked = self.track_running_stats
        batch = self.training or not tracked
        return F.batch_norm(x, self.buffers.get("running_mean"), self.buffers.get("running_var"),
                            self._param("weight"), self._param("bias"), training=batch,
                            momentum=self.momentum, eps=self.eps, channel_axis=self.channel_axis,
                            return_stats=True, num_batches_tracked=self._counter(),
                            running_var_unbiased=self.running_var_unbiased)

    def _backward(self, dy, x, stats):
        return F.batch_norm_backward(dy, x, stats, self._param("weight"), channel_axis=self.channel_axis)


class InstanceNorm(_Tracked):
    """``torch.nn.InstanceNorm{1,2,3}d`` (affine and running statistics off by default).

    The forward is `instance_norm`, the backward `instance_norm_backward`.  With
    ``track_running_stats`` the running statistics are updated in training and normalize in
    eval mode, as PyTorch's.

    Parameters
    ----------
    num_features : int
        The number of channels C.
    eps : float
        Added to the variance inside the square root.
    momentum : float or None
        As `BatchNorm`.
    affine : bool
        Learnable ``weight`` and ``bias`` of shape ``(C,)`` (off by default, as PyTorch).
    track_running_stats : bool
        Keep running statistics (off by default, as PyTorch).
    channel_axis : int
        1 for ``(N, C, *spatial)``, -1 for channels-last.
    dtype : dtype
        Of the parameters and buffers: float16, float32 or float64.
    running_var_unbiased : bool
        True (PyTorch's): ``running_var`` takes the unbiased batch variance; False: the biased
        one, as Keras, Flax and ONNX keep it (their conventions exactly with ``momentum = 1 -
        their momentum``).

    Raises
    ------
    TypeError
        If ``dtype`` is not float16, float32 or float64.

    Attributes
    ----------
    params : dict of str to ndarray
        The learnable parameters, updated in place by the training loop.
    buffers : dict of str to ndarray
        The running statistics and ``num_batches_tracked`` (a 0-d int64 counter), where tracked.
    grads : dict of str to ndarray
        The parameter gradients of the last `backward`, keyed as ``params``.
    training : bool
        The mode: True after construction and `train`, False after `eval`.

    See Also
    --------
    instance_norm, instance_norm_backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> layer = nn.InstanceNorm(3, affine=True, channel_axis=-1)
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 5, 3)).astype(np.float32)
    >>> y = layer(x)
    >>> layer.backward(np.ones_like(y)).shape, layer.grads["weight"].shape
    ((2, 5, 5, 3), (3,))
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = False,
                 track_running_stats: bool = False, channel_axis: int = 1, dtype: DTypeLike = np.float32,
                 running_var_unbiased: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, channel_axis, dtype,
                         running_var_unbiased)

    def _forward(self, x):
        use_input = self.training or not self.track_running_stats
        return F.instance_norm(x, self.buffers.get("running_mean"), self.buffers.get("running_var"),
                               self._param("weight"), self._param("bias"), use_input_stats=use_input,
                               momentum=self.momentum, eps=self.eps, channel_axis=self.channel_axis,
                               return_stats=True, num_batches_tracked=self._counter(),
                               running_var_unbiased=self.running_var_unbiased)

    def _backward(self, dy, x, stats):
        return F.instance_norm_backward(dy, x, stats, self._param("weight"), channel_axis=self.channel_axis)


class LayerNorm(_Layer):
    """``torch.nn.LayerNorm`` over the trailing ``normalized_shape``.

    The forward is `layer_norm`, the backward `layer_norm_backward`.

    Parameters
    ----------
    normalized_shape : int or sequence of int
        The trailing dimensions to normalize over.
    eps : float
        Added to the variance inside the square root.
    elementwise_affine : bool
        Learnable ``weight`` (ones) and, with ``bias``, ``bias`` (zeros) of shape
        ``normalized_shape``.
    bias : bool
        Include the bias (with ``elementwise_affine``).
    dtype : dtype
        Of the parameters: float16, float32 or float64.

    Raises
    ------
    TypeError
        If ``dtype`` is not float16, float32 or float64.

    Attributes
    ----------
    params : dict of str to ndarray
        The learnable parameters, updated in place by the training loop.
    buffers : dict of str to ndarray
        The running statistics and ``num_batches_tracked`` (a 0-d int64 counter), where tracked.
    grads : dict of str to ndarray
        The parameter gradients of the last `backward`, keyed as ``params``.
    training : bool
        The mode: True after construction and `train`, False after `eval`.

    See Also
    --------
    layer_norm, layer_norm_backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> layer = nn.LayerNorm((4, 8), bias=False)
    >>> y = layer(np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32))
    >>> dx = layer.backward(np.ones_like(y))
    >>> sorted(layer.grads), layer.grads["weight"].shape
    (['weight'], (4, 8))
    """

    def __init__(self, normalized_shape: Union[int, Sequence[int]], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, dtype: DTypeLike = np.float32) -> None:
        super().__init__(dtype)
        # np.isscalar is no type guard: the sequence case is the tuple of its integers
        self.normalized_shape: tuple[int, ...] = (
            (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape))  # type: ignore[arg-type, assignment]
        self.eps = eps
        _affine(self, self.normalized_shape, elementwise_affine, bias)

    def _forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self._param("weight"), self._param("bias"),
                            self.eps, return_stats=True)

    def _backward(self, dy, x, stats):
        return F.layer_norm_backward(dy, x, stats, self.normalized_shape, self._param("weight"))


class RMSNorm(_Layer):
    """``torch.nn.RMSNorm``; ``eps=None`` is the machine epsilon of the input's dtype.

    The forward is `rms_norm`, the backward `rms_norm_backward`.

    Parameters
    ----------
    normalized_shape : int or sequence of int
        The trailing dimensions to normalize over.
    eps : float or None
        Added to the mean square inside the square root; None: the input dtype's machine
        epsilon.
    elementwise_affine : bool
        A learnable ``weight`` (ones) of shape ``normalized_shape``; there is no bias.
    dtype : dtype
        Of the parameters: float16, float32 or float64.

    Raises
    ------
    TypeError
        If ``dtype`` is not float16, float32 or float64.

    Attributes
    ----------
    params : dict of str to ndarray
        The learnable parameters, updated in place by the training loop.
    buffers : dict of str to ndarray
        The running statistics and ``num_batches_tracked`` (a 0-d int64 counter), where tracked.
    grads : dict of str to ndarray
        The parameter gradients of the last `backward`, keyed as ``params``.
    training : bool
        The mode: True after construction and `train`, False after `eval`.

    See Also
    --------
    rms_norm, rms_norm_backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> layer = nn.RMSNorm(8, dtype=np.float64)
    >>> y = layer(np.random.default_rng(0).standard_normal((3, 8)))
    >>> bool(np.allclose((y ** 2).mean(axis=-1), 1))
    True
    """

    def __init__(self, normalized_shape: Union[int, Sequence[int]], eps: Optional[float] = None,
                 elementwise_affine: bool = True, dtype: DTypeLike = np.float32) -> None:
        super().__init__(dtype)
        # np.isscalar is no type guard: the sequence case is the tuple of its integers
        self.normalized_shape: tuple[int, ...] = (
            (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape))  # type: ignore[arg-type, assignment]
        self.eps = eps
        _affine(self, self.normalized_shape, elementwise_affine, bias=False)

    def _forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self._param("weight"), self.eps, return_stats=True)

    def _backward(self, dy, x, stats):
        return F.rms_norm_backward(dy, x, stats, self.normalized_shape, self._param("weight"))


class GroupNorm(_Layer):
    """``torch.nn.GroupNorm``.

    The forward is `group_norm`, the backward `group_norm_backward`; no running statistics.

    Parameters
    ----------
    num_groups : int
        The number of groups of consecutive channels; a divisor of ``num_channels``.
    num_channels : int
        The number of channels C.
    eps : float
        Added to the variance inside the square root.
    affine : bool
        Learnable ``weight`` (ones) and ``bias`` (zeros) of shape ``(C,)``.
    channel_axis : int
        1 for ``(N, C, *spatial)``, -1 for channels-last.
    dtype : dtype
        Of the parameters: float16, float32 or float64.

    Raises
    ------
    TypeError
        If ``dtype`` is not float16, float32 or float64.

    Attributes
    ----------
    params : dict of str to ndarray
        The learnable parameters, updated in place by the training loop.
    buffers : dict of str to ndarray
        The running statistics and ``num_batches_tracked`` (a 0-d int64 counter), where tracked.
    grads : dict of str to ndarray
        The parameter gradients of the last `backward`, keyed as ``params``.
    training : bool
        The mode: True after construction and `train`, False after `eval`.

    See Also
    --------
    group_norm, group_norm_backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> layer = nn.GroupNorm(2, 6)
    >>> y = layer(np.random.default_rng(0).standard_normal((4, 6, 3)).astype(np.float32))
    >>> layer.backward(np.ones_like(y)).shape, layer.grads["bias"].tolist()
    ((4, 6, 3), [12.0, 12.0, 12.0, 12.0, 12.0, 12.0])
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 channel_axis: int = 1, dtype: DTypeLike = np.float32) -> None:
        super().__init__(dtype)
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.channel_axis = channel_axis
        _affine(self, (num_channels,), affine)

    def _forward(self, x):
        return F.group_norm(x, self.num_groups, self._param("weight"), self._param("bias"), self.eps,
                            channel_axis=self.channel_axis, return_stats=True)

    def _backward(self, dy, x, stats):
        return F.group_norm_backward(dy, x, stats, self.num_groups, self._param("weight"),
                                     channel_axis=self.channel_axis)


class SwitchableNorm(_Layer):
    """Switchable normalization with learnable mixture logits ``mean_weight``/``var_weight``
    (start equal: every statistic weighs the same) and batch-norm running statistics.

    The forward is `switchable_norm`, the backward `switchable_norm_backward`, whose logits'
    gradients land in ``grads["mean_weight"]`` and ``grads["var_weight"]``.

    Parameters
    ----------
    num_features : int
        The number of channels C.
    eps : float
        Added to the mixed variance inside the square root.
    momentum : float or None
        The batch term's running update, as `BatchNorm` (PyTorch's direction, not the
        reference code's 0.9 decay).
    affine : bool
        Learnable ``weight`` and ``bias`` of shape ``(C,)``.
    using_bn : bool
        Include the batch term (3 logits and running statistics) or not (2 logits, none).
    channel_axis : int
        1 for ``(N, C, *spatial)``, -1 for channels-last.
    dtype : dtype
        Of the parameters and buffers: float16, float32 or float64.
    running_var_unbiased : bool
        True (PyTorch's): ``running_var`` takes the unbiased batch variance; False: the biased
        one, as Keras, Flax and ONNX keep it (their conventions exactly with ``momentum = 1 -
        their momentum``).

    Raises
    ------
    TypeError
        If ``dtype`` is not float16, float32 or float64.

    Attributes
    ----------
    params : dict of str to ndarray
        The learnable parameters, updated in place by the training loop.
    buffers : dict of str to ndarray
        The running statistics and ``num_batches_tracked`` (a 0-d int64 counter), where tracked.
    grads : dict of str to ndarray
        The parameter gradients of the last `backward`, keyed as ``params``.
    training : bool
        The mode: True after construction and `train`, False after `eval`.

    See Also
    --------
    switchable_norm, switchable_norm_backward

    Examples
    --------
    >>> import numpy as np
    >>> import numbanorm as nn
    >>> layer = nn.SwitchableNorm(3)
    >>> y = layer(np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32))
    >>> dx = layer.backward(np.ones_like(y))
    >>> sorted(layer.grads), layer.grads["mean_weight"].shape
    (['bias', 'mean_weight', 'var_weight', 'weight'], (3,))
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 using_bn: bool = True, channel_axis: int = 1, dtype: DTypeLike = np.float32,
                 running_var_unbiased: bool = True) -> None:
        super().__init__(dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.running_var_unbiased = running_var_unbiased
        self.channel_axis, self.using_bn = channel_axis, using_bn
        _affine(self, (num_features,), affine)
        terms = 3 if using_bn else 2
        self.params["mean_weight"] = np.ones(terms, self.dtype)
        self.params["var_weight"] = np.ones(terms, self.dtype)
        if using_bn:
            _running(self, num_features)

    def _forward(self, x):
        return F.switchable_norm(x, self.params["mean_weight"], self.params["var_weight"],
                                 self.buffers.get("running_mean"), self.buffers.get("running_var"),
                                 self._param("weight"), self._param("bias"), training=self.training,
                                 momentum=self.momentum, eps=self.eps, channel_axis=self.channel_axis,
                                 using_bn=self.using_bn, return_stats=True,
                                 num_batches_tracked=self.buffers.get("num_batches_tracked") if self.training else None,
                                 running_var_unbiased=self.running_var_unbiased)

    def _backward(self, dy, x, stats):
        return F.switchable_norm_backward(dy, x, stats, self.params["mean_weight"], self.params["var_weight"],
                                          self._param("weight"), channel_axis=self.channel_axis)
