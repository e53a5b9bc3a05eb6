"""Differential property tests of the public API against float64 references.

Every normalization (batch, instance, group, switchable, layer, RMS) and its backward is drawn
over ranks, shapes (size-1 axes, odd sizes, empty batches, long rows), dtypes, memory layouts of
the input, the gradient and ``out`` (independently, and different for the forward and the
backward), parameters, running statistics (stale ones too), data far from zero and the engine's
piece size and thread count, and compared with a plain-NumPy float64 reference written from the
definitions (`_diffcases.reference`) and, where PyTorch is installed, with its autograd in
float64; so are `moments`, `batch_normalization`, `welford`/`merge` and the layers.  Errors are
judged relative to the magnitude of what each result sums (see `_diffcases.excess`): a correct
float32 result is within 16 float32 ulps of it (1.9e-6), float64 within 16 float64 ulps.

Two profiles: ``quick`` (the default, run by CI) and ``thorough`` (5000 examples a test)::

    NUMBANORM_HYPOTHESIS=thorough python -m pytest tests/test_differential.py
"""

import dataclasses
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, note, settings, strategies as st

import numbanorm as nn
from numbanorm import reference
import _diffcases as dc

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("numbanorm-quick", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=_HEALTH)
settings.register_profile("numbanorm-thorough", max_examples=5000, deadline=None, print_blob=True,
                          suppress_health_check=_HEALTH)
PROFILE = os.environ.get("NUMBANORM_HYPOTHESIS", "quick")
if PROFILE not in ("quick", "thorough"):
    raise ValueError(f"NUMBANORM_HYPOTHESIS must be 'quick' or 'thorough', got {PROFILE!r}")


def examples(quick):
    """This module's profile, with ``quick`` examples in the quick one (sized to the test's cost)."""
    profile = settings.get_profile(f"numbanorm-{PROFILE}")
    return settings(profile, max_examples=quick) if PROFILE == "quick" else profile


def torch():
    return pytest.importorskip("torch")


# -- normalizations: forward, backward, running statistics ---------------------------------------------

def check_against_numpy(case):
    if case.expected_error():
        with pytest.raises(ValueError, match="Expected more than 1"):
            dc.run(case)
        return
    expected, magnitudes = dc.reference(case)
    dc.compare(case, dc.run(case), expected, magnitudes)


@pytest.mark.parametrize("family", dc.FAMILIES)
@examples(30)
@given(data=st.data())
def test_norm_matches_numpy_reference(family, data):
    check_against_numpy(data.draw(dc.cases((family,)), label="case"))


@pytest.mark.parametrize("family", dc.FAMILIES)
@examples(8)
@given(data=st.data())
def test_float32_keeps_its_digits_far_from_zero(family, data):
    """float32 data at 1e3..1e4 (the spread 1e-2..1e2) and running statistics far from the
    data: forward, backward and running statistics hold 16 float32 ulps as on centred data."""
    check_against_numpy(data.draw(dc.cases((family,), ("float32",), far=True), label="case"))


@pytest.mark.parametrize("family", dc.FAMILIES)
@examples(8)
@given(data=st.data())
def test_norm_matches_torch(family, data):
    torch()
    case = data.draw(dc.cases((family,)).filter(dc.torch_accepts), label="case")
    _, magnitudes = dc.reference(case)
    dc.compare(case, dc.run(case), dc.torch_reference(case), magnitudes, slack=dc.torch_slack(case))


@pytest.mark.parametrize("family", dc.FAMILIES)
@examples(4)
@given(data=st.data())
def test_reference_module_matches_definitions(family, data):
    """numbanorm.reference (the oracle of the other test modules and of ``bench``) agrees with
    the definitions here to float64 precision, on non-empty input it is meant for."""
    case = data.draw(dc.cases((family,)).filter(lambda c: c.x.size and not c.expected_error()), label="case")
    case = dataclasses.replace(case, out=None)  # the reference computes in float64: compared as such
    expected, magnitudes = dc.reference(case)
    dc.compare(case, dc.run(case, api=reference), expected, magnitudes, precision="float64")


_SEARCH = settings(max_examples=2000, phases=[Phase.generate], derandomize=True, database=None, deadline=None,
                   suppress_health_check=_HEALTH)


