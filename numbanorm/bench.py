"""``python -m numbanorm bench``: time every op beside its peers, with its error.

For each case the table gives the median time of the forward and of forward+backward, each as a
multiple of ``x.copy()`` of the same tensor measured in the same run (the memory-traffic floor of
an op that returns a new array), PyTorch CPU's times at the same thread count when torch is
installed, and the largest error of the forward against the float64 NumPy reference.
"""

import argparse
import json
import time
from typing import NamedTuple

import numba
import numpy as np

from . import reference as ref
from ._functional import (batch_norm, batch_norm_backward, group_norm, group_norm_backward,
                          instance_norm, instance_norm_backward, layer_norm, layer_norm_backward,
                          rms_norm, rms_norm_backward, switchable_norm, switchable_norm_backward)

GRID_SHAPE = (32, 64, 56, 56)
LAYER_SHAPES = ((8192, 1024), (65536, 128))
GROUPS = 32
GRID_OPS = ("batch_norm", "instance_norm", "group_norm", "switchable_norm")
ROW_OPS = ("layer_norm", "rms_norm")


class Case(NamedTuple):
    op: str
    shape: tuple
    layout: str  # "nchw" / "nhwc" for grid ops, "rows" for layer norm


def _median_times(fns, repeats):
    """Median seconds of each callable, timed in interleaved rounds: on a shared, noisy machine
    a slow spell then hits every contender alike, so the ratios between them hold."""
    for fn in fns.values():
        fn()  # warm-up: compiles on first use
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def _ours(case, x, dy, w, b):
    """(forward, forward+backward) callables of numbanorm for ``case``."""
    ca = 1 if case.layout == "nchw" else -1
    if case.op == "layer_norm":
        ns = x.shape[-1:]
        fwd = lambda: layer_norm(x, ns, w, b, return_stats=True)
        return fwd, lambda: layer_norm_backward(dy, x, fwd()[1], ns, w)
    if case.op == "rms_norm":
        ns = x.shape[-1:]
        fwd = lambda: rms_norm(x, ns, w, return_stats=True)
        return fwd, lambda: rms_norm_backward(dy, x, fwd()[1], ns, w)
    if case.op == "switchable_norm":
        logits = np.zeros(3)
        fwd = lambda: switchable_norm(x, logits, logits, None, None, w, b, training=True, channel_axis=ca,
                                      return_stats=True)
        return fwd, lambda: switchable_norm_backward(dy, x, fwd()[1], logits, logits, w, channel_axis=ca)
    if case.op == "batch_norm":
        fwd = lambda: batch_norm(x, None, None, w, b, training=True, channel_axis=ca, return_stats=True)
        return fwd, lambda: batch_norm_backward(dy, x, fwd()[1], w, channel_axis=ca)
    if case.op == "instance_norm":
        fwd = lambda: instance_norm(x, None, None, w, b, channel_axis=ca, return_stats=True)
        return fwd, lambda: instance_norm_backward(dy, x, fwd()[1], w, channel_axis=ca)
    fwd = lambda: group_norm(x, GROUPS, w, b, channel_axis=ca, return_stats=True)
    return fwd, lambda: group_norm_backward(dy, x, fwd()[1], GROUPS, w, channel_axis=ca)


def _reference(case, x, w, b):
    if case.op == "layer_norm":
        return ref.layer_forward(x, 1, w, b)
    if case.op == "rms_norm":
        return ref.rms_forward(x, 1, w, np.finfo(x.dtype).eps)
    if case.op == "switchable_norm":
        return ref.switchable_forward(x, np.zeros(3), np.zeros(3), w, b, channel_axis=1 if case.layout == "nchw" else -1)
    kind = case.op.split("_")[0]
    ca = 1 if case.layout == "nchw" else -1
    return ref.grid_forward(x, kind, w, b, groups=GROUPS, channel_axis=ca)


