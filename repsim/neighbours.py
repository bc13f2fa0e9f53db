"""Nearest-neighbour measures: mutual k-NN, Jaccard k-NN, rank similarity, second-order
cosine similarity and CKNNA -- for one pair or every pair of layers.

Neighbourhoods. ``N_x(i)`` are the ``k`` nearest other examples of example ``i`` in ``x``
(``i`` itself excluded), under ``metric``: ``"cosine"`` (largest cosine similarity of the
rows, Huh et al. 2024; rows are not centred, so this is not translation invariant) or
``"euclidean"`` (smallest Euclidean distance, computed on column-centred data as
``||x_j||^2 - 2 x_i . x_j`` in float64). They are found in blocks of rows: one GEMM of
the block against all rows and a sort, on the caller's device.

Ties. The order is a stable sort of those float64 keys: among equal keys the lower
example index comes first, so the k-th neighbour of a tie is always the lowest-indexed
candidate and results are deterministic (the same on numpy and torch). Equality means
equality of the computed keys: two geometrically equidistant points whose GEMM rounding
differs are not tied.

Undefined neighbourhoods. When an example's neighbourhood is decided *entirely* by ties
-- its nearest and its ``(k+1)``-th nearest other example are equally near, up to the
keys' rounding (``4 p eps``, see :func:`neighbours`), so none of its ``k`` neighbours is
nearer than one left out -- its set is the index order, not the data's. A constant layer
(every example equally near every other) and distinct one-hot rows are the common cases.
Every measure here is then NaN with a :class:`repsim.DegenerateRepresentationWarning`
naming the layer, as CKA is for a constant layer; in :func:`neighbour_matrix` such a
layer's row and column are NaN and one warning names all of them. Second-order cosine
(a zero similarity vector) and CKNNA (a masked gram with non-positive self-HSIC) are NaN
with the same warning where their normalisation is zero.

Every pair measure then needs only the ``(n, k)`` neighbour lists (and, for second-order
cosine and CKNNA, the features): :func:`neighbour_matrix` computes each layer's lists
once and every pair from them.

References
----------
Huh, Cheung, Wang & Isola (2024), "The platonic representation hypothesis", ICML
(mutual k-NN, CKNNA).
Klabunde et al. (2025), "ReSi: a comprehensive benchmark for representational
similarity measures", ICLR (Jaccard k-NN, rank similarity,
second-order cosine similarity as defined there).
Hamilton, Leskovec & Jurafsky (2016), "Cultural shift or linguistic drift? Comparing two
computational measures of semantic change", EMNLP (second-order cosine similarity).
"""

from __future__ import annotations

from . import _backend as B
from . import _moment_formulas as M
from . import _validation as V
from .results import similarity_array



def _measures():
    """The k-NN measure functions of this module, as declared in the registry."""
    from ._registry import families

    return [name for name, f in families().items() if f.function.__module__ == __name__]


V.register_params("neighbour_matrix", measure=V.Choices(_measures))

from ._neighbour_core import (  # noqa: F401 (re-exported: repsim.neighbours.neighbours)
    BLOCK_BYTES,
    Neighbours,
    _unit_rows,
    neighbours,
    _check_k,
    _match,
    _pair_value,
    _masked_gram,
    _hsic_unbiased_asym,
    _cknna_value,
    _Undefined,
    _tie_reason,
    _warn_undefined,
    _value_or_reasons,
    _prepare,
    _pair,
)


