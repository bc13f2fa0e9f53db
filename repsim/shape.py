"""Shape metrics: Procrustes / generalised shape distance and normalised Bures similarity.

References
----------
Williams, Kunz, Kornblith & Linderman (2021), "Generalized shape metrics on neural
representations", NeurIPS.
Harvey, Larsen & Williams (2023), "Duality of Bures and shape distances with implications
for comparing neural representations", UniReps workshop.
Bures (1969), "An extension of Kakutani's theorem on infinite product measures to the
tensor product of semifinite w*-algebras", Trans. AMS 135.
"""

from __future__ import annotations

from . import _backend as B
from . import _moment_formulas as M
from . import _validation as V
from ._registry import Measure, declare
from ._rules import check_alpha as _check_alpha


def shape_distance(x, y, alpha=1.0, score="angular"):
    """Generalised shape distance of Williams et al. (2021); Procrustes at ``alpha=1``.

    Both sides are column-centred (``Xc``) and partially whitened as in netrep's
    ``LinearMetric``: ``Xa = c Xc Zx`` with ``Zx = alpha I + (1 - alpha) (Xc^T Xc)^{-1/2}``
    (the inverse root on the numerical rank) and ``c`` the factor that keeps the total
    variance, ``||Xa||_F = ||Xc||_F``. The optimal orthogonal alignment of the two
    (zero-padded to a common width) gives::

        angular:   arccos( ||Xa^T Ya||_* / (||Xa||_F ||Ya||_F) )
        euclidean: min_Q ||Xa Q - Ya||_F = sqrt( ||Xa||_F^2 + ||Ya||_F^2 - 2 ||Xa^T Ya||_* )

    ``alpha=1`` is the Procrustes shape distance (no whitening; its Euclidean score is
    the Bures distance between the centred grams ``Xc Xc^T`` and ``Yc Yc^T``, Harvey et al.
    2023), ``alpha=0`` the CCA-based distance (full whitening: the angular score is
    ``arccos(Σ ρ_i / sqrt(r_x r_y))`` with the canonical correlations ``ρ``).

    Parameters
    ----------
    x : array, shape (n, ...)
        numpy array or torch tensor, flattened to ``(n, p)``.
    y : array, shape (n, ...)
        Same library and example order; ``(n, q)``, ``q`` may differ from ``p``.
    alpha : float in [0, 1], default 1.0
        Regularisation of the whitening.
    score : {"angular", "euclidean"}

    Returns
    -------
    scalar
        float64; angular in ``[0, pi/2]``, euclidean ``>= 0`` (in the data's units). A
        numpy scalar for numpy input, a 0-d tensor on the input's device for torch. NaN
        with a :class:`~repsim.DegenerateRepresentationWarning` when a side is constant.

    Notes
    -----
    Invariances: translation and orthogonal transforms for every ``alpha``; the angular
    score also isotropic scaling at ``alpha`` 0 and 1 and, at ``alpha=0``, any invertible
    linear map. Both scores are metrics (Williams et al. 2021). Rounding can put an exact
    match a few ``eps`` past the domain of ``arccos`` or ``sqrt``: only that excess is
    clipped. Values equal netrep's ``LinearMetric(alpha, score_method=...)`` for inputs of
    full column rank (netrep clips eigenvalues at an absolute ``1e-7`` instead of
    taking the numerical rank, which moves its variance rescaling for rank-deficient
    inputs). Cost: ``O(n (p^2 + q^2 + pq) + p^3 + q^3)``; it streams exactly from
    ``XᵀX, XᵀY, YᵀY`` and the column sums.

    References
    ----------
    .. [1] Williams, Kunz, Kornblith & Linderman (2021), "Generalized shape metrics on
       neural representations", NeurIPS.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((50, 4))
    >>> q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    >>> round(float(repsim.shape_distance(x, 3 * x @ q + 1)), 6)
    0.0
    """
    alpha = _check_alpha(alpha)
    V.check_params("shape_distance", score=score)
    xp, a, b = M.prepare_layers(x, y, what="shape_distance")
    return _shape_pair(a, b, alpha=alpha, score=score)


