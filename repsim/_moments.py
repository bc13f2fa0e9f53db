"""Second-moment statistics of two representations and the measures that only need them.

Every measure here is a function of the example count ``n`` and the centred scatter
matrices ``Sxx = Xc^T Xc``, ``Syy = Yc^T Yc`` and ``Sxy = Xc^T Yc`` (``Xc`` the
column-centred ``x``, float64). The full-data functions (:func:`repsim.shape_distance`,
:func:`repsim.nbs`, :func:`repsim.ridge_r2`, :func:`repsim.gulp`) form these moments from
the data and call the ``*_from_moments`` functions below; a streaming accumulator that
sums ``Σx, Σy, XᵀX, XᵀY, YᵀY`` over batches (with a shift) calls the very same functions,
so both give one value.

When a side has more features than examples, it is first replaced by ``U S`` of its thin
SVD ``Xc = U S Vᵀ`` (``n x rank`` columns): every measure here is invariant to an
orthogonal change of feature basis and to dropping all-zero columns, so the value is
unchanged and the moments stay at most ``n x n``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from . import _backend as B
from . import _validation as V
from .hsic import scalar


class Moments(NamedTuple):
    """Centred second moments of two representations of the same ``n`` examples.

    Attributes
    ----------
    n : int
    sxx : array, shape (p, p), float64
        ``Xc^T Xc`` with ``Xc = x - mean(x, axis=0)``.
    syy : array, shape (q, q), float64
    sxy : array, shape (p, q), float64
        ``Xc^T Yc``.
    """

    n: int
    sxx: object
    syy: object
    sxy: object


def prepare_pair(x, y, min_n=2, what="this measure"):
    """Validate two representations: ``(xp, x, y)`` as float64 ``(n, features)`` arrays."""
    x, y = B.asarray(x), B.asarray(y)
    xp = B.namespace(x, y, names=["x", "y"])
    x = V.as_2d(x, xp, "x")
    y = V.as_2d(y, xp, "y")
    V.check_same_n(x.shape[0], y.shape[0], "x", "y", x.shape, y.shape)
    n = int(x.shape[0])
    if n < min_n:
        raise ValueError(f"{what} needs at least {min_n} examples; got n={n} for x")
    x = xp.astype(x, xp.float64)
    y = xp.astype(y, xp.float64)
    V.check_finite_array(x, xp, "x")
    V.check_finite_array(y, xp, "y")
    return xp, x, y


def centre_columns(x, xp):
    return x - xp.mean(x, axis=0)


def reduce_features(xc, xp):
    """``xc`` itself when it has at most ``n`` columns, else ``U S`` of its thin SVD."""
    n, p = xc.shape
    if p <= n:
        return xc
    u, s, _ = xp.linalg.svd(xc, full_matrices=False)
    return u * s[None, :]


def moments(x, y):
    """Centred moments of two validated float64 arrays (see :class:`Moments`)."""
    xp = B.namespace(x, y)
    xc = reduce_features(centre_columns(x, xp), xp)
    yc = reduce_features(centre_columns(y, xp), xp)
    return Moments(int(x.shape[0]), xp.matmul(xc.T, xc), xp.matmul(yc.T, yc), xp.matmul(xc.T, yc))


class Layer(NamedTuple):
    """One validated representation's share of :func:`moments`, computed once per layer.

    ``xc``: centred (and, beyond ``n`` columns, SVD-reduced) float64 data; ``sxx``:
    ``xcᵀ xc``; ``scale``: ``Σ x²`` of the uncentred data (the constant-layer test)."""

    n: int
    xc: object
    sxx: object
    scale: float


def float64_layer(x, name="x", min_n=2, what="this measure"):
    """``(xp, x)``: one representation validated as :func:`prepare_pair` does -- 2-d, at least
    ``min_n`` examples, finite -- as float64 ``(n, features)``."""
    x = B.asarray(x)
    xp = B.namespace(x)
    x = V.as_2d(x, xp, name)
    n = int(x.shape[0])
    if n < min_n:
        raise ValueError(f"{what} needs at least {min_n} examples; got n={n} for {name}")
    x = xp.astype(x, xp.float64)
    V.check_finite_array(x, xp, name)
    return xp, x


def prepare_layer(x, name="x", min_n=2, what="this measure"):
    """Validate one representation as :func:`prepare_pair` does and form its :class:`Layer`."""
    xp, x = float64_layer(x, name, min_n, what)
    xc = reduce_features(centre_columns(x, xp), xp)
    return Layer(int(x.shape[0]), xc, xp.matmul(xc.T, xc), B.item(xp.sum(x * x)))


def pair_layers(a, b):
    """``(moments, constant sides)`` of two :class:`Layer` -- what :func:`moments` and
    :func:`constant_sides` give on the two full arrays."""
    xp = B.namespace(a.xc)
    # a layer against itself: a copy, so that the product is the general one the
    # per-pair function forms (numpy's symmetric ``aᵀa`` kernel rounds differently, and
    # the angular score's arccos turns 1e-16 into 1e-8 near a distance of 0)
    yc = b.xc if b is not a else xp.asarray(b.xc, copy=True)
    m = Moments(a.n, a.sxx, b.sxx, xp.matmul(a.xc.T, yc))
    return m, constant_sides(m, scales=(a.scale, b.scale))


def constant_sides(m, x=None, y=None, scales=None):
    """Names of the sides whose total centred variance is zero up to rounding.

    ``tr(Sxx) <= n * eps * tr(XᵀX)`` counts as constant (the rounding error of the
    centring), as for CKA (:func:`repsim.kernels.degeneracy_terms`).
    """
    xp = B.namespace(m.sxx)
    eps = float(xp.finfo(xp.float64).eps)
    bad = []
    for i, (name, s, raw) in enumerate((("x", m.sxx, x), ("y", m.syy, y))):
        tr = B.item(xp.sum(xp.linalg.diagonal(s)))
        if scales is not None:
            scale = scales[i]
        else:
            scale = tr if raw is None else B.item(xp.sum(raw * raw))
        if not tr > m.n * eps * scale:
            bad.append(name)
    return bad


def undefined(bad, measure):
    """Warn that ``measure`` is undefined for the constant sides ``bad``; return NaN."""
    import warnings

    warnings.warn(
        f"{measure} is undefined (set to NaN) for constant representation(s) "
        + ", ".join(repr(b) for b in bad) + ": zero variance after centring",
        V.DegenerateRepresentationWarning,
        stacklevel=V.user_stacklevel(),
    )
    return math.nan


def _trace(a, xp):
    return xp.sum(xp.linalg.diagonal(a))


def _nuclear(a, xp):
    if a.shape[0] == 0 or a.shape[1] == 0:
        return xp.asarray(0.0, dtype=xp.float64, device=B.device(a))
    return xp.sum(xp.linalg.svdvals(a))


def _eig(s, xp):
    """Eigenvalues (rank-revealed: below ``dim * eps * max`` set to 0) and vectors."""
    w, v = xp.linalg.eigh(s)
    top = xp.max(xp.abs(w)) if w.shape[0] else 0.0
    tol = max(s.shape[0], 1) * float(xp.finfo(xp.float64).eps) * top
    w = xp.where(w > tol, w, xp.zeros_like(w))
    return w, v


def nbs_from_moments(m):
    """Normalised Bures similarity ``||Sxy||_* / sqrt(tr Sxx tr Syy)``."""
    xp = B.namespace(m.sxx)
    return _nuclear(m.sxy, xp) / xp.sqrt(_trace(m.sxx, xp) * _trace(m.syy, xp))


def _partial_whitener(s, alpha, xp):
    """``Z = alpha I + (1 - alpha) S^{-1/2}`` on the numerical rank of the scatter ``S``
    (netrep's convention: ``S = Xc^T Xc``, no ``1/n``); null directions of ``S`` carry no
    data, so their entries do not matter and are 0."""
    w, v = _eig(s, xp)
    safe = xp.where(w > 0, w, xp.ones_like(w))
    d = xp.where(w > 0, alpha + (1.0 - alpha) / xp.sqrt(safe), xp.zeros_like(w))
    return xp.matmul(v * d[None, :], v.T)


def shape_terms_from_moments(m, alpha):
    """``(||Xa^T Ya||_*, ||Xa||_F^2, ||Ya||_F^2)`` of the partially whitened data
    ``Xa = c_x Xc Zx``, ``Ya = c_y Yc Zy`` (see :func:`repsim.shape_distance`), with
    ``c`` rescaling each side to its original total variance, so ``||Xa||_F^2 = tr Sxx``."""
    xp = B.namespace(m.sxx)
    tx, ty = _trace(m.sxx, xp), _trace(m.syy, xp)
    if alpha == 1.0:
        return _nuclear(m.sxy, xp), tx, ty
    zx = _partial_whitener(m.sxx, alpha, xp)
    zy = _partial_whitener(m.syy, alpha, xp)
    cross = xp.matmul(xp.matmul(zx.T, m.sxy), zy)
    vx = _trace(xp.matmul(xp.matmul(zx.T, m.sxx), zx), xp)
    vy = _trace(xp.matmul(xp.matmul(zy.T, m.syy), zy), xp)
    scale = xp.sqrt((tx / vx) * (ty / vy))
    return scale * _nuclear(cross, xp), tx, ty


def shape_distance_from_moments(m, alpha=1.0, score="angular"):
    """Generalised shape distance from moments (see :func:`repsim.shape_distance`)."""
    xp = B.namespace(m.sxx)
    nuc, nx, ny = shape_terms_from_moments(m, alpha)
    if score == "angular":
        cos = nuc / xp.sqrt(nx * ny)
        # rounding can put an exact alignment a few eps above 1: that excess only
        return xp.acos(xp.clip(cos, 0.0, 1.0))
    return xp.sqrt(xp.clip(nx + ny - 2.0 * nuc, 0.0, None))


def ridge_coefficients(sxx, sxy, n, ridge, xp):
    """``B = (Sxx/n + ridge I)^+ Sxy/n`` (minimum-norm least squares when ``ridge=0``)."""
    w, v = _eig(sxx / n, xp)
    denom = w + ridge
    safe = xp.where(denom > 0, denom, xp.ones_like(denom))
    inv = xp.where(denom > 0, 1.0 / safe, xp.zeros_like(denom))
    return xp.matmul(v * inv[None, :], xp.matmul(v.T, sxy / n))


def r2_from_moments(m, ridge=0.0):
    """In-sample R² of the (ridge) regression of ``y`` on ``x``::

        R² = 1 - ||Yc - Xc B||_F^2 / ||Yc||_F^2
           = [2 tr(B^T Sxy) - tr(B^T Sxx B)] / tr(Syy)
    """
    xp = B.namespace(m.sxx)
    b = ridge_coefficients(m.sxx, m.sxy, m.n, ridge, xp)
    explained = 2.0 * xp.sum(b * m.sxy) - xp.sum(b * xp.matmul(m.sxx, b))
    return explained / _trace(m.syy, xp)


class RawSums(NamedTuple):
    """Uncentred sums over a set of examples (of shifted data, for stability).

    Attributes: ``n``; ``sx`` (p,), ``sy`` (q,); ``xx`` (p, p), ``yy`` (q, q), ``xy`` (p, q).
    They add over disjoint sets of examples, which is what k-fold needs.
    """

    n: int
    sx: object
    sy: object
    xx: object
    yy: object
    xy: object


def raw_sums(x, y, xp):
    return RawSums(int(x.shape[0]), xp.sum(x, axis=0), xp.sum(y, axis=0),
                   xp.matmul(x.T, x), xp.matmul(y.T, y), xp.matmul(x.T, y))


def _add(a, b, sign=1.0):
    return RawSums(a.n + int(sign) * b.n, *(u + sign * v for u, v in zip(a[1:], b[1:])))


def _centred_cross(s, mu_a, mu_b, sa, sb, n):
    """``sum_i (a_i - mu_a)(b_i - mu_b)^T`` from raw sums."""
    return s - mu_a[:, None] * sb[None, :] - sa[:, None] * mu_b[None, :] + n * mu_a[:, None] * mu_b[None, :]


def add_sums(a, b):
    """Sums of two disjoint sets of examples (merging two accumulators)."""
    return _add(a, b)


def moments_from_sums(s):
    """Centred :class:`Moments` from :class:`RawSums` (of data shifted by any fixed
    vector: centring removes the shift; a shift near the mean keeps the subtraction
    ``XᵀX - n mu muᵀ`` from cancelling)."""
    mx, my = s.sx / s.n, s.sy / s.n
    return Moments(s.n, _centred_cross(s.xx, mx, mx, s.sx, s.sx, s.n),
                   _centred_cross(s.yy, my, my, s.sy, s.sy, s.n),
                   _centred_cross(s.xy, mx, my, s.sx, s.sy, s.n))


def linear_cka_from_moments(m):
    """Biased linear CKA ``||Sxy||_F^2 / (||Sxx||_F ||Syy||_F)`` (Kornblith et al. 2019)."""
    xp = B.namespace(m.sxx)
    return xp.sum(m.sxy * m.sxy) / xp.sqrt(xp.sum(m.sxx * m.sxx) * xp.sum(m.syy * m.syy))


def cv_r2_from_sums(folds, ridge=0.0):
    """Out-of-fold R² from per-fold :class:`RawSums`.

    For fold ``f`` the regression (intercept included) is fitted on the other folds and
    evaluated on ``f``; ``R²_cv = 1 - Σ_f SSres_f / Σ_f SStot_f`` with ``SStot_f`` the
    squared error of predicting the training mean of ``y`` (so 0 means "no better than the
    training mean").
    """
    xp = B.namespace(folds[0].xx)
    total = folds[0]
    for f in folds[1:]:
        total = _add(total, f)
    res = tot = 0.0
    for f in folds:
        tr = _add(total, f, -1.0)
        mx, my = tr.sx / tr.n, tr.sy / tr.n
        sxx = _centred_cross(tr.xx, mx, mx, tr.sx, tr.sx, tr.n)
        sxy = _centred_cross(tr.xy, mx, my, tr.sx, tr.sy, tr.n)
        b = ridge_coefficients(sxx, sxy, tr.n, ridge, xp)
        fxx = _centred_cross(f.xx, mx, mx, f.sx, f.sx, f.n)
        fxy = _centred_cross(f.xy, mx, my, f.sx, f.sy, f.n)
        fyy = _centred_cross(f.yy, my, my, f.sy, f.sy, f.n)
        ss_tot = _trace(fyy, xp)
        res = res + ss_tot - 2.0 * xp.sum(b * fxy) + xp.sum(b * xp.matmul(fxx, b))
        tot = tot + ss_tot
    return 1.0 - res / tot


def gulp_from_moments(m, ridge):
    """Squared GULP distance (Boix-Adserà et al. 2022) from moments::

        d² = tr((Σx+λ)^-1 Σx (Σx+λ)^-1 Σx) + tr((Σy+λ)^-1 Σy (Σy+λ)^-1 Σy)
             - 2 tr((Σx+λ)^-1 Σxy (Σy+λ)^-1 Σyx)

    with covariances ``Σ = S / n`` (pseudo-inverses on the numerical rank when ``λ=0``).
    """
    xp = B.namespace(m.sxx)
    terms = []
    for s in (m.sxx, m.syy):
        w, v = _eig(s / m.n, xp)
        denom = w + ridge
        ratio = xp.where(denom > 0, w / xp.where(denom > 0, denom, xp.ones_like(denom)),
                         xp.zeros_like(w))
        terms.append((v, denom, xp.sum(ratio * ratio)))
    (vx, dx, tx), (vy, dy, ty) = terms

    def inv(v, d):
        safe = xp.where(d > 0, d, xp.ones_like(d))
        return xp.matmul(v * xp.where(d > 0, 1.0 / safe, xp.zeros_like(d))[None, :], v.T)

    cxy = m.sxy / m.n
    a = xp.matmul(inv(vx, dx), cxy)
    b = xp.matmul(inv(vy, dy), cxy.T)
    cross = xp.sum(a * b.T)
    return tx + ty - 2.0 * cross


def as_result(value, xp):
    return scalar(value, xp)
