"""Full-data CKA (linear and RBF) of every layer pair from pairs of example blocks.

Split the ``n`` examples into consecutive blocks ``X_1, ..., X_k`` (rows). A layer's
linear gram ``K = X X^T`` is then the grid of blocks ``K_ij = X_i X_j^T``, and every term
of both HSIC estimators is a sum over that grid:

- ``tr(K~ L~) = sum_ij <K~_ij, L~_ij>`` -- the ``(L_a, L_b)`` state ``cross``, with
  ``K~`` the gram without its diagonal;
- the row sums without the diagonal ``K~ 1`` (``rows``, one ``n``-vector per layer) and
  the diagonal ``diag(K)`` (``diag``, from the blocks ``K_ii``).

The unbiased HSIC (Song et al. 2012) is ``[tr(K~L~) + t~_K t~_L / ((n-1)(n-2))
- 2/(n-2) r~_K . r~_L] / (n(n-3))`` with ``r~ = K~ 1`` and ``t~ = 1^T K~ 1``; the biased
one (Gretton et al. 2005) is ``[tr(KL) - 2/n r_K . r_L + t_K t_L / n^2] / (n-1)^2``
(``tr(KHLH)`` expanded) with ``tr(KL) = tr(K~L~) + diag(K) . diag(L)``, ``r = r~ + diag``
and ``t = t~ + tr K``: the diagonal is added where a term needs it, never subtracted (a
gram whose diagonal dominates, such as an RBF gram with a bandwidth below the spread,
keeps its off-diagonal part). Both are exact for any per-feature shift of ``X`` (HSIC is
translation invariant); the features are shifted by fixed float64 column means (those of
the first block) so that the corrections stay small against ``tr(KL)`` and nothing
cancels catastrophically.

Every unordered block pair ``i <= j`` adds its part (an off-diagonal pair counts twice,
``K_ji = K_ij^T``), so the states of disjoint sets of pairs add up: :class:`BlockCKA` is a
:class:`repsim._accumulator.Accumulator` whose ``merge`` combines the pairs that different
processes or dask workers computed (:mod:`repsim.store_stream`). The result equals
:func:`repsim.cka_matrix` on the whole data up to rounding -- the same full-data
estimator, not the minibatch one of :class:`repsim.MinibatchCKA`. Memory: the states hold
``2 (L_a + L_b) n + L_a L_b`` floats, one block pair ``2 B p`` values of one layer at a
time and ``(L_a + L_b) B^2`` for the blocks of all layers.

The RBF kernel (``sigmas_a``/``sigmas_b`` given) has the same grid: its block is
``K_ij = exp(-D_ij / (2 sigma^2))`` with ``D_ij = |x_i|^2 + |x_j|^2 - 2 x_i x_j^T`` the
squared distances of the shifted rows (:func:`block_sq_distances`, the diagonal of a
diagonal block exactly 0), so every state above is summed as for the linear kernel. The
bandwidths are fixed before the first pair: given, or the median heuristic's exact value
over all ``n^2`` distances (:mod:`repsim._block_median`). The linear gram's trace and total
(``linear_a``/``linear_b``) are summed beside it for the constant-layer rule of
:func:`repsim.cka_matrix`. The distance kernel (``kernel="distance"``) sums the blocks of
the Euclidean distance matrix the same way: the CKA formula on them is the squared
distance correlation of :func:`repsim.dcor` (biased and bias-corrected).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Sequence

import numpy as np

from . import _backend as B
from . import _validation as V
from ._accumulator import Accumulator, State
from ._rules import mask_degenerate
from ._centring import zero_ucentred_rows
from .kernels import degeneracy_terms, rbf_less_constant, rbf_underflow_error
from .results import similarity_array


def _digest(shifts: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for s in shifts:
        h.update(np.ascontiguousarray(s, dtype=np.float64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


class BlockCKA(Accumulator):
    """Sum states of full-data CKA (linear or RBF kernel) over pairs of example blocks.

    Parameters
    ----------
    n : int
        Examples in all (every block's rows are positions in ``0 .. n-1``).
    names_a, names_b : list of str
        Layer names; ``names_b`` None compares side a with itself.
    shifts_a, shifts_b : list of arrays, shape (p_l,)
        Per-layer float64 feature shifts (the first block's column means), the same in
        every process: part of the computation's identity (``merge`` compares a digest).
    eps_a, eps_b : list of float
        Machine epsilon of the dtype each layer's blocks are multiplied in (the tolerance
        of the constant-layer check, as in :func:`repsim.cka_matrix`).
    kernel : {"linear", "rbf", "distance"}, default "linear"
        ``"rbf"`` also when ``sigmas_a`` is given; ``"distance"``: the Euclidean distance
        matrix of the rows in float64 (distance correlation, :func:`repsim.dcor`).
    sigmas_a, sigmas_b : list of float, optional
        RBF bandwidths per layer (the RBF kernel; None: linear). NaN marks a layer whose
        median squared distance is 0: reported constant if it is, refused otherwise.
    exps_a, exps_b : list of int, optional
        Per layer, the rows are multiplied by ``2**-exp`` (exact) after the shift, so that
        their products stay inside float64's range (default 0). ``sigmas`` stay in the
        data's units.
    typical_a, typical_b : list of float, optional
        RBF and distance: a typical squared distance per layer (of the scaled rows)
        (:func:`typical_sq_distance`). The blocks are summed less the constant
        ``exp(-typical / (2 sigma^2))`` (``sqrt(typical)``), which
        centring removes from both estimators, so that a gram near a constant (a
        bandwidth above the spread) keeps its centred part's accuracy in the sums.
    """

    STATES = (
        State("cross", ("layers_a", "layers_b")),
        State("self_a", ("layers_a",), when="two_sided"),
        State("self_b", ("layers_b",), when="two_sided"),
        State("rows_a", ("layers_a", "n")),
        State("diag_a", ("layers_a", "n")),
        State("rows_b", ("layers_b", "n"), when="two_sided"),
        State("diag_b", ("layers_b", "n"), when="two_sided"),
        State("linear_a", ("layers_a", "stat"), when="distances"),
        State("linear_b", ("layers_b", "stat"), when="distances_two_sided"),
        State("block_pairs", (), "int64"),
    )
    LAYOUT = ("names_a", "names_b")

    names_a: list[str]
    names_b: list[str]

    def __init__(self, n: int, names_a: list[str], shifts_a: list[np.ndarray],
                 eps_a: list[float], names_b: list[str] | None = None,
                 shifts_b: list[np.ndarray] | None = None,
                 eps_b: list[float] | None = None, *,
                 sigmas_a: Sequence[float] | None = None,
                 sigmas_b: Sequence[float] | None = None,
                 typical_a: Sequence[float] | None = None,
                 typical_b: Sequence[float] | None = None, kernel: str = "linear",
                 exps_a: Sequence[int] | None = None,
                 exps_b: Sequence[int] | None = None) -> None:
        self.n = V.check_int(n, "n", 1)
        self.two_sided = names_b is not None
        self.shifts_a = [np.asarray(s, np.float64) for s in shifts_a]
        self.shifts_b = [np.asarray(s, np.float64) for s in (shifts_b or [])]
        self.eps_a, self.eps_b = list(eps_a), list(eps_b or eps_a)
        self.kernel = kernel if kernel != "linear" or sigmas_a is None else "rbf"
        if self.kernel not in ("linear", "rbf", "distance"):
            raise ValueError(f"kernel must be 'linear', 'rbf' or 'distance'; got {kernel!r}")
        self.sigmas_a = None if sigmas_a is None else [float(v) for v in sigmas_a]
        self.sigmas_b = None if sigmas_b is None else [float(v) for v in sigmas_b]
        self.exps_a = [int(e) for e in exps_a or [0] * len(names_a)]
        self.exps_b = [int(e) for e in exps_b or [0] * len(names_b or [])]
        self.typical_a = [float(v) for v in typical_a or [0.0] * len(names_a)]
        self.typical_b = [float(v) for v in typical_b or [0.0] * len(names_b or [])]
        self.reset()
        self._start({"names_a": list(names_a),
                     "names_b": list(names_a if names_b is None else names_b)}, np, "cpu")

    def _options(self) -> dict[str, Any]:
        distances = self.kernel != "linear"
        sigmas = (self.sigmas_a or []) + (self.sigmas_b or []) + self.typical_a + \
            self.typical_b + self.exps_a + self.exps_b
        return {"n": self.n, "two_sided": self.two_sided, "kernel": self.kernel,
                "distances": distances, "distances_two_sided": distances and self.two_sided,
                "shifts": _digest(self.shifts_a + self.shifts_b + [np.asarray(sigmas)])}

    def _dims(self, layout: dict[str, Any]) -> dict[str, int]:
        return {"layers_a": len(layout["names_a"]), "layers_b": len(layout["names_b"]),
                "n": self.n, "stat": 2}

    @property
    def block_pairs(self) -> int:
        """Block pairs ``(i, j)``, ``i <= j``, added so far (all processes together)."""
        return int(self._values["block_pairs"])

    # ------------------------------------------------------------------ one block pair
    def _grams(self, blocks, shifts, rows_i, rows_j, side):
        """``K~_ij`` of every layer (float64, ``(L, B_i, B_j)``, a diagonal pair's diagonal
        zeroed), its row and column sums added to the ``rows`` state and the diagonal to
        ``diag`` (diagonal pairs); for the RBF kernel the linear block's trace and total
        to ``linear``."""
        rows, diag = self._values[f"rows_{side}"], self._values[f"diag_{side}"]
        diagonal = rows_i == rows_j
        names = self.names_a if side == "a" else self.names_b
        sigmas = self.sigmas_a if side == "a" else self.sigmas_b
        typical = self.typical_a if side == "a" else self.typical_b
        exps = self.exps_a if side == "a" else self.exps_b
        out = []
        for l, ((xi, xj), s) in enumerate(zip(blocks, shifts)):
            label = f"layers_{side}[{names[l]!r}]"
            if self.kernel == "linear":
                k = _block_product(xi, xj, s, diagonal, label, rows_i, rows_j, exps[l])
            else:
                distance = self.kernel == "distance"
                lin, d2, _ = block_sq_distances(xi, xj, s, diagonal, label, rows_i, rows_j,
                                                as_float64=distance, exp=exps[l])
                stats = self._values[f"linear_{side}"][l]
                stats[0] += np.trace(lin) if diagonal else 0.0
                stats[1] += (1.0 if diagonal else 2.0) * lin.sum()
                if distance:  # Euclidean distances, less a typical one (centring removes it)
                    k = np.sqrt(np.maximum(d2, 0.0)) - math.sqrt(typical[l])
                else:
                    assert sigmas is not None
                    # the bandwidth in the scaled rows' units (sigmas are the data's)
                    sigma = math.ldexp(sigmas[l], -exps[l]) if math.isfinite(sigmas[l]) else 1.0
                    inv = 1.0 / (2.0 * sigma * sigma)
                    k = rbf_less_constant(d2 * inv, typical[l] * inv, np)
            if diagonal:
                diag[l, rows_i] += np.diagonal(k)
                np.fill_diagonal(k, 0.0)
            rows[l, rows_i] += k.sum(axis=1)
            if not diagonal:
                rows[l, rows_j] += k.sum(axis=0)
            out.append(k.reshape(-1))
        return np.stack(out)

    def add_pair(self, rows_i: slice, rows_j: slice, blocks_a, blocks_b=None) -> None:
        """Add the block pair ``(i, j)``: rows ``rows_i`` against rows ``rows_j``.

        Parameters
        ----------
        rows_i, rows_j : slice
            The two blocks' positions among the ``n`` examples, ``rows_i.start <=
            rows_j.start``; equal slices for a diagonal pair ``(i, i)``.
        blocks_a : list of (x_i, x_j), each array (B, ...) or a callable returning one
            Every layer of side a in the two blocks (``x_j`` ignored on the diagonal). A
            callable is called when its layer's turn comes, so that only one layer's
            blocks are in memory at a time.
        blocks_b : list of (y_i, y_j), optional
            Side b's (two-sided accumulators only).
        """
        if self.two_sided != (blocks_b is not None):
            raise ValueError("blocks_b must be given exactly when the accumulator compares "
                             "two sides")
        weight = 1.0 if rows_i == rows_j else 2.0  # K_ji = K_ij^T holds the same terms
        ga = self._grams(blocks_a, self.shifts_a, rows_i, rows_j, "a")
        s = self._values
        if blocks_b is None:
            s["cross"] += weight * (ga @ ga.T)
        else:
            gb = self._grams(blocks_b, self.shifts_b, rows_i, rows_j, "b")
            s["cross"] += weight * (ga @ gb.T)
            s["self_a"] += weight * np.einsum("ij,ij->i", ga, ga)
            s["self_b"] += weight * np.einsum("ij,ij->i", gb, gb)
        s["block_pairs"] += 1

    # ------------------------------------------------------------------ the result
    def _side_terms(self, side):
        """``(r~, diag, t, tr K)`` of every layer of one side."""
        rows, diag = self._values[f"rows_{side}"], self._values[f"diag_{side}"]
        trace = diag.sum(axis=1)
        return rows, diag, rows.sum(axis=1) + trace, trace

    def hsic(self, estimator: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cross, self_a, self_b)``: HSIC of every pair and of every layer with itself,
        each times ``(n-1)^2`` (biased) or ``n(n-3)`` (unbiased)."""
        n = self.n
        ra, da, ta, tra = self._side_terms("a")
        rb, db, tb, trb = self._side_terms("b") if self.two_sided else (ra, da, ta, tra)

        def terms(kl, u1, d1, t1, tr1, u2, d2, t2, tr2, dot, outer):
            if estimator == "biased":
                return (kl + dot(d1, d2)) - 2.0 / n * dot(u1 + d1, u2 + d2) + outer(t1, t2) / n ** 2
            # 1'K~1 from the off-diagonal rows themselves: t - tr K would lose the digits
            # of an off-diagonal far below the diagonal (an RBF bandwidth below the spread)
            return (kl + outer(u1.sum(axis=1), u2.sum(axis=1)) / ((n - 1) * (n - 2))
                    - 2.0 / (n - 2) * dot(u1, u2))

        def mat(u, v):
            return u @ v.T

        def row(u, v):
            return np.einsum("ij,ij->i", u, v)

        cross = terms(self._values["cross"], ra, da, ta, tra, rb, db, tb, trb, mat, np.outer)
        if not self.two_sided:
            return cross, np.diagonal(cross).copy(), np.diagonal(cross).copy()
        self_a = terms(self._values["self_a"], ra, da, ta, tra, ra, da, ta, tra, row,
                       np.multiply)
        self_b = terms(self._values["self_b"], rb, db, tb, trb, rb, db, tb, trb, row,
                       np.multiply)
        return cross, self_a, self_b

    def _degenerate(self, side, estimator="biased"):
        flat = self._degenerate_centred(side)
        return flat | self._zero_ucentred(side) if estimator == "unbiased" else flat

    def _zero_ucentred(self, side):
        """Layers whose U-centred gram is zero, from the summed ``kl = ||K~||_F^2`` and
        off-diagonal rows (:func:`repsim._centring.zero_ucentred_rows`)."""
        rows = self._values[f"rows_{side}"]
        kl = self._values[f"self_{side}"] if self.two_sided else np.diagonal(self._values["cross"])
        eps = np.asarray(self.eps_a if side == "a" else self.eps_b, dtype=np.float64)
        if self.kernel == "distance":
            eps = np.full_like(eps, np.finfo(np.float64).eps)  # formed in float64
        return zero_ucentred_rows(kl, rows, self.n, eps)

    def _degenerate_centred(self, side):
        _, _, total, trace = self._side_terms(side)
        eps = self.eps_a if side == "a" else self.eps_b
        if self.kernel == "distance":  # as repsim.dcor: constant centred features
            linear = self._values[f"linear_{side}"]
            return np.asarray([_constant(lt, lo, self.n, e) for (lt, lo), e in zip(linear, eps)])
        if self.kernel == "rbf":  # as repsim.cka_matrix: constant features, or a summed
            # K - c whose tr(HKH) is within n eps tr(K - c) of 0 (float64)
            linear = self._values[f"linear_{side}"]
            constant = [_constant(lt, lo, self.n, e) for (lt, lo), e in zip(linear, eps)]
            self._check_bandwidths(side, constant)
            eps64 = float(np.finfo(np.float64).eps)
            flat = [_constant(tr, t, self.n, eps64) for tr, t in zip(trace, total)]
            return np.asarray(constant) | np.asarray(flat)
        return np.asarray([_constant(tr, t, self.n, e) for tr, t, e in zip(trace, total, eps)])

    def _check_underflow(self, side):
        """Refuse a layer whose off-diagonal RBF values all lie below 2**-300 (their sum
        of squares bounds the largest: ``max <= sqrt(kl)``), as in memory over batches."""
        kl = self._values[f"self_{side}"] if self.two_sided else np.diagonal(self._values["cross"])
        names = self.names_a if side == "a" else self.names_b
        constant = self._degenerate_centred(side)
        for name, value, const in zip(names, kl, constant):
            if not const and math.sqrt(max(value, 0.0)) < 2.0 ** -300:
                raise rbf_underflow_error(f"layers_{side}[{name!r}]")

    def _check_bandwidths(self, side, constant):
        sigmas = self.sigmas_a if side == "a" else self.sigmas_b
        names = self.names_a if side == "a" else self.names_b
        for name, sigma, const in zip(names, sigmas or [], constant):
            if not math.isfinite(sigma) and not const:
                raise ValueError(
                    f"cannot pick an RBF bandwidth for layers_{side}[{name!r}]: the median "
                    "squared distance between examples is 0 (at least half of the pairs of "
                    "examples have identical rows after centring); pass sigma explicitly")

    def compute(self, estimator: str = "biased") -> Any:
        """CKA of every pair of layers, as :func:`repsim.cka_matrix` gives it.

        Returns
        -------
        xarray.DataArray, shape (L_a, L_b)
            dims ``("layer_a", "layer_b")``; constant layers NaN with a warning naming
            them; attrs ``measure``, ``estimator``, ``kernel``, ``n``, ``block_pairs``.
        """
        V.check_n(self.n, estimator, f"layers_a[{self.names_a[0]!r}]")
        if self.kernel == "rbf" and estimator == "unbiased":
            self._check_underflow("a")
            if self.two_sided:
                self._check_underflow("b")
        cross, self_a, self_b = self.hsic(estimator)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = cross / np.sqrt(np.outer(self_a, self_b))
        values = np.clip(values, 0.0 if estimator == "biased" else -1.0, 1.0)
        deg_a = self._degenerate("a", estimator)
        deg_b = self._degenerate("b", estimator) if self.two_sided else deg_a
        values = mask_degenerate(values, deg_a, deg_b, self.names_a, self.names_b,
                                 reason=V.degenerate_reason(estimator))
        attrs = {"measure": "cka", "estimator": estimator, "kernel": self.kernel, "n": self.n,
                 "block_pairs": self.block_pairs}
        if self.kernel == "rbf":
            attrs["sigma_a"] = list(self.sigmas_a or [])
            attrs["sigma_b"] = list((self.sigmas_b if self.two_sided else self.sigmas_a) or [])
        return similarity_array(values, self.names_a, self.names_b, attrs)


#: shifted rows whose largest entry lies within [2**LOW, 2**SAFE] are used as they are
LOW, SAFE = -30, 10
#: no scaled entry of any block may exceed 2**LIMIT (its products could overflow float32)
LIMIT = 40


def scale_exponent(amax: float) -> int:
    """The power of two the shifted rows are divided by, from ``amax``, the first block's
    largest shifted entry: 0 when it lies within ``[2**LOW, 2**SAFE]``, else the least
    scaling that brings it there (data at 1e-200 or 1e200, whose products leave float64's
    or float32's range). Later blocks keep ``2**(LIMIT - SAFE)`` of headroom above the
    first (``2**(LIMIT - LOW)`` above a first block of tiny spread)."""
    if amax == 0 or 2.0 ** LOW <= amax <= 2.0 ** SAFE:
        return 0
    e = math.frexp(amax)[1]  # amax in [2**(e-1), 2**e)
    return e - SAFE if amax > 2.0 ** SAFE else e - LOW - 1


def _shifted(x, shift, label, rows, as_float64=False, exp=0):
    """One block ``(B, ...)`` flattened, checked, less the shift (in float64) and times
    ``2**-exp`` (exact; every measure here is scale invariant, :func:`scale_exponent`), in
    the dtype its gram is formed in (float32 stays float32, as in
    :func:`repsim.kernels.linear_gram`; float64 with ``as_float64``, as in
    :func:`repsim.dcor`). A block whose scaled entries exceed ``2**LIMIT`` (far beyond
    the scale the first block set) is refused: its products could overflow."""
    x = np.asarray(x() if callable(x) else x)
    x = x.reshape(len(x), -1)
    where = f"{label} (examples {rows.start}..{rows.stop - 1})"
    # a bound on |x - shift| from two reductions of x itself (no temporary; NaN and Inf
    # make it non-finite, then refused with their position), the exact value only when
    # the bound is too large
    xmax = float(max(x.max(initial=0.0), -x.min(initial=0.0))) if x.size else 0.0
    try:
        bound = math.ldexp(xmax + float(np.abs(shift).max(initial=0.0)), -exp)
    except OverflowError:
        bound = math.inf
    if not math.isfinite(bound):
        V.check_finite_array(x, np, where)
    c = x.astype(np.float64) - shift
    if exp:
        c *= math.ldexp(1.0, -exp)  # a power of two: exact
    top = bound if bound <= 2.0 ** LIMIT else float(max(c.max(initial=0.0), -c.min(initial=0.0)))
    if not top <= 2.0 ** LIMIT:
        raise ValueError(
            f"{where} reaches {math.ldexp(top, exp):.3g} from the first block's means, "
            f"more than 2**{LIMIT - SAFE} times the scale its first block of examples set; "
            "streamed layers take their scale from the first block: rescale the layer or "
            "put examples of every scale in the first block")
    return c if as_float64 else c.astype(B.float_dtype(x, np), copy=False)


def _block_product(xi, xj, shift, diagonal, label, rows_i, rows_j, exp=0):
    """``(x_i - s)(x_j - s)^T 4^-exp`` as float64 ``(B_i, B_j)``."""
    ci = _shifted(xi, shift, label, rows_i, exp=exp)
    cj = ci if diagonal else _shifted(xj, shift, label, rows_j, exp=exp)
    return np.asarray(ci @ cj.T, dtype=np.float64)


def _constant(trace, total, n, eps):
    """Whether a gram with this trace and total is a constant layer's (the tolerance of
    :func:`repsim.kernels.degeneracy_terms`)."""
    centred, tol = degeneracy_terms(float(trace), float(total), n, eps)
    return bool(centred <= tol)


def typical_sq_distance(x) -> float:
    """The mean squared distance between distinct rows of ``x`` (float64, ``(B, p)``),
    ``2 B / (B - 1)`` times their mean squared deviation: a typical value of ``D`` that no
    off-diagonal RBF value ``exp(-D / 2 sigma^2)`` of these rows lies below."""
    c = x - x.mean(axis=0)
    return float(2.0 * np.einsum("ij,ij->", c, c) / max(1, len(x) - 1))


def block_sq_distances(xi, xj, shift, diagonal, label, rows_i, rows_j, as_float64=False,
                       exp=0):
    """The linear block ``(x_i - s)(x_j - s)^T`` and the squared distances ``D_ij`` of its
    rows, both float64 ``(B_i, B_j)``, and the largest squared norm of a shifted row
    (the scale of the distances' rounding: ``|error| <= 4 p eps max |x - s|^2``); all in
    the units of the rows times ``2**-exp``.

    The rows' squared norms are float64 sums over the shifted rows in the product's dtype
    (the same value in every pair a row takes part in, so the passes that pick the median
    bandwidth and the CKA pass see identical distances); a diagonal block's own diagonal
    is exactly 0, as in :func:`repsim.kernels.squared_distances`.
    """
    ci = _shifted(xi, shift, label, rows_i, as_float64, exp)
    cj = ci if diagonal else _shifted(xj, shift, label, rows_j, as_float64, exp)
    k = np.asarray(ci @ cj.T, dtype=np.float64)
    ni = np.einsum("ij,ij->i", ci, ci, dtype=np.float64)
    nj = ni if diagonal else np.einsum("ij,ij->i", cj, cj, dtype=np.float64)
    d2 = ni[:, None] + nj[None, :] - 2.0 * k
    if diagonal:
        np.fill_diagonal(d2, 0.0)
    return k, d2, float(max(ni.max(initial=0.0), nj.max(initial=0.0)))
