"""Sphinx configuration for the repsim documentation site.

Build with ``make docs`` (warnings are errors; nothing is fetched from the network).
"""

import os
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS))
os.environ.setdefault("MPLBACKEND", "Agg")

import repsim  # noqa: E402
from apigen import write_api_index  # noqa: E402

write_api_index(DOCS)

# pages of gallery examples that no longer exist would be orphans (a warning): drop them
for _page in (DOCS / "auto_examples").glob("plot_*.rst"):
    if not (ROOT / "examples" / "gallery" / f"{_page.stem}.py").exists():
        for _stale in _page.parent.glob(f"{_page.stem}.*"):
            _stale.unlink()

project = "repsim"
author = "the repsim developers"
copyright = "2026, the repsim developers"
release = repsim.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",  # the study's report.md and the benchmark results, as written
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "scripts", "**/GALLERY_HEADER.rst",
                    "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip",
                    "auto_examples/*.md5", "auto_examples/*.codeobj.json"]
# Markdown is read only where it is meant to be a page: the study reports. Other .md files
# (the benchmark results) are included into .rst pages.
include_patterns = ["**.rst", "study/*/report.md"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
root_doc = "index"
default_role = "obj"
nitpicky = False

# autodoc / autosummary / numpydoc
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Offline build: no intersphinx, no remote images.
intersphinx_mapping = {}

# sphinx-gallery: fast examples (a few seconds each on a CPU), all run at build time; an
# example that raises fails the build.
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples" / "gallery"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("repsim",),
    "reference_url": {"repsim": None},
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib",),
    "min_reported_time": 1,
    "show_memory": False,
}

# HTML
html_theme = "pydata_sphinx_theme"
html_title = f"repsim {release}"
html_static_path = []
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "header_links_before_dropdown": 5,
}
html_sidebars = {"index": [], "faq": []}
html_show_sourcelink = False
html_copy_source = False

warnings.filterwarnings("ignore", category=UserWarning,
                        message="Matplotlib is currently using agg")


# ----------------------------------------------------------------------------------------
# The benchmark table on the performance page is written by the benchmark scripts into
# docs/performance_results.rst or docs/performance_results.md (MyST Markdown).
# ``.. benchmark-results::`` includes whichever exists and, when neither does, says so on
# the page rather than failing the build.
from docutils import nodes  # noqa: E402
from docutils.parsers.rst import Directive  # noqa: E402
from docutils.statemachine import StringList  # noqa: E402

BENCHMARK_RESULTS = [DOCS / "performance_results.rst", DOCS / "performance_results.md"]


class BenchmarkResults(Directive):
    has_content = False

    def run(self):
        env = self.state.document.settings.env
        for path in BENCHMARK_RESULTS:
            env.note_dependency(str(path))
            if not path.exists():
                continue
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".md":  # through MyST, as an include
                text = f".. include:: /{path.name}\n   :parser: myst_parser.sphinx_\n"
            node = nodes.section()
            node.document = self.state.document
            self.state.nested_parse(StringList(text.splitlines(), str(path)),
                                    self.content_offset, node, match_titles=True)
            return node.children
        para = nodes.paragraph(text=(
            "The side-by-side benchmark has not yet written its results "
            "(docs/performance_results.rst); the cost-model measurement above is what "
            "this build has."))
        return [para]


def setup(app):
    app.add_directive("benchmark-results", BenchmarkResults)
