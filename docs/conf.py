"""Sphinx configuration for fabmurder's docs (built with warnings as errors: ``inv docs``)."""

from __future__ import annotations

from importlib.metadata import version as _version

project = "fabmurder"
author = "fabmurder developers"
copyright = "2026, fabmurder developers"
release = _version("fabmurder")
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
master_doc = "index"
exclude_patterns = ["_build", "*.json"]
myst_heading_anchors = 3
html_theme = "alabaster"
autodoc_member_order = "bysource"
