"""Issue #14 GPU measurements (run by tools/gpu_check.sh; needs a GPU, numba-cuda and torch).

1. host time per call of every op on the device path: many back-to-back calls, one synchronize
   at the end, numbanorm beside PyTorch where PyTorch has a peer (torch CUDA tensors in);
2. launch-argument variants: the ops under each ``_cuda_pipelines.LAUNCH`` mode (per-launch
   typing, specialized kernels, the compiled kernel's own launch), and one elementwise toy
   kernel with Numba device arrays, torch tensors, CAI-only objects, a specialization, and raw
   pointers (CPointer + carray, eager signature);
3. float16 inputs: host time and the largest difference from PyTorch's half-precision result;
4. a ``torch.cuda.graph`` capture of a forward+backward and its replay, checked against torch
   autograd.
Writes host_time.json (after every section, so a time limit keeps what was done) and prints rows.

``NUMBANORM_GPU_CHECK_TINY=1``: tiny shapes and a few calls.  With ``NUMBA_ENABLE_CUDASIM=1`` as
well it is a dry run on a machine without a GPU: numbanorm gets simulator device arrays, PyTorch
runs on the CPU, and what needs a GPU (torch CUDA tensors, raw pointers, the compiled kernel,
graph capture) is reported as skipped.  It checks that the script runs, not any figure.
"""

import argparse
import json
import os
import time
import traceback

import numpy as np
import torch
from numba import cuda, types
from numba.core import config as numba_config
from numba.cuda.np.numpy_support import carray

import numbanorm as nn
from numbanorm import _cuda_pipelines as pipelines

TINY = os.environ.get("NUMBANORM_GPU_CHECK_TINY") == "1"
SIM = bool(getattr(numba_config, "ENABLE_CUDASIM", False))
CALLS = 3 if TINY else 200
F = torch.nn.functional
DEV = "cpu" if SIM else "cuda"
SHAPES = {"nchw": (2, 4, 3, 3), "nhwc": (2, 3, 3, 4), "rows": (4, 8)} if TINY else {
    "nchw": (32, 64, 56, 56), "nhwc": (32, 56, 56, 64), "rows": (8192, 1024)}
GROUPS = 2 if TINY else 32


def sync():
    if SIM:
        cuda.synchronize()
    else:
        torch.cuda.synchronize()


def ours(t):
    """What numbanorm gets for the torch tensor ``t``: ``t`` itself on a GPU, a simulator device
    array of its values in a dry run."""
    return cuda.to_device(t.numpy()) if SIM else t


def host(a):
    return a.copy_to_host() if SIM else a.detach().float().cpu().numpy()


def _host_time(fn, calls=CALLS):
    """(host us per call while enqueueing, us per call including the final sync)."""
    for _ in range(3 if TINY else 5):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) / calls * 1e6, (t2 - t0) / calls * 1e6


def _measure(label, ours_fn, theirs_fn, rows):
    row = {"case": label}
    try:
        row["numbanorm_host_us"], row["numbanorm_total_us"] = _host_time(ours_fn)
    except Exception:
        row["numbanorm_error"] = traceback.format_exc(limit=3)
    if theirs_fn is not None:
        try:
            row["torch_host_us"], row["torch_total_us"] = _host_time(theirs_fn)
        except Exception:
            row["torch_error"] = traceback.format_exc(limit=3)
    rows.append(row)
    print(row, flush=True)


