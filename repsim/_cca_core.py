"""The shared internals of :mod:`repsim.cca_family`: validation and rank-revealing bases
of each side, the canonical correlations of two bases, their summaries and warnings,
SVCCA's direction count, and google/svcca's PWCCA convention.

Private: :mod:`repsim.cca_family` (the measures and their registry declarations) and
:mod:`repsim._moment_formulas` (the streaming forms) use them.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, NamedTuple

import numpy as np

from . import _backend as B
from . import _validation as V
from ._linalg import Rep, check_rtol

scalar = B.scalar


def _pair(x, y, *, centre, rtol, unit_columns=True):
    """Validate both sides; return ``(xp, rep_x, rep_y)``."""
    x, y = B.asarray(x, "x"), B.asarray(y, "y")
    xp = B.namespace(x, y, names=["x", "y"])
    V.check_params(centre=centre)
    rtol = check_rtol(rtol)
    for a, name in ((x, "x"), (y, "y")):
        V.as_2d(a, xp, name)
    V.check_same_n(x.shape[0], y.shape[0], "x", "y", x.shape, y.shape)
    return xp, _side(x, "x", xp, centre, rtol, unit_columns), \
        _side(y, "y", xp, centre, rtol, unit_columns)


def _side(x, name, xp, centre, rtol, unit_columns):
    n = int(x.shape[0])
    if n < 2:
        raise ValueError(f"CCA needs at least 2 examples; got n={n}")
    return Rep(x, name, centre=centre, rtol=rtol, xp=xp, unit_columns=unit_columns)


def _warn_constant(reps, what, result="is undefined (set to NaN)"):
    bad = [name for name, rep, k in reps if k == 0]
    if bad:
        warnings.warn(
            f"{what} {result} for constant representation(s) "
            + ", ".join(repr(b) for b in bad)
            + ": zero variance after centring, so there are no canonical directions",
            V.DegenerateRepresentationWarning,
            stacklevel=V.user_stacklevel(),
        )
        return True
    return False


def _warn_underdetermined(kx, ky, n, centre, what):
    space = n - 1 if centre else n
    forced = kx + ky - space
    if forced > 0:
        warnings.warn(
            f"{what}: {kx} + {ky} directions compared in a {space}-dimensional space of "
            f"{'centred ' if centre else ''}example vectors (n={n}), so at least {forced} "
            f"canonical correlation(s) equal 1 by construction, whatever the data; use more "
            "examples than directions (or svcca with fewer kept directions)",
            V.UnderdeterminedCCAWarning,
            stacklevel=V.user_stacklevel(),
        )


def _rho(ux, uy, xp):
    """Canonical correlations (descending, clipped to [0, 1]) of two orthonormal bases."""
    m = xp.matmul(ux.T, uy)
    if m.shape[0] == 0 or m.shape[1] == 0:
        return xp.zeros((0,), dtype=B.accumulation_dtype(xp), device=B.device(m))
    return xp.clip(xp.linalg.svdvals(m), 0.0, 1.0)


def _summary(rho, summary, xp):
    if rho.shape[0] == 0:
        return scalar(xp.asarray(math.nan, dtype=B.accumulation_dtype(xp), device=B.device(rho)), xp)
    vals = rho * rho if summary == "mean_squared" else rho
    return scalar(xp.mean(vals), xp)


def _correlations(x, y, centre, rtol, what, **kw):
    xp, rx, ry = _pair(x, y, centre=centre, rtol=rtol)
    return xp, _rho_of(rx, ry, centre, what, **kw)


def _rho_of(rx, ry, centre, what, **kw):
    xp = rx.xp
    ux, uy = rx.u[:, : rx.rank], ry.u[:, : ry.rank]
    if not _warn_constant([("x", rx, rx.rank), ("y", ry, ry.rank)], what, **kw):
        _warn_underdetermined(rx.rank, ry.rank, rx.n, centre, what)
    return _rho(ux, uy, xp)


def _keep_count(keep, rep, name, keep_by="variance"):
    """Number of leading singular directions of ``rep`` that ``keep`` selects."""
    if isinstance(keep, numbers.Integral) and not isinstance(keep, bool):
        return min(V.check_int(keep, name, 1, what=" (a number of directions)"), rep.rank)
    if isinstance(keep, numbers.Real) and not isinstance(keep, bool):
        if not (math.isfinite(keep) and 0 < keep <= 1):
            raise ValueError(
                f"{name} must be a variance fraction in (0, 1] (a float) or a number of "
                f"directions (an int >= 1); got {keep!r}"
            )
        if rep.rank == 0:
            return 0
        xp = rep.xp
        var = rep.s[: rep.rank] ** 2 if keep_by == "variance" else rep.s[: rep.rank]
        frac = xp.cumulative_sum(var) / xp.sum(var)
        # the fewest leading directions whose variance share reaches keep (rounding slack)
        below = int(xp.sum(xp.astype(frac < keep - 1e-12, xp.int64)))
        return min(below + 1, rep.rank)
    raise ValueError(
        f"{name} must be a variance fraction in (0, 1] (a float) or a number of directions "
        f"(an int >= 1); got {keep!r}"
    )


class SvccaSide(NamedTuple):
    """One side of google/svcca's PWCCA, prepared once (see :func:`svcca_side`)."""

    x: Any
    """(n, p) float64 activations, validated."""
    mean: Any
    """(p,) column means."""
    xc: Any
    """(n, p) centred activations."""
    scale: Any
    """``max |Sigma_xx|``, the reference's covariance scale."""
    invsqrt: Any
    """(p, p) ``(Sigma_xx / scale)^{-1/2}`` through the pseudo-inverse, as the reference."""


