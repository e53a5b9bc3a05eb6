"""``python -m numbanorm bench``: time every op beside its peers, with its error.

Each op gets a table: the median time of the forward and of forward+backward, the effective
bandwidth (bytes the op must move / time: the forward reads x and writes y, the backward reads x
and dy and writes dx), that bandwidth as a percentage of ``x.copy()`` of the same tensor measured
in the same run (the memory-traffic floor of an op that returns a new array), the speed-up over
each peer (PyTorch at the same thread count, the plain-NumPy formulation), and the largest error
of the forward against the float64 NumPy reference.  Contenders are timed in interleaved rounds.

``--scaling`` times one op against size (1e4 to 1e8 elements) and thread count instead.
``--plot FILE.png`` draws the results (matplotlib); ``--json FILE`` writes them.
"""

import argparse
import json
import time
from typing import NamedTuple

import inspect

import numba
import numpy as np

import numbanorm
from . import reference as ref
from ._ops import GROUPS, OPS, of_kind

GRID_SHAPE = (32, 64, 56, 56)
LAYER_SHAPES = ((8192, 1024), (65536, 128))
WEIGHT_SHAPE = (1024, 512, 3, 3)
# ``--small``: calls of 64 to 64 K elements, where the time of a call is mostly not its arithmetic
SMALL_SHAPES = {
    "grid": ((1, 32, 2, 1), (4, 32, 4, 4), (16, 32, 8, 4), (16, 64, 8, 8)),
    "rows": ((4, 16), (16, 128), (128, 128), (256, 256)),
    "weight": ((8, 8, 1, 1), (32, 64, 1, 1), (128, 128, 1, 1), (256, 256, 1, 1)),
}
SMALL_CALLS = 200  # back-to-back calls per timed round of ``--small``
GRID_OPS = tuple(op.name for op in of_kind("grid"))
ROW_OPS = tuple(op.name for op in of_kind("rows"))
WEIGHT_OPS = tuple(op.name for op in of_kind("weight"))


class Case(NamedTuple):
    op: str
    shape: tuple
    layout: str  # "nchw" / "nhwc" for grid ops, "rows" for row ops, "weight" for weight ops


def _median_times(fns, repeats, lead_in=0.05, calls=1):
    """Median seconds of one call of each callable, timed in interleaved rounds: on a shared,
    noisy machine a slow spell then hits every contender alike, so the ratios between them hold.
    A round times ``calls`` calls back to back (microsecond calls need many to a reading).

    In every round each callable first runs untimed for ``lead_in`` seconds (at least once), and
    only the call after that is timed, as in a loop that repeats one op.  A call's time depends
    on what ran just before it: PyTorch and Numba each bring an OpenMP runtime whose threads spin
    after a parallel region, and on this project's VM a copy that follows PyTorch's
    forward+backward took 5.0 ms, falling call by call to 2.9 ms over the next ~40 ms.  Timing
    each contender right after another one would charge it with its predecessor's wake."""
    for fn in fns.values():
        fn()  # compiles on first use
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            until = time.perf_counter() + lead_in
            fn()
            while time.perf_counter() < until:
                fn()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: float(np.median(t)) for name, t in times.items()}


def _ours(case, x, dy, w, b):
    """(forward, forward+backward) callables of numbanorm for ``case``."""
    op, ca = OPS[case.op], _channel_axis(case)
    forward, backward = op.functions(numbanorm)  # looked up once, as PyTorch's peer is
    # the forward alone is an inference forward, keeping no statistics, as PyTorch's peer (whose
    # tensors need no gradient) keeps none; forward+backward is a training step
    fwd = lambda: op.forward(forward, x, w, b, ca, GROUPS, return_stats=False)
    training = lambda: op.forward(forward, x, w, b, ca, GROUPS, return_stats=True)
    bwd = lambda stats: op.backward(backward, dy, x, stats, w, ca, GROUPS)

    def both():
        # the output stays alive through the backward, as in training (it is the next layer's
        # input) and as in PyTorch's ``out.backward()``: freed first, its memory -- still in cache
        # -- would take the input gradient and flatter the backward's time
        y, stats = training()
        return bwd(stats), y

    return fwd, both


