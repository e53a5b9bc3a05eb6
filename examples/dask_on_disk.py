"""Batch-normalize an array that lives on disk in chunks, with Dask and numbanorm.

    python -m pip install ".[dask]" && python examples/dask_on_disk.py [--shape 16 64 128 128] [--files 8]

The example writes the input as memory-mapped ``.npy`` files (one per chunk of samples), views
them as one Dask array, computes the batch statistics in one streaming pass (Welford states per
chunk, merged with Chan's formula), updates running statistics, and writes the normalized array
to another memory-mapped file chunk by chunk.  It then checks the result against the in-memory
computation and reports the time of each path.  ``--overhead`` instead times the Dask path
against the in-memory path on an in-memory array split into chunks.
"""

import argparse
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np

import numbanorm as nn


def write_chunks(folder, shape, files, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(shape[0]), files)):
        path = Path(folder) / f"x{i:03d}.npy"
        block = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(part),) + tuple(shape[1:]))
        block[...] = rng.standard_normal(block.shape, dtype=np.float32) * 3 + 7
        block.flush()
        paths.append(path)
    return paths


def on_disk(paths):
    return da.concatenate([da.from_array(np.load(p, mmap_mode="r"), chunks=-1) for p in paths], axis=0)


def normalize_on_disk(paths, out_path):
    x = on_disk(paths)
    c = x.shape[1]
    running_mean, running_var = np.zeros(c, np.float32), np.ones(c, np.float32)
    start = time.perf_counter()
    # statistics: one streaming pass over the files (running statistics are updated in place)
    y = nn.batch_norm(x, running_mean, running_var, training=True)
    stats_s = time.perf_counter() - start
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=x.shape)
    da.store(y, out)  # normalization: a second pass, chunk by chunk, into the output file
    out.flush()
    return out, running_mean, running_var, stats_s, time.perf_counter() - start


def measure_overhead(shape, chunks, repeats=5):
    """Median seconds of batch_norm (training) in memory and through Dask on the same array."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    lazy = da.from_array(x, chunks=(shape[0] // chunks,) + tuple(shape[1:]))

    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    eager_s = timed(lambda: nn.batch_norm(x, None, None, training=True))
    dask_s = timed(lambda: nn.batch_norm(lazy, None, None, training=True).compute())
    diff = np.abs(nn.batch_norm(lazy, None, None, training=True).compute()
                  - nn.batch_norm(x, None, None, training=True)).max()
    return eager_s, dask_s, float(diff)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[16, 64, 128, 128])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--overhead", action="store_true", help="time Dask against in-memory instead")
    args = parser.parse_args(argv)
    if args.overhead:
        eager_s, dask_s, diff = measure_overhead(tuple(args.shape), args.files)
        print(f"batch_norm {tuple(args.shape)} float32, {args.files} chunks: in memory {eager_s * 1e3:.1f} ms, "
              f"Dask {dask_s * 1e3:.1f} ms ({dask_s / eager_s:.2f}x), max |difference| {diff:.2e}")
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = write_chunks(folder, args.shape, args.files)
        out, rm, rv, stats_s, total_s = normalize_on_disk(paths, Path(folder) / "y.npy")
        x = np.concatenate([np.load(p) for p in paths])
        rm_ref, rv_ref = np.zeros_like(rm), np.ones_like(rv)
        y_ref = nn.batch_norm(x, rm_ref, rv_ref, training=True)
        print(f"{len(paths)} files, {x.nbytes / 2**20:.0f} MiB: statistics pass {stats_s:.2f} s, "
              f"statistics and normalized output written {total_s:.2f} s")
        print(f"max |y - in-memory y| = {np.abs(out - y_ref).max():.2e}; "
              f"running mean/var agree to {max(np.abs(rm - rm_ref).max(), np.abs(rv - rv_ref).max()):.2e}")


if __name__ == "__main__":
    main()
