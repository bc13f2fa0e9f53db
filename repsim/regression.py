"""Linear predictivity: (ridge) regression R² and the GULP distance.

References
----------
Boix-Adserà, Lawrence, Stepaniants & Rigollet (2022), "GULP: a prediction-based metric
between representations", NeurIPS.
Klabunde, Schumacher, Strohmaier & Lemmerich (2023), "Similarity of neural network models:
a survey of functional and representational measures" (linear regression R²).
"""

from __future__ import annotations

from . import _backend as B
from . import _moment_formulas as M
from . import _validation as V
from ._registry import Measure, declare
from ._rules import check_ridge as _check_ridge


def _folds(n, folds):
    if folds is None:
        return None
    folds = V.check_int(folds, "folds", 2, n, what=" (at most n)")
    base, extra = divmod(n, folds)
    bounds, start = [], 0
    for f in range(folds):
        stop = start + base + (1 if f < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _r2_one(a, b, ridge, bounds):
    """R² of predicting layer ``b`` from layer ``a`` (:class:`~repsim._moment_formulas.Layer`):
    in-sample from their moments, or out-of-fold from per-fold sums of the centred data."""
    xp = B.namespace(a.xc)
    if bounds is None:
        return M.r2_from_moments(M.pair_layers(a, b)[0], ridge)
    sums = [M.raw_sums(a.xc[lo:hi], b.xc[lo:hi], xp) for lo, hi in bounds]
    return M.cv_r2_from_sums(sums, ridge, a.e)


def ridge_r2(x, y, ridge=0.0, *, direction="x_to_y", folds=None):
    """Coefficient of determination of a linear (ridge) regression between two layers.

    ``x_to_y``: regress ``y`` on ``x`` with an intercept,
    ``B = (Cxx + ridge I)^+ Cxy`` on the centred covariances ``C = Xc^T Yc / n``, and
    report the R² pooled over all of ``y``'s features::

        R² = 1 - ||Yc - Xc B||_F^2 / ||Yc||_F^2

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed).
    ridge : float >= 0, default 0.0
        Penalty on the covariance scale (``Cxx = Xc^T Xc / n``); 0 is ordinary least
        squares (minimum-norm solution, same R² for any least-squares solution).
    direction : {"x_to_y", "y_to_x", "mean"}
        Which side is predicted; ``"mean"`` averages both directions (symmetric).
    folds : int, optional
        k-fold out-of-sample R² over ``folds`` contiguous blocks of examples (in the
        given order; shuffle first if the order is structured). Fold ``f`` is predicted
        by the regression fitted on the others, and
        ``R²_cv = 1 - Σ_f SSres_f / Σ_f SStot_f`` with ``SStot_f`` the squared error of
        the training mean. None: in-sample R².

    Returns
    -------
    scalar
        float64, at most 1 (in-sample: in ``[0, 1]``; out-of-sample it can be negative).
        NaN with a warning when the predicted side is constant.

    Notes
    -----
    In-sample R² (``ridge=0``) is invariant to invertible linear maps of the predictor,
    orthogonal maps and isotropic scaling of the target, and translations; ``ridge > 0``
    keeps orthogonal and translation invariance only. Streams exactly from ``Σx, XᵀX,
    XᵀY, YᵀY`` (per-fold sums for k-fold). Cost ``O(n (p^2 + pq) + p^3)``.

    References
    ----------
    .. [1] Klabunde et al. (2023), "Similarity of neural network models: a survey of
       functional and representational measures", arXiv:2305.06329 (linear regression).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((100, 5))
    >>> round(float(repsim.ridge_r2(x, x @ rng.standard_normal((5, 3)))), 6)
    1.0
    """
    ridge = _check_ridge(ridge)
    V.check_params("ridge_r2", direction=direction)
    xp, a, b = M.prepare_layers(x, y, min_n=3 if folds else 2, what="ridge_r2")
    bounds = _folds(a.n, folds)
    pairs = {"x_to_y": [(a, b, "y")], "y_to_x": [(b, a, "x")]}
    pairs["mean"] = pairs["x_to_y"] + pairs["y_to_x"]
    bad = [t for _, q, t in pairs[direction] if q.constant]
    if bad:
        return M.as_result(M.undefined(bad, "ridge_r2"), xp)
    values = [_r2_one(p, q, ridge, bounds) for p, q, _ in pairs[direction]]
    return M.as_result(sum(values) / len(values), xp)


def gulp(x, y, ridge=0.01, *, squared=False):
    """GULP distance of Boix-Adserà et al. (2022) between two representations.

    With the centred covariances ``Σx = Xc^T Xc / n``, ``Σy``, ``Σxy`` and
    ``Rx = (Σx + λ I)^{-1}``::

        d² = tr(Rx Σx Rx Σx) + tr(Ry Σy Ry Σy) - 2 tr(Rx Σxy Ry Σyx)

    the mean squared difference between the best ridge predictors of any linear target
    built from ``x`` and from ``y``.

    Parameters
    ----------
    x, y : array, shape (n, ...)
    ridge : float >= 0, default 0.01
        ``λ`` on the covariance scale. 0 gives ``rank_x + rank_y - 2 Σ ρ_i²`` (CCA).
    squared : bool, default False
        Return ``d²`` instead of ``d``.

    Returns
    -------
    scalar
        float64 ``>= 0``; the rounding excess of an exact match below 0 is clipped before
        the square root. NaN with a warning when a side is constant.

    Notes
    -----
    A pseudo-metric; invariant to translation and orthogonal maps (``λ=0``: invertible
    linear maps). Streams exactly from moments. Cost ``O(n (p^2 + q^2 + pq) + p^3 + q^3)``.

    References
    ----------
    .. [1] Boix-Adserà, Lawrence, Stepaniants & Rigollet (2022), "GULP: a prediction-based
       metric between representations", NeurIPS.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((100, 5))
    >>> round(float(repsim.gulp(x, x)), 6)
    0.0
    """
    ridge = _check_ridge(ridge)
    if not isinstance(squared, bool):
        raise ValueError(f"squared must be True or False; got {squared!r}")
    xp, a, b = M.prepare_layers(x, y, what="gulp")
    return _gulp_pair(a, b, ridge=ridge, squared=squared)


# --------------------------------------------------------------------------- registry


def _gulp_pair(a, b, *, ridge, squared, **_):
    """GULP of two prepared layers (NaN with a warning naming constant sides)."""
    xp = B.namespace(a.xc)
    m, bad = M.pair_layers(a, b)
    if bad:
        return M.as_result(M.undefined(bad, "gulp"), xp)
    d2 = M.gulp_from_moments(m, ridge)
    return M.as_result(d2 if squared else xp.sqrt(xp.clip(d2, 0.0, None)), xp)


_RIDGE = V.Satisfies(_check_ridge)
_MOM = "O(n (p + q)^2 + (p + q)^3)"
_FOLDS = "exact from feature moments (k-fold: per-fold sums)"

declare(
    ridge_r2,
    constraints={"ridge": _RIDGE, "direction": V.Options("x_to_y", "y_to_x", "mean")},
    moments=("ridge", "direction"), moment_options={"out_of_fold": (False, V.Flag())},
    measures=[
        Measure("linear_r2", {}, "similarity", "[0, 1]",
                ("orthogonal", "isotropic_scaling", "translation"), False, _FOLDS, _MOM,
                "pooled R² of the least-squares prediction of y from x",
                "Klabunde et al. 2023", aliases=("linear_regression", "linreg_r2")),
        Measure("ridge_r2", {"ridge": 0.1}, "similarity", "[0, 1]",
                ("orthogonal", "translation"), False, _FOLDS, _MOM,
                "pooled R² of the ridge prediction of y from x", "Klabunde et al. 2023"),
    ],
)
declare(
    gulp,
    constraints={"ridge": _RIDGE, "squared": V.Flag()},
    prepare=lambda x, name, **_: M.prepare_layer(x, name, what="gulp"), pair=_gulp_pair,
    moments=("ridge", "squared"),
    measures=[Measure("gulp", {}, "distance", "[0, inf)", ("orthogonal", "translation"), True,
                      "exact from feature moments", _MOM,
                      "distance between the ridge predictors of linear targets from x and "
                      "from y", "Boix-Adserà et al. 2022")],
)
