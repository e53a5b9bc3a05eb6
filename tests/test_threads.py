"""Many threads calling numbanorm at once (Dask's threaded scheduler, a user's pool) get the
results of serial calls."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import numbanorm as nn


def _every_op(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 6, 12, 12)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    w = rng.normal(size=6).astype(np.float32)
    out = []
    y, st = nn.batch_norm(x, np.zeros(6), np.ones(6), w, w, training=True, return_stats=True)
    out += [y, nn.batch_norm_backward(dy, x, st, w).input]
    y, st = nn.instance_norm(x, weight=w, return_stats=True)
    out += [y, nn.instance_norm_backward(dy, x, st, w).input]
    y, st = nn.group_norm(x, 3, w, return_stats=True)
    out += [y, nn.group_norm_backward(dy, x, st, 3, w).input]
    y, st = nn.layer_norm(x, (12, 12), return_stats=True)
    out += [y, nn.layer_norm_backward(dy, x, st, (12, 12)).input]
    y, st = nn.rms_norm(x, 12, return_stats=True)
    out += [y, nn.rms_norm_backward(dy, x, st, 12).input]
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y, st = nn.switchable_norm(xl, np.zeros(3), np.zeros(3), np.zeros(6), np.ones(6), training=True,
                               channel_axis=-1, return_stats=True)
    out += [y, nn.switchable_norm_backward(np.ones_like(xl), xl, st, np.zeros(3), np.zeros(3), channel_axis=-1).input]
    out += list(nn.moments(x, (0, 2)))
    return out


def test_eight_threads_calling_every_op_at_once_match_serial_calls():
    seeds = list(range(16))
    serial = [_every_op(s) for s in seeds]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            concurrent = list(pool.map(_every_op, seeds))
            for got, want in zip(concurrent, serial):
                for a, b in zip(got, want):
                    assert np.array_equal(a, b)


def test_workqueue_layer_takes_turns_instead_of_aborting(tmp_path):
    """Numba's workqueue layer aborts on concurrent parallel launches; numbanorm serialises them."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        from concurrent.futures import ThreadPoolExecutor
        import numba, numpy as np, numbanorm as nn
        x = np.random.default_rng(0).normal(size=(16, 8, 32, 32)).astype(np.float32)
        want = nn.group_norm(x, 4)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda _: nn.group_norm(x, 4), range(64)))
        assert numba.threading_layer() == "workqueue", numba.threading_layer()
        assert all(np.array_equal(g, want) for g in got)
        print("ok")
    """)
    env = dict(__import__("os").environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
