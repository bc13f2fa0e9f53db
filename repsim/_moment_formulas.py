"""The moment-based measures as pure functions: layers in, moments in, values out.

**The line between the two moment modules.** Here: pure functions of arrays -- a layer's
data (:func:`prepare_layer`), a pair's centred :class:`Moments`, the :class:`RawSums` of
some examples, the accumulator's summed columns (:func:`linear_cka_terms`) -- with no
state or batches (:class:`repsim.FeatureMoments`, its layout's algebra in
:mod:`repsim._moment_layout`). The full-data functions
(:func:`repsim.shape_distance`, :func:`repsim.nbs`, :func:`repsim.ridge_r2`,
:func:`repsim.gulp`) and the accumulator call the same formulas: one value.

Every measure here is a function of ``n`` and the centred scatters ``Sxx = Xcᵀ Xc``,
``Syy``, ``Sxy = Xcᵀ Yc`` (float64). A side with more features than examples is replaced
by ``U S`` of its thin SVD ``Xc = U S Vᵀ`` (every measure here is orthogonally invariant).

**Offsets and scales** (the rules of :func:`repsim.cka`). A layer is centred in float64
(the column means subtracted, then the means of the result: a constant column becomes
exact zeros), scaled by the power of two ``2**-e`` that puts its largest centred entry in
``[1/2, 1)`` (exact), and called constant when ``tr(Sxx) - ||1ᵀXc||² / n <= n eps
tr(Sxx)`` on the centred data (``eps`` of the input dtype,
:func:`repsim.kernels.degeneracy_terms`). :class:`Moments` carry the exponents and the
formulas restore the units where a value depends on them: a ridge ``λ`` acts as
``λ 2**-2e``, ``alpha`` as ``alpha / (alpha + 2**-e (1 - alpha))``, the Euclidean shape
score is scaled back. No product under- or overflows; no offset makes a layer constant.

References
----------
Vinod (1976), "Canonical ridge and econometrics of joint production", J. Econometrics 4.
Song, Smola, Gretton, Bedo & Borgwardt (2012), "Feature selection via dependence
maximization", JMLR 13 (the unbiased HSIC estimator).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from . import _backend as B
from . import _validation as V
from ._cca_core import _keep_count
from ._centring import degeneracy_terms
from .hsic import scalar
from .kernels import _ldexp


class Moments(NamedTuple):
    """Centred moments of ``n`` examples of data scaled by ``2**-ex``, ``2**-ey``:
    ``sxx = Xcᵀ Xc`` (p, p), ``syy`` (q, q), ``sxy = Xcᵀ Yc`` (p, q), float64."""

    n: int
    sxx: object
    syy: object
    sxy: object
    ex: int = 0
    ey: int = 0


class RawSums(NamedTuple):
    """Uncentred sums of (shifted, scaled) data over some examples: ``n``, ``sx`` (p,),
    ``sy`` (q,), ``xx`` (p, p), ``yy`` (q, q), ``xy`` (p, q); they add over disjoint sets."""

    n: int
    sx: object
    sy: object
    xx: object
    yy: object
    xy: object


class Layer(NamedTuple):
    """A representation prepared once: ``xc``, its centred data scaled by ``2**-e`` (beyond
    ``n`` columns SVD-reduced), ``sxx = xcᵀ xc``, and whether it is constant."""

    n: int
    xc: object
    sxx: object
    e: int
    constant: bool


# --------------------------------------------------------------------------- preparation

def _validated(x, name, min_n, what):
    """``(xp, float64 (n, features) array, eps of the input dtype)``."""
    x = B.asarray(x)
    xp = B.namespace(x)
    x = V.as_2d(x, xp, name)
    if int(x.shape[0]) < min_n:
        raise ValueError(f"{what} needs at least {min_n} examples; got n={int(x.shape[0])} "
                         f"for {name}")
    floating = xp.isdtype(x.dtype, "real floating")
    eps = float(xp.finfo(x.dtype if floating else xp.float64).eps)
    x = xp.astype(x, xp.float64)
    V.check_finite_array(x, xp, name)
    return xp, x, eps


def float64_layer(x, name="x", min_n=2, what="this measure"):
    """``(xp, x)``: a representation, 2-d, at least ``min_n`` examples, finite, float64."""
    return _validated(x, name, min_n, what)[:2]


def _two(x, y, min_n, what):
    x, y = B.asarray(x), B.asarray(y)
    xp = B.namespace(x, y, names=["x", "y"])
    xs, ys = V.as_2d(x, xp, "x"), V.as_2d(y, xp, "y")
    V.check_same_n(xs.shape[0], ys.shape[0], "x", "y", xs.shape, ys.shape)
    return _validated(xs, "x", min_n, what), _validated(ys, "y", min_n, what)


def prepare_pair(x, y, min_n=2, what="this measure"):
    """Validate two representations: ``(xp, x, y)`` as float64 ``(n, features)`` arrays."""
    (xp, x, _), (_, y, _) = _two(x, y, min_n, what)
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


def exponent(amax):
    """``e`` with ``amax * 2**-e`` in ``[1/2, 1)`` (0 for 0): the scale of a layer."""
    return math.frexp(amax)[1] if amax > 0 else 0


def _layer(x, xp, eps):
    c = centre_columns(centre_columns(x, xp), xp)
    e = exponent(B.item(xp.max(xp.abs(c))) if c.shape[1] else 0.0)
    c = _ldexp(c, -e) if e else c
    tr = B.item(xp.sum(c * c))
    centred, tol = degeneracy_terms(tr, B.item(xp.sum(xp.sum(c, axis=0) ** 2)), x.shape[0], eps)
    xc = reduce_features(c, xp)
    return Layer(int(x.shape[0]), xc, xp.matmul(xc.T, xc), e, not centred > tol)


def prepare_layer(x, name="x", min_n=2, what="this measure"):
    """Validate one representation (as :func:`float64_layer`) and form its :class:`Layer`."""
    xp, x, eps = _validated(x, name, min_n, what)
    return _layer(x, xp, eps)


def prepare_layers(x, y, min_n=2, what="this measure"):
    """``(xp, Layer of x, Layer of y)`` of two validated representations."""
    (xp, x, ex), (_, y, ey) = _two(x, y, min_n, what)
    return xp, _layer(x, xp, ex), _layer(y, xp, ey)


def pair_layers(a, b):
    """``(Moments, names of the constant sides)`` of two :class:`Layer`."""
    xp = B.namespace(a.xc)
    # a layer against itself: a copy, so that the product is the general one the
    # per-pair function forms (numpy's symmetric ``aᵀa`` kernel rounds differently, and
    # the angular score's arccos turns 1e-16 into 1e-8 near a distance of 0)
    yc = b.xc if b is not a else xp.asarray(b.xc, copy=True)
    m = Moments(a.n, a.sxx, b.sxx, xp.matmul(a.xc.T, yc), a.e, b.e)
    return m, [s for s, layer in (("x", a), ("y", b)) if layer.constant]


def undefined(bad, measure, reason="constant"):
    """NaN, warning that ``measure`` is undefined for ``bad`` (:func:`V.warn_degenerate`)."""
    V.warn_degenerate(bad, measure, reason)
    return math.nan


as_result = scalar  # a value as the input's library's float64 scalar


# --------------------------------------------------------------------------- units
def unscale(value, e):
    """``value * 2**e`` (a Python float; saturates to 0 or inf)."""
    with np.errstate(over="ignore", under="ignore"):
        return float(np.ldexp(np.float64(value), int(e)))


def scaled_ridge(ridge, e):
    """A ridge on the covariance scale, for data scaled by ``2**-e``: ``ridge 2**-2e``."""
    return unscale(ridge, -2 * e)


def _scaled_alpha(alpha, e):
    """The partial whitening ``alpha`` that gives the same (normalised) ``Xa`` on data
    scaled by ``s = 2**-e``: ``alpha / (alpha + s (1 - alpha))``."""
    if alpha in (0.0, 1.0) or e == 0:
        return alpha
    return alpha / (alpha + unscale(1.0 - alpha, -e))


# --------------------------------------------------------------------------- formulas

def _trace(a, xp):
    return xp.sum(xp.linalg.diagonal(a))


def _nuclear(a, xp):
    if a.shape[0] == 0 or a.shape[1] == 0:
        return xp.asarray(0.0, dtype=xp.float64, device=B.device(a))
    return xp.sum(xp.linalg.svdvals(a))


def _eig(s, xp):
    """Eigenvalues (rank-revealed: below ``dim * eps * max`` set to 0) and vectors."""
    w, v = xp.linalg.eigh(s)
    tol = max(s.shape[0], 1) * float(xp.finfo(xp.float64).eps) * (
        xp.max(xp.abs(w)) if w.shape[0] else 0.0)
    return xp.where(w > tol, w, xp.zeros_like(w)), v


def _inverse(w, v, ridge, xp):
    """``(V diag(1 / (w + ridge)) Vᵀ)`` on the directions where ``w + ridge > 0``."""
    d = w + ridge
    inv = xp.where(d > 0, 1.0 / xp.where(d > 0, d, xp.ones_like(d)), xp.zeros_like(d))
    return xp.matmul(v * inv[None, :], v.T), d


def nbs_from_moments(m):
    """Normalised Bures similarity ``||Sxy||_* / sqrt(tr Sxx tr Syy)``."""
    xp = B.namespace(m.sxx)
    return _nuclear(m.sxy, xp) / xp.sqrt(_trace(m.sxx, xp) * _trace(m.syy, xp))


def _partial_whitener(s, alpha, xp):
    """``Z = alpha I + (1 - alpha) S^{-1/2}`` on the numerical rank of ``S = Xcᵀ Xc``
    (netrep's convention, no ``1/n``); 0 on null directions (they carry no data)."""
    w, v = _eig(s, xp)
    safe = xp.where(w > 0, w, xp.ones_like(w))
    d = xp.where(w > 0, alpha + (1.0 - alpha) / xp.sqrt(safe), xp.zeros_like(w))
    return xp.matmul(v * d[None, :], v.T)


def shape_terms_from_moments(m, alpha):
    """``(||Xaᵀ Ya||_*, ||Xa||_F², ||Ya||_F²)`` of the partially whitened data
    ``Xa = c_x Xc Zx``, ``Ya = c_y Yc Zy`` (see :func:`repsim.shape_distance`), with
    ``c`` rescaling each side to its total variance, so ``||Xa||_F² = tr Sxx``."""
    xp = B.namespace(m.sxx)
    tx, ty = _trace(m.sxx, xp), _trace(m.syy, xp)
    if alpha == 1.0:
        return _nuclear(m.sxy, xp), tx, ty
    zx = _partial_whitener(m.sxx, _scaled_alpha(alpha, m.ex), xp)
    zy = _partial_whitener(m.syy, _scaled_alpha(alpha, m.ey), xp)
    cross = xp.matmul(xp.matmul(zx.T, m.sxy), zy)
    vx = _trace(xp.matmul(xp.matmul(zx.T, m.sxx), zx), xp)
    vy = _trace(xp.matmul(xp.matmul(zy.T, m.syy), zy), xp)
    return xp.sqrt((tx / vx) * (ty / vy)) * _nuclear(cross, xp), tx, ty


def shape_distance_from_moments(m, alpha=1.0, score="angular"):
    """Generalised shape distance from moments (see :func:`repsim.shape_distance`)."""
    xp = B.namespace(m.sxx)
    nuc, nx, ny = shape_terms_from_moments(m, alpha)
    if score == "angular":
        # rounding can put an exact alignment a few eps above 1: that excess only
        return xp.acos(xp.clip(nuc / xp.sqrt(nx * ny), 0.0, 1.0))
    top = max(m.ex, m.ey)  # back to the data's units, in the larger side's scale
    d2 = (unscale(1.0, 2 * (m.ex - top)) * nx + unscale(1.0, 2 * (m.ey - top)) * ny
          - 2.0 * unscale(1.0, m.ex + m.ey - 2 * top) * nuc)
    return unscale(1.0, top) * xp.sqrt(xp.clip(d2, 0.0, None))


def ridge_coefficients(sxx, sxy, n, ridge, xp):
    """``B = (Sxx/n + ridge I)^+ Sxy/n`` (minimum-norm least squares when ``ridge=0``)."""
    w, v = _eig(sxx / n, xp)
    return xp.matmul(_inverse(w, v, ridge, xp)[0], sxy / n)


def r2_from_moments(m, ridge=0.0):
    """In-sample R² of the (ridge) regression of ``y`` on ``x``: ``1 - ||Yc - Xc B||_F² /
    ||Yc||_F² = [2 tr(Bᵀ Sxy) - tr(Bᵀ Sxx B)] / tr(Syy)``."""
    xp = B.namespace(m.sxx)
    b = ridge_coefficients(m.sxx, m.sxy, m.n, scaled_ridge(ridge, m.ex), xp)
    explained = 2.0 * xp.sum(b * m.sxy) - xp.sum(b * xp.matmul(m.sxx, b))
    return explained / _trace(m.syy, xp)


def raw_sums(x, y, xp):
    return RawSums(int(x.shape[0]), xp.sum(x, axis=0), xp.sum(y, axis=0),
                   xp.matmul(x.T, x), xp.matmul(y.T, y), xp.matmul(x.T, y))


def add_sums(a, b, sign=1.0):
    """Sums of two disjoint sets of examples (``sign=-1``: remove ``b`` from ``a``)."""
    return RawSums(a.n + int(sign) * b.n, *(u + sign * v for u, v in zip(a[1:], b[1:])))


def _centred_cross(s, mu_a, mu_b, sa, sb, n):
    """``sum_i (a_i - mu_a)(b_i - mu_b)ᵀ`` from raw sums."""
    return (s - mu_a[:, None] * sb[None, :] - sa[:, None] * mu_b[None, :]
            + n * mu_a[:, None] * mu_b[None, :])


def moments_from_sums(s, ex=0, ey=0):
    """Centred :class:`Moments` from :class:`RawSums` of data shifted by any vector (a
    shift near the mean keeps ``XᵀX - n mu muᵀ`` from cancelling)."""
    mx, my = s.sx / s.n, s.sy / s.n
    return Moments(s.n, _centred_cross(s.xx, mx, mx, s.sx, s.sx, s.n),
                   _centred_cross(s.yy, my, my, s.sy, s.sy, s.n),
                   _centred_cross(s.xy, mx, my, s.sx, s.sy, s.n), ex, ey)


def linear_cka_from_moments(m):
    """Biased linear CKA ``||Sxy||_F² / (||Sxx||_F ||Syy||_F)`` (Kornblith et al. 2019)."""
    xp = B.namespace(m.sxx)
    return xp.sum(m.sxy * m.sxy) / xp.sqrt(xp.sum(m.sxx * m.sxx) * xp.sum(m.syy * m.syy))


def cv_r2_from_sums(folds, ridge=0.0, ex=0):
    """Out-of-fold R² from per-fold :class:`RawSums` (``x`` scaled by ``2**-ex``): fold
    ``f`` is predicted by the regression (with intercept) fitted on the others, ``R²_cv =
    1 - Σ_f SSres_f / Σ_f SStot_f`` with ``SStot_f`` the error of the training mean."""
    xp = B.namespace(folds[0].xx)
    total = functools.reduce(add_sums, folds)
    res = tot = 0.0
    for f in folds:
        tr = add_sums(total, f, -1.0)
        m, mx, my = moments_from_sums(tr), tr.sx / tr.n, tr.sy / tr.n
        b = ridge_coefficients(m.sxx, m.sxy, tr.n, scaled_ridge(ridge, ex), xp)
        fxx = _centred_cross(f.xx, mx, mx, f.sx, f.sx, f.n)
        fxy = _centred_cross(f.xy, mx, my, f.sx, f.sy, f.n)
        ss_tot = _trace(_centred_cross(f.yy, my, my, f.sy, f.sy, f.n), xp)
        res = res + ss_tot - 2.0 * xp.sum(b * fxy) + xp.sum(b * xp.matmul(fxx, b))
        tot = tot + ss_tot
    return 1.0 - res / tot


def gulp_from_moments(m, ridge):
    """Squared GULP distance (Boix-Adserà et al. 2022), with ``Σ = S / n`` and
    pseudo-inverses on the numerical rank when ``λ=0``::

        d² = tr((Σx+λ)^-1 Σx (Σx+λ)^-1 Σx) + tr((Σy+λ)^-1 Σy (Σy+λ)^-1 Σy)
             - 2 tr((Σx+λ)^-1 Σxy (Σy+λ)^-1 Σyx)
    """
    xp = B.namespace(m.sxx)
    inverses, total = [], 0.0
    for s, e in ((m.sxx, m.ex), (m.syy, m.ey)):
        w, v = _eig(s / m.n, xp)
        inv, d = _inverse(w, v, scaled_ridge(ridge, e), xp)
        ratio = xp.where(d > 0, w / xp.where(d > 0, d, xp.ones_like(d)), xp.zeros_like(w))
        inverses.append(inv)
        total = total + xp.sum(ratio * ratio)
    cxy = m.sxy / m.n
    a = xp.matmul(inverses[0], cxy)
    b = xp.matmul(inverses[1], cxy.T)
    return total - 2.0 * xp.sum(a * b.T)


# --------------------------------------------------------------------------- CCA family

def whitening(s, n, ridge, e=0):
    """``W = V (Λ + ridge)^{-1/2}`` of a centred scatter ``s`` (data scaled by ``2**-e``),
    ``s / n = V Λ Vᵀ``: ``w`` (``Λ`` descending, at most ``dim eps max`` set to 0), ``v``,
    ``rank``, ``scale`` (``(w + ridge)^{-1/2}`` on the rank, 0 elsewhere), ``s = sqrt(w)``.
    Canonical correlations are the singular values of ``Wxᵀ (Sxy / n) Wy``; ``ridge > 0``
    is Vinod's (1976) canonical ridge, so no (near-)singular matrix is ever inverted."""
    xp = B.namespace(s)
    w, v = _eig(s / n, xp)
    w, v = xp.flip(w, axis=0), xp.flip(v, axis=1)
    rank = int(B.item(xp.sum(xp.astype(w > 0, xp.int64))))
    safe = xp.where(w > 0, w + scaled_ridge(ridge, e), xp.ones_like(w))
    scale = xp.where(w > 0, 1.0 / xp.sqrt(safe), xp.zeros_like(w))
    return SimpleNamespace(w=w, v=v, rank=rank, scale=scale, s=xp.sqrt(w), xp=xp)


def _whitened_cross(sxy, n, wx, wy, kx, ky):
    left, right = wx.v[:, :kx] * wx.scale[None, :kx], wy.v[:, :ky] * wy.scale[None, :ky]
    return B.namespace(sxy).matmul(B.namespace(sxy).matmul(left.T, sxy / n), right)


def _mean(values, summary):
    if values.shape[0] == 0:
        return math.nan
    return B.item(B.namespace(values).mean(values**2 if summary == "mean_squared" else values))


def canonical_correlations_from_moments(sxy, n, wx, wy, kx=None, ky=None):
    """Descending canonical correlations in [0, 1] from a cross scatter and the two
    sides' :func:`whitening` (``kx``, ``ky``: leading directions kept, default ranks)."""
    xp = B.namespace(sxy)
    kx, ky = (wx.rank if kx is None else kx), (wy.rank if ky is None else ky)
    if kx == 0 or ky == 0:
        return xp.zeros((0,), dtype=xp.float64, device=B.device(sxy))
    return xp.clip(xp.linalg.svdvals(_whitened_cross(sxy, n, wx, wy, kx, ky)), 0.0, 1.0)


def cca_from_moments(sxy, n, wx, wy, summary="mean"):
    """Mean (or mean squared) canonical correlation, as :func:`repsim.cca`."""
    return _mean(canonical_correlations_from_moments(sxy, n, wx, wy), summary)


def svcca_from_moments(sxy, n, wx, wy, keep=0.99, summary="mean"):
    """SVCCA (:func:`repsim.svcca`): each side reduced to its leading eigen-directions
    before CCA."""
    keep_x, keep_y = keep if isinstance(keep, (tuple, list)) else (keep, keep)
    kx = _keep_count(keep_x, wx, "keep" if keep_x is keep_y else "keep[0]")
    ky = _keep_count(keep_y, wy, "keep" if keep_x is keep_y else "keep[1]")
    return _mean(canonical_correlations_from_moments(sxy, n, wx, wy, kx, ky), summary)


def pwcca_from_moments(sxy, n, wx, wy, side="x"):
    """PWCCA (:func:`repsim.pwcca`) with the weights of ``side`` (``"x"`` or ``"y"``):
    neuron ``j``'s projection on canonical variate ``i`` is ``(a_iᵀ (Λ + ridge)^{-1/2}
    Λ Vᵀ)_j`` up to the common factor ``n``."""
    xp = B.namespace(sxy)
    if wx.rank == 0 or wy.rank == 0:
        return math.nan
    a, rho, bt = xp.linalg.svd(_whitened_cross(sxy, n, wx, wy, wx.rank, wy.rank),
                               full_matrices=False)
    ws, coef = (wx, a) if side == "x" else (wy, bt.T)
    r = ws.rank
    proj = xp.matmul(coef.T, (ws.scale[:r] * ws.w[:r])[:, None] * ws.v[:, :r].T)
    alpha = xp.sum(xp.abs(proj), axis=1)
    return B.item(xp.sum(alpha * xp.clip(rho, 0.0, 1.0)) / xp.sum(alpha))


# --------------------------------------------------------------------------- all pairs

def block_indicator(widths, xp, device):
    """``(D, L)`` float64 matrix with a 1 where feature ``i`` belongs to layer ``l``."""
    return xp.asarray(np.repeat(np.eye(len(widths)), widths, axis=0), device=device)


def linear_cka_terms(s1, s2, n, widths, estimator, scale=False):
    """HSIC-type cross terms ``(L, L)`` of every pair of layers from the sums ``s1 = Σ z``
    ``(D + L,)`` and ``s2 = Σ z zᵀ`` of ``z = [x', a]`` (shifted features of all layers of
    these ``widths``, then each layer's squared norm ``a_l = ||x_l'||²``).

    biased: ``||Xc_lᵀ Xc_m||_F²``; unbiased: ``n (n - 3)`` times the unbiased HSIC of Song
    et al. (2012) of the linear grams, ``tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2)
    1ᵀK̃L̃1``, whose terms are blocks of ``s1`` and ``s2`` (docs/user_guide/
    streaming_moments.rst). Both are invariant to a translation of a layer's features.

    ``scale`` (unbiased): also each layer's ``(|terms| summed, tr(K̃²))``, ``(L,)`` each,
    for :func:`repsim._centring.zero_ucentred_sum`.
    """
    xp = B.namespace(s2)
    d = sum(widths)
    ind = block_indicator(widths, xp, B.device(s2))
    sx = s1[:d]
    out = xp.zeros((len(widths), len(widths)), dtype=xp.float64, device=B.device(s2))
    w_rows = xp.zeros_like(out)
    start = 0
    for layer, w in enumerate(widths):
        rows = s2[start:start + w, :d]
        if estimator == "biased":
            rows = rows - sx[start:start + w, None] * sx[None, :] / n
        out[layer, :] = xp.matmul(xp.sum(rows * rows, axis=0), ind)
        if estimator == "unbiased":
            w_rows[layer, :] = xp.matmul(xp.matmul(sx[start:start + w], rows) * sx, ind)
        start += w
    if estimator == "biased":
        return out
    ata = s2[d:, d:]
    k1 = xp.matmul(sx * sx, ind) - s1[d:]
    r = xp.matmul(ind.T, sx[:, None] * s2[:d, d:])  # r[m, l] = Σ_i a_l,i (x_m,i · s_m)
    t3 = w_rows - r.T - r + ata
    outer = k1[:, None] * k1[None, :] / ((n - 1) * (n - 2))
    value = (out - ata) + outer - 2.0 / (n - 2) * t3
    if not scale:
        return value
    d, a = xp.linalg.diagonal, xp.abs
    size = d(a(out)) + d(a(outer)) + 2.0 / (n - 2) * (d(a(w_rows)) + 2.0 * d(a(r)))
    return value, size + (1.0 + 2.0 / (n - 2)) * d(a(ata)), d(out) - d(ata)


def pair_value(measure, p, m, wx, wy, widths, fold_sums):
    """One pair's value (a float) from its :class:`Moments` (``p``: bound parameters;
    ``wx, wy``: :func:`whitening`, CCA family; ``widths``: feature counts;
    ``fold_sums(flipped)``: per-fold :class:`RawSums` of predictor and target)."""
    if measure == "cca":
        return cca_from_moments(m.sxy, m.n, wx, wy, p["summary"])
    if measure == "svcca":
        return svcca_from_moments(m.sxy, m.n, wx, wy, p["keep"], p["summary"])
    if measure == "pwcca":
        side = p["side"]
        if side == "smaller":
            side = "x" if widths[0] <= widths[1] else "y"
        return pwcca_from_moments(m.sxy, m.n, wx, wy, side)
    if measure == "shape_distance":
        return B.item(shape_distance_from_moments(m, p["alpha"], p["score"]))
    if measure == "nbs":
        return B.item(nbs_from_moments(m))
    if measure == "gulp":
        d2 = B.item(gulp_from_moments(m, p["ridge"]))
        return d2 if p["squared"] else math.sqrt(max(d2, 0.0))
    flipped = Moments(m.n, m.syy, m.sxx, m.sxy.T, m.ey, m.ex)  # ridge_r2
    cases = {"x_to_y": [(m, False)], "y_to_x": [(flipped, True)]}
    vals = [B.item(cv_r2_from_sums(fold_sums(flip), p["ridge"], mm.ex) if p["out_of_fold"]
                   else r2_from_moments(mm, p["ridge"]))
            for mm, flip in cases.get(p["direction"], cases["x_to_y"] + cases["y_to_x"])]
    return sum(vals) / len(vals)