def _torch(case, x, dy, w, b):
    """(forward, forward+backward) callables of PyTorch CPU, or None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    as_nchw = (lambda a: a) if case.layout != "nhwc" else (lambda a: a.permute(0, 3, 1, 2))
    tx, tdy = as_nchw(torch.from_numpy(x)), as_nchw(torch.from_numpy(dy))
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)

    if case.op == "switchable_norm":
        return None  # no framework has it

    def run(X, W, B):
        if case.op == "layer_norm":
            return F.layer_norm(X, X.shape[-1:], W, B)
        if case.op == "rms_norm":
            return F.rms_norm(X, X.shape[-1:], W)
        if case.op == "batch_norm":
            return F.batch_norm(X, None, None, W, B, training=True)
        if case.op == "instance_norm":
            return F.instance_norm(X, None, None, W, B)
        return F.group_norm(X, GROUPS, W, B)

    def both():
        X, W, B = (t.detach().requires_grad_(True) for t in (tx, tw, tb))
        run(X, W, B).backward(tdy)

    def forward():
        with torch.no_grad():
            run(tx, tw, tb)

    return forward, both


def cases(ops, layouts):
    out = []
    for op in ops:
        if op in ROW_OPS:
            out += [Case(op, s, "rows") for s in LAYER_SHAPES]
        else:
            n, c, h, w = GRID_SHAPE
            for layout in layouts:
                out.append(Case(op, GRID_SHAPE if layout == "nchw" else (n, h, w, c), layout))
    return out


def inputs(case, dtype, seed=0):
    """Seeded (x, dy, weight, bias) for a case."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape, dtype=np.float64).astype(dtype)
    dy = rng.standard_normal(case.shape, dtype=np.float64).astype(dtype)
    width = case.shape[-1] if case.op in ROW_OPS else case.shape[1 if case.layout == "nchw" else -1]
    return x, dy, rng.standard_normal(width).astype(dtype), rng.standard_normal(width).astype(dtype)


def contenders(case, dtype, peers=("torch",)):
    """Callables to time for a case: ``copy``, ``forward``, ``forward_backward``, and the peers'
    (``torch_forward``, ``torch_forward_backward``, ``numpy_forward``) that are available."""
    x, dy, w, b = inputs(case, dtype)
    fwd, both = _ours(case, x, dy, w, b)
    fns = {"copy": x.copy, "forward": fwd, "forward_backward": both}
    if "torch" in peers:
        peer = _torch(case, x, dy, w, b)
        if peer is not None:
            fns["torch_forward"], fns["torch_forward_backward"] = peer
    if "numpy" in peers:
        fns["numpy_forward"] = lambda: _reference(case, x, w, b)
    return fns


def measure(case, dtype, repeats, compare):
    fns = contenders(case, dtype, compare)
    numpy_forward = fns.pop("numpy_forward", None)
    row = dict(op=case.op, shape=list(case.shape), layout=case.layout, dtype=np.dtype(dtype).name,
               threads=numba.get_num_threads())
    row.update({f"{name}_s": t for name, t in _median_times(fns, repeats).items()})
    x, _, w, b = inputs(case, dtype)
    row["max_error"] = float(np.abs(fns["forward"]()[0].astype(np.float64) - _reference(case, x, w, b)).max())
    if numpy_forward is not None:  # slow: timed apart, fewer runs, scaled by a copy timed beside it
        times = _median_times({"copy": fns["copy"], "numpy": numpy_forward}, max(1, repeats // 5))
        row["numpy_forward_s"] = times["numpy"] / times["copy"] * row["copy_s"]
    return row


def format_table(rows):
    head = ("op", "layout", "shape", "copy ms", "fwd ms", "fwd/copy", "fwd+bwd ms", "f+b/copy",
            "torch fwd/copy", "torch f+b/copy", "numpy fwd/copy", "max err")
    lines = [head]
    for r in rows:
        copy = r["copy_s"]
        ratio = lambda key: f"{r[key] / copy:.2f}x" if key in r else "-"
        lines.append((r["op"], r["layout"], "x".join(map(str, r["shape"])), f"{copy * 1e3:.2f}",
                      f"{r['forward_s'] * 1e3:.2f}", ratio("forward_s"), f"{r['forward_backward_s'] * 1e3:.2f}",
                      ratio("forward_backward_s"), ratio("torch_forward_s"), ratio("torch_forward_backward_s"),
                      ratio("numpy_forward_s"), f"{r['max_error']:.1e}"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(str(v).ljust(wd) for v, wd in zip(line, widths)) + " |"
    rule = "|" + "|".join("-" * (wd + 2) for wd in widths) + "|"
    return "\n".join([fmt(lines[0]), rule] + [fmt(line) for line in lines[1:]])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numbanorm bench", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default=",".join(GRID_OPS + ROW_OPS),
                        help="comma-separated ops (default: all)")
    parser.add_argument("--layouts", default="nchw,nhwc", help="grid-op layouts: nchw,nhwc")
    parser.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    parser.add_argument("--threads", type=int, default=None, help="threads for numbanorm and torch")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per measurement (median)")
    parser.add_argument("--compare", default="torch", help="peers: torch,numpy or none")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        numba.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(numba.get_num_threads())
    except ImportError:
        pass
    compare = set(args.compare.split(","))
    rows = []
    for case in cases(args.ops.split(","), args.layouts.split(",")):
        rows.append(measure(case, np.dtype(args.dtype), args.repeats, compare))
        print(f"measured {case.op} {case.layout} {case.shape}", flush=True)
    print(f"\n{args.dtype}, {numba.get_num_threads()} threads, medians of {args.repeats} runs\n")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows
