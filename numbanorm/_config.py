"""Defaults read once from the environment.

``NUMBANORM_CACHE``      "0" turns off Numba's on-disk cache of compiled kernels (default on).
``NUMBANORM_MIN_PIECE``  fewest elements a parallel task is given (default 16384); smaller
                         tasks cost more in scheduling than they save.
``NUMBANORM_SMALL_ELEMENTS`` inputs of at most this many elements (16 times as many for batch
                         norm and for instance and group norm's backward, 4 times for their
                         forward: ``_small.py``'s factors) run in one serial compiled
                         call (default 4096);
                         0 turns that path off.
``NUMBANORM_CUDA_THREADS`` threads per CUDA block, a power of two (default 256; the tests use
                         fewer under the CUDA simulator, where every thread is a Python thread).
``NUMBANORM_CUDA_LAUNCH`` how a CUDA kernel gets its arguments: "specialized" (default), "typed"
                         or "direct" (see ``_cuda_pipelines.Device.launch``).
"""

import os


def _flag(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


CACHE = _flag("NUMBANORM_CACHE", True)
MIN_PIECE = int(os.environ.get("NUMBANORM_MIN_PIECE", "16384"))
SMALL_ELEMENTS = int(os.environ.get("NUMBANORM_SMALL_ELEMENTS", "4096"))
CUDA_THREADS = int(os.environ.get("NUMBANORM_CUDA_THREADS", "256"))
if CUDA_THREADS < 1 or CUDA_THREADS & (CUDA_THREADS - 1):
    raise ValueError(f"NUMBANORM_CUDA_THREADS must be a power of two, got {CUDA_THREADS}")
CUDA_LAUNCH_MODES = ("typed", "specialized", "direct")
CUDA_LAUNCH = os.environ.get("NUMBANORM_CUDA_LAUNCH", "specialized").strip().lower()
if CUDA_LAUNCH not in CUDA_LAUNCH_MODES:
    raise ValueError(f"NUMBANORM_CUDA_LAUNCH must be one of {', '.join(CUDA_LAUNCH_MODES)}, got {CUDA_LAUNCH!r}")

# fastmath without "nnan"/"ninf": NaN and inf still propagate, so a NaN spoils only its group.
# Reductions may reassociate (that is what splits a sum into vector lanes).  Elementwise loops
# vectorise without it, and must not have it: it would fold ``(x - hi) - lo`` into
# ``x - (hi + lo)`` and throw away the low half of the centre.
REDUCE_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
ELEMENTWISE_FASTMATH = {"contract", "arcp", "nsz"}
