"""Moments -> value for the measures that :mod:`repsim._moments` does not cover.

Linear CKA (biased, and the full-data unbiased estimator) for every pair of layers at once
from the raw sums of :class:`repsim.FeatureMoments`, and CCA / SVCCA / PWCCA of one pair
from centred moments (:class:`repsim._moments.Moments`) with a whitening computed once per
layer. Every function here is exact: on the moments of the full data it gives the value of
the full-data function (:func:`repsim.cka`, :func:`repsim.cca`, :func:`repsim.svcca`,
:func:`repsim.pwcca`) up to rounding.

CCA from moments
----------------
Whitening ``W = V (Λ + ridge)^{-1/2}`` from the eigendecomposition ``Sxx / n = V Λ Vᵀ``
(eigenvalues at most ``dim * eps * max`` count as zero, the rank rule of
:func:`repsim._moments._eig`; with ``ridge=0`` those directions are dropped, which is the
rank-revealing basis of :mod:`repsim.cca_family`). The canonical correlations are the
singular values of ``Wxᵀ (Sxy / n) Wy``; with ``ridge = 0`` they are those of
``Qxᵀ Qy`` for orthonormal bases ``Qx = Xc V Λ^{-1/2} / sqrt(n)``. ``ridge > 0`` is the
canonical ridge of Vinod (1976), applied once to the summed covariance at the end: the
whitening then never inverts a (near-)singular matrix, and the symmetric eigensolver always
converges, so PWCCA cannot fail the way iterative implementations on ill-conditioned
covariances do.

References
----------
Vinod (1976), "Canonical ridge and econometrics of joint production", J. Econometrics 4.
Song, Smola, Gretton, Bedo & Borgwardt (2012), "Feature selection via dependence
maximization", JMLR 13 (the unbiased HSIC estimator).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from . import _backend as B
from . import _moments as M
from ._cca_core import _keep_count


def block_indicator(widths, xp, device):
    """``(D, L)`` float64 matrix with a 1 where feature ``i`` belongs to layer ``l``."""
    import numpy as np

    ind = np.zeros((sum(widths), len(widths)))
    start = 0
    for col, w in enumerate(widths):
        ind[start:start + w, col] = 1.0
        start += w
    return xp.asarray(ind, device=device)


def linear_cka_terms(s1, s2, n, widths, estimator):
    """HSIC-type cross terms of every pair of layers from raw (shifted) sums.

    Parameters
    ----------
    s1 : array, shape (D + L,)
        ``Σ z`` with ``z = [x - shift, a]``: the shifted features of all layers, then each
        layer's squared norm ``a_l = ||x_l - shift_l||²``.
    s2 : array, shape (D + L, D + L)
        ``Σ z zᵀ``.
    n : int
        Number of examples.
    widths : list of int
        Features per layer (``D = Σ widths``).
    estimator : {"biased", "unbiased"}

    Returns
    -------
    array, shape (L, L)
        biased: ``||Xc_lᵀ Xc_m||_F²`` (centred columns); unbiased: ``n (n - 3)`` times the
        unbiased HSIC of Song et al. (2012) of the linear grams ``K_l = X_l X_lᵀ``::

            tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1

        with ``tr(K̃L̃) = ||X_lᵀ X_m||² - Σ a_l a_m``, ``1ᵀK̃1 = ||Σ x_l||² - Σ a_l`` and
        ``1ᵀK̃L̃1 = s_lᵀ X_lᵀX_m s_m - Σ a_l (X_m s_m) - Σ a_m (X_l s_l) + Σ a_l a_m``
        (``s_l = Σ x_l``). Both are invariant to a common translation of a layer's
        features, so the shifted sums give the unshifted value.
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
    return (out - ata) + k1[:, None] * k1[None, :] / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * t3


def whitening(s, n, ridge):
    """Per-layer whitening of a centred scatter ``s`` (one eigendecomposition).

    Returns
    -------
    SimpleNamespace
        ``w`` (eigenvalues of ``s / n``, descending, rank-revealed), ``v`` (eigenvectors,
        columns in the same order), ``rank``, ``scale`` (``(w + ridge)^{-1/2}`` on the
        rank, 0 elsewhere) and ``s`` (``sqrt(w)``, for SVCCA's variance shares).
    """
    xp = B.namespace(s)
    w, v = M._eig(s / n, xp)
    w, v = xp.flip(w, axis=0), xp.flip(v, axis=1)
    rank = int(B.item(xp.sum(xp.astype(w > 0, xp.int64))))
    safe = xp.where(w > 0, w + ridge, xp.ones_like(w))
    scale = xp.where(w > 0, 1.0 / xp.sqrt(safe), xp.zeros_like(w))
    return SimpleNamespace(w=w, v=v, rank=rank, scale=scale, s=xp.sqrt(w), xp=xp)


