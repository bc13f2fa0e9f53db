"""Distance correlation and representational similarity analysis (RSA).

Distance correlation is HSIC with the distance kernel: with ``A``, ``B`` the Euclidean
distance matrices of ``x`` and ``y`` and ``U(.)`` the U-centring of Székely & Rizzo
(:func:`repsim.ucentre_gram`), the bias-corrected squared distance correlation is
``<U(A), U(B)> / sqrt(<U(A), U(A)> <U(B), U(B)>)``: the unbiased-HSIC CKA formula applied
to distance matrices, so it is computed by the same centring and packed products as CKA
(and, with a distance kernel in the minibatch accumulator, streams as a minibatch
U-statistic).

Centred RSA and CKA. For squared Euclidean RDMs ``D_ij = k_ii + k_jj - 2 k_ij`` (``K`` the
linear gram), double centring gives ``H D H = -2 H K H`` and U-centring ``U(D) = -2 U(K)``
(both annihilate the ``k_ii + k_jj`` terms). So comparing *centred* squared-Euclidean RDMs
by cosine is exactly linear CKA (biased for ``H . H``, unbiased for ``U(.)``) and runs
through :func:`repsim.cka_matrix`'s packed path. The classic RSA comparison --
Pearson correlation of the upper triangles -- subtracts only the mean of the off-diagonal
entries, not the row and column means, so ``rsa(x, y, "sqeuclidean", "pearson")`` is a
different number (``tests/test_rsa.py`` checks both statements).

References
----------
Székely, Rizzo & Bakirov (2007), "Measuring and testing dependence by correlation of
distances", Annals of Statistics 35(6).
Székely & Rizzo (2014), "Partial distance correlation with methods for dissimilarities",
Annals of Statistics 42(6).
Kriegeskorte, Mur & Bandettini (2008), "Representational similarity analysis --
connecting the branches of systems neuroscience", Frontiers in Systems Neuroscience 2.
Sejdinovic, Sriperumbudur, Gretton & Fukumizu (2013), "Equivalence of distance-based and
RKHS-based statistics in hypothesis testing", Annals of Statistics 41(5).
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from . import _moment_formulas as M
from . import _validation as V
from ._registry import Measure, declare
from ._centring import unbiased_degeneracy_terms
from .cka import _centred_scaled
from .kernels import _ldexp, centre_into



def _squared_distances(xc, xp):
    k = xp.matmul(xc, xc.T)
    d = xp.linalg.diagonal(k)
    d2 = d[:, None] + d[None, :] - 2.0 * k
    # rounding of the gram formula can leave tiny negatives: that excess only
    d2 = xp.clip(d2, 0.0, None)
    eye = xp.eye(d2.shape[0], dtype=xp.bool, device=B.device(d2))
    return xp.where(eye, xp.zeros_like(d2), d2)


def distance_matrix(x, rdm="euclidean", name="x"):
    """Representational dissimilarity matrix ``(n, n)`` of a validated float64 ``(n, p)``.

    ``"euclidean"``: ``||x_i - x_j||``; ``"sqeuclidean"``: its square (both summed from
    the differences, float64, so equal distances tie exactly); ``"correlation"``:
    ``1 - corr(x_i, x_j)`` over features.

    Exact ties stay exact, for every kind: the matrix is computed once per *distinct*
    row and copied to every duplicate, so two identical examples are at distance exactly
    0 and have bit-identical distances to every other example (the correlation formula's
    rounding would otherwise put identical rows at ±2e-16 and break the ties that the
    rank comparisons count).
    """
    xp = B.namespace(x)
    inverse = _distinct_rows(x, xp)
    if inverse is not None:
        xu = xp.take(x, xp.asarray(inverse[1], device=B.device(x)), axis=0)
        du = distance_matrix(xu, rdm, name)
        inv = xp.asarray(inverse[0], device=B.device(x))
        return xp.take(xp.take(du, inv, axis=0), inv, axis=1)
    if rdm == "correlation":
        n, p = x.shape
        if p < 2:
            raise ValueError(f"rdm='correlation' needs at least 2 features per example; {name} has shape {tuple(x.shape)}")
        r = x - xp.mean(x, axis=1)[:, None]
        norms = xp.sqrt(xp.sum(r * r, axis=1))
        if not bool(xp.all(norms > 0)):
            bad = int(B.to_numpy(xp.argmax(xp.astype(norms == 0, xp.int32))))
            raise ValueError(
                f"rdm='correlation' is undefined for {name}: example {bad} is constant across "
                f"its features (shape {tuple(x.shape)})"
            )
        u = r / norms[:, None]
        d = 1.0 - xp.matmul(u, u.T)
        eye = xp.eye(n, dtype=xp.bool, device=B.device(d))
        return xp.where(eye, xp.zeros_like(d), d)
    d2 = _direct_squared_distances(x, xp)
    return d2 if rdm == "sqeuclidean" else xp.sqrt(d2)


def _distinct_rows(x, xp):
    """``(inverse, first)`` when ``x`` has repeated rows: ``x[first]`` are its distinct
    rows and ``x[first][inverse] == x``; None when every row is distinct. Rows are
    compared on the host, value by value (``-0.0 == 0.0``)."""
    h = np.asarray(B.to_numpy(x), dtype=np.float64) + 0.0
    _, first, inverse = np.unique(h, axis=0, return_index=True, return_inverse=True)
    if len(first) == h.shape[0]:
        return None
    return inverse.reshape(-1).astype(np.int64), first.astype(np.int64)


def _direct_squared_distances(x, xp):
    """``sum_f (x_if - x_jf)^2`` summed difference by difference (in blocks of rows), so
    that geometrically equal distances come out equal, as ties, for the rank comparisons
    (the gram formula's rounding would break them)."""
    n, p = x.shape
    rows = max(1, (8 * 2**20) // max(1, n * p))
    parts = []
    for start in range(0, n, rows):
        diff = x[start:start + rows, None, :] - x[None, :, :]
        parts.append(xp.sum(diff * diff, axis=2))
    return xp.concat(parts, axis=0)


def dcor(x, y, estimator="unbiased"):
    """Squared distance correlation (Székely, Rizzo & Bakirov 2007; Székely & Rizzo 2014).

    With ``A``, ``B`` the Euclidean distance matrices of ``x`` and ``y``::

        unbiased: R*²(x, y) = <U(A), U(B)> / sqrt(<U(A), U(A)> <U(B), U(B)>)
        biased:   R²_n(x, y) = <HAH, HBH> / sqrt(<HAH, HAH> <HBH, HBH>)

    ``U(.)`` the U-centring (:func:`repsim.ucentre_gram`, the unbiased HSIC building block)
    and ``H = I - 11^T/n``. The unbiased value is the bias-corrected distance correlation
    (``dcor.u_distance_correlation_sqr``, R's ``energy::bcdcor``); it is close to 0 for
    independent data and can dip below 0.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed).
    estimator : {"unbiased", "biased"}, default "unbiased"
        ``"unbiased"`` needs ``n >= 4``.

    Returns
    -------
    scalar
        float64; biased in ``[0, 1]``, unbiased at most 1. NaN with a warning when a side
        is constant, and (unbiased) when its U-centred distance matrix is zero: every
        pair of its examples equally far apart (one-hot rows).

    Notes
    -----
    Invariant to translation, orthogonal maps and isotropic scaling; 0 (population)
    exactly for independent variables. Distances are formed from the column-centred
    float64 gram (``d² = k_ii + k_jj - 2 k_ij``, rounding negatives clipped) of data
    scaled by a power of two (exact) where its squares would under- or overflow, so any
    offset and any scale whose float64 value is finite give the same value; a side is
    constant when its centred data are, up to rounding (the rules of CKA's feature path:
    :func:`repsim.kernels.degeneracy_terms` on the centred data). Cost
    ``O(n^2 (p + q))``; as a minibatch U-statistic it streams like minibatch CKA.

    References
    ----------
    .. [1] Székely & Rizzo (2014), "Partial distance correlation with methods for
       dissimilarities", Annals of Statistics 42(6).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((50, 3))
    >>> round(float(repsim.dcor(x, 5 * x + 1)), 12)
    1.0
    """
    V.check_params("dcor", estimator=estimator)
    xp, x, y = M.prepare_pair(x, y, min_n=4 if estimator == "unbiased" else 2, what=f"dcor(estimator={estimator!r})")
    unbiased = estimator == "unbiased"
    (pa, ca), (pb, cb) = (_centred_distances(a, xp, name, unbiased) for a, name in ((x, "x"), (y, "y")))
    bad = [name for name, constant in (("x", ca), ("y", cb)) if constant]
    if bad:
        return M.as_result(M.undefined(bad, "dcor", V.degenerate_reason(estimator)), xp)
    return M.as_result(xp.sum(pa * pb) / xp.sqrt(xp.sum(pa ** 2) * xp.sum(pb ** 2)), xp)


def _centred_distances(a, xp, name, unbiased):
    """One side of :func:`dcor`: its Euclidean distance matrix, U-centred (or double
    centred), flattened to ``(n*n,)`` float64, and whether the side is degenerate: constant,
    or (unbiased) with a zero U-centred distance matrix, as when every pair of examples is
    equally far apart (one-hot rows; :func:`repsim._centring.unbiased_degeneracy_terms`)."""
    n = int(a.shape[0])
    packed = xp.empty((n * n,), dtype=xp.float64, device=B.device(a))
    # centred in float64 and scaled by a power of two (exact; dcor is scale invariant)
    # before any product, as on CKA's feature path: the sums of squared U-centred
    # distances below stay in float64's range at any scale, and "constant" is decided
    # on the centred data
    ac, constant = _centred_scaled(a, xp, name)
    tr, _, off, norm = centre_into(xp.sqrt(_squared_distances(ac, xp)), unbiased, packed, xp,
                                   norms=True)
    if unbiased and not constant:
        norm, tol = unbiased_degeneracy_terms(B.item(norm), B.item(off), B.item(tr), n,
                                              float(np.finfo(np.float64).eps))
        constant = norm <= tol
    return packed, constant


def _unit_scale(x, xp):
    """``x`` times the power of two that brings ``max |x|`` into ``[0.5, 1)``: exact, so
    equal distances stay exactly equal (the rank comparisons' ties), and every RDM kind
    and comparison is invariant to it -- while the squared distances and the Pearson
    sums of products of data at ``1e-90`` or ``1e80`` would under- or overflow float64.
    Differences ``x_i - x_j`` need no centring first: an offset costs them only the
    rounding of the data itself."""
    amax = B.item(xp.max(xp.abs(x))) if x.shape[0] * x.shape[1] else 0.0
    return _ldexp(x, -math.frexp(amax)[1]) if amax > 0 else x


def _upper(d, xp):
    n = d.shape[0]
    i, j = np.triu_indices(n, 1)
    flat = xp.reshape(d, (n * n,))
    return xp.take(flat, xp.asarray(i * n + j, device=B.device(d)))


def average_ranks(v):
    """Ranks 1..m of a numpy vector, ties given their average rank
    (:func:`scipy.stats.rankdata`, ``method="average"``)."""
    from scipy import stats

    return stats.rankdata(np.asarray(v, dtype=np.float64), method="average")


def _tie_pairs(v):
    """Number of tied pairs ``Σ t(t-1)/2`` of a numpy vector (exact, as a float)."""
    _, counts = np.unique(v, return_counts=True)
    t = counts.astype(np.float64)
    return float(np.sum(t * (t - 1) / 2))


def kendall_tau_a(a, b):
    """Kendall's τ-a of two numpy vectors, from :func:`scipy.stats.kendalltau`::

        τ_a = (n_c - n_d) / (m (m - 1) / 2)

    tied pairs (in either vector) counting as neither concordant nor discordant. scipy
    returns τ-b ``= (n_c - n_d) / sqrt((n0 - n1)(n0 - n2))`` (``n1``, ``n2`` the pairs tied
    in ``a``, in ``b``), so ``τ_a = τ_b sqrt((n0 - n1)(n0 - n2)) / n0``: ``O(m log m)``,
    within a few ulps of the pair count (tested to 1e-12). 0 when every pair of one
    vector is tied (no pair is concordant or discordant).
    """
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m = len(a)
    n0 = m * (m - 1) / 2
    n1, n2 = _tie_pairs(a), _tie_pairs(b)
    if n1 == n0 or n2 == n0:
        return 0.0
    tau_b = float(stats.kendalltau(a, b, variant="b").statistic)
    return tau_b * math.sqrt((n0 - n1) * (n0 - n2)) / n0


def _pearson(u, v, xp):
    u = u - xp.mean(u)
    v = v - xp.mean(v)
    return xp.sum(u * v) / xp.sqrt(xp.sum(u * u) * xp.sum(v * v))


def rsa(x, y, rdm="euclidean", compare="pearson"):
    """Representational similarity analysis: correlate the two RDMs' upper triangles.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed); ``n >= 3``.
    rdm : {"euclidean", "sqeuclidean", "correlation"}
        Dissimilarity of examples ``i, j``: Euclidean distance, its square, or
        ``1 - Pearson correlation`` of the two examples' feature vectors.
    compare : {"pearson", "spearman", "kendall"}
        Correlation of the ``n (n - 1) / 2`` entries ``i < j``: Pearson, Spearman (Pearson
        of average ranks) or Kendall's τ-a (ties count as neither concordant nor
        discordant; Nili et al. 2014 recommend τ-a for RDMs with tied entries).

    Returns
    -------
    scalar
        float64 in ``[-1, 1]``. Spearman and Kendall rank on the host
        (:func:`scipy.stats.rankdata`, :func:`scipy.stats.kendalltau`); the result comes
        back in the caller's array type and device. NaN with a warning when an RDM is
        constant (all its entries equal). Identical examples are at distance exactly 0
        and tie exactly with each other's distances (see :func:`distance_matrix`), so
        duplicated examples give the exact-tie value.

    Notes
    -----
    Invariant to orthogonal maps and isotropic scaling (all RDMs), translation
    (Euclidean RDMs). Needs all examples at once: cost ``O(n^2 (p + q))`` for the RDMs,
    ``O(n^2 log n)`` for the rank comparisons. Not the same as CKA; see the module notes
    for the centred variant that is.

    References
    ----------
    .. [1] Kriegeskorte, Mur & Bandettini (2008), "Representational similarity analysis",
       Frontiers in Systems Neuroscience 2.
    .. [2] Nili et al. (2014), "A toolbox for representational similarity analysis", PLoS
       Computational Biology 10(4) (Kendall's τ-a).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((20, 4))
    >>> round(float(repsim.rsa(x, 2 * x, compare="kendall")), 12)
    1.0
    """
    V.check_params("rsa", rdm=rdm, compare=compare)
    xp, x, y = M.prepare_pair(x, y, min_n=3, what="rsa")
    u = _upper(distance_matrix(_unit_scale(x, xp), rdm, "x"), xp)
    v = _upper(distance_matrix(_unit_scale(y, xp), rdm, "y"), xp)
    flat = [name for name, w in (("x", u), ("y", v)) if B.item(xp.max(w) - xp.min(w)) == 0]
    if flat:
        return M.as_result(M.undefined(flat, f"rsa (constant {rdm} RDM)"), xp)
    if compare == "pearson":
        return M.as_result(_pearson(u, v, xp), xp)
    un, vn = B.to_numpy(u), B.to_numpy(v)
    if compare == "spearman":
        value = float(_pearson(average_ranks(un), average_ranks(vn), np))
    else:
        value = kendall_tau_a(un, vn)
    if B.is_numpy(x):
        return np.float64(value)
    return xp.asarray(value, dtype=xp.float64, device=B.device(x))




# --------------------------------------------------------------------------- registry


def _rsa_prepare(x, name, *, rdm, compare, **_):
    """One layer's RDM upper triangle, centred (Pearson) or as centred ranks (Spearman)."""
    x = B.asarray(x)
    xp = B.namespace(x)
    x = V.as_2d(x, xp, name)
    if int(x.shape[0]) < 3:
        raise ValueError(f"rsa needs at least 3 examples; got n={int(x.shape[0])} for {name}")
    x = xp.astype(x, xp.float64)
    V.check_finite_array(x, xp, name)
    u = _upper(distance_matrix(_unit_scale(x, xp), rdm, name), xp)
    flat = B.item(xp.max(u) - xp.min(u)) == 0
    if compare == "kendall":
        return u, B.to_numpy(u), flat, x
    if compare == "spearman":
        xp, u = np, average_ranks(B.to_numpy(u))
    u = u - xp.mean(u)
    return u, xp.sum(u * u), flat, x


def _rsa_pair(a, b, *, compare, **_):
    xp = B.namespace(a[3])
    if a[2] or b[2]:
        bad = [side for side, p in (("x", a), ("y", b)) if p[2]]
        return M.as_result(M.undefined(bad, "rsa (constant RDM)"), xp)
    if compare == "pearson":
        return M.as_result(xp.sum(a[0] * b[0]) / xp.sqrt(a[1] * b[1]), xp)
    if compare == "spearman":
        value = float(np.sum(a[0] * b[0]) / np.sqrt(a[1] * b[1]))
    else:
        value = kendall_tau_a(a[1], b[1])
    return np.float64(value)


_OIT = ("orthogonal", "isotropic_scaling", "translation")

def _dcor_prepare(x, name, *, estimator="unbiased", **_):
    """One layer's centred distance matrix, its squared norm and constancy, formed once
    for every pair of :func:`repsim.similarity_matrix` (as :func:`dcor` forms each side)."""
    unbiased = estimator == "unbiased"
    xp, x = M.float64_layer(x, name, 4 if unbiased else 2, f"dcor(estimator={estimator!r})")
    packed, constant = _centred_distances(x, xp, name, unbiased)
    return packed, xp.sum(packed ** 2), constant, name


def _dcor_pair(a, b, *, estimator="unbiased", **_):
    xp = B.namespace(a[0])
    if a[0].shape != b[0].shape:
        raise ValueError(f"{a[3]} and {b[3]} hold different numbers of examples")
    bad = list(dict.fromkeys(p[3] for p in (a, b) if p[2]))
    if bad:
        return M.as_result(M.undefined(bad, "dcor", V.degenerate_reason(estimator)), xp)
    return M.as_result(xp.sum(a[0] * b[0]) / xp.sqrt(a[1] * b[1]), xp)


declare(
    dcor,
    constraints={"estimator": V.Options("unbiased", "biased")},
    prepare=_dcor_prepare, pair=_dcor_pair, blocks="distance",
    measures=[Measure("dcor", {}, "similarity", "<= 1", _OIT, True,
                      "minibatch U-statistic (distance kernel)", "O(n^2 (p + q))",
                      "bias-corrected squared distance correlation <U(A), U(B)> / sqrt(...)",
                      "Székely & Rizzo 2014", "0 (exact)", aliases=("distance_correlation",))],
)
declare(
    rsa,
    constraints={"rdm": V.Options("euclidean", "sqeuclidean", "correlation"),
                 "compare": V.Options("pearson", "spearman", "kendall")},
    prepare=_rsa_prepare, pair=_rsa_pair, blocks="rdm",
    blocks_when=lambda o: "" if o.get("compare") == "pearson" else
    f"compare={o.get('compare')!r} ranks every RDM entry at once (the Pearson comparison streams)",
    measures=[
        Measure("rsa", {}, "similarity", "[-1, 1]", _OIT, True, "all examples",
                "O(n^2 (p + q))", "Pearson correlation of the Euclidean RDMs' upper triangles",
                "Kriegeskorte et al. 2008", "0 (exact)",
                repository=("rsa-rdm=euclidean-compare=pearson",)),
        Measure("rsa_kendall", {"rdm": "correlation", "compare": "kendall"}, "similarity",
                "[-1, 1]", ("isotropic_scaling",), True, "all examples",
                "O(n^2 (p + q + log n))", "Kendall tau-a of the correlation-distance RDMs",
                "Nili et al. 2014", "0 (exact)",
                repository=("rsa-rdm=correlation-compare=tau_a", "rsa-correlation-tau_a")),
    ],
)
