"""The k-NN machinery behind :mod:`repsim.neighbours`: neighbour lists in blocks, the
pair values from two layers' lists, and the test for neighbourhoods decided entirely by
ties (see that module's docstring for the definitions). Split from it so that each stays
under 500 lines; :mod:`repsim.neighbours` re-exports :func:`neighbours`.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from . import _moment_formulas as M
from . import _validation as V
from .kernels import _ldexp

V.register_params("neighbours", metric=V.Options("cosine", "euclidean"))

#: rows per block of the neighbour search: bounds the float64 temporaries at ~64 MiB
BLOCK_BYTES = 64 * 2**20


class Neighbours:
    """The ``k`` nearest neighbours of every example of one representation.

    Attributes
    ----------
    index : array, shape (n, k), int64
        ``index[i, r]`` is the ``(r+1)``-th nearest other example of ``i``.
    value : array, shape (n, k), float64
        Its cosine similarity (``metric="cosine"``) or squared distance.
    unit : array, shape (n, p), float64 or None
        The L2-normalised rows (kept for ``metric="cosine"``).
    tied : int
        Number of examples whose neighbourhood is decided entirely by ties (see
        :func:`neighbours`); ``first_tied`` is the lowest such example (-1 if none).
    name : str
        The representation's name, for messages.
    """

    def __init__(self, index, value, unit, tied=0, first_tied=-1, name="x"):
        self.index, self.value, self.unit = index, value, unit
        self.tied, self.first_tied, self.name = tied, first_tied, name


def _unit_rows(x, xp, name):
    # each row divided by its largest |entry| first: squares of 1e-200 or 1e200 would
    # under/overflow float64 (a false "all-zero row" or a zero cosine); the direction is kept
    top = xp.max(xp.abs(x), axis=1)
    if bool(xp.all(top > 0)):
        x = x / top[:, None]
    norms = xp.sqrt(xp.sum(x * x, axis=1))
    if not bool(xp.all(norms > 0)):
        bad = int(B.to_numpy(xp.argmax(xp.astype(norms == 0, xp.int32))))
        raise ValueError(
            f"{name} has an all-zero row (example {bad}) of shape {tuple(x.shape)}: its cosine "
            "neighbours are undefined; use metric='euclidean' or drop the example"
        )
    return x / norms[:, None]


def neighbours(x, k, metric="cosine", name="x"):
    """k nearest neighbours of every row of ``x`` (see the module notes on ties).

    Parameters
    ----------
    x : array, shape (n, ...), validated float64 (n, p)
    k : int, 1 <= k <= n - 1
    metric : {"cosine", "euclidean"}

    Returns
    -------
    Neighbours
        With ``tied`` the number of examples whose neighbourhood is decided entirely by
        ties: the nearest and the ``(k+1)``-th nearest other example (the ``k``-th when
        ``k = n - 1``) are equally near, up to the rounding of the keys
        (``4 p eps`` for cosine, ``4 p eps (|x_i|^2 + |x_j|^2)`` for squared distances).
        None of the ``k`` chosen neighbours is then nearer than an example left out: the
        set (and the ranks) are the tie-break's index order, not the data's. A constant
        layer and distinct one-hot rows are the typical cases; every measure of this
        module is undefined there.
    """
    xp = B.namespace(x)
    n = int(x.shape[0])
    p = int(x.shape[1])
    eps = float(xp.finfo(xp.float64).eps)
    # the last sorted key that must differ from the first for the set (and, at k = n - 1,
    # the order) to be the data's: the (k+1)-th nearest, or the k-th when there is none
    last = min(k, n - 2)
    shift = 0
    if metric == "cosine":
        base = _unit_rows(x, xp, name)
        unit = base
    else:
        # centred, then scaled by a power of two (exact; neighbourhoods do not change) so
        # that max |base| is in [0.5, 1): squared distances of data at 1e-200 or 1e200
        # would under- or overflow float64 (all "tied", or inf); reported in x's units
        base = M.centre_columns(x, xp)
        amax = B.item(xp.max(xp.abs(base))) if n * p else 0.0
        if amax > 0:
            shift = math.frexp(amax)[1]
        base = _ldexp(base, -shift)
        unit = None
        sq = xp.sum(base * base, axis=1)
    rows = max(1, BLOCK_BYTES // (8 * n))
    dev = B.device(x)
    cols = xp.arange(n, device=dev)
    idx_parts, val_parts = [], []
    tied, first_tied = 0, -1
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        prod = xp.matmul(base[start:stop], base.T)
        if metric == "cosine":
            key = -prod
        else:
            key = sq[None, :] - 2.0 * prod
        self_ = cols[None, :] == xp.arange(start, stop, device=dev)[:, None]
        key = xp.where(self_, xp.asarray(float("inf"), dtype=xp.float64, device=dev), key)
        order = xp.argsort(key, axis=1, stable=True)[:, :last + 1]
        ends = xp.take_along_axis(key, order[:, last:last + 1], axis=1)[:, 0]
        if metric == "cosine":
            tol = 4.0 * p * eps
        else:
            far = xp.take(sq, order[:, last], axis=0)
            near = xp.take(sq, order[:, 0], axis=0)
            tol = 4.0 * p * eps * (sq[start:stop] + xp.maximum(far, near))
        order = order[:, :k]
        val = xp.take_along_axis(key, order, axis=1)
        flat = (ends - val[:, 0]) <= tol
        if last == 0:  # n = 2: one candidate, nothing to tie with
            flat = xp.zeros_like(flat)
        count = int(B.item(xp.sum(xp.astype(flat, xp.int64))))
        if count and first_tied < 0:
            first_tied = start + int(B.item(xp.argmax(xp.astype(flat, xp.int8))))
        tied += count
        if metric == "cosine":
            val = -val
        else:  # in x's units (inf or 0 where they leave float64; no measure reads them)
            with np.errstate(over="ignore", under="ignore"):
                val = _ldexp(val + sq[start:stop, None], 2 * shift)
        idx_parts.append(order)
        val_parts.append(val)
    return Neighbours(xp.astype(xp.concat(idx_parts), xp.int64), xp.concat(val_parts), unit,
                      tied, first_tied, name)


def _check_k(k, n, name="x"):
    return V.check_int(k, "k", 1, n - 1, what=f" (at most n - 1 = {n - 1} for {name} with n={n})")


def _match(na, nb, xp):
    """``(in_b, pos_b)``: whether a's r-th neighbour of i is among b's, and where (n, k)."""
    eq = na.index[:, :, None] == nb.index[:, None, :]
    in_b = xp.any(eq, axis=2)
    pos_b = xp.argmax(xp.astype(eq, xp.int8), axis=2)
    return in_b, pos_b


def _pair_value(measure, na, nb, xa, xb, xp):
    k = na.index.shape[1]
    in_b, pos_b = _match(na, nb, xp)
    shared = xp.sum(xp.astype(in_b, xp.float64), axis=1)
    if measure == "mutual_knn":
        return xp.mean(shared) / k
    if measure == "jaccard_knn":
        return xp.mean(shared / (2 * k - shared))
    if measure == "rank_similarity":
        ra = xp.astype(xp.arange(1, k + 1, device=B.device(shared)), xp.float64)[None, :]
        rb = xp.astype(pos_b, xp.float64) + 1.0
        term = 2.0 / ((1.0 + xp.abs(ra - rb)) * (ra + rb))
        v = xp.sum(xp.where(in_b, term, xp.zeros_like(term)), axis=1)
        harmonic = xp.cumulative_sum(1.0 / ra[0])  # v_max for 1..k shared neighbours
        cnt = xp.astype(shared, xp.int64)
        vmax = xp.take(harmonic, xp.clip(cnt - 1, 0, None))
        return xp.mean(xp.where(cnt > 0, v / vmax, xp.zeros_like(v)))
    if measure == "second_order_cosine":
        # union N_a(i) ∪ N_b(i): a's list, then b's neighbours not in a's list
        in_a, _ = _match(nb, na, xp)
        extra = ~in_a
        sa_on_b = xp.sum(na.unit[:, None, :] * na.unit[nb.index], axis=2)
        sb_on_a = xp.sum(nb.unit[:, None, :] * nb.unit[na.index], axis=2)
        zero = xp.zeros_like(sa_on_b)
        sa = xp.concat([na.value, xp.where(extra, sa_on_b, zero)], axis=1)
        sb = xp.concat([sb_on_a, xp.where(extra, nb.value, zero)], axis=1)
        num = xp.sum(sa * sb, axis=1)
        na2, nb2 = xp.sum(sa * sa, axis=1), xp.sum(sb * sb, axis=1)
        for side, norm in (("a", na2), ("b", nb2)):
            if not bool(xp.all(norm > 0)):
                i = int(B.item(xp.argmax(xp.astype(norm == 0, xp.int8))))
                raise _Undefined(side, f"example {i} has cosine 0 to every example of its "
                                 "neighbourhood union (a zero similarity vector)")
        return xp.mean(num / xp.sqrt(na2 * nb2))
    raise AssertionError(measure)


def _masked_gram(nb_self, other, unit, xp):
    """``mask ∘ K`` (n, n): the cosine gram of ``unit`` kept where ``j`` is a neighbour of
    ``i`` in both ``nb_self`` and ``other`` (diagonal zero)."""
    n = unit.shape[0]
    in_o, _ = _match(nb_self, other, xp)
    cols = xp.arange(n, device=B.device(unit))
    hit = xp.zeros((n, n), dtype=xp.bool, device=B.device(unit))
    for r in range(nb_self.index.shape[1]):  # one (n, n) pass per rank: O(n^2) memory
        hit = hit | ((nb_self.index[:, r][:, None] == cols[None, :]) & in_o[:, r][:, None])
    k = xp.matmul(unit, unit.T)
    return xp.where(hit, k, xp.zeros_like(k))


def _hsic_unbiased_asym(a, b, xp):
    """Huh et al.'s unbiased HSIC of two zero-diagonal (not necessarily symmetric) matrices:
    ``[tr(A B) + 1'A1 1'B1/((n-1)(n-2)) - 2/(n-2) 1'AB1] / (n(n-3))``."""
    n = a.shape[0]
    tr = xp.sum(a * b.T)
    cross = xp.sum(xp.sum(a, axis=0) * xp.sum(b, axis=1))
    return (tr + xp.sum(a) * xp.sum(b) / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def _cknna_value(na, nb, xp):
    kab_a = _masked_gram(na, nb, na.unit, xp)
    kab_b = _masked_gram(nb, na, nb.unit, xp)
    kaa = _masked_gram(na, na, na.unit, xp)
    kbb = _masked_gram(nb, nb, nb.unit, xp)
    # b's mask is the transposed-role intersection: the same set of (i, j) pairs
    haa, hbb = _hsic_unbiased_asym(kaa, kaa, xp), _hsic_unbiased_asym(kbb, kbb, xp)
    for side, h in (("a", haa), ("b", hbb)):
        if not B.item(h) > 0:
            raise _Undefined(side, f"the unbiased HSIC of its masked k-NN gram with itself is "
                             f"{B.item(h):.3g}, not positive (no variation to normalise by)")
    return _hsic_unbiased_asym(kab_a, kab_b, xp) / xp.sqrt(haa * hbb)


class _Undefined(Exception):
    """A measure is undefined for one side (``"a"`` or ``"b"``) of a pair."""

    def __init__(self, side, reason):
        super().__init__(reason)
        self.side, self.reason = side, reason


def _tie_reason(nb, k):
    return (f"the k-nearest-neighbour sets of {nb.tied} example(s) (first: example "
            f"{nb.first_tied}) are decided entirely by ties (their nearest and "
            f"(k+1)-th nearest examples are equally near, k={k}; a constant layer, or "
            "distinct one-hot rows)")


def _warn_undefined(measure, reasons):
    """Warn that ``measure`` is undefined (set to NaN) for the named layers, and why."""
    import warnings

    shown = "; ".join(f"{name!r}: {why}" for name, why in list(reasons.items())[:10])
    more = f"; and {len(reasons) - 10} more" if len(reasons) > 10 else ""
    warnings.warn(
        f"{measure} is undefined (set to NaN) for representation(s) {shown}{more}",
        V.DegenerateRepresentationWarning,
        stacklevel=V.user_stacklevel(),
    )


def _value_or_reasons(measure, na, nb, names, k, xp):
    """``(value, {})``, or ``(None, {layer name: why})`` when the pair is undefined."""
    reasons = {name: _tie_reason(nb_, k) for name, nb_ in zip(names, (na, nb)) if nb_.tied}
    if reasons:
        return None, reasons
    try:
        if measure == "cknna":
            return _cknna_value(na, nb, xp), {}
        return _pair_value(measure, na, nb, None, None, xp), {}
    except _Undefined as err:
        return None, {names[0] if err.side == "a" else names[1]: err.reason}


def _prepare(x, y, k, metric, measure):
    V.check_params("neighbours", metric=metric)
    if measure in ("second_order_cosine", "cknna") and metric != "cosine":
        raise ValueError(f"{measure} compares cosine similarities; metric must be 'cosine', got {metric!r}")
    xp, x, y = M.prepare_pair(x, y, min_n=4 if measure == "cknna" else 2, what=measure)
    k = _check_k(k, int(x.shape[0]))
    return xp, neighbours(x, k, metric, "x"), neighbours(y, k, metric, "y")


def _pair(measure, x, y, k, metric):
    xp, na, nb = _prepare(x, y, k, metric, measure)
    value, reasons = _value_or_reasons(measure, na, nb, ("x", "y"), na.index.shape[1], xp)
    if reasons:
        _warn_undefined(measure, reasons)
        return M.as_result(xp.asarray(float("nan"), dtype=xp.float64, device=B.device(na.index)), xp)
    return M.as_result(value, xp)
