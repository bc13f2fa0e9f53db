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
include_patterns = ["**.rst", "study/README.md", "study/*/report.md"]
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




# ----------------------------------------------------------------------------------------
# ``.. study-run:: digits`` renders docs/study/<run>/summary.json (written by a real run of
# examples/wide_deep_study.py): how it was run, its verdict on each finding and a table of
# its models, so the study page always shows the numbers of the committed run.
def _fmt(value, spec=".3f"):
    return "n/a" if value is None else format(value, spec)


def _change(m):
    """`` (+0.027 [0.024, 0.030])``: the paired jackknife interval of the contrast change
    after PC1 removal, when the run recorded one."""
    iv = (m.get("intervals") or {}).get("block_contrast_change_after_pc1_removal")
    if not iv or None in iv["ci"]:
        return ""
    return f" ({iv['estimate']:+.3f} [{iv['ci'][0]:.3f}, {iv['ci'][1]:.3f}])"


def _rst(text):
    """Plain text for reST: ``|PC1 score|`` is not a substitution, ``*`` not emphasis."""
    for ch in ("\\", "|", "*", "`", "_"):
        text = text.replace(ch, "\\" + ch)
    return text


def _declared_block_rows(s):
    """Runs since the declared block (issue 12): each claim's criterion met / not met, and
    the models with train accuracy, fit, the declared block and its PC1 measures."""
    lines = [f"- {_rst(f['claim'])} Criterion: {_rst(f['criterion'])} — **{f['met']}**." for f in s["findings"]]
    lines += ["", ".. list-table::", "   :header-rows: 1", "",
              "   * - model", "     - train s", "     - train / test acc", "     - fits",
              "     - PC1 max", "     - declared block", "     - inside / local contrast",
              "     - PC1 in / out", "     - after PC1 removal"]
    for m in s["models"]:
        b = m["block"]
        lines += [f"   * - ``{m['id']}``", f"     - {m['train_seconds']:.0f}",
                  f"     - {m['train_accuracy']:.3f} / {m['test_accuracy']:.3f}",
                  f"     - {'yes' if m['fits'] else 'no'}", f"     - {_fmt(m['pc1_max'])}"]
        if b is None:
            lines += ["     - none", "     - —", "     - —", "     - —"]
        else:
            lines += [f"     - layers {b['first']}–{b['last']} ({b['size']} of {m['n_layers']})",
                      f"     - {_fmt(b['inside'])} / {_fmt(b['local_contrast'])}",
                      f"     - {_fmt(b['pc1_in'])} / {_fmt(b['pc1_out'])}",
                      f"     - {_fmt(b['inside_after_pc1_removal'])} / "
                      f"{_fmt(b['local_contrast_after_pc1_removal'])}"]
    return lines


def _largest_block_rows(s, verdicts):
    """Runs of the earlier rule (repsim.block_structure's largest block)."""
    lines = []
    for f in s["findings"]:
        r = f["reproduced"]
        verdict = verdicts.get(r, r.replace("partly", "partly reproduced").replace("no (", "not reproduced ("))
        lines.append(f"- {f['claim']} — **{verdict}**.")
    lines += ["", ".. list-table::", "   :header-rows: 1", "",
              "   * - model", "     - data", "     - train s", "     - train / test acc",
              "     - PC1 max", "     - largest block", "     - block score",
              "     - PC1 in / out", "     - contrast → w/o PC1 (change, 90% CI)"]
    for m in s["models"]:
        b = m["largest_block"]
        block = "—" if b is None else f"{b['size']} of {m['n_layers']} layers"
        lines += [
            f"   * - ``{m['id']}``",
            f"     - {m['train_fraction']:g}",
            f"     - {m['train_seconds']:.0f}",
            f"     - {m['train_accuracy']:.3f} / {m['test_accuracy']:.3f}",
            f"     - {_fmt(m['pc1_max'])}",
            f"     - {block}",
            f"     - {_fmt(m['block_score'])}",
            f"     - {_fmt(m['pc1_in_block'])} / {_fmt(m['pc1_out_of_block'])}",
            f"     - {_fmt(m['block_contrast'])} → "
            f"{_fmt(m['block_contrast_after_pc1_removal'])}" + _change(m),
        ]
    return lines


class StudyRun(Directive):
    required_arguments = 1

    def run(self):
        import json

        env = self.state.document.settings.env
        run = self.arguments[0]
        path = DOCS / "study" / run / "summary.json"
        env.note_dependency(str(path))
        if not path.exists():
            return [nodes.paragraph(text=f"This build found no committed run in "
                                         f"docs/study/{run}/ (its summary.json is missing).")]
        s = json.loads(path.read_text(encoding="utf-8"))
        models = s["models"]
        train = sum(m["train_seconds"] for m in models)
        verdicts = {"yes": "reproduced", "no": "not reproduced at this scale",
                    "not testable": "not testable"}
        device = s["config"].get("device", "cpu")
        where = (f"{s['torch_threads']} torch thread(s)" if device == "cpu"
                 else f"a {device} device")
        lines = [
            f"*Run:* ``python examples/wide_deep_study.py {s['command']}`` — {s['data']}; "
            f"{len(models)} models trained in {train:.0f} s in all on {where} "
            f"(per model in the table); minibatch CKA on {s['n_eval']} "
            "held-out images. Read from "
            f"``docs/study/{run}/summary.json``.",
            "",
            "*Findings* (the report gives the evidence for each):",
            "",
        ]
        if s["findings"] and "met" in s["findings"][0]:
            lines += _declared_block_rows(s)
        else:
            lines += _largest_block_rows(s, verdicts)
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, str(path)), self.content_offset, node)
        return node.children


from docutils.parsers.rst.directives.images import Figure  # noqa: E402


class StudyFigure(Figure):
    """A figure of a committed study run; left out (no warning) when the run is absent."""

    def run(self):
        env = self.state.document.settings.env
        _, path = env.relfn2path(self.arguments[0], env.docname)
        env.note_dependency(path)
        if not Path(path).exists():
            return []
        return super().run()


class StudyReports(Directive):
    """A toctree of the committed study reports (docs/study/*/report.md) that exist."""

    def run(self):
        reports = sorted(p.parent.name for p in (DOCS / "study").glob("*/report.md"))
        if not reports:
            return [nodes.paragraph(text="This build found no committed study reports.")]
        lines = [".. toctree::", "   :maxdepth: 1", ""]
        if (DOCS / "study" / "README.md").exists():
            lines.append("   /study/README")
        lines += [f"   /study/{name}/report" for name in reports]
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, "study-reports"), self.content_offset, node)
        return node.children


def _study_links(app, docname, source):
    """docs/study/README.md links every run's report, also runs not committed (yet):
    such links become plain text instead of broken cross-references."""
    if docname != "study/README":
        return
    import re

    def plain_if_missing(match):
        text, target = match.group(1), match.group(2)
        return match.group(0) if (DOCS / "study" / target).exists() else text

    source[0] = re.sub(r"\[([^\]]+)\]\(([^)#:]+\.md)\)", plain_if_missing, source[0])


def _always_reread(app, env, added, changed, removed):
    # the study page lists whatever runs docs/study holds: a new run must show up in an
    # incremental build too
    return ["user_guide/study"]


def setup(app):
    app.connect("env-get-outdated", _always_reread)
    app.connect("source-read", _study_links)
    app.add_directive("study-reports", StudyReports)
    app.add_directive("benchmark-results", BenchmarkResults)
    app.add_directive("study-run", StudyRun)
    app.add_directive("study-figure", StudyFigure)