def _whitened_cross(sxy, n, wx, wy, kx, ky):
    xp = B.namespace(sxy)
    left = wx.v[:, :kx] * wx.scale[None, :kx]
    right = wy.v[:, :ky] * wy.scale[None, :ky]
    return xp.matmul(xp.matmul(left.T, sxy / n), right)


def _mean(values, summary):
    if values.shape[0] == 0:
        return math.nan
    xp = B.namespace(values)
    return B.item(xp.mean(values * values if summary == "mean_squared" else values))


def canonical_correlations_from_moments(sxy, n, wx, wy, kx=None, ky=None):
    """Descending canonical correlations, clipped to [0, 1], from a cross scatter and the
    two sides' :func:`whitening` (``kx``, ``ky``: leading directions kept, default the
    ranks)."""
    xp = B.namespace(sxy)
    kx = wx.rank if kx is None else kx
    ky = wy.rank if ky is None else ky
    if kx == 0 or ky == 0:
        return xp.zeros((0,), dtype=xp.float64, device=B.device(sxy))
    return xp.clip(xp.linalg.svdvals(_whitened_cross(sxy, n, wx, wy, kx, ky)), 0.0, 1.0)


def cca_from_moments(sxy, n, wx, wy, summary="mean"):
    """Mean (or mean squared) canonical correlation, as :func:`repsim.cca`."""
    return _mean(canonical_correlations_from_moments(sxy, n, wx, wy), summary)


def svcca_from_moments(sxy, n, wx, wy, keep=0.99, summary="mean"):
    """SVCCA (as :func:`repsim.svcca`): each side reduced to its leading eigen-directions
    (the top singular directions of the centred data) before CCA."""
    keep_x, keep_y = keep if isinstance(keep, (tuple, list)) else (keep, keep)
    kx = _keep_count(keep_x, wx, "keep" if keep_x is keep_y else "keep[0]")
    ky = _keep_count(keep_y, wy, "keep" if keep_x is keep_y else "keep[1]")
    return _mean(canonical_correlations_from_moments(sxy, n, wx, wy, kx, ky), summary)


def pwcca_from_moments(sxy, n, wx, wy, side="x"):
    """PWCCA (as :func:`repsim.pwcca`) with the weights of ``side`` (``"x"`` or ``"y"``).

    The projection of neuron ``j`` on canonical variate ``h_i = Xc W a_i`` is
    ``(a_iᵀ Wᵀ Sxx)_j = (a_iᵀ (Λ + ridge)^{-1/2} Λ Vᵀ)_j`` up to the common factor ``n``.
    """
    xp = B.namespace(sxy)
    kx, ky = wx.rank, wy.rank
    if kx == 0 or ky == 0:
        return math.nan
    a, rho, bt = xp.linalg.svd(_whitened_cross(sxy, n, wx, wy, kx, ky), full_matrices=False)
    rho = xp.clip(rho, 0.0, 1.0)
    ws, coef = (wx, a) if side == "x" else (wy, bt.T)
    r = ws.rank
    weight = ws.scale[:r] * ws.w[:r]  # (Λ + ridge)^{-1/2} Λ
    proj = xp.matmul(coef.T, weight[:, None] * ws.v[:, :r].T)
    alpha = xp.sum(xp.abs(proj), axis=1)
    return B.item(xp.sum(alpha * rho) / xp.sum(alpha))



# --------------------------------------------------------------------------- accumulator side

def check_params(measure, params, folds):
    """``(function name, parameters)`` of ``FeatureMoments.compute(measure, **params)``:
    the measure resolved through the registry (a function name such as ``"cka"``, or any
    name of one of its measures, whose preset options apply), its streaming parameters
    defaulted from the function's signature and checked by its declared constraints."""
    from ._registry import did_you_mean, moment_family

    family, preset = moment_family(measure)
    defaults = family.defaults()
    allowed = {k: defaults[k] for k in family.moments}
    allowed.update({k: d for k, (d, _) in family.moment_options.items()})
    given = {**{k: v for k, v in preset.items() if k in allowed}, **params}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(f"measure={measure!r} takes the parameters {sorted(allowed)}; "
                        f"got unknown {unknown}{did_you_mean(unknown[0], allowed)}")
    p = {**allowed, **given}
    for key in given:
        extra = family.moment_options.get(key)
        p[key] = extra[1](p[key], key) if extra else family.check(key, p[key])
    if p.get("out_of_fold") and not folds:
        raise ValueError("out_of_fold=True needs an accumulator built with folds=k (k >= 2)")
    keep = p.get("keep")
    if isinstance(keep, (tuple, list)) and len(keep) != 2:
        raise ValueError(f"keep must be one value or a pair (keep_x, keep_y); got {keep!r}")
    return family.name, p


