"""Sphinx configuration for the connectorsync docs (built by `make docs` with warnings as errors)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "connectorsync"
author = "the connectorsync authors"
copyright = "2026, the connectorsync authors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
suppress_warnings = ["ref.python"]
