"""Issue #14: each op's whole data path stays on the device.

Under Numba's CUDA simulator, every call on device inputs is counted after a warm-up call of the
same shapes: host<->device transfers (``cuda.to_device``, ``copy_to_host``, ``copy_to_device``,
a NumPy array handed to a kernel, ``synchronize``) must be 0, and kernel launches must stay within
the issue's budget.  The forward's ``stats`` are device arrays, and running statistics (and a
device ``num_batches_tracked``) change in place on the device.
"""

import contextlib

import numpy as np
import pytest

import numbanorm as nn
from numbanorm import _checks as chk

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda (the cuda extra) is not installed")
if not cuda.is_available():
    pytest.skip("no CUDA device and no simulator", allow_module_level=True)
if not cuda.simulator_enabled if hasattr(cuda, "simulator_enabled") else False:
    pytest.skip("the counting hooks are the simulator's", allow_module_level=True)

from numba.cuda.simulator import kernel as sim_kernel  # noqa: E402
from numba.cuda.simulator.cudadrv import devicearray as sim_array  # noqa: E402


class Traffic:
    def __init__(self):
        self.launches, self.transfers = [], []


@contextlib.contextmanager
def counted(monkeypatch):
    """Count kernel launches and host<->device traffic inside the block."""
    seen = Traffic()
    call = sim_kernel.FakeCUDAKernel.__call__

    def launch(self, *args):
        if not self._device and sim_kernel._kernel_context is None:
            seen.launches.append(self.fn.__name__)
            seen.transfers += [f"{self.fn.__name__}: a host array argument" for a in args
                               if isinstance(a, np.ndarray) and a.ndim > 0]
        return call(self, *args)

    def note(what, fn):
        def wrapped(*args, **kwargs):
            seen.transfers.append(what)
            return fn(*args, **kwargs)
        return wrapped

    with monkeypatch.context() as m:
        m.setattr(sim_kernel.FakeCUDAKernel, "__call__", launch)
        m.setattr(cuda, "to_device", note("to_device", cuda.to_device))
        m.setattr(cuda, "synchronize", note("synchronize", cuda.synchronize))
        m.setattr(sim_array.FakeCUDAArray, "copy_to_host", note("copy_to_host", sim_array.FakeCUDAArray.copy_to_host))
        m.setattr(sim_array.FakeCUDAArray, "copy_to_device",
                  note("copy_to_device", sim_array.FakeCUDAArray.copy_to_device))
        yield seen


# the launch budget per call
BUDGET = {"layer": (1, 2), "rms": (1, 2), "batch": (3, 3), "batch-eval": (1, 3), "instance": (3, 3),
          "instance-running": (3, 3), "instance-eval": (1, 3), "group": (3, 3)}
# what this implementation launches (forward, backward): pinned so that a regression shows
LAUNCHES = {"layer": (1, 2), "rms": (1, 2), "batch": (2, 2), "batch-eval": (1, 2), "instance": (2, 2),
            "instance-running": (2, 2), "instance-eval": (1, 2), "group": (2, 2)}


def _arrays(ca, rng, dtype=np.float64):
    x = rng.normal(size=(3, 4, 5, 3)) * 2 + 1
    if ca == -1:
        x = np.moveaxis(x, 1, -1)
    host = [np.ascontiguousarray(a, dtype) for a in
            (x, rng.normal(size=x.shape), rng.normal(size=4), rng.normal(size=4), rng.normal(size=4),
             rng.uniform(0.5, 2, 4))]
    return host, [cuda.to_device(a) for a in host]


def _row_weight(x):
    """Layer/RMS norm weights on the device, for the trailing two axes of ``x``."""
    return cuda.to_device(np.linspace(0.5, 1.5, int(np.prod(x.shape[2:]))).reshape(tuple(x.shape)[-2:]))


_ROW_WEIGHTS = {}


