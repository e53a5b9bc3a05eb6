"""Stateful layers for hand-written training loops: parameters, running statistics, gradients.

Each layer's ``layer(x)`` runs the forward and keeps what its backward needs;
``layer.backward(grad_output)`` returns the input gradient and stores the parameter gradients in
``layer.grads`` (same names as ``layer.params``).  ``train()``/``eval()`` switch the mode;
``state_dict()``/``load_state_dict()`` and ``save(path)``/``load(path)`` (an ``.npz`` file) round-trip
parameters and buffers exactly.  Constructor arguments follow ``torch.nn``.
"""

import numpy as np

from . import _functional as F


class _Layer:
    """Common state handling; subclasses define ``_forward(x)`` and ``_backward(dy, x, stats)``."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype.type not in (np.float16, np.float32, np.float64):
            raise TypeError(f"dtype must be float16, float32 or float64, got {self.dtype}")
        self.params = {}
        self.buffers = {}
        self.grads = {}
        self.training = True
        self._saved = None

    # -- modes --------------------------------------------------------------------------------
    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- running ------------------------------------------------------------------------------
    def __call__(self, x):
        y, stats = self._forward(x)
        self._saved = (x, stats, self.training)
        return y

    def backward(self, grad_output):
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

    def zero_grad(self):
        self.grads = {}

    def _param(self, name):
        return self.params.get(name)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self):
        return {name: np.array(value, copy=True) for name, value in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, state):
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

    def save(self, path):
        np.savez(path, **self.state_dict())

    def load(self, path):
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

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, channel_axis, dtype,
                 running_var_unbiased=True):
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

    ``running_var_unbiased=False`` stores the biased batch variance (Keras, Flax: with
    ``momentum = 1 - their momentum``)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 channel_axis=1, dtype=np.float32, running_var_unbiased=True):
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
    """``torch.nn.InstanceNorm{1,2,3}d`` (affine and running statistics off by default)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 channel_axis=1, dtype=np.float32, running_var_unbiased=True):
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
    """``torch.nn.LayerNorm`` over the trailing ``normalized_shape``."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        super().__init__(dtype)
        self.normalized_shape = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)
        self.eps = eps
        _affine(self, self.normalized_shape, elementwise_affine, bias)

    def _forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self._param("weight"), self._param("bias"),
                            self.eps, return_stats=True)

    def _backward(self, dy, x, stats):
        return F.layer_norm_backward(dy, x, stats, self.normalized_shape, self._param("weight"))


class RMSNorm(_Layer):
    """``torch.nn.RMSNorm``; ``eps=None`` is the machine epsilon of the input's dtype."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__(dtype)
        self.normalized_shape = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)
        self.eps = eps
        _affine(self, self.normalized_shape, elementwise_affine, bias=False)

    def _forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self._param("weight"), self.eps, return_stats=True)

    def _backward(self, dy, x, stats):
        return F.rms_norm_backward(dy, x, stats, self.normalized_shape, self._param("weight"))


class GroupNorm(_Layer):
    """``torch.nn.GroupNorm``."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, channel_axis=1, dtype=np.float32):
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
    (start equal: every statistic weighs the same) and batch-norm running statistics."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, using_bn=True, channel_axis=1,
                 dtype=np.float32, running_var_unbiased=True):
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