@pytest.mark.parametrize("path", dc.PATHS)
def test_cases_reach_every_path(path):
    """Among the cases the tests above draw, some take ``path``: each fused row and slab kernel,
    each planned moments/affine/gradient kernel, rows longer than one exact chunk, a copied plan
    (a layout with gaps), a fold (few channels), a reduction split in pieces."""

    def takes_path(case):
        if case.expected_error():
            return False
        with dc.paths() as seen:
            try:
                dc.run(case)
            except Exception:  # a failure is the other tests' to report; here it takes no path
                return False
        return path in seen

    find(dc.cases(), takes_path, settings=_SEARCH)


# -- statistics ------------------------------------------------------------------------------------

@examples(30)
@given(dc.stat_cases())
def test_moments_match_numpy(case):
    x = case.layout.apply(case.x)
    with dc.engine(*case.engine):
        mean, var = nn.moments(x, case.axes, keepdims=case.keepdims)
    _, mean_ref, var_ref, mean_size, var_size = dc.reference_moments(case.x, case.reduced, case.keepdims)
    assert np.array_equal(x, case.x)
    for what, got, want, size in (("mean", mean, mean_ref, mean_size), ("variance", var, var_ref, var_size)):
        assert got.dtype == case.x.dtype, f"{what}: dtype {got.dtype}"
        dc.assert_close(what, got, want, size, case.dtype)


@examples(30)
@given(dc.stat_cases(nonempty=False), st.data())
def test_welford_merge_of_random_splits_equals_the_whole(case, data):
    """The states of blocks of x (split along a reduced axis, empty blocks too) merged in a drawn
    order give the state of the whole x, and both its reference moments; finalize(ddof) is
    NumPy's variance where it has values left."""
    x = case.layout.apply(case.x)
    with dc.engine(*case.engine):
        whole = nn.welford(x, case.axes, keepdims=True)
        states = [whole]
        if case.reduced:
            axis = data.draw(st.sampled_from(case.reduced), label="split axis")
            cuts = sorted(data.draw(st.lists(st.integers(0, x.shape[axis]), max_size=4), label="cuts"))
            states = [nn.welford(block, case.axes, keepdims=True) for block in np.split(x, cuts, axis=axis)]
            note(f"{len(states)} blocks of {[s.count.flat[0] if s.count.size else 0 for s in states]}")
    while len(states) > 1:  # merge neighbours in a drawn order: any bracketing of the blocks
        i = data.draw(st.integers(0, len(states) - 2), label="merge at")
        states[i:i + 2] = [nn.merge(states[i], states[i + 1])]
    merged = states[0]
    count, mean_ref, var_ref, mean_size, var_size = dc.reference_moments(case.x, case.reduced, True)
    for state in (whole, merged):
        assert state.count.shape == state.mean.shape == state.m2.shape == np.shape(mean_ref)
        assert np.all(state.count == count), f"count {state.count.ravel()[:3]}, expected {count}"
        if case.x.size:
            dc.assert_close("mean", state.mean, mean_ref, mean_size, case.dtype)
            dc.assert_close("m2", state.m2, var_ref * count, tuple(s * count for s in var_size), case.dtype)
    ddof = data.draw(st.integers(0, 2), label="ddof")
    _, var = merged.finalize(ddof)
    if count - ddof <= 0:
        assert np.isnan(var).all(), f"finalize({ddof}) of {count} values: {var.ravel()[:3]}, expected NaN"
    elif case.x.size:
        dc.assert_close("finalize", var, var_ref * count / (count - ddof),
                        tuple(s * count / (count - ddof) for s in var_size), case.dtype)
    if not case.keepdims:
        squeezed = nn.welford(x, case.axes)
        assert squeezed.mean.shape == tuple(d for i, d in enumerate(case.shape) if i not in case.reduced)


@st.composite
def _broadcast_shapes(draw, shape):
    """A shape that broadcasts to ``shape``: a suffix of it, some axes 1."""
    suffix = shape[len(shape) - draw(st.integers(0, len(shape))):]
    return tuple(d if draw(st.booleans()) else 1 for d in suffix)


