"""Registry declarations of the k-NN measures of :mod:`repsim.neighbours`.

They sit here, beside that module rather than in it, to keep each module under 500
lines; the per-layer step (:func:`knn_prepare`: validation and k-NN lists) and the pair
step are the ones :func:`repsim.neighbour_matrix` and the pair functions use.
"""

from __future__ import annotations

from . import _backend as B
from . import _moment_formulas as M
from . import _validation as V
from ._registry import Measure, declare
from .neighbours import (
    _check_k,
    _value_or_reasons,
    _warn_undefined,
    cknna,
    jaccard_knn,
    mutual_knn,
    neighbours,
    rank_similarity,
    second_order_cosine,
)




def knn_prepare(what, min_n=2):
    """The registry's per-layer step of a k-NN measure: validate, then the k-NN lists."""
    def prepare(x, name, *, k, metric="cosine", **_):
        _, x = M.float64_layer(x, name, min_n, what)
        return neighbours(x, _check_k(k, int(x.shape[0]), name), metric, name)
    return prepare


def _knn_pair(measure):
    """The registry's pair step: the measure from two layers' k-NN lists, NaN with a
    :class:`repsim.DegenerateRepresentationWarning` (one message per layer, so that a
    matrix warns once for each) where a layer's neighbourhoods are decided by ties or the
    measure's normalisation is zero -- as :func:`repsim.neighbour_matrix` and the pair
    functions give it."""
    def pair(na, nb, **_):
        xp = B.namespace(na.index)
        value, reasons = _value_or_reasons(measure, na, nb, (na.name, nb.name),
                                           na.index.shape[1], xp)
        if reasons:
            for name, why in reasons.items():
                _warn_undefined(measure, {name: why})
            return M.as_result(xp.asarray(float("nan"), dtype=xp.float64,
                                          device=B.device(na.index)), xp)
        return M.as_result(value, xp)
    return pair


def _declare_knn(function, metric, row, min_n=2, blocks=None):
    constraints = {"metric": V.Options("cosine", "euclidean")} if metric else {}
    declare(function, constraints=constraints, prepare=knn_prepare(function.__name__, min_n),
            pair=_knn_pair(function.__name__), measures=[row], blocks=blocks)


_OI = ("orthogonal", "isotropic_scaling")
_KNN = "O(n^2 (p + q)); all pairs: O(n k^2) per pair"

_declare_knn(mutual_knn, True, Measure(
    "mutual_knn", {"k": 10}, "similarity", "[0, 1]", _OI, True, "all examples", _KNN,
    "mean_i |N_x(i) ∩ N_y(i)| / k (cosine neighbours)", "Huh et al. 2024",
    "k / (n - 1) (exact)", aliases=("mknn", "mutual_knn_alignment")), blocks="neighbour_lists")
_declare_knn(jaccard_knn, True, Measure(
    "jaccard_knn", {"k": 10}, "similarity", "[0, 1]", _OI, True, "all examples", _KNN,
    "mean_i |N_x ∩ N_y| / |N_x ∪ N_y|", "Klabunde et al. 2025",
    "hypergeometric sum (exact)", aliases=("jaccard_similarity",)), blocks="neighbour_lists")
_declare_knn(rank_similarity, True, Measure(
    "rank_similarity", {"k": 10}, "similarity", "[0, 1]", _OI, True, "all examples", _KNN,
    "rank agreement of the shared neighbours, normalised per example",
    "Klabunde et al. 2025"), blocks="neighbour_lists")
_declare_knn(second_order_cosine, False, Measure(
    "second_order_cosine", {"k": 10}, "similarity", "[-1, 1]", _OI, True, "all examples",
    "O(n^2 (p + q)); all pairs: O(n k (p + q)) per pair",
    "cosine of the similarity profiles over the union of neighbourhoods",
    "Hamilton et al. 2016", aliases=("second_order_cosine_similarity",)))
_declare_knn(cknna, False, Measure(
    "cknna", {"k": 10}, "similarity", "<= 1", _OI, False, "all examples", "O(n^2 (p + q))",
    "unbiased-HSIC CKA restricted to mutual k-NN pairs", "Huh et al. 2024"), min_n=4)
