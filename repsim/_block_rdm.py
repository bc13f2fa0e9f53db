"""Pearson RSA of every layer pair of a store, from pairs of example blocks.

:func:`repsim.rsa` with ``compare="pearson"`` is the Pearson correlation of the two RDMs'
upper triangles, ``m = n (n - 1) / 2`` entries each. Its terms are sums over those entries
-- ``sum u``, ``sum u^2`` per layer and ``sum u_a u_b`` per pair of layers -- and every
block pair ``(i, j)``, ``i <= j``, holds a disjoint part of the triangle (the strict upper
triangle of a diagonal block, all of an off-diagonal one), so the sums add up over pairs,
processes and dask workers. Each layer's entries are summed less a typical entry ``c``
(the first block's mean entry; Pearson's r ignores it) so that the sums stay small against
the centred ones.

RDM entries: ``"euclidean"`` ``|x_i - x_j|``, ``"sqeuclidean"`` its square -- from the
rows shifted by the first block's means and scaled by the power of two of their largest
entry (exact; r is scale invariant) -- and ``"correlation"`` ``1 - corr(x_i, x_j)`` over
features, as :func:`repsim.rdm.distance_matrix` defines them. The distances come from
products here (``|a|^2 + |b|^2 - 2 a.b``, negatives from rounding clipped) where the
whole-data RDM sums differences: the values agree to rounding. The rank comparisons
(Spearman, Kendall) need every entry at once and have no such form.

Memory: ``L_a L_b`` sums and two blocks of one layer (``B^2`` entries a layer).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _moment_formulas as M
from . import _validation as V
from ._block_cka import block_sq_distances

__all__ = ["BlockRSA", "rsa_matrix_in_blocks"]


class BlockRSA:
    """Sums of the RDM entries of every layer of two sides over block pairs.

    Parameters
    ----------
    n : int
    rdm : {"euclidean", "sqeuclidean", "correlation"}
    names_a, names_b : list of str
        ``names_b`` None: side a against itself.
    shifts_a, shifts_b : list of arrays (p_l,)
        Feature shifts (first block's float64 means; unused for ``"correlation"``).
    exps_a, exps_b : list of int
        Power-of-two scale of each layer's shifted rows.
    typical_a, typical_b : list of float
        A typical RDM entry per layer, subtracted from every entry.
    """

    def __init__(self, n, rdm, names_a, shifts_a, exps_a, typical_a, names_b=None,
                 shifts_b=None, exps_b=None, typical_b=None) -> None:
        self.n, self.rdm = int(n), rdm
        self.two_sided = names_b is not None
        self.sides = {"a": (list(names_a), shifts_a, exps_a, typical_a)}
        if self.two_sided:
            self.sides["b"] = (list(names_b), shifts_b, exps_b, typical_b)
        la = len(names_a)
        lb = len(names_b) if self.two_sided else la
        self.cross = np.zeros((la, lb))
        self.sum = {k: np.zeros(len(v[0])) for k, v in self.sides.items()}
        self.sumsq = {k: np.zeros(len(v[0])) for k, v in self.sides.items()}
        self.low = {k: np.full(len(v[0]), np.inf) for k, v in self.sides.items()}
        self.high = {k: np.full(len(v[0]), -np.inf) for k, v in self.sides.items()}
        self.block_pairs = 0

    def _entries(self, side, rows_i, rows_j, blocks):
        """The pair's RDM entries of every layer of one side, less the typical entry,
        ``(L, e)`` float64 (``e``: the block pair's share of the upper triangle)."""
        names, shifts, exps, typical = self.sides[side]
        diagonal = rows_i == rows_j
        out = []
        for l, (xi, xj) in enumerate(blocks):
            label = f"layers_{side}[{names[l]!r}]"
            if self.rdm == "correlation":
                ui = _correlation_rows(xi, label, rows_i)
                uj = ui if diagonal else _correlation_rows(xj, label, rows_j)
                d = 1.0 - ui @ uj.T
            else:
                d2 = block_sq_distances(xi, xj, shifts[l], diagonal, label, rows_i, rows_j,
                                        as_float64=True, exp=exps[l])[1]
                d2 = np.maximum(d2, 0.0)
                d = d2 if self.rdm == "sqeuclidean" else np.sqrt(d2)
            e = d[np.triu_indices(d.shape[0], 1)] if diagonal else d.reshape(-1)
            if e.size:
                self.low[side][l] = min(self.low[side][l], float(e.min()))
                self.high[side][l] = max(self.high[side][l], float(e.max()))
            out.append(e - typical[l])
        return np.stack(out)

    def add_pair(self, rows_i: slice, rows_j: slice, blocks_a, blocks_b=None) -> None:
        """Add block pair ``(i, j)`` (``blocks_*`` as in
        :meth:`repsim._block_cka.BlockCKA.add_pair`)."""
        ea = self._entries("a", rows_i, rows_j, blocks_a)
        eb = ea if blocks_b is None else self._entries("b", rows_i, rows_j, blocks_b)
        self.cross += ea @ eb.T
        for side, e in (("a", ea), ("b", eb)) if self.two_sided else (("a", ea),):
            self.sum[side] += e.sum(axis=1)
            self.sumsq[side] += np.einsum("ij,ij->i", e, e)
        self.block_pairs += 1

    def merge(self, other: "BlockRSA") -> "BlockRSA":
        """Add the block pairs ``other`` summed (the same layers, shifts and scales)."""
        if (other.n, other.rdm, other.two_sided, [v[0] for v in other.sides.values()]) != \
                (self.n, self.rdm, self.two_sided, [v[0] for v in self.sides.values()]):
            raise ValueError("cannot merge RDM sums of different layers or options")
        self.cross += other.cross
        for side in self.sides:
            self.sum[side] += other.sum[side]
            self.sumsq[side] += other.sumsq[side]
            self.low[side] = np.minimum(self.low[side], other.low[side])
            self.high[side] = np.maximum(self.high[side], other.high[side])
        self.block_pairs += other.block_pairs
        return self

    def values(self) -> tuple[np.ndarray, list[str]]:
        """Pearson's r of every layer pair ``(L_a, L_b)``, and the names of the layers
        whose RDM is constant (their rows and columns NaN)."""
        m = self.n * (self.n - 1) / 2
        side_b = "b" if self.two_sided else "a"
        sa, sb = self.sum["a"], self.sum[side_b]
        va = self.sumsq["a"] - sa * sa / m
        vb = self.sumsq[side_b] - sb * sb / m
        cov = self.cross - np.outer(sa, sb) / m
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(np.outer(va, vb))
        r = np.clip(r, -1.0, 1.0)
        flat_a = self.high["a"] - self.low["a"] == 0
        flat_b = self.high[side_b] - self.low[side_b] == 0
        r[flat_a, :] = np.nan
        r[:, flat_b] = np.nan
        names = [f"layers_a[{nm!r}]" for nm, f in zip(self.sides["a"][0], flat_a) if f]
        if self.two_sided:
            names += [f"layers_b[{nm!r}]" for nm, f in zip(self.sides["b"][0], flat_b) if f]
        if not self.two_sided:  # r of a layer with itself is 1 by construction
            np.fill_diagonal(r, np.where(flat_a, np.nan, 1.0))
        return r, names


def _correlation_rows(x: Any, label: str, rows: slice) -> np.ndarray:
    """Rows centred across their features and normalised (``1 - u_i . u_j`` is the
    correlation distance); constant rows and single features refused as in memory."""
    x = np.asarray(x() if callable(x) else x)
    x = x.reshape(len(x), -1).astype(np.float64)
    V.check_finite_array(x, np, f"{label} (examples {rows.start}..{rows.stop - 1})")
    if x.shape[1] < 2:
        raise ValueError(f"rdm='correlation' needs at least 2 features per example; {label} "
                         f"has {x.shape[1]}")
    r = x - x.mean(axis=1)[:, None]
    top = np.abs(r).max(axis=1)
    if not (top > 0).all():
        bad = rows.start + int(np.argmax(top == 0))
        raise ValueError(f"rdm='correlation' is undefined for {label}: example {bad} is "
                         "constant across its features")
    r = r / top[:, None]
    return r / np.sqrt(np.einsum("ij,ij->i", r, r))[:, None]


def rsa_matrix_in_blocks(a: Any, b: Any, opts: dict, *, batch_size: int | None = None,
                         client: Any = None, progress: bool = False):
    """Pearson RSA (:func:`repsim.rsa`, ``compare="pearson"``) of every layer pair of two
    stores' sides (:class:`repsim.store_stream.Side`), from pairs of example blocks.

    Returns
    -------
    values : numpy array (L_a, L_b)
        NaN with a :class:`repsim.DegenerateRepresentationWarning` where a layer's RDM is
        constant, as in memory.
    info : dict
        ``batch_size``, ``blocks``, ``scheduler``, ``streamed`` ("RDM sums from block
        pairs").
    """
    from . import store_blocks as SB
    from . import store_stream as SS

    rdm = opts.get("rdm", "euclidean")
    n = a.n
    if n < 3:
        raise ValueError(f"rsa needs at least 3 examples; got n={n} for {a.label}")
    batch = SS.default_batch_size(a) if batch_size is None else batch_size
    bounds = SS.example_blocks(n, batch)

    def terms(side):
        """Shift, scale exponent and typical entry per layer (:func:`layer_terms`)."""
        shifts, _, exps, typical_sq = SB.layer_terms(side, bounds)
        typical = [1.0 if rdm == "correlation" else t if rdm == "sqeuclidean" else math.sqrt(t)
                   for t in typical_sq]
        return shifts, exps, typical

    sa, ea, ca = terms(a)
    sb, eb, cb = terms(b) if b is not None else (None, None, None)
    acc = BlockRSA(n, rdm, a.names, sa, ea, ca, names_b=None if b is None else b.names,
                   shifts_b=sb, exps_b=eb, typical_b=cb)
    acc = SB.sweep_pairs(acc, SB.block_pairs(bounds), [a] + ([] if b is None else [b]),
                         client=client, desc="rsa: example block pairs", progress=progress)
    values, flat = acc.values()
    if flat:
        M.undefined(flat, "rsa (constant RDM)")
    info = {"batch_size": batch, "blocks": len(bounds),
            "scheduler": "local" if client is None else "dask.distributed",
            "streamed": "RDM sums from block pairs"}
    return values, info
