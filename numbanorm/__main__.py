"""``python -m numbanorm bench [options]`` (see ``numbanorm.bench``), ``python -m numbanorm accuracy``
(numbanorm's and PyTorch's errors on offset data) and ``python -m numbanorm info``."""

import sys


def info():
    """Versions, the CPU threading layer and thread count, and the CUDA devices Numba sees."""
    import numba
    import numpy as np

    import numbanorm
    from numbanorm._dispatch import _threading_layer

    lines = [f"numbanorm {numbanorm.__version__}", f"numpy {np.__version__}", f"numba {numba.__version__}",
             f"CPU threading layer: {_threading_layer()}, threads: {numba.get_num_threads()}"]
    try:
        from importlib.metadata import version

        from numba import cuda

        simulated = bool(numba.config.ENABLE_CUDASIM)
        lines.append(f"numba-cuda {version('numba-cuda')}{' (CUDA simulator)' if simulated else ''}")
        if cuda.is_available():
            for number, gpu in enumerate(cuda.gpus):
                if simulated:
                    lines.append(f"CUDA device {number}: simulated on the CPU")
                    continue
                name = gpu.name.decode() if isinstance(gpu.name, bytes) else gpu.name
                lines.append(f"CUDA device {number}: {name}, compute capability {gpu.compute_capability}")
        else:
            lines.append("CUDA: no usable device")
    except Exception as exc:  # numba-cuda absent or broken: say why, never fail
        lines.append(f"CUDA: unavailable ({type(exc).__name__}: {exc})")
    print("\n".join(lines))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("bench", "accuracy", "info"):
        print("usage: python -m numbanorm {bench,accuracy,info} [--help]", file=sys.stderr)
        return 2
    if argv[0] == "info":
        info()
        return 0
    if argv[0] == "accuracy":
        from .bench import accuracy_main

        accuracy_main(argv[1:])
        return 0
    from .bench import main as bench

    bench(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