def nbs(x, y):
    """Normalised Bures similarity (Harvey, Larsen & Williams 2023).

    ``NBS = ||Xc^T Yc||_* / sqrt(tr(Xc^T Xc) tr(Yc^T Yc))``, the fidelity
    ``tr((K^{1/2} L K^{1/2})^{1/2}) / sqrt(tr K tr L)`` of the centred linear grams
    ``K = Xc Xc^T``, ``L = Yc Yc^T``; it is the cosine of the angular Procrustes distance
    (``shape_distance(x, y, alpha=1)``).

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed), flattened to ``(n, p)``, ``(n, q)``.

    Returns
    -------
    scalar
        float64 in ``[0, 1]``; NaN with a warning when a side is constant.

    Notes
    -----
    Invariant to translation, orthogonal transforms and isotropic scaling of either side;
    not to general invertible linear maps. Streams exactly from moments.

    References
    ----------
    .. [1] Harvey, Larsen & Williams (2023), "Duality of Bures and shape distances with
       implications for comparing neural representations", UniReps.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((40, 3))
    >>> round(float(repsim.nbs(x, -2 * x)), 6)
    1.0
    """
    xp, a, b = M.prepare_layers(x, y, what="nbs")
    return _nbs_pair(a, b)


# --------------------------------------------------------------------------- registry


def _layer(x, name, **_):
    return M.prepare_layer(x, name, what="shape_distance")


def _shape_pair(a, b, *, alpha, score, **_):
    xp = B.namespace(a.xc)
    m, bad = M.pair_layers(a, b)
    if bad:
        return M.as_result(M.undefined(bad, "shape_distance"), xp)
    return M.as_result(M.shape_distance_from_moments(m, alpha, score), xp)


def _nbs_pair(a, b, **_):
    xp = B.namespace(a.xc)
    m, bad = M.pair_layers(a, b)
    if bad:
        return M.as_result(M.undefined(bad, "nbs"), xp)
    return M.as_result(M.nbs_from_moments(m), xp)


_OIT = ("orthogonal", "isotropic_scaling", "translation")
_MOM = "O(n (p + q)^2 + (p + q)^3)"
_EXACT = "exact from feature moments"

declare(
    shape_distance,
    constraints={"alpha": V.Satisfies(_check_alpha), "score": V.Options("angular", "euclidean")},
    prepare=_layer, pair=_shape_pair, moments=("alpha", "score"),
    measures=[
        Measure("procrustes_angular", {"alpha": 1.0}, "metric", "[0, pi/2]", _OIT, True, _EXACT,
                _MOM, "arccos(||Xc^T Yc||_* / (||Xc||_F ||Yc||_F))", "Williams et al. 2021",
                aliases=("procrustes", "angular_procrustes"),
                repository=("procrustes-angular",)),
        Measure("procrustes_euclidean", {"alpha": 1.0, "score": "euclidean"}, "metric",
                "[0, inf)", ("orthogonal", "translation"), True, _EXACT, _MOM,
                "min_Q ||Xc Q - Yc||_F (Bures distance of the centred grams)",
                "Williams et al. 2021", aliases=("bures_distance",),
                repository=("procrustes-euclidean", "bures_distance")),
        Measure("shape_cca_angular", {"alpha": 0.0}, "metric", "[0, pi/2]",
                ("orthogonal", "isotropic_scaling", "invertible_linear", "translation"), True,
                _EXACT, _MOM,
                "angular shape distance of the whitened data: arccos(sum rho / sqrt(r_x r_y))",
                "Williams et al. 2021"),
        Measure("shape_half_angular", {"alpha": 0.5}, "metric", "[0, pi/2]",
                ("orthogonal", "translation"), True, _EXACT, _MOM,
                "angular shape distance after partial whitening alpha I + (1 - alpha) S^-1/2",
                "Williams et al. 2021"),
    ],
)
declare(
    nbs, prepare=_layer, pair=_nbs_pair, moments=(),
    measures=[Measure("nbs", {}, "similarity", "[0, 1]", _OIT, True, _EXACT, _MOM,
                      "||Xc^T Yc||_* / sqrt(tr(Xc^T Xc) tr(Yc^T Yc))", "Harvey et al. 2023",
                      aliases=("normalized_bures_similarity",),
                      repository=("nbs", "procrustes-angular-score"))],
)
