"""The bench and info commands run end to end on small cases and report sane numbers."""

import json
import time

import numpy as np
import pytest

import numbanorm

from numbanorm import bench
from numbanorm.__main__ import main


def _small(monkeypatch):
    monkeypatch.setattr(bench, "GRID_SHAPE", (4, 64, 6, 6))
    monkeypatch.setattr(bench, "LAYER_SHAPES", ((64, 32),))
    monkeypatch.setattr(bench, "WEIGHT_SHAPE", (16, 8, 3, 3))


def test_bench_command_small(tmp_path, monkeypatch, capsys):
    _small(monkeypatch)
    out, picture = tmp_path / "rows.json", tmp_path / "bench.png"
    assert main(["bench", "--repeats", "2", "--compare", "numpy,torch", "--json", str(out),
                 "--plot", str(picture), "--threads", "1"]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * len(bench.GRID_OPS) + len(bench.ROW_OPS) + len(bench.WEIGHT_OPS)  # a row per case
    assert {r["op"] for r in rows} == set(bench.OPS)
    for row in rows:
        assert row["forward_s"] > 0 and row["copy_s"] > 0 and row["numpy_forward_s"] > 0
        assert row["forward_gbs"] > 0 and row["threads"] == 1
        assert row["max_error"] < 1e-4
    text = capsys.readouterr().out
    assert "### batch_norm" in text and "% copy bw" in text
    assert picture.read_bytes()[:4] == b"\x89PNG"


def test_bench_shapes_option(monkeypatch, capsys):
    rows = bench.main(["--ops", "group_norm,layer_norm", "--shapes", "2x64x4x4,16x8", "--layouts", "nhwc",
                       "--repeats", "1", "--compare", "none"])
    assert [(r["op"], tuple(r["shape"])) for r in rows] == [("group_norm", (2, 4, 4, 64)), ("layer_norm", (16, 8))]


def test_small_shapes_grid(monkeypatch):
    """``--small`` times every op at 64 to 64 K elements, many calls to a reading."""
    monkeypatch.setattr(bench, "SMALL_CALLS", 3)
    rows = bench.main(["--small", "--ops", "group_norm,rms_norm", "--repeats", "1", "--compare", "torch"])
    shapes = [(r["op"], r["layout"], tuple(r["shape"])) for r in rows]
    assert shapes[:2] == [("group_norm", "nchw", (1, 32, 2, 1)), ("group_norm", "nhwc", (1, 2, 1, 32))]
    assert [np.prod(s) for _, _, s in shapes] == [64, 64, 2048, 2048, 16384, 16384, 65536, 65536,
                                                  64, 2048, 16384, 65536]
    assert all(r["forward_s"] > 0 and r["max_error"] < 1e-4 for r in rows)


def test_scaling_and_its_plot(tmp_path):
    rows = bench.scaling("layer_norm", np.dtype(np.float32), 1, [1, 2], sizes=(2048, 8192))
    assert [r["sweep"] for r in rows] == ["size", "size", "threads", "threads"]
    assert rows[0]["elements"] < rows[1]["elements"]
    bench.plot(rows, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 1000


def test_main_without_command_is_usage_error(capsys):
    assert main([]) == 2


def test_info_command(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numba " in out and "threading layer" in out and "CUDA" in out


def test_accuracy_command_and_offsets(monkeypatch, capsys):
    """The accuracy table: numbanorm's error on offset data is at the data's precision and, where
    PyTorch is installed, no worse than PyTorch's."""
    rows = bench.accuracy_rows(shape=(4, 8, 6, 6), groups=2)
    ops = bench._accuracy_ops()
    assert {"batch_norm", "instance_norm", "group_norm", "layer_norm"} <= {op.name for op in ops}
    assert len(rows) == 4 * len(ops)
    for r in rows:
        precision = 1e-6 if r["data"].startswith("float32") else 1e-8
        assert r["numbanorm"] < 4 * precision, r
        if "torch" in r and "+" in r["data"]:
            assert r["numbanorm"] <= r["torch"], r
    monkeypatch.setattr(bench, "ACCURACY_SHAPE", (4, 8, 6, 6))
    monkeypatch.setattr(bench, "accuracy_rows", lambda: rows)
    assert main(["accuracy"]) == 0
    printed = capsys.readouterr().out
    assert "| float64 1e+08 + N(0,1) | layer_norm |" in printed


def test_median_times_times_the_call_after_an_untimed_lead_in():
    calls = {"a": [], "b": []}

    def slow_after_the_other(name):
        other = "b" if name == "a" else "a"

        def fn():  # the first call after the other contender is slow, later ones fast
            slow = not calls[name] or calls[other] and calls[other][-1] > calls[name][-1]
            calls[name].append(len(calls["a"]) + len(calls["b"]))
            if slow:
                time.sleep(0.02)
        return fn

    times = bench._median_times({n: slow_after_the_other(n) for n in calls}, repeats=3, lead_in=0.001)
    assert set(times) == {"a", "b"}
    assert all(t < 0.01 for t in times.values())  # the slow first call of each round was not timed
    assert all(len(c) >= 1 + 3 * 2 for c in calls.values())  # warm-up, then lead-in + timed per round


def test_forward_backward_keeps_the_output_alive_through_the_backward(monkeypatch):
    """As in training (the output is the next layer's input) and in PyTorch's ``out.backward()``:
    freed before the backward, the output's memory, still in cache, would take the input gradient
    and flatter numbanorm's time."""
    import weakref
    outputs = []
    forward, backward = numbanorm.group_norm, numbanorm.group_norm_backward

    def watched_forward(*args, **kwargs):
        y, stats = forward(*args, **kwargs)
        outputs.append(weakref.ref(y))
        return y, stats

    def checked_backward(*args, **kwargs):
        assert outputs[-1]() is not None, "the forward's output was freed before the backward"
        return backward(*args, **kwargs)

    monkeypatch.setattr(numbanorm, "group_norm", watched_forward)
    monkeypatch.setattr(numbanorm, "group_norm_backward", checked_backward)
    case = bench.Case("group_norm", (2, 64, 4, 4), "nchw")
    _, both = bench._ours(case, *bench.inputs(case, np.float32))
    grads, y = both()
    assert len(outputs) == 1 and grads.input.shape == y.shape == case.shape


@pytest.mark.parametrize("op", sorted(bench.OPS))
def test_the_forward_alone_is_an_inference_forward_for_both_contenders(op):
    """The timed forward keeps no statistics, as PyTorch's peer keeps none (its tensors need no
    gradient, so it builds no graph); forward+backward is a training step on both sides."""
    case = bench.small_cases([op], bench.OPS[op].layouts)[0]
    fns = bench.contenders(case, np.float32, peers=("torch",))
    y = fns["forward"]()
    assert isinstance(y, np.ndarray) and y.shape == case.shape
    grads, y_training = fns["forward_backward"]()
    np.testing.assert_array_equal(y, y_training)
    assert grads[0].shape == case.shape
    if "torch_forward" in fns:
        peer = fns["torch_forward"]()
        assert not peer.requires_grad and peer.grad_fn is None
        np.testing.assert_allclose(peer.numpy(), y if case.layout != "nhwc" else np.moveaxis(y, -1, 1), atol=1e-4)


def test_njit_loop_option(capsys):
    rows = bench.main(["--njit-loop", "--shapes", "50x16", "--repeats", "1"])
    assert rows[0]["numbanorm"] > 0 and rows[0]["hand"] > 0 and rows[0]["ratio"] > 0
    assert "written by hand" in capsys.readouterr().out