def _channel_axis(case):
    return -1 if case.layout == "nhwc" else 1


def _reference(case, x, w, b):
    return OPS[case.op].run_forward(ref, x, w, b, _channel_axis(case))[0]


def _torch(case, x, dy, w, b, to=None):
    """(forward, forward+backward) callables of PyTorch (CPU, or where ``to`` puts the tensors),
    or None without torch or without a PyTorch peer."""
    peer = OPS[case.op].torch
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if peer is None:
        return None
    as_nchw = (lambda a: a) if case.layout != "nhwc" else (lambda a: a.permute(0, 3, 1, 2))
    to = to or torch.from_numpy
    tx, tdy = as_nchw(to(x)), as_nchw(to(dy))
    params = [None if p is None else to(p) for p in (w, b)]

    def both():
        X, W, B = (None if t is None else t.detach().requires_grad_(True) for t in (tx, *params))
        peer(F, X, W, B, GROUPS).backward(tdy)

    def forward():
        # no ``torch.no_grad()`` per call: these tensors need no gradient, so PyTorch builds no
        # graph without it, and entering it costs a few microseconds, a small call's whole time
        return peer(F, tx, *params, GROUPS)

    return forward, both


def small_cases(ops, layouts):
    """The ``--small`` grid: each op at 64, 2 K, 16 K and 64 K elements (weight ops: near them)."""
    out = []
    for op in ops:
        kind = OPS[op].kind
        for shape in SMALL_SHAPES[kind]:
            if kind != "grid":
                out.append(Case(op, shape, kind))
                continue
            n, c, h, w = shape
            out += [Case(op, (n, c, h, w) if layout == "nchw" else (n, h, w, c), layout) for layout in layouts]
    return out


def cases(ops, layouts, shapes=None):
    grid_shapes = [s for s in shapes if len(s) == 4] if shapes else [GRID_SHAPE]
    row_shapes = [s for s in shapes if len(s) == 2] if shapes else list(LAYER_SHAPES)
    out = []
    for op in ops:
        if op not in OPS:
            raise SystemExit(f"unknown op {op!r}; choose from {', '.join(OPS)}")
        if op in ROW_OPS:
            out += [Case(op, s, "rows") for s in row_shapes]
            continue
        if op in WEIGHT_OPS:
            out.append(Case(op, WEIGHT_SHAPE, "weight"))
            continue
        for n, c, h, w in grid_shapes:
            for layout in layouts:
                out.append(Case(op, (n, c, h, w) if layout == "nchw" else (n, h, w, c), layout))
    return out


def inputs(case, dtype, seed=0):
    """Seeded (x, dy, weight, bias) for a case."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape, dtype=np.float64).astype(dtype)
    dy = rng.standard_normal(case.shape, dtype=np.float64).astype(dtype)
    shape = OPS[case.op].param_shape(case.shape, case.layout)
    if shape is None:
        return x, dy, None, None
    return x, dy, rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)


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


def _progress(items, desc):
    """A progress bar (tqdm) when it is installed, plain lines otherwise."""
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="case", leave=False)
    except ImportError:
        return items


def _on_device(fns, device):
    """Wrap callables so that each timing includes the GPU's completion of the work."""
    if device != "cuda":
        return fns
    from numba import cuda

    def synced(fn):
        def run():
            result = fn()
            cuda.synchronize()
            try:
                import torch

                torch.cuda.synchronize()
            except Exception:
                pass
            return result

        return run

    return {name: synced(fn) for name, fn in fns.items()}


def _device_contenders(case, dtype, peers, device):
    if device == "cpu":
        return contenders(case, dtype, peers)
    from numba import cuda

    if not cuda.is_available():
        raise SystemExit("--device cuda: Numba finds no usable GPU (see python -m numbanorm info)")
    torch = _torch_cuda_module()
    if torch is not None:  # PyTorch tensors when it can: the usual GPU arrays, with a caching allocator
        to_device = lambda a: torch.as_tensor(a, device="cuda")
        copy = lambda: x.clone()
    else:
        to_device = cuda.to_device

        def copy():
            out = cuda.device_array_like(x)
            out.copy_to_device(x)
            return out

    x, dy, w, b = (None if a is None else to_device(a) for a in inputs(case, dtype))
    fwd, both = _ours(case, x, dy, w, b)
    fns = {"copy": copy, "forward": fwd, "forward_backward": both}
    peer = _torch(case, x, dy, w, b, to=lambda a: a) if "torch" in peers and torch is not None else None
    if peer is not None:
        fns["torch_forward"], fns["torch_forward_backward"] = peer
    return fns


