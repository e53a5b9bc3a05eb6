"""Sphinx configuration of numbanorm's documentation.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (install the ``docs`` extra first).
Everything is local: no intersphinx, no network.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import numbanorm  # noqa: E402

project = "numbanorm"
author = "the numbanorm developers"
copyright = "the numbanorm developers, BSD-3-Clause"
release = numbanorm.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]

templates_path = ["_templates"]
exclude_patterns = ["_build"]
# `name` in docstrings and guides links to the object of that name
default_role = "py:obj"

# numpydoc-style docstrings, read by napoleon
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autosummary_generate = True
autodoc_member_order = "bysource"
# signatures show defaults as written (np.float32, not <class ...>)
autodoc_preserve_defaults = True
# the docstrings give the types; the annotations (overloads included) would repeat them
autodoc_typehints = "none"

try:
    import furo  # noqa: F401
    html_theme = "furo"
except ImportError:  # the docs extra installs furo; Sphinx's own theme still builds
    html_theme = "alabaster"
html_title = f"numbanorm {release}"
