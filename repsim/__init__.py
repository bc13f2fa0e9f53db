"""repsim: representation similarity for neural networks.

Centered kernel alignment (linear and RBF, biased and unbiased HSIC, minibatch CKA),
the CCA family (CCA, SVCCA, PWCCA), principal-component analyses and block-structure
detection, on numpy arrays and torch tensors alike, plus a PyTorch adapter that hooks any
model and streams its layers into accumulators. Statistics (bootstrap intervals,
permutation tests, seed comparisons) live in :mod:`repsim.stats`; the study's datasets
and ResNets in :mod:`repsim.datasets` and :mod:`repsim.models`.

Dependencies: numpy, xarray, array-api-compat, scipy and numba are required (numba is a
hard dependency: its fused kernels are the CPU default, compiled on first use); torch,
matplotlib, h5netcdf and tqdm are optional extras. The numpy-only core is imported here;
modules that need torch or matplotlib are loaded lazily on first use of one of their
names, so ``import repsim`` never imports torch, matplotlib (or numba, which loads with
the first fused kernel) behind the caller's back.
"""

from importlib import import_module as _import_module

from ._validation import DegenerateRepresentationWarning, UnderdeterminedCCAWarning
from .blocks import (
    BlockContrast,
    block_contrast,
    block_score,
    block_sensitivity,
    block_structure,
    find_block,
    pc1_runs,
    segment_layers,
)
from .catalogue import measures
from .cca_family import canonical_correlations, cca, pwcca, svcca
from .cka import cka, cka_matrix
from .hsic import hsic
from .kernels import centre_gram, gram, median_sigma, ucentre_gram
from .neighbours import (
    cknna,
    jaccard_knn,
    mutual_knn,
    neighbour_matrix,
    rank_similarity,
    second_order_cosine,
)
from .moments import FeatureMoments
from .overlap import cycle_knn, eigenspace_overlap
from .pcs import (DominantExamples, dominant_examples, pc_removed_grams, pc_variance_fraction,
                  remove_top_pcs)
from ._precision import PrecisionWarning, precision_support
from .rdm import dcor, rsa
from .regression import gulp, ridge_r2
from .results import load_result, save_result
from .shape import nbs, shape_distance
from .similarity import compare, measure, measure_names, similarity_matrix
from .store import open_activations
from .store_compare import best_matches, compare_many, model_distances, model_map, seed_groups
from .store_stream import stream_store
from .stats import (
    Interval,
    aggregate_seeds,
    bootstrap,
    compare_seeds,
    jackknife_interval,
    permutation_test,
)
from .streaming import MinibatchCKA

__version__ = "0.1.0"

# public names from modules that import torch or matplotlib: name -> submodule
# (module names must differ from the public names they hold)
_LAZY = {
    "CaptureOptions": "adapters.torch",
    "GramHooks": "adapters.torch",
    "RunOptions": "adapters.torch",
    "StatisticsOptions": "adapters.torch",
    "compare_models": "adapters.torch",
    "extract": "adapters._extract",
    "layer_statistics": "adapters.activations",
    "plot_compare_many": "_plot_models",
    "plot_diagonal_band": "plotting",
    "plot_model_map": "_plot_models",
    "plot_similarity": "plotting",
    "plot_similarity_grid": "plotting",
    "plot_similarity_intervals": "plotting",
    "select_layers": "adapters.torch",
    "block_layers": "adapters.transformers",
    "hidden_state_layers": "adapters.transformers",
    "standardize_features": "adapters.transformers",
    "word_aligned_batches": "adapters.transformers",
}

# names that left the top level: name -> the submodule that holds them now
_MOVED = {
    "cifar_resnet": "models",
    "download_cifar10": "datasets",
    "load_cifar10": "datasets",
    "load_digits_images": "datasets",
}

# submodules that import torch (or are rarely needed), loaded on first attribute access
_SUBMODULES = ("datasets", "models")

# written out (not computed) so that IDEs and type checkers can read it; one name per
# line, in sorted() order
__all__ = [
    "BlockContrast",
    "CaptureOptions",
    "DegenerateRepresentationWarning",
    "DominantExamples",
    "FeatureMoments",
    "GramHooks",
    "Interval",
    "MinibatchCKA",
    "PrecisionWarning",
    "RunOptions",
    "StatisticsOptions",
    "UnderdeterminedCCAWarning",
    "aggregate_seeds",
    "best_matches",
    "block_contrast",
    "block_layers",
    "block_score",
    "block_sensitivity",
    "block_structure",
    "bootstrap",
    "canonical_correlations",
    "cca",
    "centre_gram",
    "cka",
    "cka_matrix",
    "cknna",
    "compare",
    "compare_many",
    "compare_models",
    "compare_seeds",
    "cycle_knn",
    "dcor",
    "dominant_examples",
    "eigenspace_overlap",
    "extract",
    "find_block",
    "gram",
    "gulp",
    "hidden_state_layers",
    "hsic",
    "jaccard_knn",
    "jackknife_interval",
    "layer_statistics",
    "load_result",
    "measure",
    "measure_names",
    "measures",
    "median_sigma",
    "model_distances",
    "model_map",
    "mutual_knn",
    "nbs",
    "neighbour_matrix",
    "open_activations",
    "pc1_runs",
    "pc_removed_grams",
    "pc_variance_fraction",
    "permutation_test",
    "plot_compare_many",
    "plot_diagonal_band",
    "plot_model_map",
    "plot_similarity",
    "plot_similarity_grid",
    "plot_similarity_intervals",
    "precision_support",
    "pwcca",
    "rank_similarity",
    "remove_top_pcs",
    "ridge_r2",
    "rsa",
    "save_result",
    "second_order_cosine",
    "seed_groups",
    "segment_layers",
    "select_layers",
    "shape_distance",
    "similarity_matrix",
    "standardize_features",
    "stream_store",
    "svcca",
    "ucentre_gram",
    "word_aligned_batches",
]


def __getattr__(name):
    if name in _MOVED:
        import warnings

        module = _MOVED[name]
        warnings.warn(
            f"repsim.{name} moved to repsim.{module}.{name}; the top-level name will be "
            "removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_import_module(f"repsim.{module}"), name)
    if name in _SUBMODULES:  # ``repsim.models.cifar_resnet`` after a plain ``import repsim``
        return _import_module(f"repsim.{name}")
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'repsim' has no attribute {name!r}") from None
    value = getattr(_import_module(f"repsim.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
