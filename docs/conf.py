"""Sphinx configuration of the hvs-plugins documentation (offline: no intersphinx, no network).

Build: ``pip install ".[docs]" && sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Prefer an installed hvs_plugins (pip install ".[docs]"); from a bare checkout, import the
# sources: the core from ROOT, the adapters (installed as hvs_plugins.adapters) from ROOT/adapters.
if importlib.util.find_spec("hvs_plugins") is None:
    sys.path.insert(0, str(ROOT))
try:
    import hvs_plugins

    if importlib.util.find_spec("hvs_plugins.adapters") is None:
        hvs_plugins.__path__.append(str(ROOT))  # hvs_plugins.adapters -> ROOT/adapters
except ImportError:  # torch missing: autodoc reports what it cannot import
    pass

project = "hvs-plugins"
author = "hvs-plugins authors"
copyright = "hvs-plugins authors, MIT licence"
release = version = "0.1.0"

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 4  # GitHub-style anchors (BENCHMARKS.md links to its own headings; pages link to its H4s)

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # signatures carry the types; keeps the pages readable
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_inherit_docstrings = False  # host base classes (mmengine's Hook) document their own methods

html_theme = "alabaster"
html_title = "hvs-plugins"
html_static_path: list[str] = []

# The repository's Markdown files are written for GitHub: BENCHMARKS.md sits at the root and links
# its figures as results/*.png (the files are in benchmarks/results/). When a page includes one of
# them, point those links at the real files.
# Links to folders (no page to go to) become the folder's name.
_RESULTS = re.compile(r"\]\((?:benchmarks/)?results/")
_FOLDER_LINK = re.compile(r"\[([^\]]+)\]\(\.\./benchmarks/results/[^)]*/\)")


def _fix_included(app, relative_path, parent_docname, content):
    if Path(str(relative_path)).name == "BENCHMARKS.md":
        text = _RESULTS.sub("](../benchmarks/results/", content[0])
        content[0] = _FOLDER_LINK.sub(r"\1", text)


_ARGS = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$")
_ENTRY = re.compile(r"^([\w*][\w\s/,*]*?):\s+(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _args_section(lines: list, start: int, out: list) -> int:
    """A Google-style ``Args:`` section (plain autodoc has no napoleon) as a definition list:
    ``name`` terms, each entry's lines joined into one definition. Returns the next line index."""
    base = _indent(lines[start])
    out += [" " * base + "**Arguments:**", ""]
    i, entry_indent, term, text = start + 1, None, None, []

    def flush():
        if term is not None:
            out.extend([" " * base + term, " " * (base + 4) + " ".join(text), ""])

    while i < len(lines):
        line = lines[i]
        if line.strip() and _indent(line) <= base:
            break
        if line.strip():
            entry_indent = _indent(line) if entry_indent is None else entry_indent
            m = _ENTRY.match(line.strip()) if _indent(line) == entry_indent else None
            if m:
                flush()
                names = [n.strip() for n in re.split(r"\s*/\s*|,\s*", m.group(1)) if n.strip()]
                term, text = ", ".join(f"``{n}``" for n in names), [m.group(2).strip()]
            elif term is not None:
                text.append(line.strip())
        i += 1
    flush()
    return i


def _plain_rst(app, what, name, obj, options, lines):
    """Docstrings are RST with two conventions RST does not know: Google-style ``Args:`` sections
    and code examples indented under a paragraph without ``::``. Make both render as meant."""
    out: list = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _ARGS.match(line):
            i = _args_section(lines, i, out)
            continue
        prev = next((x for x in reversed(out) if x.strip()), None)
        if (
            line.strip()
            and out
            and not out[-1].strip()
            and prev is not None
            and _indent(line) >= _indent(prev) + 4
            and not prev.rstrip().endswith("::")
        ):  # an indented block after a paragraph: a code example
            out += [" " * _indent(prev) + "::", ""]
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > _indent(prev)):
                out.append(lines[i])
                i += 1
            if out and out[-1].strip():
                out.append("")
            continue
        out.append(line)
        i += 1
    lines[:] = out


def setup(app):
    app.connect("autodoc-process-docstring", _plain_rst)
    app.connect("include-read", _fix_included)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MPLBACKEND", "Agg")
