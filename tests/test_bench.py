"""The bench command runs end to end on a small case and reports sane numbers."""

import json

from numbanorm import bench
from numbanorm.__main__ import main


def test_bench_command_small(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "GRID_SHAPE", (4, 64, 6, 6))
    monkeypatch.setattr(bench, "LAYER_SHAPES", ((64, 32),))
    out = tmp_path / "rows.json"
    assert main(["bench", "--repeats", "2", "--compare", "numpy", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 10  # 4 grid ops x 2 layouts + layer and RMS norm
    for row in rows:
        assert row["forward_s"] > 0 and row["copy_s"] > 0 and row["numpy_forward_s"] > 0
        assert row["max_error"] < 1e-4
    assert "fwd/copy" in capsys.readouterr().out


def test_main_without_command_is_usage_error(capsys):
    assert main([]) == 2


def test_info_command(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numba " in out and "threading layer" in out and "CUDA" in out
