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

from . import _moments as M
from . import _validation as V

SCORES = ("angular", "euclidean")


def _check_alpha(alpha):
    alpha = V.check_float(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1]; got {alpha!r}")
    return alpha


def shape_distance(x, y, alpha=1.0, score="angular"):
    """Generalised shape distance of Williams et al. (2021); Procrustes at ``alpha=1``.

    Both sides are column-centred (``Xc``) and partially whitened,
    ``Xa = Xc Zx`` with ``Zx = alpha I + (1 - alpha) Cx^{-1/2}`` and ``Cx = Xc^T Xc / n``
    (the inverse root taken on the numerical rank of ``Cx``). The optimal orthogonal
    alignment of the two (zero-padded to a common width) gives::

        angular:   arccos( ||Xa^T Ya||_* / (||Xa||_F ||Ya||_F) )
        euclidean: min_Q ||Xa Q - Ya||_F / sqrt(n)
                 = sqrt( (||Xa||_F^2 + ||Ya||_F^2 - 2 ||Xa^T Ya||_*) / n )

    ``alpha=1`` is the Procrustes shape distance (no whitening), ``alpha=0`` the
    CCA-based distance (full whitening: the nuclear norm becomes the sum of the
    canonical correlations).

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
        float64; angular in ``[0, pi/2]``, euclidean ``>= 0``. A numpy scalar for numpy
        input, a 0-d tensor on the input's device for torch. NaN with a
        :class:`~repsim.DegenerateRepresentationWarning` when a side is constant.

    Notes
    -----
    Invariances: translation and orthogonal transforms for every ``alpha``; the angular
    score at ``alpha=1`` also isotropic scaling; ``alpha=0`` any invertible linear map
    (up to the rank tolerance). Both scores are metrics (Williams et al. 2021). Rounding
    can put an exact match a few ``eps`` past the domain of ``arccos`` or ``sqrt``: only
    that excess is clipped. The whitening scale follows the covariance ``Xc^T Xc / n``
    (netrep's code uses ``Xc^T Xc`` and rescales to preserve variance, so for
    ``0 < alpha < 1`` its values differ from these; at ``alpha`` 0 and 1 the angular
    scores agree). Cost: ``O(n (p^2 + q^2 + pq) + p^3 + q^3)``, all examples needed once;
    it streams exactly from ``XᵀX, XᵀY, YᵀY`` and the column sums.

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
    V.check_option(score, "score", SCORES)
    xp, x, y = M.prepare_pair(x, y, what="shape_distance")
    m = M.moments(x, y)
    bad = M.constant_sides(m, x, y)
    if bad:
        return M.as_result(M.undefined(bad, "shape_distance"), xp)
    return M.as_result(M.shape_distance_from_moments(m, alpha, score), xp)


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
    xp, x, y = M.prepare_pair(x, y, what="nbs")
    m = M.moments(x, y)
    bad = M.constant_sides(m, x, y)
    if bad:
        return M.as_result(M.undefined(bad, "nbs"), xp)
    return M.as_result(M.nbs_from_moments(m), xp)
