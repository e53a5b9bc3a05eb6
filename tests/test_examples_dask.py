"""The on-disk Dask example: streaming statistics over memory-mapped files match in-memory."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.array")

_path = Path(__file__).resolve().parents[1] / "examples" / "dask_on_disk.py"
_spec = importlib.util.spec_from_file_location("dask_on_disk", _path)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

import numbanorm as nn  # noqa: E402


def test_normalize_on_disk_matches_in_memory(tmp_path):
    paths = example.write_chunks(tmp_path, (10, 4, 8, 8), files=3)
    out, rm, rv, _, _ = example.normalize_on_disk(paths, tmp_path / "y.npy")
    x = np.concatenate([np.load(p) for p in paths])
    rm_ref, rv_ref = np.zeros(4, np.float32), np.ones(4, np.float32)
    y = nn.batch_norm(x, rm_ref, rv_ref, training=True)
    assert np.abs(np.asarray(out) - y).max() < 1e-6
    assert np.abs(rm - rm_ref).max() < 1e-6 and np.abs(rv - rv_ref).max() < 1e-5


def test_overhead_measurement_runs():
    eager_s, dask_s, diff = example.measure_overhead((8, 4, 8, 8), chunks=4, repeats=1)
    assert eager_s > 0 and dask_s > 0 and diff < 1e-6
