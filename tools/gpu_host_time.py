"""Issue #14 GPU measurements (run by tools/gpu_check.sh; needs a GPU, numba-cuda and torch).

1. host time per call: many back-to-back calls, one synchronize at the end, numbanorm beside
   PyTorch (torch CUDA tensors in);
2. launch-argument variants of one elementwise kernel: Numba device arrays, torch tensors
   (DLPack/CAI typing per launch), CAI-only objects, raw pointers (CPointer + carray, eager);
3. one CUDA-graph capture of a numbanorm call (torch.cuda.graph) and its replay.
Writes host_time.json and prints a table.
"""

import argparse
import json
import time
import traceback

import numpy as np
import torch
from numba import cuda, types
from numba.cuda.np.numpy_support import carray

import numbanorm as nn

CALLS = 200


def _host_time(fn, calls=CALLS):
    """(host us per call while enqueueing, us per call including the final sync)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / calls * 1e6, (t2 - t0) / calls * 1e6


def host_times():
    F = torch.nn.functional
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for shape, layout in (((32, 64, 56, 56), "nchw"), ((32, 56, 56, 64), "nhwc"), ((8192, 1024), "rows")):
        x = torch.randn(shape, device=dev, generator=g)
        dy = torch.randn(shape, device=dev, generator=g)
        if layout == "rows":
            c = shape[-1]
            w, b = torch.ones(c, device=dev), torch.zeros(c, device=dev)
            cases = {
                "layer_norm fwd": (lambda: nn.layer_norm(x, c, w, b), lambda: F.layer_norm(x, (c,), w, b)),
                "layer_norm fwd+bwd": (lambda: nn.layer_norm_backward(dy, x, nn.layer_norm(x, c, w, b, return_stats=True)[1], c, w),
                                       None),
                "rms_norm fwd": (lambda: nn.rms_norm(x, c, w), lambda: F.rms_norm(x, (c,), w)),
            }
        else:
            ca = 1 if layout == "nchw" else -1
            c = shape[ca]
            w, b = torch.ones(c, device=dev), torch.zeros(c, device=dev)
            rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
            xt = x if layout == "nchw" else x.permute(0, 3, 1, 2)  # torch sees NCHW (channels-last strides)
            cases = {
                "batch_norm train fwd": (lambda: nn.batch_norm(x, rm, rv, w, b, training=True, channel_axis=ca),
                                         lambda: F.batch_norm(xt, rm, rv, w, b, training=True)),
                "batch_norm eval fwd": (lambda: nn.batch_norm(x, rm, rv, w, b, channel_axis=ca),
                                        lambda: F.batch_norm(xt, rm, rv, w, b)),
                "batch_norm fwd+bwd": (lambda: nn.batch_norm_backward(dy, x, nn.batch_norm(
                    x, None, None, w, b, training=True, channel_axis=ca, return_stats=True)[1], w, channel_axis=ca), None),
                "group_norm fwd": (lambda: nn.group_norm(x, 32, w, b, channel_axis=ca),
                                   lambda: F.group_norm(xt, 32, w, b)),
            }
        for name, (ours, theirs) in cases.items():
            row = {"case": f"{name} {layout} {shape}"}
            try:
                row["numbanorm_host_us"], row["numbanorm_total_us"] = _host_time(ours)
            except Exception:
                row["numbanorm_error"] = traceback.format_exc(limit=3)
            if theirs is not None:
                row["torch_host_us"], row["torch_total_us"] = _host_time(theirs)
            rows.append(row)
            print(row, flush=True)
    return rows


@cuda.jit
def _axpb(x, y, a, b):
    i = cuda.grid(1)
    if i < x.shape[0]:
        y[i] = x[i] * a + b


@cuda.jit(types.void(types.CPointer(types.float32), types.CPointer(types.float32), types.int64, types.float32,
                     types.float32))
def _axpb_ptr(xp, yp, n, a, b):
    x = carray(xp, (n,))
    y = carray(yp, (n,))
    i = cuda.grid(1)
    if i < n:
        y[i] = x[i] * a + b


class _CAI:
    def __init__(self, t):
        self.__cuda_array_interface__ = t.__cuda_array_interface__


def launch_variants():
    n = 1 << 20
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)
    grid, block = (n + 255) // 256, 256
    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
    dx, dy_ = cuda.as_cuda_array(x), cuda.as_cuda_array(y)
    cx, cy = _CAI(x), _CAI(y)
    configured = _axpb[grid, block, stream]
    configured_ptr = _axpb_ptr[grid, block, stream]
    a, b = np.float32(2.0), np.float32(1.0)
    variants = {
        "numba device arrays, lazy jit": lambda: configured(dx, dy_, a, b),
        "torch tensors, lazy jit": lambda: configured(x, y, a, b),
        "CAI objects, lazy jit": lambda: configured(cx, cy, a, b),
        "raw pointers CPointer+carray, eager": lambda: configured_ptr(x.data_ptr(), y.data_ptr(), n, a, b),
    }
    rows = []
    for name, fn in variants.items():
        try:
            host, total = _host_time(fn, 1000)
            rows.append({"variant": name, "host_us_per_launch": host, "total_us_per_launch": total})
        except Exception:
            rows.append({"variant": name, "error": traceback.format_exc(limit=3)})
        print(rows[-1], flush=True)
    return rows


def graph_capture():
    x = torch.randn(32, 64, 56, 56, device="cuda")
    w, b = torch.ones(64, device="cuda"), torch.zeros(64, device="cuda")
    try:
        for _ in range(3):  # warm-up on the default stream: compilation and scratch
            nn.batch_norm(x, None, None, w, b, training=True)
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # torch's recipe: warm up on a side stream too
            for _ in range(3):
                nn.batch_norm(x, None, None, w, b, training=True)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = nn.batch_norm(x, None, None, w, b, training=True)
        x.copy_(torch.randn_like(x) * 3 + 2)
        graph.replay()
        torch.cuda.synchronize()
        ref = torch.nn.functional.batch_norm(x, None, None, w, b, training=True)
        err = float((y - ref).abs().max())
        t0 = time.perf_counter()
        for _ in range(CALLS):
            graph.replay()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        result = {"captured": True, "max_error_vs_torch": err, "replay_host_us": (t1 - t0) / CALLS * 1e6,
                  "replay_total_us": (t2 - t0) / CALLS * 1e6}
    except Exception:
        result = {"captured": False, "error": traceback.format_exc(limit=5)}
    print(result, flush=True)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, fn in (("host_time", host_times), ("launch_variants", launch_variants), ("graph", graph_capture)):
        try:
            results[name] = fn()
        except Exception:
            results[name] = {"error": traceback.format_exc(limit=5)}
        with open(f"{args.out}/host_time.json", "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
