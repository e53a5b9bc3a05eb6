"""asv benchmarks: numbanorm called from a user's @njit loop, beside the same loop written by hand.

A loop over 100 000 float32 rows of length 64 (the issue's case, and a shorter one), each row
normalized into an existing output: ``numbanorm.layer_norm(x[i], 64, w, b, out=y[i])`` inside
``@njit`` against a hand-written two-pass mean/variance/normalize loop.  ``setup`` compiles.
The ratio of the two ``time_`` results is what ``python -m numbanorm bench`` would report via
``numbanorm._bench_njit.njit_loop_times``.
"""

import timeit

import numpy as np

from numbanorm import _bench_njit


class NjitLayerNormLoop:
    params = [[100_000], [16, 64, 1024]]
    param_names = ["rows", "length"]
    timer = timeit.default_timer

    def setup(self, rows, length):
        rows = rows if length <= 64 else rows // 16  # the same order of bytes for long rows
        rng = np.random.default_rng(0)
        self.x = (rng.standard_normal((rows, length)) * 2 + 3).astype(np.float32)
        self.w = rng.standard_normal(length).astype(np.float32)
        self.b = rng.standard_normal(length).astype(np.float32)
        self.y = np.empty_like(self.x)
        for loop in _bench_njit.LOOPS.values():
            loop(self.x, self.w, self.b, self.y)  # compile outside the timed methods

    def time_numbanorm(self, rows, length):
        _bench_njit.numbanorm_loop(self.x, self.w, self.b, self.y)

    def time_numbanorm_allocating(self, rows, length):
        _bench_njit.numbanorm_loop_allocating(self.x, self.w, self.b, self.y)

    def time_hand_written(self, rows, length):
        _bench_njit.hand_loop(self.x, self.w, self.b, self.y)