@examples(30)
@given(dc.stat_cases(nonempty=False), st.data())
def test_batch_normalization_matches_numpy(case, data):
    """``(x - mean) * scale / sqrt(variance + eps) + offset`` with every parameter broadcasting
    (or None: offset, scale), of any float dtype, the mean near the data or far from it."""
    x = case.layout.apply(case.x)
    rng = case.rng
    param_dtype = data.draw(st.sampled_from([case.dtype, "float32", "float64"]), label="parameter dtype")
    names = ("mean", "variance", "offset", "scale")
    shapes = {name: data.draw(_broadcast_shapes(case.shape), label=name) for name in names}
    far = data.draw(st.sampled_from([0.0, 30.0]), label="mean's distance in spreads")
    params = {"mean": case.offset + case.scale * rng.uniform(-far - 1, far + 1, shapes["mean"]),
              "variance": case.scale ** 2 * 10.0 ** rng.uniform(-1, 1, shapes["variance"]),
              "offset": rng.normal(0.0, 1.0, shapes["offset"]), "scale": rng.normal(1.0, 0.5, shapes["scale"])}
    params = {name: p.astype(param_dtype) for name, p in params.items()}
    for name in ("offset", "scale"):
        if data.draw(st.booleans(), label=f"{name} is None"):
            params[name] = None
    eps = data.draw(st.sampled_from([1e-3, 1e-5, 0.0]), label="variance_epsilon")
    with dc.engine(*case.engine):
        y = nn.batch_normalization(x, params["mean"], params["variance"], params["offset"], params["scale"], eps)
    wide = {name: 0.0 if p is None else p.astype(np.float64) for name, p in params.items()}
    alpha = (1.0 if params["scale"] is None else wide["scale"]) / np.sqrt(wide["variance"] + eps)
    v = case.x.astype(np.float64)
    expected = (v - wide["mean"]) * alpha + wide["offset"]
    magnitudes = (np.abs(v - wide["mean"]) * np.abs(alpha) + np.abs(wide["offset"]),
                  (np.abs(v) + np.abs(wide["mean"])) * np.abs(alpha) + np.abs(wide["offset"]))
    assert y.dtype == case.x.dtype and np.array_equal(x, case.x)
    dc.assert_close("y", y, expected, magnitudes, case.dtype)


# -- layers ----------------------------------------------------------------------------------

def _torch_has_the_layer(setup):
    """torch.nn has no switchable norm, and its InstanceNorm takes momentum=None as 0 (running
    statistics never move) where numbanorm's takes the cumulative average, as BatchNorm does."""
    kind, kw, _, _ = setup
    return kind != "SwitchableNorm" and not (kind == "InstanceNorm" and kw["momentum"] is None)


_LAYER_SETUPS = {"numpy": dc.layer_setups(), "torch": dc.layer_setups().filter(_torch_has_the_layer)}


@pytest.mark.parametrize("oracle", ["numpy", "torch"])
@examples(8)
@given(data=st.data())
def test_layers_match(oracle, data):
    """A few steps of a layer in drawn modes (train/eval), each a forward and a backward: the
    output, input and parameter gradients and buffers (running statistics, num_batches_tracked)
    are those of the functional reference called with the layer's state as ``torch.nn`` does,
    or those of the ``torch.nn`` module stepped beside it."""
    if oracle == "torch":
        torch()
    kind, kw, shape, dtype = data.draw(_LAYER_SETUPS[oracle], label="layer")
    layer = getattr(nn, kind)(**kw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    for param in layer.params.values():
        param[...] = rng.normal(1.0, 0.5, param.shape)
    twin = dc.TorchTwin(layer, kind, kw, len(shape)) if oracle == "torch" else None
    for step in range(data.draw(st.integers(1, 3), label="steps")):
        training = data.draw(st.booleans(), label=f"training at step {step}")
        layer.train(training)
        x_layout, dy_layout = (data.draw(dc.layouts(len(shape)), label=f"layout of {a}") for a in ("x", "dy"))
        case = dc.layer_case(layer, kind, shape, dtype, int(rng.integers(2**32)), (x_layout, x_layout, dy_layout))
        expected, magnitudes = dc.reference(case)
        if twin is not None:
            expected = twin.step(training, case.x, case.dy)
        elif "running_mean" in layer.buffers:
            expected["count"] = int(layer.buffers["num_batches_tracked"]) + case.updates_running
        actual = {"y": layer(x_layout.apply(case.x)), "input": layer.backward(dy_layout.apply(case.dy))}
        actual.update({name: layer.grads.get(name) for name in ("weight", "bias", "mean_weight", "var_weight")})
        if "running_mean" in layer.buffers:
            actual.update(running_mean=layer.buffers["running_mean"], running_var=layer.buffers["running_var"],
                          count=int(layer.buffers["num_batches_tracked"]))
        dc.compare(case, actual, expected, magnitudes, slack=dc.torch_slack(case) if twin else 0.0)
