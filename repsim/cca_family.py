"""Canonical correlation analysis and its SVCCA and PWCCA variants.

All three start from the canonical correlations ``rho_1 >= rho_2 >= ... >= 0`` of two
representations of the same examples: the cosines of the principal angles between their
(centred) column spaces, computed as the singular values of ``Q_x^T Q_y`` where ``Q_x``
and ``Q_y`` are orthonormal bases of those spaces. The bases come from a thin SVD of each
side (rank revealing), so rank-deficient inputs -- duplicated or dead neurons, more
features than examples -- are reduced to their numerical rank instead of producing NaN or
inverting a singular covariance.

Conventions shared by every function here:

* **Centring.** Columns are centred by default (``centre=True``), so CCA measures linear
  relationships between the features' fluctuations. Kornblith et al.'s public demo uses QR
  of the *uncentred* data; ``cca(x, y, summary="mean_squared", centre=False)`` reproduces
  its reference value 0.54312 (0.54540 with centring, the default).
* **Centring and scaling first.** Columns are centred in float64 and -- for the canonical
  correlations themselves, which no column scale changes -- scaled to unit norm before
  the SVD, so neither a common offset (``1e4`` times the spread) nor column scales from
  ``1e-3`` to ``1e3`` hide a direction.
* **Rank tolerance.** A singular value counts as zero when it is at most
  ``max(rtol * s_1, floor)``: ``s_1`` the largest singular value of the centred (and
  scaled) data and ``floor`` the rounding that centring in float64 can leave. ``rtol``
  defaults to ``max(n, p) * eps`` with ``eps`` the machine epsilon of the input's own
  float dtype (numpy's ``matrix_rank`` convention); when that drops a direction that
  float64 resolves (float32 data with a feature that is a combination of others, say), a
  ``RuntimeWarning`` says how many, and ``rtol`` keeps them. There are
  ``min(rank_x, rank_y)`` canonical correlations.
* **Too few examples.** Two subspaces of dimensions ``r_x`` and ``r_y`` in the
  ``d``-dimensional space of centred example vectors (``d = n - 1``; ``n`` uncentred)
  share at least ``r_x + r_y - d`` directions, whose canonical correlations are exactly 1
  whatever the data. When that number is positive (for instance ``n <= features``) an
  :class:`repsim.UnderdeterminedCCAWarning` says how many; the values
  returned are still correct, just uninformative. Use :func:`svcca` with fewer directions
  or more examples.
* **Constant input.** A representation with zero variance has no canonical directions:
  summaries are NaN with a :class:`repsim.DegenerateRepresentationWarning`
  naming the side.
* **Range.** Canonical correlations are singular values of a product of two matrices with
  orthonormal columns, so they lie in [0, 1] up to rounding; the rounding excess (at most
  a few ``eps``) is removed by clipping, so no value above 1 is ever returned.
* **Arrays.** numpy arrays and torch tensors (CPU or GPU) take the same array-API code
  path, in float64; results come back in the caller's library and device (a numpy
  float64 scalar or array, a float64 torch tensor).

References
----------
Hotelling (1936), "Relations between two sets of variates", Biometrika 28.
Björck & Golub (1973), "Numerical methods for computing angles between linear subspaces",
Mathematics of Computation 27.
Raghu, Gilmer, Yosinski & Sohl-Dickstein (2017), "SVCCA: Singular vector canonical
correlation analysis for deep learning dynamics and interpretability", NeurIPS.
Morcos, Raghu & Bengio (2018), "Insights on representational similarity in neural
networks with canonical correlation", NeurIPS.
Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of neural network representations
revisited", ICML.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _backend as B
from . import _validation as V
from ._cca_core import (
    _correlations,
    _keep_count,
    _pair,
    _pwcca_convention_svcca,
    _rho,
    _rho_of,
    _side,
    _summary,
    _warn_constant,
    _warn_underdetermined,
    pwcca_svcca_pair,
    svcca_layer,
)
from ._linalg import Rep, check_rtol
from ._registry import Measure, declare
from ._rules import check_ridge
scalar = B.scalar


# --------------------------------------------------------------------------- public


def canonical_correlations(x, y, *, centre: bool = True, rtol: float | None = None):
    """All canonical correlations of two representations, in descending order.

    The cosines of the principal angles between the column spaces of ``x`` and ``y``
    (Hotelling 1936), computed as the singular values of ``Q_x^T Q_y`` with ``Q_x, Q_y``
    orthonormal bases from a rank-revealing thin SVD of each side (Björck & Golub 1973).

    Parameters
    ----------
    x : array, shape (n, ...)
        numpy array or torch tensor; flattened to ``(n, p)``.
    y : array, shape (n, ...)
        Same library and example order as ``x``; flattened to ``(n, q)``.
    centre : bool, default True
        Centre the columns first (``False``: the uncentred convention of Kornblith et
        al.'s demo).
    rtol : float, optional
        Relative rank tolerance: singular values of the centred, column-scaled data at
        most ``rtol * s_1`` (or the centring's rounding) count as zero. Default
        ``max(n, p) * eps`` of the input's float dtype.

    Returns
    -------
    array, shape (min(rank_x, rank_y),)
        float64, in [0, 1], descending; same library and device as the input. Empty (with
        a :class:`repsim.DegenerateRepresentationWarning`) when a side is
        constant.

    Warns
    -----
    UnderdeterminedCCAWarning
        When ``rank_x + rank_y`` exceeds the dimension ``d`` of the space of (centred)
        example vectors (``d = n - 1``; ``n`` uncentred): at least ``rank_x + rank_y - d``
        correlations are 1 by construction, whatever the data.

    See Also
    --------
    cca, svcca, pwcca

    References
    ----------
    Hotelling (1936), "Relations between two sets of variates", Biometrika 28.
    Björck & Golub (1973), "Numerical methods for computing angles between linear
    subspaces", Mathematics of Computation 27.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((200, 3))
    >>> y = np.c_[x[:, :1] @ [[2.0]], rng.standard_normal((200, 2))]  # shares one direction
    >>> np.round(repsim.canonical_correlations(x, y)[0], 6)
    np.float64(1.0)
    """
    _, rho = _correlations(x, y, centre, rtol, "canonical correlations",
                           result="are undefined (none returned)")
    return rho


def cca(x, y, *, summary: str = "mean", centre: bool = True, rtol: float | None = None):
    """Mean canonical correlation (or mean squared) of two representations.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        As in :func:`canonical_correlations`.
    summary : {"mean", "mean_squared"}, default "mean"
        ``"mean"``: ``sum(rho_i) / m``; ``"mean_squared"``: ``sum(rho_i^2) / m`` (Yanai's
        generalized coefficient of determination, ``R^2_CCA`` in Kornblith et al. 2019),
        over the ``m = min(rank_x, rank_y)`` canonical correlations.
    centre : bool, default True
        Centre columns first. The public reference value -- Kornblith et al.'s demo,
        ``np.random.seed(1337); X = np.random.randn(100, 10); Y = X + np.random.randn(100,
        10)``, mean squared CCA 0.54312 -- uses QR of the uncentred data:
        ``cca(X, Y, summary="mean_squared", centre=False)``; with centring it is 0.54540.
    rtol : float, optional
        Rank tolerance, as in :func:`canonical_correlations`.

    Returns
    -------
    scalar
        float64 in [0, 1]; NaN with a warning when a side is constant. A numpy scalar for
        numpy input, a 0-d tensor on the input's device for torch.

    Notes
    -----
    CCA is invariant to every invertible linear map of either side, so with at least as
    many features as examples it cannot tell representations apart (all correlations are
    1; a warning says so). SVCCA and PWCCA reduce this sensitivity; CKA avoids it.

    References
    ----------
    Hotelling (1936). Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of neural
    network representations revisited", ICML.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> np.random.seed(1337)
    >>> X = np.random.randn(100, 10)
    >>> Y = X + np.random.randn(100, 10)
    >>> print(f"{repsim.cca(X, Y, summary='mean_squared', centre=False):.5f}")
    0.54312
    >>> print(f"{repsim.cca(X, Y, summary='mean_squared'):.5f}")
    0.54540
    """
    V.check_params(summary=summary)
    xp, rho = _correlations(x, y, centre, rtol, "CCA")
    return _summary(rho, summary, xp)


def svcca(x, y, *, keep: float | int | tuple = 0.99, summary: str = "mean",
          keep_by: str = "variance", rtol: float | None = None):
    """Singular vector CCA (Raghu et al. 2017).

    Each side is centred and reduced to its top singular directions -- those that explain
    a fraction ``keep`` of its variance, or a fixed number of them -- and the canonical
    correlations of the reduced representations are summarised.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        As in :func:`canonical_correlations`.
    keep : float in (0, 1], int >= 1, or a pair of them, default 0.99
        A float keeps, per side, the fewest leading singular directions whose share of
        the variance reaches ``keep`` (Raghu et al. keep 99%). An int keeps the leading
        ``keep`` directions per side, or all of a side's directions when its numerical
        rank is smaller (directions beyond the rank have zero variance). A pair
        ``(keep_x, keep_y)`` sets each side separately. Note that ``1`` (one direction)
        and ``1.0`` (all the variance) differ.
    summary : {"mean", "mean_squared"}, default "mean"
        Summary of the canonical correlations, as in :func:`cca` (SVCCA reports the mean).
    keep_by : {"variance", "singular_values"}, default "variance"
        What a float ``keep`` counts: the share of the squared singular values (the
        variance; Raghu et al.'s "99% of the variance") or of the singular values
        themselves (the convention of the SVCCA tutorial notebook and of anatome, which
        keeps more directions for the same number). Ignored for an int ``keep``.
    rtol : float, optional
        Rank tolerance, as in :func:`canonical_correlations`.

    Returns
    -------
    scalar
        float64 in [0, 1] (1 for identical inputs); NaN with a warning when a side is
        constant. A numpy scalar for numpy input, a 0-d tensor for torch.

    Warns
    -----
    UnderdeterminedCCAWarning
        When the kept directions of both sides together exceed ``n - 1``.

    References
    ----------
    Raghu, Gilmer, Yosinski & Sohl-Dickstein (2017), "SVCCA: Singular vector canonical
    correlation analysis for deep learning dynamics and interpretability", NeurIPS.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> signal = rng.standard_normal((500, 4))
    >>> x = signal @ rng.standard_normal((4, 30)) + 0.1 * rng.standard_normal((500, 30))
    >>> y = signal @ rng.standard_normal((4, 20)) + 0.1 * rng.standard_normal((500, 20))
    >>> round(float(repsim.svcca(x, y, keep=4)), 2)
    1.0
    """
    V.check_params(summary=summary, keep_by=keep_by)
    if isinstance(keep, (tuple, list)):
        if len(keep) != 2:
            raise ValueError(f"keep must be one value or a pair (keep_x, keep_y); got {keep!r}")
        keep_x, keep_y = keep
    else:
        keep_x = keep_y = keep
    xp, rx, ry = _pair(x, y, centre=True, rtol=rtol, unit_columns=False)
    return _svcca_of(rx, ry, keep_x, keep_y, summary, keep_by)


def _svcca_of(rx, ry, keep_x, keep_y, summary, keep_by):
    xp = rx.xp
    kx = _keep_count(keep_x, rx, "keep" if keep_x is keep_y else "keep[0]", keep_by)
    ky = _keep_count(keep_y, ry, "keep" if keep_x is keep_y else "keep[1]", keep_by)
    if not _warn_constant([("x", rx, kx), ("y", ry, ky)], "SVCCA"):
        _warn_underdetermined(kx, ky, rx.n, True, "SVCCA")
    rho = _rho(rx.u[:, :kx], ry.u[:, :ky], xp)
    return _summary(rho, summary, xp)


def pwcca(x, y, *, side: str = "x", centre: bool = True, rtol: float | None = None,
          convention: str = "morcos"):
    """Projection-weighted CCA (Morcos et al. 2018).

    A weighted mean of the canonical correlations, each weighted by how much of the
    original neurons its canonical variate accounts for: with ``h_i`` the (unit-norm)
    canonical variates of one side and ``z_j`` that side's centred neurons (columns),

    ``alpha_i = sum_j |<h_i, z_j>|``, ``PWCCA = sum_i alpha_i rho_i / sum_i alpha_i``.

    Directions that carry much of the representation count more; the many weak canonical
    correlations between low-variance (noise) directions count little. PWCCA is computed
    on all of each side's (numerically non-zero) directions: unlike SVCCA there is no
    first reduction to the high-variance directions.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        As in :func:`canonical_correlations`.
    side : {"x", "y", "smaller"}, default "x"
        Whose neurons weight the correlations (PWCCA is not symmetric). ``"smaller"``
        takes the side with fewer features (``x`` on a tie), the choice of the authors'
        reference implementation.
    centre : bool, default True
        Centre the columns first (``convention="morcos"``; the ``"svcca"`` convention
        does its own, partial, centring).
    rtol : float, optional
        Rank tolerance, as in :func:`canonical_correlations` (``convention="morcos"``).
    convention : {"morcos", "svcca"}, default "morcos"
        ``"morcos"``: the definition above (Morcos et al., eq. in section 2.2), with
        canonical variates ``h_i = X_c Sigma_xx^{-1/2} a_i``. ``"svcca"``: what
        google/svcca's ``pwcca.py`` computes, behind most published PWCCA numbers: the
        "directions" are ``a_i^T`` applied to the centred activations *without*
        ``Sigma_xx^{-1/2}``, the neuron means are added back, the directions are
        orthonormalised by a QR in that order, and the weights are taken against the
        *uncentred* activations. The two differ by 2e-3 to 0.14 on typical layers. The
        reference weights depend on the (arbitrary) signs of the singular vectors, since
        the means are added after the rotation; repsim follows LAPACK's signs as the
        reference does. Requires the weighting side to have at most as many features as
        the other (the reference is defined for the smaller side: use
        ``side="smaller"``), more examples than features, and full-rank covariances.

    Returns
    -------
    scalar
        float64 in [0, 1] (1 for identical inputs); NaN with a warning when a side is
        constant. A numpy scalar for numpy input, a 0-d tensor for torch.

    Notes
    -----
    PWCCA is invariant to invertible linear maps of the side that does *not* weight, but
    not to orthogonal maps of the weighting side: rotating the weighting side's neurons
    changes ``alpha`` (a sum of absolute values over neurons). On 500 examples of two
    related 10-dimensional layers a random rotation of the weighting side changed PWCCA
    by 5.8e-3 (``test_pwcca_not_invariant_to_rotating_the_weighting_side``).

    References
    ----------
    Morcos, Raghu & Bengio (2018), "Insights on representational similarity in neural
    networks with canonical correlation", NeurIPS. google/svcca, ``pwcca.py``
    (``compute_pwcca``) and ``cca_core.py``.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((300, 10))
    >>> round(float(repsim.pwcca(x, x @ rng.standard_normal((10, 10)))), 6)
    1.0
    """
    V.check_params(side=side, convention=convention)
    if convention == "svcca":
        return _pwcca_convention_svcca(x, y, side)
    xp, rx, ry = _pair(x, y, centre=centre, rtol=rtol)
    return _pwcca_of(rx, ry, side, centre)


class PwccaLayer(NamedTuple):
    """One side of PWCCA, prepared once per layer (the registry's ``prepare``)."""

    rep: Rep
    """The validated side and the thin SVD ``U S V^T`` of its (centred, unit-column) data."""
    coords: Any
    """(rank, p) ``U_r^T Z``: the side's (centred, unscaled) neurons ``Z`` in its
    orthonormal basis ``U_r`` -- all that the weights need of the ``n`` examples."""


def _pwcca_layer(rep):
    """``rep`` with its neurons' coordinates ``U_r^T Z`` (``n r p`` flops, once per layer)."""
    return PwccaLayer(rep, rep.xp.matmul(rep.u[:, : rep.rank].T, rep.data))


def _pwcca_of(rx, ry, side, centre, lx=None, ly=None):
    """PWCCA of two validated sides; ``lx``, ``ly`` their :class:`PwccaLayer` when prepared.

    Only ``M = U_x^T U_y`` (``n r_x r_y``) touches the examples; its ``r_x x r_y`` SVD and
    the weights ``|a^T (U_x^T Z_x)|`` (``r_x^2 p``) are small.
    """
    xp = rx.xp
    if _warn_constant([("x", rx, rx.rank), ("y", ry, ry.rank)], "PWCCA"):
        return _summary(xp.zeros((0,), dtype=B.accumulation_dtype(xp), device=B.device(rx.data)), "mean", xp)
    _warn_underdetermined(rx.rank, ry.rank, rx.n, centre, "PWCCA")
    ux, uy = rx.u[:, : rx.rank], ry.u[:, : ry.rank]
    a, rho, bt = xp.linalg.svd(xp.matmul(ux.T, uy), full_matrices=False)
    rho = xp.clip(rho, 0.0, 1.0)
    if side == "smaller":
        side = "x" if rx.p <= ry.p else "y"
    rep, coef, layer = (rx, a, lx) if side == "x" else (ry, bt.T, ly)
    # <h_i, z_j> for the unit canonical variates h = U_r coef and the (unscaled) centred
    # neurons z: h^T z = coef^T (U_r^T z); only z's components in the span of U_r count
    coords = (layer or _pwcca_layer(rep)).coords
    proj = xp.matmul(coef.T, coords)
    alpha = xp.sum(xp.abs(proj), axis=1)
    return scalar(xp.sum(alpha * rho) / xp.sum(alpha), xp)


# --------------------------------------------------------------------------- registry


def _rep(unit_columns):
    def prepare(x, name, *, centre=True, rtol=None, **_):
        x = B.asarray(x, name)
        xp = B.namespace(x)
        V.as_2d(x, xp, name)
        return _side(x, name, xp, centre, check_rtol(rtol), unit_columns)
    return prepare


def _cca_pair(rx, ry, *, summary, centre, **_):
    return _summary(_rho_of(rx, ry, centre, "CCA"), summary, rx.xp)


def _svcca_keep(keep):
    if isinstance(keep, (tuple, list)):
        if len(keep) != 2:
            raise ValueError(f"keep must be one value or a pair (keep_x, keep_y); got {keep!r}")
        return keep[0], keep[1]
    return keep, keep


def _svcca_pair(rx, ry, *, keep, summary, keep_by, **_):
    return _svcca_of(rx, ry, *_svcca_keep(keep), summary, keep_by)


def _pwcca_prepare(x, name, *, convention="morcos", **options):
    """Per layer: google/svcca's covariance terms, or the SVD basis and ``U_r^T Z``."""
    if convention == "svcca":
        return svcca_layer(x, name)
    return _pwcca_layer(_rep(True)(x, name, **options))


def _pwcca_pair(la, lb, *, side, centre, convention, **_):
    if convention == "svcca":
        return pwcca_svcca_pair(la, lb, side)
    return _pwcca_of(la.rep, lb.rep, side, centre, la, lb)


_RIDGE = {"ridge": (0.0, V.Satisfies(check_ridge))}
_ALL = ("orthogonal", "isotropic_scaling", "invertible_linear", "translation")
_MOM = "O(n (p + q)^2 + (p + q)^3)"
_RTOL = V.Satisfies(check_rtol)
_SUMMARY = V.Options("mean", "mean_squared")

declare(
    cca,
    constraints={"summary": _SUMMARY, "centre": V.PARAMS["centre"], "rtol": _RTOL},
    prepare=_rep(True), pair=_cca_pair, moments=("summary",), moment_options=_RIDGE,
    measures=[Measure("cca", {}, "similarity", "[0, 1]", _ALL, True,
                      "exact from feature moments", _MOM,
                      "mean canonical correlation of the centred column spaces",
                      "Hotelling 1936; Raghu et al. 2017", aliases=("mean_cca",),
                      repository=("cca-score",))],
)
declare(
    svcca,
    constraints={"summary": _SUMMARY, "keep_by": V.Options("variance", "singular_values"),
                 "rtol": _RTOL},
    prepare=lambda x, name, *, rtol=None, **_: _rep(False)(x, name, centre=True, rtol=rtol),
    pair=_svcca_pair, moments=("keep", "summary"), moment_options=_RIDGE,
    symmetric_when=lambda o: len(set(_svcca_keep(o["keep"]))) == 1,
    measures=[Measure("svcca", {}, "similarity", "[0, 1]",
                      ("orthogonal", "isotropic_scaling", "translation"), True,
                      "all examples (SVD truncation)", _MOM,
                      "mean CCA after keeping the top directions explaining 99% of variance",
                      "Raghu et al. 2017", repository=("svcca-var99", "svcca"))],
)
declare(
    pwcca,
    constraints={"side": V.Options("x", "y", "smaller"), "centre": V.PARAMS["centre"],
                 "rtol": _RTOL, "convention": V.Options("morcos", "svcca")},
    prepare=_pwcca_prepare, pair=_pwcca_pair, moments=("side",), moment_options=_RIDGE,
    measures=[Measure("pwcca", {}, "similarity", "[0, 1]", ("isotropic_scaling", "translation"),
                      False, "exact from feature moments", _MOM,
                      "canonical correlations weighted by the share of x's neurons each "
                      "accounts for", "Morcos et al. 2018", repository=("pwcca",))],
)