def _torch_cuda_module():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def measure(case, dtype, repeats, compare, device="cpu", calls=1):
    fns = _device_contenders(case, dtype, compare, device)
    numpy_forward = fns.pop("numpy_forward", None)
    row = dict(op=case.op, shape=list(case.shape), layout=case.layout, dtype=np.dtype(dtype).name,
               device=device, threads=numba.get_num_threads())
    times = _median_times(_on_device(fns, device), repeats, calls=calls)
    row.update({f"{name}_s": t for name, t in times.items()})
    x, _, w, b = inputs(case, dtype)
    y = fns["forward"]()
    y = y.copy_to_host() if hasattr(y, "copy_to_host") else y.cpu().numpy() if hasattr(y, "cpu") else np.asarray(y)
    row["max_error"] = float(np.abs(y.astype(np.float64) - _reference(case, x, w, b)).max())
    if numpy_forward is not None:  # slow: timed apart, fewer runs, scaled by a copy timed beside it
        times = _median_times({"copy": fns["copy"], "numpy": numpy_forward}, max(1, repeats // 5))
        row["numpy_forward_s"] = times["numpy"] / times["copy"] * row["copy_s"]
    nbytes = int(np.prod(case.shape)) * np.dtype(dtype).itemsize
    row["forward_gbs"] = 2 * nbytes / row["forward_s"] / 1e9
    row["forward_backward_gbs"] = 5 * nbytes / row["forward_backward_s"] / 1e9
    row["copy_gbs"] = 2 * nbytes / row["copy_s"] / 1e9
    return row


def _table(rows, columns):
    lines = [tuple(name for name, _ in columns)]
    for r in rows:
        lines.append(tuple(fmt(r) for _, fmt in columns))
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    fmt = lambda line: "| " + " | ".join(v.ljust(wd) for v, wd in zip(line, widths)) + " |"
    rule = "|" + "|".join("-" * (wd + 2) for wd in widths) + "|"
    return "\n".join([fmt(lines[0]), rule] + [fmt(line) for line in lines[1:]])


def _ratio(num, den):
    return lambda r: f"{r[num] / r[den]:.2f}x" if num in r and den in r else "-"


COLUMNS = [
    ("layout", lambda r: r["layout"]),
    ("shape", lambda r: "x".join(map(str, r["shape"]))),
    ("dtype", lambda r: r["dtype"]),
    ("threads", lambda r: str(r["threads"])),
    ("fwd ms", lambda r: f"{r['forward_s'] * 1e3:.3g}"),
    ("fwd GB/s", lambda r: f"{r['forward_gbs']:.1f}"),
    ("% copy bw", lambda r: f"{100 * r['copy_s'] / r['forward_s']:.0f}%"),
    ("fwd/copy", _ratio("forward_s", "copy_s")),
    ("fwd+bwd ms", lambda r: f"{r['forward_backward_s'] * 1e3:.3g}"),
    ("f+b/copy", _ratio("forward_backward_s", "copy_s")),
    ("vs torch fwd", _ratio("torch_forward_s", "forward_s")),
    ("vs torch f+b", _ratio("torch_forward_backward_s", "forward_backward_s")),
    ("vs numpy fwd", _ratio("numpy_forward_s", "forward_s")),
    ("max err", lambda r: f"{r['max_error']:.1e}"),
]


def format_table(rows):
    """One table per op; "vs" columns are speed-ups (peer time / numbanorm time)."""
    out = []
    for op in dict.fromkeys(r["op"] for r in rows):
        out.append(f"### {op}\n\n" + _table([r for r in rows if r["op"] == op], COLUMNS))
    return "\n\n".join(out)


def scaling(op, dtype, repeats, thread_counts, sizes=(10**4, 10**5, 10**6, 10**7, 10**8)):
    """Times of ``op`` (and a copy) against element count, then against thread count."""
    rows = []
    for size in _progress(sizes, "sizes"):
        case = _case_of_size(op, size)
        rows.append({"sweep": "size", "elements": int(np.prod(case.shape)), **measure(case, dtype, repeats, ())})
    largest = _case_of_size(op, sizes[-2])
    before = numba.get_num_threads()
    for threads in _progress(thread_counts, "threads"):
        numba.set_num_threads(threads)
        rows.append({"sweep": "threads", "elements": int(np.prod(largest.shape)),
                     **measure(largest, dtype, repeats, ())})
    numba.set_num_threads(before)
    return rows


def _case_of_size(op, size):
    """A case of about ``size`` elements: rows of 1024 (row ops) or (N, 64, 16, 16) blocks."""
    if op in ROW_OPS:
        return Case(op, (max(1, size // 1024), 1024), "rows")
    if op in WEIGHT_OPS:
        return Case(op, (max(1, size // (512 * 9)), 512, 3, 3), "weight")
    return Case(op, (max(1, size // (64 * 256)), 64, 16, 16), "nchw")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = [s for s in ("size", "threads") if any(r.get("sweep") == s for r in rows)]
    if sweeps:
        fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4), squeeze=False)
        for ax, sweep in zip(axes[0], sweeps):
            part = [r for r in rows if r.get("sweep") == sweep]
            xs = [r["elements"] if sweep == "size" else r["threads"] for r in part]
            for key, label in (("forward_s", "forward"), ("forward_backward_s", "forward+backward"),
                               ("copy_s", "x.copy()")):
                ax.plot(xs, [r[key] * 1e3 for r in part], marker="o", label=label)
            ax.set_xlabel("elements" if sweep == "size" else "threads")
            ax.set_ylabel("median time (ms)")
            if sweep == "size":
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_title(f"{part[0]['op']}, {part[0]['dtype']}: time against {sweep}")
            ax.legend()
    else:
        fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.9), 4))
        labels = [f"{r['op'].replace('_norm', '')}\n{r['layout']}\n{'x'.join(map(str, r['shape']))}" for r in rows]
        positions = np.arange(len(rows))
        bars = [("forward_s", "numbanorm fwd"), ("torch_forward_s", "torch fwd"),
                ("forward_backward_s", "numbanorm fwd+bwd"), ("torch_forward_backward_s", "torch fwd+bwd")]
        width = 0.8 / len(bars)
        for k, (key, label) in enumerate(bars):
            ax.bar(positions + k * width, [r.get(key, np.nan) / r["copy_s"] for r in rows], width, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8, label="x.copy()")
        ax.set_xticks(positions + 0.4 - width / 2)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("time / x.copy() time (lower is better)")
        ax.set_title(f"{rows[0]['dtype']}, {rows[0]['threads']} threads, {rows[0]['device']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shapes_arg(text):
    return [tuple(int(d) for d in part.split("x")) for part in text.split(",")]


ACCURACY_SHAPE = (16, 32, 28, 28)
ACCURACY_DATA = (("float32", 0.0), ("float32", 1e4), ("float64", 0.0), ("float64", 1e8))


def _max_error(y, expected):
    return float(np.abs(np.asarray(y, np.longdouble) - expected).max())


def _accuracy_ops():
    """The ops with a PyTorch peer whose eps does not depend on the dtype (``eps=None`` would
    give a long-double reference another eps than the float32 input)."""
    return [op for op in OPS.values() if op.torch is not None
            and inspect.signature(op.functions(numbanorm)[0]).parameters["eps"].default is not None]


def accuracy_rows(shape=ACCURACY_SHAPE, groups=8, seed=0):
    """Max error of each op's forward (numbanorm's and, if installed, PyTorch's) on N(0, 1) and
    offset data, against a long-double reference: a float64 reference errs by up to half an ulp
    of the mean itself, as much as the float64 results it would judge.  Row ops normalize each
    sample's ``shape[1:]`` as one row."""
    rng = np.random.default_rng(seed)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None
    rows = []
    for dtype, offset in ACCURACY_DATA:
        x = (offset + rng.normal(size=shape)).astype(dtype)
        for op in _accuracy_ops():
            xo = x.reshape(shape[0], -1) if op.kind == "rows" else x
            expected = op.run_forward(ref, xo.astype(np.longdouble), groups=groups)[0]
            row = {"data": f"{dtype} {offset:.0e} + N(0,1)" if offset else f"{dtype} N(0,1)", "op": op.name,
                   "numbanorm": _max_error(op.run_forward(numbanorm, xo, groups=groups)[0], expected)}
            if torch is not None:
                row["torch"] = _max_error(op.torch(F, torch.from_numpy(xo), None, None, groups).numpy(), expected)
            rows.append(row)
    return rows


def accuracy_main(argv=None):
    """``python -m numbanorm accuracy``: the README's accuracy table."""
    rows = accuracy_rows()
    print(f"max error against a long-double reference, shape {ACCURACY_SHAPE}, group norm with 8 groups\n")
    print("| data | op | numbanorm | PyTorch |\n|---|---|---|---|")
    for r in rows:
        torch_error = f"{r['torch']:.1e}" if "torch" in r else "-"
        print(f"| {r['data']} | {r['op']} | {r['numbanorm']:.1e} | {torch_error} |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numbanorm bench", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated ops (default: all)")
    parser.add_argument("--layouts", default="nchw,nhwc", help="grid-op layouts: nchw,nhwc")
    parser.add_argument("--shapes", type=_shapes_arg, default=None,
                        help="shapes like 32x64x56x56,8192x1024 instead of the defaults: 4-D ones go to "
                             "the grid ops (NCHW; transposed for nhwc), 2-D ones to the row ops")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="threads for numbanorm and torch")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per measurement (median)")
    parser.add_argument("--compare", default="torch", help="peers: torch, numpy, both (torch,numpy) or none")
    parser.add_argument("--scaling", action="store_true", help="time against size and thread count")
    parser.add_argument("--small", action="store_true",
                        help=f"the small-shapes grid: each op at 64 to 64 K elements, {SMALL_CALLS} calls a round")
    parser.add_argument("--njit-loop", action="store_true",
                        help="time a user's @njit loop calling layer_norm on each row (of the first 2-D --shapes, "
                             "default 100000x64) beside the same loop written by hand")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the results (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.threads:
        numba.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(numba.get_num_threads())
    except ImportError:
        pass
    compare = set(args.compare.split(","))
    dtype = np.dtype(args.dtype)
    if args.njit_loop:
        from ._bench_njit import njit_loop_times

        count, length = next((s for s in args.shapes or () if len(s) == 2), (100_000, 64))
        times = njit_loop_times(count, length, args.repeats)
        print(f"\n@njit loop over {count} rows of {length} float32, medians of {args.repeats} interleaved runs\n")
        print("| loop | ms |\n|---|---|")
        print(f"| numbanorm.layer_norm(x[i], {length}, w, b, out=y[i]) | {times['numbanorm'] * 1e3:.2f} |")
        print(f"| written by hand | {times['hand'] * 1e3:.2f} |")
        print(f"\nratio {times['ratio']:.2f}x")
        rows = [dict(njit_loop=True, **times)]
    elif args.scaling:
        op = args.ops.split(",")[0]
        rows = scaling(op, dtype, args.repeats, list(range(1, numba.config.NUMBA_NUM_THREADS + 1)))
        print(_table(rows, [("sweep", lambda r: r["sweep"]), ("elements", lambda r: f"{r['elements']:.0e}")]
                     + COLUMNS[3:10]))
    else:
        ops, layouts = args.ops.split(","), args.layouts.split(",")
        todo = small_cases(ops, layouts) if args.small else cases(ops, layouts, args.shapes)
        calls = SMALL_CALLS if args.small else 1
        rows = [measure(case, dtype, args.repeats, compare, args.device, calls) for case in _progress(todo, "bench")]
        print(f"\n{args.dtype}, {numba.get_num_threads()} threads, {args.device}, medians of {args.repeats} "
              "interleaved runs\n")
        print(format_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    if args.plot and not args.njit_loop:
        plot(rows, args.plot)
    return rows