def _grid_cases(layout, dtype=torch.float32):
    """(name, numbanorm call, PyTorch peer or None) for the NCHW/NHWC ops."""
    shape = SHAPES[layout]
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(shape, device=DEV, generator=g, dtype=dtype)
    dy = torch.randn(shape, device=DEV, generator=g, dtype=dtype)
    ca = 1 if layout == "nchw" else -1
    c = shape[ca]
    w, b = torch.ones(c, device=DEV, dtype=dtype), torch.zeros(c, device=DEV, dtype=dtype)
    rm, rv = torch.zeros(c, device=DEV, dtype=dtype), torch.ones(c, device=DEV, dtype=dtype)
    xt = x if layout == "nchw" else x.permute(0, 3, 1, 2)  # torch sees NCHW (channels-last strides)
    X, DY, W, B, RM, RV = (ours(t) for t in (x, dy, w, b, rm, rv))
    if dtype == torch.float16:
        return [
            ("batch_norm train fwd", lambda: nn.batch_norm(X, RM, RV, W, B, training=True, channel_axis=ca),
             lambda: F.batch_norm(xt, rm, rv, w, b, training=True)),
            ("group_norm fwd", lambda: nn.group_norm(X, GROUPS, W, B, channel_axis=ca),
             lambda: F.group_norm(xt, GROUPS, w, b)),
        ], (X, W, B, RM, RV, xt, w, b, rm, rv, ca)
    spatial = tuple(range(1, 3)) if ca == -1 else (2, 3)
    stats_axes = (0,) + spatial
    logits = torch.zeros(3, device=DEV)
    ML, VL = ours(logits), ours(logits.clone())
    mean_c, var_c = x.mean(dim=stats_axes), x.var(dim=stats_axes)
    pshape = (c, 1, 1) if ca == 1 else (c,)  # batch_normalization broadcasts by NumPy's rules
    MEAN, VAR, PW, PB = (ours(t.reshape(pshape)) for t in (mean_c, var_c, w, b))
    bn_stats = lambda: nn.batch_norm(X, None, None, W, B, training=True, channel_axis=ca, return_stats=True)[1]  # noqa: E731
    sw_stats = lambda: nn.switchable_norm(X, ML, VL, RM, RV, W, B, training=True, channel_axis=ca,  # noqa: E731
                                          return_stats=True)[1]
    norm_axes = tuple(range(1, 4))
    return [
        ("batch_norm train fwd", lambda: nn.batch_norm(X, RM, RV, W, B, training=True, channel_axis=ca),
         lambda: F.batch_norm(xt, rm, rv, w, b, training=True)),
        ("batch_norm eval fwd", lambda: nn.batch_norm(X, RM, RV, W, B, channel_axis=ca),
         lambda: F.batch_norm(xt, rm, rv, w, b)),
        ("batch_norm fwd+bwd", lambda: nn.batch_norm_backward(DY, X, bn_stats(), W, channel_axis=ca), None),
        ("instance_norm fwd", lambda: nn.instance_norm(X, None, None, W, B, channel_axis=ca),
         lambda: F.instance_norm(xt, None, None, w, b)),
        ("group_norm fwd", lambda: nn.group_norm(X, GROUPS, W, B, channel_axis=ca),
         lambda: F.group_norm(xt, GROUPS, w, b)),
        ("switchable_norm train fwd", lambda: nn.switchable_norm(X, ML, VL, RM, RV, W, B, training=True,
                                                                 channel_axis=ca), None),
        ("switchable_norm fwd+bwd", lambda: nn.switchable_norm_backward(DY, X, sw_stats(), ML, VL, W,
                                                                        channel_axis=ca), None),
        ("batch_normalization", lambda: nn.batch_normalization(X, MEAN, VAR, PB, PW, 1e-5),
         lambda: F.batch_norm(xt, mean_c, var_c, w, b)),
        # over every axis but the first: PyTorch's peer is a layer norm over the trailing axes
        ("normalize over (1, 2, 3) fwd", lambda: nn.normalize(X, norm_axes),
         lambda: F.layer_norm(x, tuple(x.shape[1:]))),
        ("moments over the statistics axes", lambda: nn.moments(X, stats_axes),
         lambda: torch.var_mean(x, dim=stats_axes, correction=0)),
        ("welford over the statistics axes", lambda: nn.welford(X, stats_axes),
         lambda: torch.var_mean(x, dim=stats_axes, correction=0)),
    ], None


def _row_cases(dtype=torch.float32):
    shape = SHAPES["rows"]
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(shape, device=DEV, generator=g, dtype=dtype)
    dy = torch.randn(shape, device=DEV, generator=g, dtype=dtype)
    c = shape[-1]
    w, b = torch.ones(c, device=DEV, dtype=dtype), torch.zeros(c, device=DEV, dtype=dtype)
    X, DY, W, B = (ours(t) for t in (x, dy, w, b))
    cases = [
        ("layer_norm fwd", lambda: nn.layer_norm(X, c, W, B), lambda: F.layer_norm(x, (c,), w, b)),
        ("rms_norm fwd", lambda: nn.rms_norm(X, c, W), lambda: F.rms_norm(x, (c,), w)),
    ]
    if dtype == torch.float16:
        return cases
    ln_stats = lambda: nn.layer_norm(X, c, W, B, return_stats=True)[1]  # noqa: E731

    def torch_ws():  # weight standardization composed from torch ops (no fused peer)
        v, m = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        return (x - m) * torch.rsqrt(v + 1e-5)

    return cases + [
        ("layer_norm fwd+bwd", lambda: nn.layer_norm_backward(DY, X, ln_stats(), c, W), None),
        ("weight_standardization fwd (torch: composed)", lambda: nn.weight_standardization(X), torch_ws),
        ("weight_standardization bwd", lambda: nn.weight_standardization_backward(DY, X), None),
        ("moments over rows", lambda: nn.moments(X, 1), lambda: torch.var_mean(x, dim=1, correction=0)),
    ]


def host_times():
    rows = []
    for layout in ("nchw", "nhwc"):
        for name, o, t in _grid_cases(layout)[0]:
            _measure(f"{name} {layout} {SHAPES[layout]}", o, t, rows)
    for name, o, t in _row_cases():
        _measure(f"{name} rows {SHAPES['rows']}", o, t, rows)
    return rows


def launch_modes():
    """A few ops under each ``_cuda_pipelines.LAUNCH`` mode (compiling the typed and specialized
    kernels once each is part of the warm-up)."""
    rows = []
    keep = pipelines.LAUNCH
    picked = {"batch_norm train fwd", "batch_norm fwd+bwd", "layer_norm fwd", "layer_norm fwd+bwd"}
    cases = [(f"{n} nchw", o) for n, o, _ in _grid_cases("nchw")[0] if n in picked]
    cases += [(f"{n} rows", o) for n, o, _ in _row_cases() if n in picked]
    try:
        for mode in ("typed", "specialized", "direct"):
            pipelines.LAUNCH = mode
            for name, fn in cases:
                _measure(f"{name} LAUNCH={mode}", fn, None, rows)
    finally:
        pipelines.LAUNCH = keep
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
    """One elementwise kernel, four float32 arguments, each way of passing them."""
    n = 1 << (6 if TINY else 20)
    x = torch.randn(n, device=DEV)
    y = torch.empty_like(x)
    grid, block = (n + 255) // 256, 256
    a, b = np.float32(2.0), np.float32(1.0)
    dx, dy_ = (cuda.to_device(x.numpy()), cuda.device_array(n, np.float32)) if SIM else (
        cuda.as_cuda_array(x), cuda.as_cuda_array(y))
    stream = 0 if SIM else cuda.external_stream(torch.cuda.current_stream().cuda_stream)
    specialized = _axpb.specialize(dx, dy_, a, b)
    variants = {
        "numba device arrays, lazy jit": lambda: _axpb[grid, block, stream](dx, dy_, a, b),
        "numba device arrays, specialized": lambda: specialized[grid, block, stream](dx, dy_, a, b),
    }
    if not SIM:  # kept configured objects, as Device.launch keeps them
        configured, configured_spec = _axpb[grid, block, stream], specialized[grid, block, stream]
        configured_ptr = _axpb_ptr[grid, block, stream]
        compiled = next(iter(specialized.overloads.values()))
        cx, cy = _CAI(x), _CAI(y)
        args = (dx, dy_, a, b)
        variants = {
            "numba device arrays, lazy jit": lambda: configured(dx, dy_, a, b),
            "numba device arrays, specialized": lambda: configured_spec(dx, dy_, a, b),
            "numba device arrays, compiled kernel's launch": lambda: compiled.launch(
                args, configured_spec.griddim, configured_spec.blockdim, configured_spec.stream, 0),
            "numba arrays from torch per launch (as_cuda_array), specialized": lambda: configured_spec(
                cuda.as_cuda_array(x, sync=False), cuda.as_cuda_array(y, sync=False), a, b),
            "torch tensors, lazy jit": lambda: configured(x, y, a, b),
            "torch tensors, specialized": lambda: configured_spec(x, y, a, b),
            "CAI objects, lazy jit": lambda: configured(cx, cy, a, b),
            "raw pointers CPointer+carray, eager": lambda: configured_ptr(x.data_ptr(), y.data_ptr(), n, a, b),
        }
    rows = []
    for name, fn in variants.items():
        try:
            host_us, total = _host_time(fn, 10 if TINY else 1000)
            rows.append({"variant": name, "host_us_per_launch": host_us, "total_us_per_launch": total})
        except Exception:
            rows.append({"variant": name, "error": traceback.format_exc(limit=3)})
        print(rows[-1], flush=True)
    if SIM:
        rows.append({"skipped": "torch tensors, CAI objects, the compiled kernel's launch and raw pointers need a GPU"})
    return rows


def float16():
    """Half-precision inputs: host time beside PyTorch's half, and the largest difference."""
    rows = []
    cases = [(f"{n} nchw float16", o, t) for n, o, t in _grid_cases("nchw", torch.float16)[0]]
    cases += [(f"{n} rows float16", o, t) for n, o, t in _row_cases(torch.float16)]
    for name, o, t in cases:
        _measure(name, o, t, rows)
        try:
            got = o()
            want = t()
            rows[-1]["max_abs_diff_vs_torch_half"] = float(np.abs(host(got) - want.float().cpu().numpy()).max())
        except Exception:
            rows[-1]["compare_error"] = traceback.format_exc(limit=3)
        print({"case": name, **{k: v for k, v in rows[-1].items() if "diff" in k or "compare" in k}}, flush=True)
    return rows


