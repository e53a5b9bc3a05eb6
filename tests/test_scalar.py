"""The scalar helpers shared by the CPU and CUDA kernels (``numbanorm/_scalar.py``)."""

import hashlib
from pathlib import Path

import numbanorm
from numbanorm import _cpu, _scalar


def test_the_cpu_kernels_record_the_current_scalar_helpers():
    """Numba's on-disk cache keys ``_cpu``'s kernels on ``_cpu.py`` alone, so the helpers they
    inline from ``_scalar.py`` are pinned there by hash: after editing ``_scalar.py``, put its new
    hash in ``_cpu.SCALAR_SHA256`` (and the cached kernels are recompiled)."""
    source = Path(numbanorm.__file__).with_name("_scalar.py").read_bytes()
    assert _cpu.SCALAR_SHA256 == hashlib.sha256(source).hexdigest()


def test_chan_merge_of_an_empty_state_is_the_other_state():
    assert _scalar.chan_merge(3.0, 1.5, 2.0, 0.0, 0.0, 0.0) == (3.0, 1.5, 2.0)
    n, mean, m2 = _scalar.chan_merge(2.0, 1.0, 2.0, 2.0, 3.0, 2.0)  # {0, 2} and {2, 4}
    assert (n, mean, m2) == (4.0, 2.0, 8.0)
