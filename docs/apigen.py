"""Write the API reference index from ``repsim.__all__``.

Every public name gets an entry: names are placed in a task group by the submodule that
defines them or by an explicit override below, and any name no group
claims lands in "Other", so a new public name can never be missing from the reference.
``docs/conf.py`` calls :func:`write_api_index` at the start of each build;
``tests/test_docs.py`` checks the result.
"""

from __future__ import annotations

from pathlib import Path

# (title, one-line description, submodules of repsim whose names belong here)
GROUPS = [
    ("Measures", "Kernels, HSIC and CKA on whole datasets: one pair or all pairs at once, and "
     "the precision their grams are formed in.",
     ("kernels", "centring", "hsic", "cka", "precision")),
    ("Any measure by name", "The measure registry: look a measure up by name, alias or "
     "similarity-repository id, compute it for one pair or as a layer x layer matrix, list "
     "them all.",
     ("similarity", "catalogue")),
    ("Measures beyond CKA", "Shape metrics, regression, neighbourhoods, distance correlation, "
     "RSA, eigenspace overlap and cycle k-NN.",
     ("shape", "regression", "neighbours", "rdm", "overlap")),
    ("Activation stores", "Extract once, compare many: a model's layers written to a "
     "resumable Zarr store with the identity of every example, opened lazily, compared "
     "with any measure.",
     ("store", "store_compare", "store_stream", "store_blocks", "adapters.extract")),
    ("Streaming", "Minibatch CKA and full-data feature moments: accumulate over batches, "
     "merge, all-reduce, resume.",
     ("streaming", "moments")),
    ("CCA family", "Canonical correlation analysis and its SVCCA and PWCCA variants.",
     ("cca", "cca_family")),
    ("Principal components and blocks",
     "Variance in the top principal components, their removal, dominant examples and "
     "block-structure detection.",
     ("pcs", "blocks", "blocks.declared")),
    ("Model adapter", "Hook PyTorch models and stream their layers into accumulators.",
     ("torch", "adapters", "adapters.torch", "adapters.activations",
      "adapters.transformers", "adapters.pooling", "hooks")),
    ("Statistics", "Uncertainty for similarity estimates: bootstrap, permutation null, "
     "aggregation over seeds.",
     ("stats", "statistics")),
    ("Results and plotting", "Saving and loading labelled results; heatmaps, grids and maps "
     "of models.",
     ("results", "plotting", "plot_models")),
    ("Warnings", "Warning classes repsim emits, for filtering with the :mod:`warnings` module.",
     ("validation",)),
]
OTHER = ("Other", "Public names not covered by the groups above.")

# public names that live in a submodule, not at the top level: (title, description,
# names relative to ``repsim``)
SUBMODULE_GROUPS = [
    ("Models and data",
     "The CIFAR-style ResNets and datasets of the wide/deep study, in ``repsim.models`` "
     "and ``repsim.datasets`` (``from repsim.datasets import load_cifar10``).",
     ("datasets.download_cifar10", "datasets.load_cifar10", "datasets.load_digits_images",
      "models.cifar_resnet")),
    ("Similarity during training",
     "Optional integrations (``pip install \"repsim-cka[integrations]\"``): minibatch CKA as "
     "a torchmetrics metric, and a Lightning callback that logs layer-wise CKA.",
     ("integrations.torchmetrics.MinibatchCKAMetric", "integrations.lightning.CKACallback")),
    ("Writing files",
     "The one atomic file write that ``save_result``, the adapter's checkpoints and the "
     "dataset download use, and the attribute conversion ``save_result`` applies, for "
     "scripts that write their own files the same way "
     "(``from repsim.results import atomic_write``).",
     ("results.atomic_write", "results.netcdf_attrs")),
]

# explicit placements that win over the submodule rule: name -> group title
OVERRIDES: dict[str, str] = {"PrecisionWarning": "Warnings"}


def grouped_names(exports: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """Return ``[(title, description, names), ...]`` covering every key of *exports*."""
    by_module = {mod: title for title, _, mods in GROUPS for mod in mods}
    placed: dict[str, list[str]] = {title: [] for title, _, _ in GROUPS}
    placed[OTHER[0]] = []
    for name in sorted(exports):
        if name in OVERRIDES:
            title = OVERRIDES[name]
        else:
            title = by_module.get(exports[name])
            if title is None:  # a deeper submodule: try its parents ("adapters.torch")
                parts = exports[name].split(".")
                title = next((by_module[".".join(parts[:i])] for i in range(len(parts), 0, -1)
                              if ".".join(parts[:i]) in by_module), OTHER[0])
        placed[title].append(name)
    out = [(t, d, placed[t]) for t, d, _ in GROUPS]
    out.append((OTHER[0], OTHER[1], placed[OTHER[0]]))
    return [(t, d, names) for t, d, names in out if names]


def render(exports: dict[str, str]) -> str:
    lines = [
        ".. This file is generated by docs/apigen.py from repsim.__all__; do not edit.",
        "",
        ".. _api:",
        "",
        "API reference",
        "=============",
        "",
        "Everything below is importable from the top-level package (``import repsim``),",
        "except the names of the last sections, which live in the submodule they name.",
        "Public names are loaded lazily: ``import repsim`` imports neither torch, numba nor",
        "matplotlib until a name that needs them is used.",
        "",
        ".. currentmodule:: repsim",
        "",
    ]
    for title, description, names in grouped_names(exports):
        lines += [title, "-" * len(title), "", description, "",
                  ".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
        lines += [f"   {name}" for name in names]
        lines.append("")
    for title, description, names in SUBMODULE_GROUPS:
        lines += [title, "-" * len(title), "", description, "",
                  ".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
        lines += [f"   {name}" for name in names]
        lines.append("")
    return "\n".join(lines)


def public_modules() -> dict[str, str]:
    """``{public name: defining submodule of repsim}`` for every name in ``repsim.__all__``.

    Lazily loaded names are looked up in the package's lazy table without importing
    them; the others by the ``__module__`` of the object.
    """
    import repsim

    lazy = {**getattr(repsim, "_EXPORTS", {}), **getattr(repsim, "_LAZY", {})}
    out = {}
    for name in repsim.__all__:
        if name in lazy:
            module = lazy[name]
        else:
            module = getattr(getattr(repsim, name), "__module__", None) or ""
        module = module.removeprefix("repsim.")
        out[name] = ".".join(part.lstrip("_") for part in module.split("."))
    return out


def write_api_index(docs_dir: Path) -> Path:
    """Write ``api/index.rst`` under *docs_dir* (only when its text changes)."""
    exports = public_modules()
    path = Path(docs_dir) / "api" / "index.rst"
    text = render(exports)
    # stubs of names that are no longer public would be orphans (a warning): drop them
    keep = set(exports) | {name for _, _, names in SUBMODULE_GROUPS for name in names}
    for stub in (path.parent / "generated").glob("repsim.*.rst"):
        if stub.name[len("repsim."):-len(".rst")] not in keep:
            stub.unlink()
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path
