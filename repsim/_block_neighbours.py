"""k-nearest-neighbour lists of every layer of a store, from pairs of example blocks.

:func:`repsim.neighbours.neighbours` finds each example's ``k`` nearest other examples
with one product of a block of rows against all rows and a stable sort of the float64
keys (``-cos`` for ``metric="cosine"``, ``|x_j|^2 - 2 x_i . x_j`` of the centred rows for
``"euclidean"``; among equal keys the lower example index first). The same lists come from
pairs of example blocks ``(i, j)``, ``i <= j``: the pair's keys are candidates for the
rows of block ``i`` (columns of ``j``) and, off the diagonal, for the rows of ``j``
(columns of ``i``); each row keeps its best ``min(k, n - 2) + 1`` candidates, ordered by
(key, index), which is the order the whole-row stable sort gives. Lists of different sets
of pairs merge the same way, so the pairs can run on a dask cluster
(:mod:`repsim.store_stream`).

For ``"euclidean"`` the rows are centred by the full data's column means and scaled by
the power of two of their largest centred entry, as in memory: two passes over single
blocks find them before the pairs. The tie rule of :func:`repsim.neighbours.neighbours`
(a neighbourhood decided entirely by ties is undefined) is applied to the merged lists.

Memory: ``16 (k + 1) n`` bytes per layer of lists (and ``8 n`` of squared norms), two
blocks of one layer and their ``B^2`` keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _moment_formulas as M
from . import _validation as V
from ._neighbour_core import Neighbours, _unit_rows
from .kernels import _ldexp

__all__ = ["BlockNeighbours", "neighbour_matrix_in_blocks"]


class BlockNeighbours:
    """The nearest neighbours found so far of every example of every layer of one side.

    Parameters
    ----------
    n, k : int
        Examples, neighbours per example (``1 <= k <= n - 1``).
    metric : {"cosine", "euclidean"}
    names : list of str
        Layer names (for messages); ``label`` the side's name.
    widths : list of int
        Features per layer (the keys' rounding, ``4 p eps``, of the tie rule).
    means : list of arrays (p_l,), optional
        ``"euclidean"``: the float64 column means of every layer (all ``n`` examples).
    exponents : list of int, optional
        ``"euclidean"``: each layer's power-of-two scale (:func:`_centring`).
    """

    def __init__(self, n: int, k: int, metric: str, names: list[str], label: str,
                 widths: list[int], means: list[np.ndarray] | None = None,
                 exponents: list[int] | None = None) -> None:
        self.n, self.k, self.metric, self.names, self.label = n, k, metric, names, label
        self.widths = [int(w) for w in widths]
        self.means, self.exponents = means, exponents
        self.last = min(k, n - 2)  # the (k+1)-th nearest, or the k-th when there is none
        width = self.last + 1
        self.keys = [np.full((n, width), np.inf) for _ in names]
        self.index = [np.full((n, width), n, np.int64) for _ in names]  # n: no candidate yet
        self.sq = [np.zeros(n) for _ in names]

    # ------------------------------------------------------------------ one block pair
    def _base(self, l: int, x: Any, rows: slice) -> np.ndarray:
        """The rows the keys are formed from: unit rows (cosine) or centred, scaled rows."""
        x = np.asarray(x() if callable(x) else x)
        x = x.reshape(len(x), -1).astype(np.float64)
        label = f"{self.label}[{self.names[l]!r}] (examples {rows.start}..{rows.stop - 1})"
        V.check_finite_array(x, np, label)
        if self.metric == "cosine":
            return _unit_rows(x, np, label)
        assert self.means is not None and self.exponents is not None
        return _ldexp(x - self.means[l], -self.exponents[l])

    def add_pair(self, rows_i: slice, rows_j: slice, blocks: list) -> None:
        """Candidates of block pair ``(i, j)`` for every layer (``blocks[l] = (x_i, x_j)``,
        arrays or callables, ``x_j`` ignored on the diagonal)."""
        diagonal = rows_i == rows_j
        for l, (xi, xj) in enumerate(blocks):
            bi = self._base(l, xi, rows_i)
            bj = bi if diagonal else self._base(l, xj, rows_j)
            prod = bi @ bj.T
            cols_i = np.arange(rows_i.start, rows_i.stop)
            cols_j = np.arange(rows_j.start, rows_j.stop)
            if self.metric == "cosine":
                key_ij, key_ji = -prod, -prod.T
            else:
                sq_i = np.sum(bi * bi, axis=1)
                sq_j = sq_i if diagonal else np.sum(bj * bj, axis=1)
                self.sq[l][rows_i] = sq_i
                self.sq[l][rows_j] = sq_j
                key_ij = sq_j[None, :] - 2.0 * prod
                key_ji = sq_i[None, :] - 2.0 * prod.T
            if diagonal:
                np.fill_diagonal(key_ij, np.inf)
            self._offer(l, rows_i, key_ij, cols_j)
            if not diagonal:
                self._offer(l, rows_j, key_ji, cols_i)

    def _offer(self, l: int, rows: slice, key: np.ndarray, cols: np.ndarray) -> None:
        """Keep, for each row in ``rows``, its best candidates among those held and the
        columns ``cols`` with keys ``key`` (rows x cols)."""
        width = self.last + 1
        if key.shape[1] > width:  # the block's own best first (stable: lower index first)
            best = np.argsort(key, axis=1, kind="stable")[:, :width]
            key = np.take_along_axis(key, best, axis=1)
            idx = cols[best]
        else:
            idx = np.broadcast_to(cols, key.shape)
        self._keep(l, rows, key, idx)

    def _keep(self, l: int, rows: slice, key: np.ndarray, idx: np.ndarray) -> None:
        keys = np.concatenate([self.keys[l][rows], key], axis=1)
        index = np.concatenate([self.index[l][rows], idx], axis=1)
        order = np.lexsort((index, keys), axis=1)[:, :self.last + 1]
        self.keys[l][rows] = np.take_along_axis(keys, order, axis=1)
        self.index[l][rows] = np.take_along_axis(index, order, axis=1)

    def merge(self, other: "BlockNeighbours") -> "BlockNeighbours":
        """Add the candidates ``other`` found (other block pairs of the same layers)."""
        if (other.n, other.k, other.metric, other.names) != (self.n, self.k, self.metric,
                                                             self.names):
            raise ValueError("cannot merge neighbour lists of different layers or options")
        every = slice(0, self.n)
        for l in range(len(self.names)):
            self._keep(l, every, other.keys[l], other.index[l])
            self.sq[l] = np.maximum(self.sq[l], other.sq[l])
        return self

    # ------------------------------------------------------------------ the lists
    def neighbours(self) -> list[Neighbours]:
        """Every layer's :class:`repsim.neighbours.Neighbours` (``unit`` None), with the
        ties counted as :func:`repsim.neighbours.neighbours` counts them."""
        out = []
        eps = float(np.finfo(np.float64).eps)
        tol: Any
        last = self.last
        for l in range(len(self.names)):
            key, index = self.keys[l], self.index[l]
            if (index >= self.n).any():
                raise RuntimeError(f"{self.label}[{self.names[l]!r}]: not every block pair "
                                   "was added")
            p = self.widths[l]
            if self.metric == "cosine":
                tol = 4.0 * p * eps
            else:
                sq = self.sq[l]
                tol = 4.0 * p * eps * (sq + np.maximum(sq[index[:, last]], sq[index[:, 0]]))
            flat = (key[:, last] - key[:, 0]) <= tol
            if last == 0:
                flat[:] = False
            tied = int(flat.sum())
            first = int(np.argmax(flat)) if tied else -1
            val = key[:, :self.k]
            if self.metric == "cosine":
                val = -val
            else:
                with np.errstate(over="ignore", under="ignore"):
                    assert self.exponents is not None
                    val = _ldexp(val + self.sq[l][:, None], 2 * self.exponents[l])
            out.append(Neighbours(index[:, :self.k].copy(), val, None, tied, first,
                                  f"{self.label}[{self.names[l]!r}]"))
        return out


def _centring(side: Any, bounds: list[slice]) -> tuple[list[np.ndarray], list[int]]:
    """Column means and scale exponents of every layer of ``side``, in one pass over
    single blocks on this process. The exponent is that of a bound on ``|x - mean|``
    (``max |x| + max |mean|``), not of its exact value: any power of two that keeps the
    products inside float64's range scales every key exactly, so the lists are the same."""
    from .store_stream import read

    sums: list[Any] = [0.0] * len(side.names)
    top = [0.0] * len(side.names)
    for rows in bounds:
        for l in range(len(side.names)):
            x = read(side.block(l, rows))
            x = x.reshape(len(x), -1).astype(np.float64)
            V.check_finite_array(x, np, f"{side.label}[{side.names[l]!r}] (examples "
                                 f"{rows.start}..{rows.stop - 1})")
            sums[l] = sums[l] + x.sum(axis=0)
            top[l] = max(top[l], float(np.abs(x).max(initial=0.0)))
    means = [np.asarray(t, np.float64) / side.n for t in sums]
    bounds_ = [t + float(np.abs(m).max(initial=0.0)) for t, m in zip(top, means)]
    return means, [M.exponent(v) for v in bounds_]


def neighbour_matrix_in_blocks(a: Any, b: Any, measure: str, opts: dict, *,
                               batch_size: int | None = None, client: Any = None,
                               progress: bool = False):
    """A k-NN measure with a value from the neighbour lists alone (declared with
    ``blocks="neighbour_lists"`` in the registry)
    for every layer pair of two stores' sides (:class:`repsim.store_stream.Side`), the
    lists found from pairs of example blocks.

    Returns
    -------
    values : numpy array (L_a, L_b)
        As :func:`repsim.similarity_matrix` gives them in memory (NaN with a
        :class:`repsim.DegenerateRepresentationWarning` for each layer whose
        neighbourhoods are decided by ties).
    info : dict
        ``batch_size``, ``blocks``, ``scheduler``, ``streamed`` ("neighbour lists from
        block pairs").
    """
    from . import store_blocks as SB
    from . import store_stream as SS
    from ._neighbour_core import _check_k, _value_or_reasons, _warn_undefined

    k, metric = opts.get("k", 10), opts.get("metric", "cosine")
    V.check_params("neighbours", metric=metric)
    n = a.n
    k = _check_k(k, n, f"{a.label}[{a.names[0]!r}]")
    batch = SS.default_batch_size(a) if batch_size is None else batch_size
    bounds = SS.example_blocks(n, batch)
    pairs = SB.block_pairs(bounds)
    lists = []
    for side in [a] + ([] if b is None else [b]):
        widths = [int(np.prod(side.arrays[l].shape[1:], dtype=np.int64))
                  for l in range(len(side.names))]
        means, exps = _centring(side, bounds) if metric == "euclidean" else (None, None)
        template = BlockNeighbours(n, k, metric, side.names, side.label, widths, means, exps)
        found = SB.sweep_pairs(template, pairs, (side,), client=client, progress=progress,
                               desc=f"{measure}: example block pairs")
        lists.append(found.neighbours())
    nbs_a = lists[0]
    nbs_b = nbs_a if b is None else lists[1]
    names_b = a.names if b is None else b.names
    values = np.empty((len(nbs_a), len(nbs_b)))
    reasons: dict = {}
    for i, (la, na) in enumerate(zip(a.names, nbs_a)):
        for j, (lb, nb) in enumerate(zip(names_b, nbs_b)):
            if b is None and j < i:
                values[i, j] = values[j, i]
                continue
            v, why = _value_or_reasons(measure, na, nb, (la, lb), k, np)
            for name, reason in why.items():
                reasons.setdefault(name, reason)
            values[i, j] = np.nan if v is None else float(v)
    for name, reason in reasons.items():  # one message per layer, as in memory
        _warn_undefined(measure, {name: reason})
    info = {"batch_size": batch, "blocks": len(bounds),
            "scheduler": "local" if client is None else "dask.distributed",
            "streamed": "neighbour lists from block pairs"}
    return values, info