def svcca_side(x, xp) -> SvccaSide:
    """The per-layer part of google/svcca's PWCCA: means, centred activations, the scaled
    covariance's inverse square root (``n p^2 + p^3``, once per layer)."""
    n = x.shape[0]
    mx = xp.mean(x, axis=0)
    xc = x - mx
    sxx = xp.matmul(xc.T, xc) / (n - 1)
    xmax = xp.max(xp.abs(sxx))
    w, v = xp.linalg.eigh(xp.linalg.pinv(sxx / xmax))
    with np.errstate(invalid="ignore"):  # a rank-deficient side: NaN, as the reference
        root = xp.sqrt(w)
    return SvccaSide(x, mx, xc, xmax, xp.matmul(v * root[None, :], v.T))


def _pwcca_svcca(sw: SvccaSide, so: SvccaSide, xp):
    """PWCCA as google/svcca's ``pwcca.py`` computes it, weighting side ``sw`` (n, p) with
    ``p <= q``, in float64 (see :func:`pwcca`, ``convention="svcca"``)."""
    n = sw.x.shape[0]
    sxy = xp.matmul(sw.xc.T, so.xc) / (n - 1) / xp.sqrt(sw.scale * so.scale)
    arr = xp.matmul(sw.invsqrt, xp.matmul(sxy, so.invsqrt))
    u, rho, _ = xp.linalg.svd(arr, full_matrices=True)
    # the canonical "directions" without invsqrt_xx, with the means added back
    dirns = xp.matmul(u.T, sw.xc.T) + sw.mean[:, None]
    basis, _ = xp.linalg.qr(dirns.T)
    weights = xp.sum(xp.abs(xp.matmul(basis.T, sw.x)), axis=1)
    weights = weights / xp.sum(weights)
    return xp.sum(weights * xp.abs(rho))


def svcca_layer(x, name, xp=None):
    """One validated layer of ``convention="svcca"`` (float64, 2-d, finite), prepared."""
    x = B.asarray(x, name)
    xp = xp or B.namespace(x)
    x = xp.astype(V.as_2d(x, xp, name), B.accumulation_dtype(xp))
    V.check_finite_array(x, xp, name)
    return svcca_side(x, xp)


def pwcca_svcca_pair(sx: SvccaSide, sy: SvccaSide, side):
    """google/svcca's PWCCA of two prepared layers (``side``: "x", "y" or "smaller")."""
    xp = B.namespace(sx.x)
    V.check_same_n(sx.x.shape[0], sy.x.shape[0], "x", "y", sx.x.shape, sy.x.shape)
    if side == "smaller":
        side = "x" if sx.x.shape[1] <= sy.x.shape[1] else "y"
    w, o, wname, oname = (sx, sy, "x", "y") if side == "x" else (sy, sx, "y", "x")
    n, p, q = w.x.shape[0], w.x.shape[1], o.x.shape[1]
    if p > q:
        raise ValueError(
            f"convention='svcca' weights by the side with fewer features (as pwcca.py); got "
            f"side={side!r} with {p} features against {q} in {oname}; use side='smaller'"
        )
    if not n > max(p, q):
        raise ValueError(
            f"convention='svcca' needs more examples than features (covariance inverses); "
            f"got n={n} with {p} features in {wname} and {q} in {oname}"
        )
    return scalar(_pwcca_svcca(w, o, xp), xp)


def _pwcca_convention_svcca(x, y, side):
    x, y = B.asarray(x, "x"), B.asarray(y, "y")
    xp = B.namespace(x, y, names=["x", "y"])
    x = xp.astype(V.as_2d(x, xp, "x"), B.accumulation_dtype(xp))
    y = xp.astype(V.as_2d(y, xp, "y"), B.accumulation_dtype(xp))
    V.check_same_n(x.shape[0], y.shape[0], "x", "y", x.shape, y.shape)
    return pwcca_svcca_pair(svcca_layer(x, "x", xp), svcca_layer(y, "y", xp), side)
