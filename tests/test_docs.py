"""The Examples sections of the public docstrings and the guides' examples run as doctests."""

import doctest
import pathlib

import numpy as np
import pytest

import numbanorm
import numbanorm._grid_norms
import numbanorm._row_norms
import numbanorm._statistics
import numbanorm._switchable
import numbanorm._types
import numbanorm._normalize
import numbanorm._tfstats
import numbanorm.layers

FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("module", [numbanorm, numbanorm._types, numbanorm._grid_norms, numbanorm._switchable,
                                    numbanorm._row_norms, numbanorm._statistics, numbanorm._normalize,
                                    numbanorm._tfstats, numbanorm.layers],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    # the finder sees through the dispatch wrappers (functools.wraps keeps __module__)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False, report=True)
    assert result.attempted > 0
    assert result.failed == 0


def test_every_public_name_has_a_runnable_example():
    finder = doctest.DocTestFinder()
    missing = []
    for name in numbanorm.__all__:
        obj = getattr(numbanorm, name)
        tests = finder.find(obj, name, module=False, globs={})
        if not any(t.examples for t in tests if t.name == name):
            missing.append(name)
    assert not missing, f"no Examples section: {missing}"


GUIDES = sorted(DOCS.glob("*.rst")) if DOCS.is_dir() else []


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_guide_examples(path):
    if path.name == "dask.rst":
        pytest.importorskip("dask.array")
    np.random.seed(0)
    result = doctest.testfile(str(path), module_relative=False, optionflags=FLAGS, verbose=False,
                              report=True, encoding="utf-8")
    assert result.failed == 0
