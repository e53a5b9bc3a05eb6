"""Prepared calls: a forward's checks done once per call signature.

What a front checks, and what the CPU device then chooses to run, depends only on the call's
signature: the types, shapes, strides and dtypes of its arrays and the exact types and values of
its other arguments (exact types: ``True == 1`` and ``16.0 == 16``, but the checks refuse a bool
axis and a float shape).  So the first call of a signature whose arrays the checks pass on
unchanged leaves a prepared call under that signature (``_cpu_pipelines.prepare_row_forward``,
``prepare_grid_forward``), and later calls of the signature go straight to the kernels -- to the
code each kernel compiled for the signature's types (`Kernel`), past Numba's dispatcher.  On
inputs of a few thousand elements the checks cost more than the arithmetic.

Only the plain case is prepared: NumPy input of float32/float64 and native byte order, parameters
already of the compute dtype and shape, no ``out``, no running statistics.  Anything the checks
would convert, copy or write is checked every time.
"""

import operator

import numpy as np

from . import _small
from ._types import NormStats

_PREPARED: dict = {}
LIMIT = 1024  # signatures kept; past it the cache starts again empty


def array_key(a):
    """An array argument's part of a call signature: a plain ndarray's shape, strides, dtype,
    writeable flag (the checks hand a read-only array on as a view, see ``_checks.kernel_view``,
    so none is prepared) and alignment (Numba types an unaligned array apart, and a prepared
    call runs code compiled for its signature's types, see `compiled`); the type of anything else
    (the checks convert those too)."""
    if type(a) is not np.ndarray:
        return type(a)
    flags = a.flags
    return a.shape, a.strides, a.dtype, flags.writeable, flags.aligned


def exact_ints(value):
    """Whether ``value`` is an int or a tuple of ints, of exactly those types: a signature keeps
    only those, since ``(16,) == (16.0,) == (True,)`` and the checks take or refuse the others."""
    if type(value) is tuple:
        for item in value:  # a plain loop: on the one or two items of a shape, half a generator's time
            if type(item) is not int:
                return False
        return True
    return type(value) is int


def served(key, input, weight, bias, return_stats):
    """The result of the call prepared under signature ``key`` (None: not prepared) on these
    arrays, as the front returns it: y, or (y, NormStats) with ``return_stats``; None if there is
    no such call."""
    call = None if key is None else lookup(key)
    if call is None:
        return None
    y, mean, rstd = call(input, weight, bias)
    return (y, NormStats(mean, rstd, True, bias is not None, call.eps)) if return_stats else y


def offer(key, given, checked, prepare, *args):
    """Keep ``prepare(*args)`` under ``key`` (None: nothing is kept) if the checks handed each of
    the ``given`` arrays on as it came (``checked``): no copy, cast or conversion, which a prepared
    call would skip."""
    if key is not None and all(map(operator.is_, given, checked)):
        keep(key, prepare(*args))


def lookup(key):
    """The call prepared under signature ``key``, or None.  Each is kept with the small lane's size
    limit it was chosen under, which the tests move."""
    entry = _PREPARED.get(key)
    return entry[1] if entry is not None and entry[0] == _small.SMALL_ELEMENTS else None


def compiled(kernel, args):
    """The code that ``kernel``, a Numba dispatcher, compiled for arguments of exactly the types of
    ``args``, or ``kernel`` itself where it has none.  The code is called like the dispatcher but
    skips its typing of every argument (a few hundred nanoseconds a call), and converts each
    argument to those types unchecked: only for a prepared call, whose signature fixes them."""
    try:
        return kernel.overloads[tuple(map(kernel.typeof_pyval, args))].entry_point
    except (AttributeError, KeyError):  # no such code, or a Numba that keeps it elsewhere
        return kernel


class Kernel:
    """A prepared call's kernel: ``run`` calls the dispatcher the first time, then the code
    `compiled` for the types that call passed.  (The kernel compiles, or loads from Numba's
    cache, at that first call, after the call was prepared.)"""

    __slots__ = ("dispatcher", "run")

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.run = self._first

    def _first(self, *args):
        result = self.dispatcher(*args)
        self.run = compiled(self.dispatcher, args)
        return result


def keep(key, call):
    if len(_PREPARED) >= LIMIT:
        _PREPARED.clear()
    _PREPARED[key] = (_small.SMALL_ELEMENTS, call)