def _lw(x):
    key = tuple(x.shape)
    if key not in _ROW_WEIGHTS:
        _ROW_WEIGHTS[key] = _row_weight(x)
    return _ROW_WEIGHTS[key]


def _forward(op, x, w, b, rm, rv, ca, nbt=None, momentum=0.3):
    if op == "batch":
        return nn.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, channel_axis=ca, return_stats=True,
                             num_batches_tracked=nbt)
    if op == "batch-eval":
        return nn.batch_norm(x, rm, rv, w, b, training=False, channel_axis=ca, return_stats=True)
    if op == "instance":
        return nn.instance_norm(x, None, None, w, b, channel_axis=ca, return_stats=True)
    if op == "instance-running":
        return nn.instance_norm(x, rm, rv, w, b, momentum=0.3, channel_axis=ca, return_stats=True)
    if op == "instance-eval":
        return nn.instance_norm(x, rm, rv, w, b, use_input_stats=False, channel_axis=ca, return_stats=True)
    if op == "group":
        return nn.group_norm(x, 2, w, b, channel_axis=ca, return_stats=True)
    if op == "layer":
        return nn.layer_norm(x, x.shape[-2:], _lw(x), _lw(x), return_stats=True)
    return nn.rms_norm(x, x.shape[-2:], _lw(x), return_stats=True)


def _backward(op, dy, x, stats, w, ca):
    if op.startswith("batch"):
        return nn.batch_norm_backward(dy, x, stats, w, channel_axis=ca)
    if op.startswith("instance"):
        return nn.instance_norm_backward(dy, x, stats, w, channel_axis=ca)
    if op == "group":
        return nn.group_norm_backward(dy, x, stats, 2, w, channel_axis=ca)
    if op == "layer":
        return nn.layer_norm_backward(dy, x, stats, x.shape[-2:], _lw(x))
    return nn.rms_norm_backward(dy, x, stats, x.shape[-2:], _lw(x))


@pytest.mark.parametrize("ca", [1, -1])
@pytest.mark.parametrize("op", list(BUDGET))
def test_a_call_stays_on_the_device(monkeypatch, op, ca):
    rng = np.random.default_rng(14)
    (x, dy, w, b, rm, rv), (X, DY, W, B, RM, RV) = _arrays(ca, rng)
    NBT = cuda.to_device(np.zeros(1, np.int64))
    _backward(op, DY, X, _forward(op, X, W, B, RM, RV, ca, NBT)[1], W, ca)  # warm-up: scratch, compilation
    before_m, before_v = RM.copy_to_host(), RV.copy_to_host()
    with counted(monkeypatch) as fwd:
        y, stats = _forward(op, X, W, B, RM, RV, ca, NBT)
    with counted(monkeypatch) as bwd:
        grads = _backward(op, DY, X, stats, W, ca)
    assert fwd.transfers == [] and bwd.transfers == [], (fwd.transfers, bwd.transfers)
    budget = BUDGET[op]
    assert len(fwd.launches) <= budget[0] and len(bwd.launches) <= budget[1], (fwd.launches, bwd.launches)
    assert (len(fwd.launches), len(bwd.launches)) == LAUNCHES[op], (fwd.launches, bwd.launches)
    assert chk.is_device_array(y) and chk.is_device_array(stats.mean) and chk.is_device_array(stats.rstd)
    assert all(g is None or chk.is_device_array(g) for g in grads)
    if op in ("batch", "instance-running"):  # updated in place, by a kernel
        assert not np.allclose(RM.copy_to_host(), before_m) and not np.allclose(RV.copy_to_host(), before_v)
    else:
        assert np.array_equal(RM.copy_to_host(), before_m) and np.array_equal(RV.copy_to_host(), before_v)
    if op == "batch":
        assert NBT.copy_to_host()[0] == 2  # the device counter, incremented by the kernel


