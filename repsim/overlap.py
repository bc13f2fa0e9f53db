"""Two measures added through the registry alone: eigenspace overlap and cycle k-NN.

Each is one :func:`repsim._registry.declare` call -- a per-layer ``prepare``, a
``pair`` and the measure's facts -- plus a thin public function that runs the two on one
pair. :func:`repsim.similarity_matrix`, :func:`repsim.measures`, the ``repsim`` command
and the user guide's table pick them up from the declaration; the contributor guide
(``docs/user_guide/contributing.rst``) walks through them.

References
----------
May, Zhang, Dao & Ré (2019), "On the downstream performance of compressed word
embeddings", NeurIPS (eigenspace overlap score).
Klabunde et al. (2025), "ReSi: a comprehensive benchmark for representational similarity
measures", ICLR (eigenspace overlap score among its measures).
Huh, Cheung, Wang & Isola (2024), "The platonic representation hypothesis", ICML
(cycle k-NN, in the paper's code).
"""

from __future__ import annotations

from types import SimpleNamespace

from . import _backend as B
from . import _validation as V
from ._neighbour_registry import knn_prepare
from ._registry import Measure, declare, pair_value


# --------------------------------------------------------------------------- eigenspace overlap


def _eos_prepare(x, name, **_):
    """An orthonormal basis of the (uncentred) column space: the left singular vectors
    of the numerical rank (numpy's ``matrix_rank`` rule: ``s > s_max max(n, p) eps``)."""
    x = B.asarray(x)
    xp = B.namespace(x)
    x = V.as_2d(x, xp, name)
    x = xp.astype(x, xp.float64)
    V.check_finite_array(x, xp, name)
    n, p = int(x.shape[0]), int(x.shape[1])
    u, s, _ = xp.linalg.svd(x, full_matrices=False)
    top = B.item(xp.max(s)) if s.shape[0] else 0.0
    eps = float(xp.finfo(xp.float64).eps)
    rank = int(B.item(xp.sum(xp.astype(s > top * max(n, p) * eps, xp.int64))))
    return SimpleNamespace(u=u[:, :rank], p=p, xp=xp)


def _eos_pair(a, b, **_):
    xp = a.xp
    m = xp.matmul(a.u.T, b.u)
    return B.scalar(xp.sum(m * m) / max(a.p, b.p), xp)


def eigenspace_overlap(x, y):
    """Eigenspace overlap score (May et al. 2019; ReSi, Klabunde et al. 2025).

    ``EOS = ||Uᵀ V||_F² / max(p, q)`` with ``U``, ``V`` orthonormal bases of the column
    spaces of ``x`` and ``y`` (left singular vectors of the uncentred data up to the
    numerical rank): the mean squared cosine of the principal angles between the two
    spans of examples, counted against the wider side.

    Parameters
    ----------
    x : array, shape (n, ...)
        numpy array or torch tensor (flattened to ``(n, p)``).
    y : array, shape (n, ...)

    Returns
    -------
    scalar
        float64 in ``[0, 1]``; 1 when both have full column rank ``p = q`` and span the
        same space.

    Notes
    -----
    Invariant to orthogonal maps, isotropic scaling and any invertible linear map of
    either side (they keep the column space); not to translation (the data are not
    centred, as in the reference implementation). Cost ``O(n (p² + q²) + n p q)``.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((50, 4))
    >>> round(float(repsim.eigenspace_overlap(x, x @ np.diag([1.0, 2.0, 3.0, 4.0]))), 12)
    1.0
    """
    return pair_value("eigenspace_overlap", x, y)


declare(
    eigenspace_overlap,
    prepare=_eos_prepare, pair=_eos_pair,
    measures=[Measure("eigenspace_overlap", {}, "similarity", "[0, 1]",
                      ("orthogonal", "isotropic_scaling", "invertible_linear"), True,
                      "all examples", "O(n (p^2 + q^2) + n p q)",
                      "||U^T V||_F^2 / max(p, q), U, V bases of the uncentred column spaces",
                      "May et al. 2019; Klabunde et al. 2025",
                      aliases=("eos", "eigenspace_overlap_score"))],
)


# --------------------------------------------------------------------------- cycle k-NN


def _cycle_pair(na, nb, **_):
    """``mean_i 1[i ∈ N_x(j) for some j ∈ N_y(i)]``: i's y-neighbours, then their
    x-neighbours, come back to i."""
    xp = B.namespace(na.index)
    n, k = int(na.index.shape[0]), int(na.index.shape[1])
    back = xp.reshape(xp.take(na.index, xp.reshape(nb.index, (n * k,)), axis=0), (n, k * k))
    own = xp.arange(n, device=B.device(na.index))[:, None]
    hit = xp.any(back == own, axis=1)
    return B.scalar(xp.mean(xp.astype(hit, xp.float64)), xp)


def cycle_knn(x, y, k=10, *, metric="cosine"):
    """Cycle k-NN alignment (Huh et al. 2024, the platonic-representation code).

    For each example ``i``: take its ``k`` nearest neighbours in ``y``, then each of
    their ``k`` nearest neighbours in ``x``; the score is the fraction of examples that
    come back to themselves, ``mean_i 1[∃ j ∈ N_y(i): i ∈ N_x(j)]``. Neighbourhoods and
    ties as in :mod:`repsim.neighbours` (cosine: the reference normalises the rows).

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed).
    k : int, default 10
        Neighbours per example, ``1 <= k <= n - 1``.
    metric : {"cosine", "euclidean"}

    Returns
    -------
    scalar
        float64 in ``[0, 1]``. Not symmetric: ``cycle_knn(x, y)`` goes through ``y``
        first, as the reference's ``cycle_knn(feats_A=x, feats_B=y)``. Below 1 even for
        ``x`` against itself when some example is among the neighbours of none of its
        neighbours (an anti-hub); near 1 for any data once ``k²`` is not small next to
        ``n``.

    Notes
    -----
    Invariant to orthogonal maps and isotropic scaling (cosine neighbours). Cost
    ``O(n² (p + q))`` for the neighbour lists, ``O(n k²)`` per pair.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((40, 5))
    >>> float(repsim.cycle_knn(x, 3 * x, k=5))
    1.0
    """
    return pair_value("cycle_knn", x, y, k=k, metric=metric)


declare(
    cycle_knn,
    constraints={"metric": V.Options("cosine", "euclidean")},
    prepare=knn_prepare("cycle_knn"), pair=_cycle_pair,
    measures=[Measure("cycle_knn", {"k": 10}, "similarity", "[0, 1]",
                      ("orthogonal", "isotropic_scaling"), False, "all examples",
                      "O(n^2 (p + q)); all pairs: O(n k^2) per pair",
                      "mean_i 1[i in N_x(j) for some j in N_y(i)] (cosine neighbours)",
                      "Huh et al. 2024", aliases=("cycle_knn_alignment",))],
)