def pair_value(measure, p, m, wx, wy, widths, fold_sums, pair):
    """One pair's value (a float) from its centred :class:`~repsim._moments.Moments`.

    ``wx, wy``: the sides' :func:`whitening` (CCA family only); ``widths``: the sides'
    feature counts; ``fold_sums(i, j)``: per-fold :class:`~repsim._moments.RawSums` of
    predictor ``i`` and target ``j`` (out-of-fold R²); ``pair``: the layer indices.
    """
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
        return B.item(M.shape_distance_from_moments(m, p["alpha"], p["score"]))
    if measure == "nbs":
        return B.item(M.nbs_from_moments(m))
    if measure == "gulp":
        d2 = B.item(M.gulp_from_moments(m, p["ridge"]))
        return d2 if p["squared"] else math.sqrt(max(d2, 0.0))
    i, j = pair  # ridge_r2
    flipped = M.Moments(m.n, m.syy, m.sxx, m.sxy.T)
    pairs = {"x_to_y": [(m, i, j)], "y_to_x": [(flipped, j, i)]}
    pairs["mean"] = pairs["x_to_y"] + pairs["y_to_x"]
    vals = []
    for mm, a, b in pairs[p["direction"]]:
        if p["out_of_fold"]:
            vals.append(B.item(M.cv_r2_from_sums(fold_sums(a, b), p["ridge"])))
        else:
            vals.append(B.item(M.r2_from_moments(mm, p["ridge"])))
    return sum(vals) / len(vals)


def add_cross_product(acc, z, xp, max_block_bytes=2**26):
    """``acc += zᵀ z`` in place, by row blocks of ``acc``, so the product never needs a
    second ``(D + L)²`` array (each block's temporary is at most ``max_block_bytes``).

    Parameters
    ----------
    acc : array, shape (m, m), float64
        A state (or a view of one), updated in place.
    z : array, shape (n, m), float64
    """
    m = int(z.shape[1])
    rows = max(1, min(m, max_block_bytes // (8 * max(m, 1))))
    for lo in range(0, m, rows):
        hi = min(lo + rows, m)
        acc[lo:hi, :] += xp.matmul(z[:, lo:hi].T, z)
    return acc


def augment(xs, widths, xp):
    """``[xs, a]`` with ``a[:, l] = ||xs_l||²`` row-wise per layer: ``(n, D + L)``."""
    cols, start = [], 0
    for w in widths:
        part = xs[:, start:start + w]
        cols.append(xp.sum(part * part, axis=1)[:, None])
        start += w
    return xp.concat([xs] + cols, axis=1)


def reshift(widths, values, old, new, chunk=1024):
    """Re-express per-fold sums of ``z`` on shift ``old`` on shift ``new``, in place.

    ``values``: a state dict's ``n`` (folds,), ``sum_z`` (folds, D + L) and ``zz``
    (folds, D + L, D + L); they are updated in place (the caller owns them) and returned.
    With ``δ = new - old``: ``x' = x - δ`` and ``a'_l = a_l - 2 δ_lᵀ x_l + ||δ_l||²``,
    i.e. ``z' = (I + E) z + c`` with ``E`` nonzero only in its last ``L`` rows
    (``-2 δ_l`` in layer ``l``'s columns). Then ``Σz' = (I + E) Σz + n c`` and
    ``Σz'z'ᵀ = (I+E) Σzzᵀ (I+E)ᵀ + (I+E)Σz cᵀ + c ((I+E)Σz)ᵀ + n c cᵀ`` (exact). The
    products with ``E`` cost ``O(L D²)``, and the rank-one terms are added ``chunk`` rows
    at a time, so no second ``(D + L)²`` array is formed.
    """
    import numpy as np

    xp = B.namespace(values["zz"])
    dev = B.device(values["zz"])
    delta = xp.asarray(np.asarray(new) - np.asarray(old), device=dev)
    d = delta.shape[0]
    ind = block_indicator(widths, xp, dev)
    e = -2.0 * (ind * delta[:, None]).T  # (L, D)
    c = xp.concat([-delta, xp.matmul(delta * delta, ind)])
    for f in range(values["zz"].shape[0]):
        g, sz = values["zz"][f], values["sum_z"][f]  # views into the states
        n = float(B.item(values["n"][f]))
        g[d:, :] += xp.matmul(e, g[:d, :])  # (I + E) G
        g[:, d:] += xp.matmul(g[:, :d], e.T)  # ... (I + E)^T
        sz[d:] += xp.matmul(e, sz[:d])  # (I + E) Σz
        for lo in range(0, g.shape[0], chunk):
            hi = min(lo + chunk, g.shape[0])
            g[lo:hi, :] += (sz[lo:hi, None] * c[None, :] + c[lo:hi, None] * sz[None, :]
                            + n * c[lo:hi, None] * c[None, :])
        sz += n * c
    return values
