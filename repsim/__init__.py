"""repsim: representation similarity for neural networks.

Centered kernel alignment (linear and RBF, biased and unbiased HSIC, minibatch CKA),
the CCA family (CCA, SVCCA, PWCCA), principal-component analyses and block-structure
detection, on numpy arrays and torch tensors alike, plus a PyTorch adapter that hooks any
model and streams its layers into accumulators.

The numpy-only core is imported here; modules that need torch or matplotlib are loaded
lazily on first use of one of their names, so ``import repsim`` never imports torch,
matplotlib (or numba, which loads with the first fused kernel) behind the caller's back.
"""

from importlib import import_module as _import_module

from ._validation import DegenerateRepresentationWarning, UnderdeterminedCCAWarning
from .blocks import block_score, block_structure
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
from .pcs import DominantExamples, dominant_examples, pc_variance_fraction, remove_top_pcs
from .regression import gulp, ridge_r2
from .results import load_result, save_result
from .rdm import dcor, rsa
from .shape import nbs, shape_distance
from .stats import aggregate_seeds, bootstrap, compare_seeds, jackknife_interval, permutation_test
from .streaming import MinibatchCKA

__version__ = "0.1.0"

# public names from modules that import torch or matplotlib: name -> submodule
# (module names must differ from the public names they hold)
_LAZY = {
    "GramHooks": "adapters.torch",
    "cifar_resnet": "models",
    "compare_models": "adapters.torch",
    "download_cifar10": "datasets",
    "load_cifar10": "datasets",
    "load_digits_images": "datasets",
    "select_layers": "adapters.torch",
    "plot_diagonal_band": "plotting",
    "plot_similarity": "plotting",
    "plot_similarity_grid": "plotting",
    "plot_similarity_intervals": "plotting",
}

__all__ = sorted(
    [
        "DegenerateRepresentationWarning",
        "DominantExamples",
        "FeatureMoments",
        "MinibatchCKA",
        "aggregate_seeds",
        "bootstrap",
        "block_score",
        "block_structure",
        "canonical_correlations",
        "cca",
        "centre_gram",
        "cka",
        "cka_matrix",
        "cknna",
        "compare_seeds",
        "dcor",
        "dominant_examples",
        "gram",
        "gulp",
        "hsic",
        "jaccard_knn",
        "jackknife_interval",
        "load_result",
        "measures",
        "median_sigma",
        "mutual_knn",
        "nbs",
        "neighbour_matrix",
        "permutation_test",
        "pc_variance_fraction",
        "pwcca",
        "rank_similarity",
        "remove_top_pcs",
        "ridge_r2",
        "rsa",
        "save_result",
        "second_order_cosine",
        "shape_distance",
        "svcca",
        "ucentre_gram",
        "UnderdeterminedCCAWarning",
    ]
    + list(_LAZY)
)


def __getattr__(name):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'repsim' has no attribute {name!r}") from None
    value = getattr(_import_module(f"repsim.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