def _fwd_bwd_cases():
    """(name, tensors, numbanorm forward+backward, torch autograd of the same)."""
    g = torch.Generator(device=DEV).manual_seed(2)
    shape = SHAPES["nchw"]
    c = shape[1]
    x, dy = torch.randn(shape, device=DEV, generator=g), torch.randn(shape, device=DEV, generator=g)
    w, b = torch.rand(c, device=DEV, generator=g) + 0.5, torch.randn(c, device=DEV, generator=g)
    rows = SHAPES["rows"]
    xr, dyr = torch.randn(rows, device=DEV, generator=g), torch.randn(rows, device=DEV, generator=g)
    wr, br = torch.rand(rows[1], device=DEV, generator=g) + 0.5, torch.randn(rows[1], device=DEV, generator=g)

    def bn(X, DY, W, B):
        y, st = nn.batch_norm(X, None, None, W, B, training=True, return_stats=True)
        return (y,) + tuple(nn.batch_norm_backward(DY, X, st, W))

    def bn_ref(x, dy, w, b):
        return F.batch_norm(x, None, None, w, b, training=True)

    def ln(X, DY, W, B):
        y, st = nn.layer_norm(X, rows[1], W, B, return_stats=True)
        return (y,) + tuple(nn.layer_norm_backward(DY, X, st, rows[1], W))

    def ln_ref(x, dy, w, b):
        return F.layer_norm(x, (rows[1],), w, b)

    return [("batch_norm train", (x, dy, w, b), bn, bn_ref), ("layer_norm", (xr, dyr, wr, br), ln, ln_ref)]


def _autograd(ref, tensors):
    x, dy, w, b = (t.detach().clone().requires_grad_(i != 1) for i, t in enumerate(tensors))
    y = ref(x, dy, w, b)
    y.backward(dy)
    return [y.detach(), x.grad, w.grad, b.grad]


def graph_capture():
    """Forward+backward captured in one ``torch.cuda.graph``; the replay on new input values
    checked against torch autograd, and timed."""
    results = []
    for name, tensors, step, ref in _fwd_bwd_cases():
        result = {"case": f"{name} forward+backward"}
        try:
            x = tensors[0]
            args = tuple(ours(t) for t in tensors)
            if SIM:
                outs = step(*args)
                result["captured"] = False
                result["skipped"] = "graph capture needs a GPU; the uncaptured call was checked"
            else:
                for _ in range(3):  # warm-up on the default stream: compilation and scratch
                    step(*args)
                torch.cuda.synchronize()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):  # torch's recipe: warm up on a side stream too
                    for _ in range(3):
                        step(*args)
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outs = step(*args)
                x.copy_(torch.randn_like(x) * 3 + 2)  # new values in the captured input
                graph.replay()
                torch.cuda.synchronize()
                result["captured"] = True
            want = _autograd(ref, (x,) + tuple(tensors[1:]))
            result["max_abs_error_vs_torch_autograd"] = {
                k: float(np.abs(host(o) - r.detach().cpu().numpy()).max())
                for k, o, r in zip(("y", "dx", "dweight", "dbias"), outs, want)}
            if not SIM:
                t0 = time.perf_counter()
                for _ in range(CALLS):
                    graph.replay()
                t1 = time.perf_counter()
                torch.cuda.synchronize()
                t2 = time.perf_counter()
                result["replay_host_us"] = (t1 - t0) / CALLS * 1e6
                result["replay_total_us"] = (t2 - t0) / CALLS * 1e6
        except Exception:
            result["error"] = traceback.format_exc(limit=5)
        results.append(result)
        print(result, flush=True)
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--only", default="", help="comma-separated sections (default: all)")
    args = parser.parse_args()
    results = {"device": "simulator (dry run)" if SIM else torch.cuda.get_device_name(), "torch": torch.__version__,
               "launch_default": pipelines.LAUNCH, "tiny": TINY}
    sections = (("host_time", host_times), ("launch_modes", launch_modes), ("launch_variants", launch_variants),
                ("float16", float16), ("graph", graph_capture))
    only = {s for s in args.only.split(",") if s}
    for name, fn in sections:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            results[name] = fn()
        except Exception:
            results[name] = {"error": traceback.format_exc(limit=5)}
        results[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        with open(os.path.join(args.out, "host_time.json"), "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
