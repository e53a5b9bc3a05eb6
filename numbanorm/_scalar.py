"""Scalar helpers shared by the CPU and CUDA kernels: plain Python, compiled where they are used
(``njit(inline="always")`` in ``_cpu``, ``cuda.jit(device=True)`` in ``_cuda_kernels``), so that
neither backend imports the other's kernels.

Numba's on-disk cache keys a compiled kernel on the source of its own file; a helper inlined from
this file is not part of that key.  ``_cpu`` (the module with cached kernels that compile these
helpers) therefore records this file's SHA-256 as ``SCALAR_SHA256``, and a test checks that it is
current: an edit here must change ``_cpu.py`` too, which makes Numba recompile its cached kernels.
"""


def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) states (Chan et al.); safe when either count is zero."""
    n = n_a + n_b
    if n_b == 0.0:
        return n_a, mean_a, m2_a
    delta = mean_b - mean_a
    frac = n_b / n
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


def piece(task, pieces, extent):
    """Task number -> (outer index, piece, start, stop): the tasks split each of the outer
    indices' ``extent`` into ``pieces`` near-equal spans."""
    outer = task // pieces
    part = task - outer * pieces
    step = (extent + pieces - 1) // pieces
    start = min(extent, part * step)
    return outer, part, start, min(extent, start + step)