def mutual_knn(x, y, k=10, *, metric="cosine"):
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024).

    ``mean_i |N_x(i) ∩ N_y(i)| / k``: the average fraction of each example's ``k``
    nearest neighbours that the two representations share.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed), flattened to ``(n, p)``, ``(n, q)``.
    k : int, default 10
        Neighbours per example, ``1 <= k <= n - 1``.
    metric : {"cosine", "euclidean"}
        Neighbourhood metric (module notes; ties go to the lower example index).

    Returns
    -------
    scalar
        float64 in ``[0, 1]``.

    Notes
    -----
    Invariant to orthogonal maps and isotropic scaling (and to translation with
    ``metric="euclidean"``). Needs all examples at once; cost ``O(n^2 (p + q))`` for the
    neighbour search, ``O(n k^2)`` for the pairing. Permutation chance level:
    ``k / (n - 1)`` in expectation (a random k-subset of the other ``n - 1`` examples).

    References
    ----------
    .. [1] Huh, Cheung, Wang & Isola (2024), "The platonic representation hypothesis", ICML.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((30, 4))
    >>> float(repsim.mutual_knn(x, 2 * x, k=5))
    1.0
    """
    return _pair("mutual_knn", x, y, k, metric)


def jaccard_knn(x, y, k=10, *, metric="cosine"):
    """Jaccard similarity of the k-NN sets, ``mean_i |N_x ∩ N_y| / |N_x ∪ N_y|``.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed), flattened to ``(n, p)``, ``(n, q)``.
    k : int, default 10
        Neighbours per example, ``1 <= k <= n - 1``.
    metric : {"cosine", "euclidean"}
        Neighbourhood metric (module notes; ties go to the lower example index).

    Returns
    -------
    scalar
        float64 in ``[0, 1]``; a numpy scalar, or a 0-d tensor on the input's device.

    Notes
    -----
    Invariances and cost as in :func:`mutual_knn`. Permutation chance level: the
    hypergeometric sum ``Σ_s P(s) s / (2k - s)``, ``s ~ Hypergeom(n - 1, k, k)``.

    References
    ----------
    .. [1] Klabunde et al. (2025), "ReSi: a comprehensive benchmark for representational
       similarity measures", ICLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((30, 4))
    >>> float(repsim.jaccard_knn(x, x, k=5))
    1.0
    """
    return _pair("jaccard_knn", x, y, k, metric)


def rank_similarity(x, y, k=10, *, metric="cosine"):
    """Rank similarity of the k-NN lists, as defined in ReSi (Klabunde et al. 2025).

    With ``r_x(i, j)`` the rank (1 = nearest) of ``j`` among ``i``'s neighbours in ``x``::

        v(i) = Σ_{j ∈ N_x(i) ∩ N_y(i)} 2 / ((1 + |r_x(i,j) - r_y(i,j)|) (r_x(i,j) + r_y(i,j)))

    normalised by ``v_max(i) = Σ_{t=1}^{|N_x(i) ∩ N_y(i)|} 1/t`` (0 when nothing is
    shared) and averaged over ``i``. Invariances and cost as :func:`mutual_knn`.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed), flattened to ``(n, p)``, ``(n, q)``.
    k : int, default 10
        Neighbours per example, ``1 <= k <= n - 1``.
    metric : {"cosine", "euclidean"}
        Neighbourhood metric (module notes; ties go to the lower example index).

    Returns
    -------
    scalar
        float64 in ``[0, 1]``; a numpy scalar, or a 0-d tensor on the input's device.

    References
    ----------
    .. [1] Klabunde et al. (2025), "ReSi: a comprehensive benchmark for representational
       similarity measures", ICLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((30, 4))
    >>> float(repsim.rank_similarity(x, x, k=5))
    1.0
    """
    return _pair("rank_similarity", x, y, k, metric)


def second_order_cosine(x, y, k=10):
    """Second-order cosine similarity (Hamilton et al. 2016, as in ReSi).

    For each ``i``, over the union ``U(i) = N_x(i) ∪ N_y(i)`` of its cosine neighbourhoods,
    the vectors ``s_x(i) = (cos(x_i, x_j))_{j ∈ U(i)}`` and ``s_y(i)`` are compared by
    cosine; the result is their mean over ``i``. Invariant to orthogonal maps and
    isotropic scaling. Cost ``O(n^2 (p + q))`` plus ``O(n k (p + q))`` per pair.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed), flattened to ``(n, p)``, ``(n, q)``.
    k : int, default 10
        Neighbours per example, ``1 <= k <= n - 1``.

    Returns
    -------
    scalar
        float64 in ``[-1, 1]``; a numpy scalar, or a 0-d tensor on the input's device.

    References
    ----------
    .. [1] Hamilton, Leskovec & Jurafsky (2016), "Cultural shift or linguistic drift?
       Comparing two computational measures of semantic change", EMNLP.
    .. [2] Klabunde et al. (2025), "ReSi", ICLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((30, 4))
    >>> round(float(repsim.second_order_cosine(x, 3 * x, k=5)), 12)
    1.0
    """
    return _pair("second_order_cosine", x, y, k, "cosine")


def cknna(x, y, k=10):
    """Centered kernel nearest-neighbour alignment (Huh et al. 2024).

    Rows are L2-normalised and ``K, L`` are their cosine grams. With ``M_ij = 1`` when
    ``j`` is among the ``k`` nearest (largest ``K_ij``, ``j != i``) of ``i`` in *both*
    representations, and ``HSIC_u`` Huh et al.'s unbiased HSIC of the masked grams::

        CKNNA = HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_K∘K, M_K∘K) HSIC_u(M_L∘L, M_L∘L))

    (``M_K``: the mask of ``K`` with itself). ``HSIC_u(A, B) = [tr(AB) + 1'A1 1'B1/((n-1)(n-2))
    - 2/(n-2) 1'AB1] / (n(n-3))``, as in the authors' code (no ``1e-6`` added to the
    denominator here). Needs ``n >= 4``.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed); ``n >= 4``.
    k : int, default 10
        Neighbours per example, ``1 <= k <= n - 1``.

    Returns
    -------
    scalar
        float64 (similarity, at most 1 up to rounding; can be negative).

    Notes
    -----
    Invariant to orthogonal maps and isotropic scaling. Not symmetric: the masked grams
    are not symmetric matrices, so ``1'AB1 != 1'BA1`` in general and
    ``cknna(x, y) != cknna(y, x)`` (as in the authors' code). Cost ``O(n^2 (p + q + k))``
    per pair (dense masked grams).

    References
    ----------
    .. [1] Huh, Cheung, Wang & Isola (2024), "The platonic representation hypothesis", ICML.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((30, 4))
    >>> round(float(repsim.cknna(x, x, k=5)), 12)
    1.0
    """
    return _pair("cknna", x, y, k, "cosine")


def neighbour_matrix(xs, ys=None, *, measure="mutual_knn", k=10, metric="cosine"):
    """A neighbourhood measure between every pair of layers.

    Each layer's k-NN lists are computed once (blocked GEMM and sort, on the caller's
    device); every pair then costs ``O(n k^2)`` (mutual k-NN, Jaccard, rank similarity),
    ``O(n k (p + q))`` (second-order cosine) or ``O(n^2 (p + q))`` (CKNNA), instead of a
    fresh ``O(n^2 (p + q))`` neighbour search per pair.

    Parameters
    ----------
    xs : sequence or dict name -> array, each (n, ...)
    ys : sequence or dict, optional
        Another model's layers; None compares ``xs`` with itself.
    measure : {"mutual_knn", "jaccard_knn", "rank_similarity", "second_order_cosine", "cknna"}
    k : int, default 10
    metric : {"cosine", "euclidean"}
        (cosine only for second-order cosine and CKNNA).

    Returns
    -------
    xarray.DataArray, shape (L_a, L_b)
        dims ``("layer_a", "layer_b")``, attrs ``measure, k, metric, n, ties``.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((40, 5))
    >>> sim = repsim.neighbour_matrix({"a": x, "b": 2 * x}, k=5)
    >>> float(sim.sel(layer_a="a", layer_b="b"))
    1.0
    """
    V.check_params("neighbour_matrix", measure=measure)
    V.check_params("neighbours", metric=metric)
    if measure in ("second_order_cosine", "cknna") and metric != "cosine":
        raise ValueError(f"{measure} compares cosine similarities; metric must be 'cosine', got {metric!r}")
    names_a, arrays_a = V.layer_items(xs, "xs")
    names_b, arrays_b = (names_a, arrays_a) if ys is None else V.layer_items(ys, "ys")
    arrays = [B.asarray(a) for a in arrays_a + arrays_b]
    xp = B.namespace(*arrays, names=[f"layer {n!r}" for n in names_a + names_b])
    n = int(arrays[0].shape[0])
    k = _check_k(k, n, f"xs[{names_a[0]!r}]")

    def build(names, arrays, side):
        out = []
        for name, a in zip(names, arrays):
            label = f"{side}[{name!r}]"
            a = V.as_2d(B.asarray(a), xp, label)
            V.check_same_n(n, a.shape[0], f"xs[{names_a[0]!r}]", label, arrays_a[0].shape, a.shape)
            a = xp.astype(a, xp.float64)
            V.check_finite_array(a, xp, label)
            out.append(neighbours(a, k, metric, label))
        return out

    nbs_a = build(names_a, arrays_a, "xs")
    nbs_b = nbs_a if ys is None else build(names_b, arrays_b, "ys")
    if measure == "cknna" and n < 4:
        raise ValueError(f"cknna needs at least 4 examples; got n={n}")
    import numpy as np

    values = np.empty((len(nbs_a), len(nbs_b)))
    reasons: dict = {}
    for i, (la, na) in enumerate(zip(names_a, nbs_a)):
        for j, (lb, nb) in enumerate(zip(names_b, nbs_b)):
            if ys is None and j < i and measure != "cknna":
                values[i, j] = values[j, i]  # symmetric measures (CKNNA's 1'AB1 is not)
                continue
            v, why = _value_or_reasons(measure, na, nb, (la, lb), k, xp)
            for name, reason in why.items():
                reasons.setdefault(name, reason)
            values[i, j] = np.nan if v is None else B.item(v)
    if reasons:
        _warn_undefined(measure, reasons)
    attrs = {"measure": measure, "k": k, "metric": metric, "n": n,
             "ties": "stable sort of float64 keys: lower example index first"}
    return similarity_array(values, names_a, names_b, attrs, name=measure)