def test_batch_norm_running_statistics_match_the_cpu_with_a_device_counter():
    rng = np.random.default_rng(15)
    (x, _, w, b, rm, rv), (X, _, W, B, RM, RV) = _arrays(1, rng)
    nbt, NBT = np.zeros(1, np.int64), cuda.to_device(np.zeros(1, np.int64))
    for _ in range(3):  # the cumulative average (momentum=None) reads the counter on the device
        y_ref, st_ref = _forward("batch", x, w, b, rm, rv, 1, nbt, None)
        y, st = _forward("batch", X, W, B, RM, RV, 1, NBT, None)
    np.testing.assert_allclose(RM.copy_to_host(), rm, rtol=1e-12)
    np.testing.assert_allclose(RV.copy_to_host(), rv, rtol=1e-12)
    assert NBT.copy_to_host()[0] == nbt[0] == 3
    np.testing.assert_allclose(st.mean.copy_to_host(), st_ref.mean, rtol=1e-12)
    np.testing.assert_allclose(y.copy_to_host(), y_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("axes", [(0, 2, 3), (1,), (0,), (2, 3), (1, 2), (0, 1, 2, 3)])
def test_moments_stay_on_the_device(monkeypatch, axes):
    x = np.random.default_rng(16).normal(size=(3, 4, 5, 6)) + 3
    X = cuda.to_device(x)
    nn.moments(X, axes)
    with counted(monkeypatch) as seen:
        mean, var = nn.moments(X, axes, keepdims=True)
    assert seen.transfers == [] and 1 <= len(seen.launches) <= 2, (seen.transfers, seen.launches)
    np.testing.assert_allclose(mean.copy_to_host(), x.mean(axis=axes, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(var.copy_to_host(), x.var(axis=axes, keepdims=True), rtol=1e-10)


@pytest.mark.parametrize("op", ["batch", "group", "layer"])
def test_many_pieces_per_group_finalize_on_the_device(op):
    """Groups long enough to be split over several blocks: the last block merges the pieces."""
    rng = np.random.default_rng(17)
    x = rng.normal(size=(2, 4, 16, 24)) + 5  # batch norm: 768 values per channel, 12 pieces of 64
    dy, w, b = rng.normal(size=x.shape), rng.normal(size=4), rng.normal(size=4)
    X, DY, W, B = (cuda.to_device(a) for a in (x, dy, w, b))
    if op == "layer":
        w, b = rng.normal(size=(16, 24)), rng.normal(size=(16, 24))
        W, B = cuda.to_device(w), cuda.to_device(b)
        y_ref, st_ref = nn.layer_norm(x, (16, 24), w, b, return_stats=True)
        y, st = nn.layer_norm(X, (16, 24), W, B, return_stats=True)
        g_ref, g = nn.layer_norm_backward(dy, x, st_ref, (16, 24), w), nn.layer_norm_backward(DY, X, st, (16, 24), W)
    elif op == "batch":
        y_ref, st_ref = nn.batch_norm(x, None, None, w, b, training=True, return_stats=True)
        y, st = nn.batch_norm(X, None, None, W, B, training=True, return_stats=True)
        g_ref, g = nn.batch_norm_backward(dy, x, st_ref, w), nn.batch_norm_backward(DY, X, st, W)
    else:
        y_ref, st_ref = nn.group_norm(x, 2, w, b, return_stats=True)
        y, st = nn.group_norm(X, 2, W, B, return_stats=True)
        g_ref, g = nn.group_norm_backward(dy, x, st_ref, 2, w), nn.group_norm_backward(DY, X, st, 2, W)
    np.testing.assert_allclose(y.copy_to_host(), y_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(st.rstd.copy_to_host(), st_ref.rstd, rtol=1e-12)
    for got, want in zip(g, g_ref):
        np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-9, atol=1e-9)


# -- the ops ported after the named norms: switchable norm, normalize, batch_normalization, weight
# standardization, welford and moments of any layout.  (forward, backward) launches: budget and pinned.
MORE_BUDGET = {"switchable": (4, 4), "switchable-eval": (4, 4), "switchable-no-bn": (4, 4), "normalize": (2, 3),
               "batch_normalization": (1, 0), "weight_standardization": (1, 2), "welford": (1, 0)}
MORE_LAUNCHES = {"switchable": (3, 3), "switchable-eval": (3, 3), "switchable-no-bn": (3, 3), "normalize": (2, 3),
                 "batch_normalization": (1, 0), "weight_standardization": (1, 2), "welford": (1, 0)}


def _host_tree(value):
    if value is None or isinstance(value, (bool, float, str, tuple)) and not hasattr(value, "_fields"):
        return value
    if hasattr(value, "_fields"):
        return type(value)(*(_host_tree(v) for v in value))
    return value.copy_to_host() if chk.is_device_array(value) else value


def _more(op, ca, rng):
    """(forward(arrays), backward(arrays, forward's result) or None, host arrays, device arrays)."""
    x = rng.normal(size=(3, 4, 5, 3)) * 2 + 1
    if ca == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    channels = (4,) if ca == -1 else (4, 1, 1)
    host = {"x": x, "dy": rng.normal(size=x.shape), "w": rng.normal(size=4), "b": rng.normal(size=4),
            "rm": rng.normal(size=4), "rv": rng.uniform(0.5, 2, 4), "logits": np.array([0.3, -0.2, 0.1]),
            "vlogits": np.array([-0.1, 0.4, 0.2]), "pw": rng.normal(size=channels), "pb": rng.normal(size=channels),
            "mean": rng.normal(size=channels), "var": rng.uniform(0.5, 2, channels)}
    if op == "switchable-no-bn":
        host["logits"], host["vlogits"] = host["logits"][:2], host["vlogits"][:2]
    if op == "weight_standardization":
        host["x"], host["dy"] = rng.normal(size=(6, 4, 3, 3)) + 2, rng.normal(size=(6, 4, 3, 3))
    dev = {k: cuda.to_device(np.ascontiguousarray(v)) for k, v in host.items()}
    stat_axes = (0, 2, 3) if ca == 1 else (0, 1, 2)

    def forward(a):
        if op.startswith("switchable"):
            return nn.switchable_norm(a["x"], a["logits"], a["vlogits"], a["rm"], a["rv"], a["w"], a["b"],
                                      training=op == "switchable" or op == "switchable-no-bn", momentum=0.3,
                                      channel_axis=ca, using_bn=op != "switchable-no-bn", return_stats=True)
        if op == "normalize":
            return nn.normalize(a["x"], stat_axes, a["pw"], a["pb"], return_stats=True)
        if op == "batch_normalization":
            return nn.batch_normalization(a["x"], a["mean"], a["var"], a["pb"], a["pw"], 1e-3)
        if op == "weight_standardization":
            return nn.weight_standardization(a["x"])
        return nn.welford(a["x"], stat_axes)

    def backward(a, result):
        if op.startswith("switchable"):
            return nn.switchable_norm_backward(a["dy"], a["x"], result[1], a["logits"], a["vlogits"], a["w"],
                                               channel_axis=ca)
        if op == "normalize":
            return nn.normalize_backward(a["dy"], a["x"], result[1], stat_axes, a["pw"])
        if op == "weight_standardization":
            return nn.weight_standardization_backward(a["dy"], a["x"])
        return None

    return forward, backward, host, dev


def _assert_tree_close(got, want, what):
    if want is None or isinstance(want, (bool, str)):
        assert got == want or (got is None) == (want is None), what
        return
    if isinstance(want, tuple):
        for k, (g, w) in enumerate(zip(got, want)):
            _assert_tree_close(g, w, f"{what}[{k}]")
        return
    if isinstance(want, float):
        assert got == pytest.approx(want), what
        return
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=1e-10, atol=1e-12,
                               err_msg=what)


@pytest.mark.parametrize("ca", [1, -1])
@pytest.mark.parametrize("op", list(MORE_BUDGET))
def test_the_other_ops_stay_on_the_device_and_match_the_cpu(monkeypatch, op, ca):
    if op == "weight_standardization" and ca == -1:
        pytest.skip("weight standardization has one layout (output channels first)")
    forward, backward, host, dev = _more(op, ca, np.random.default_rng(18))
    result = forward(dev)
    backward(dev, result)  # warm-up: scratch, compilation
    RM, RV = dev["rm"], dev["rv"]
    before_m, before_v = RM.copy_to_host(), RV.copy_to_host()
    with counted(monkeypatch) as fwd:
        result = forward(dev)
    with counted(monkeypatch) as bwd:
        grads = backward(dev, result)
    assert fwd.transfers == [] and bwd.transfers == [], (fwd.transfers, bwd.transfers)
    budget = MORE_BUDGET[op]
    assert len(fwd.launches) <= budget[0] and len(bwd.launches) <= budget[1], (fwd.launches, bwd.launches)
    assert (len(fwd.launches), len(bwd.launches)) == MORE_LAUNCHES[op], (fwd.launches, bwd.launches)
    flat = list(result) if isinstance(result, tuple) else [result]
    flat += [v for part in flat if isinstance(part, tuple) for v in part]
    flat += list(grads) if grads is not None else []
    assert all(not isinstance(v, np.ndarray) for v in flat), [type(v) for v in flat]  # stats, grads: on the device
    if op in ("switchable", "switchable-no-bn"):
        moved = not np.allclose(RM.copy_to_host(), before_m)
        assert moved == (op == "switchable")  # updated in place by a kernel, only with a batch term
    # the CPU, from the state the device started from (two trainings already moved the running statistics)
    host["rm"], host["rv"] = before_m, before_v
    want = forward(host)
    _assert_tree_close(_host_tree(result), want, f"{op} forward")
    _assert_tree_close(_host_tree(grads), backward(host, want), f"{op} backward")
    np.testing.assert_allclose(RM.copy_to_host(), host["rm"], rtol=1e-12)
    np.testing.assert_allclose(RV.copy_to_host(), host["rv"], rtol=1e-12)


@pytest.mark.parametrize("axes", [(0, 2), (1, 3), (0, 1, 3), (3,)])
def test_moments_of_any_layout_stay_on_the_device(monkeypatch, axes):
    """Layouts that are not [kept][reduced][kept][reduced] go through the strided statistics."""
    x = np.random.default_rng(19).normal(size=(3, 4, 5, 6)) + 3
    X = cuda.to_device(x)
    nn.moments(X, axes)
    with counted(monkeypatch) as seen:
        mean, var = nn.moments(X, axes)
    assert seen.transfers == [] and len(seen.launches) == 1, (seen.transfers, seen.launches)
    np.testing.assert_allclose(mean.copy_to_host(), x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(var.copy_to_host(), x.var(axis=axes), rtol=1e-10)


# -- launch cost: kernels specialized once per argument types; an interface read once, unsynchronized --

def test_kernels_are_specialized_once_per_argument_types(monkeypatch):
    from numbanorm import _cuda_pipelines as pipelines

    made = []
    specialize = sim_kernel.FakeCUDAKernel.specialize

    def counting(self, *args):
        made.append((self.fn.__name__, args[0].dtype))
        return specialize(self, *args)

    monkeypatch.setattr(sim_kernel.FakeCUDAKernel, "specialize", counting)
    monkeypatch.setattr(pipelines, "LAUNCH", "specialized")
    monkeypatch.setattr(pipelines.device(), "_specialized", {})
    rng = np.random.default_rng(17)
    x32 = rng.normal(size=(3, 8)).astype(np.float32)
    X32 = cuda.to_device(x32)
    y = nn.layer_norm(X32, 8)
    nn.layer_norm(cuda.to_device(rng.normal(size=(5, 4)).astype(np.float32)), 4)  # other shape, same types
    assert made == [("_row_forward", np.float32)]
    nn.layer_norm(cuda.to_device(x32.astype(np.float64)), 8)
    assert made == [("_row_forward", np.float32), ("_row_forward", np.float64)]
    np.testing.assert_allclose(y.copy_to_host(), nn.layer_norm(x32, 8), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(pipelines, "LAUNCH", "typed")  # per-launch typing: no specialization
    np.testing.assert_allclose(nn.layer_norm(X32, 8).copy_to_host(), y.copy_to_host(), rtol=0, atol=0)
    assert len(made) == 2


def test_a_launch_key_is_a_function_of_numbas_types():
    """``_arg_type`` keys the specializations: two arguments of one key must have one Numba type."""
    import numba

    from numbanorm._cuda_pipelines import _arg_type

    values = [0, 7, 2**40, -3, 0.5, 1e300, (1, 2), (3, 4), (1, 2, 3), (), np.float32(1), np.int32(2),
              cuda.device_array(3), cuda.device_array((2, 3), np.float32), cuda.device_array(4, np.float16)]
    seen = {}
    for v in values:
        assert seen.setdefault(_arg_type(v), numba.typeof(v)) == numba.typeof(v), v


class _Producer:
    """A ``__cuda_array_interface__`` producer holding a simulator device array; counts the reads
    of its interface (a property, as CuPy's and torch's)."""

    def __init__(self, array, stream=None):
        self.array, self.stream, self.reads = array, stream, 0
        self.shape, self.dtype = array.shape, array.dtype

    @property
    def __cuda_array_interface__(self):
        self.reads += 1
        desc = {"shape": self.array.shape, "typestr": self.array.dtype.str, "data": (0, False), "version": 3,
                "strides": None}
        if self.stream is not None:
            desc["stream"] = self.stream
        return desc


def _producers(monkeypatch, module):
    """The simulator has no ``as_cuda_array``: one that reads the interface, notes ``sync`` and
    returns the producer's array; and producers whose class lives in ``module``."""
    syncs = []

    def as_cuda_array(obj, sync=True):
        obj.__cuda_array_interface__
        syncs.append(sync)
        return obj.array

    monkeypatch.setattr(cuda, "as_cuda_array", as_cuda_array, raising=False)
    return type("ndarray", (_Producer,), {"__module__": module}), syncs


def test_a_cupy_array_interface_is_read_once_per_call_without_a_stream_sync(monkeypatch):
    import types

    Producer, syncs = _producers(monkeypatch, "cupy._core.core")
    fake = types.ModuleType("cupy")  # what _cuda uses of CuPy: the current stream and empty
    fake.cuda = types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    fake.empty = lambda shape, dtype: Producer(cuda.device_array(shape, dtype), stream=1)
    monkeypatch.setitem(__import__("sys").modules, "cupy", fake)
    rng = np.random.default_rng(18)
    x, w, b = rng.normal(size=(4, 6)), rng.normal(size=6), rng.normal(size=6)
    X, W, B = (Producer(cuda.to_device(a), stream=1) for a in (x, w, b))  # CuPy names its current stream
    y = nn.layer_norm(X, 6, W, B)
    assert (X.reads, W.reads, B.reads) == (1, 1, 1)
    assert syncs and not any(syncs), syncs
    np.testing.assert_allclose(y.array.copy_to_host(), nn.layer_norm(x, 6, w, b), rtol=1e-12, atol=1e-12)


def test_another_producers_stream_is_synchronized(monkeypatch):
    """A producer that is neither torch nor CuPy may name a stream other than the one launched on:
    the interface's rule (the consumer synchronizes) holds."""
    Producer, syncs = _producers(monkeypatch, "someproducer")
    x = np.random.default_rng(19).normal(size=(4, 6))
    y = nn.layer_norm(Producer(cuda.to_device(x), stream=5), 6)
    assert syncs == [True]
    np.testing.assert_allclose(y.copy_to_host(), nn.layer_norm(x, 6), rtol=1e-12, atol=1e-12)
