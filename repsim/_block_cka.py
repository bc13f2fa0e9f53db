"""Full-data linear CKA of every layer pair from pairs of example blocks, as sum states.

Split the ``n`` examples into consecutive blocks ``X_1, ..., X_k`` (rows). A layer's
linear gram ``K = X X^T`` is then the grid of blocks ``K_ij = X_i X_j^T``, and every term
of both HSIC estimators is a sum over that grid:

- ``tr(K L) = sum_ij <K_ij, L_ij>`` -- the ``(L_a, L_b)`` state ``cross``;
- the row sums ``K 1`` (``rows``, one ``n``-vector per layer: ``sum_j K_ij 1``) and the
  diagonal ``diag(K)`` (``diag``, from the blocks ``K_ii``).

With ``t = 1^T K 1`` and ``r = K 1``, the biased HSIC (Gretton et al. 2005) is
``[tr(KL) - 2/n r_K . r_L + t_K t_L / n^2] / (n-1)^2`` (``tr(KHLH)`` expanded) and the
unbiased one (Song et al. 2012) is ``[tr(K~L~) + t~_K t~_L / ((n-1)(n-2))
- 2/(n-2) r~_K . r~_L] / (n(n-3))`` with the diagonal taken out (``tr(K~L~) = tr(KL) -
diag(K) . diag(L)``, ``r~ = r - diag``, ``t~ = t - tr K``). Both are exact for any
per-feature shift of ``X`` (HSIC is translation invariant); the features are shifted by
fixed float64 column means (those of the first block) so that the corrections stay small
against ``tr(KL)`` and nothing cancels catastrophically.

Every unordered block pair ``i <= j`` adds its part (an off-diagonal pair counts twice,
``K_ji = K_ij^T``), so the states of disjoint sets of pairs add up: :class:`BlockCKA` is a
:class:`repsim._accumulator.Accumulator` whose ``merge`` combines the pairs that different
processes or dask workers computed (:mod:`repsim.store_stream`). The result equals
:func:`repsim.cka_matrix` on the whole data up to rounding -- the same full-data
estimator, not the minibatch one of :class:`repsim.MinibatchCKA`. Memory: the states hold
``2 (L_a + L_b) n + L_a L_b`` floats, one block pair ``2 B p`` values of one layer at a
time and ``(L_a + L_b) B^2`` for the blocks of all layers.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from . import _backend as B
from . import _validation as V
from ._accumulator import Accumulator, State
from ._rules import mask_degenerate
from .kernels import degeneracy_terms
from .results import similarity_array


def _digest(shifts: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for s in shifts:
        h.update(np.ascontiguousarray(s, dtype=np.float64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


class BlockCKA(Accumulator):
    """Sum states of full-data linear CKA over pairs of example blocks.

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
    """

    STATES = (
        State("cross", ("layers_a", "layers_b")),
        State("self_a", ("layers_a",), when="two_sided"),
        State("self_b", ("layers_b",), when="two_sided"),
        State("rows_a", ("layers_a", "n")),
        State("diag_a", ("layers_a", "n")),
        State("rows_b", ("layers_b", "n"), when="two_sided"),
        State("diag_b", ("layers_b", "n"), when="two_sided"),
        State("block_pairs", (), "int64"),
    )
    LAYOUT = ("names_a", "names_b")

    names_a: list[str]
    names_b: list[str]

    def __init__(self, n: int, names_a: list[str], shifts_a: list[np.ndarray],
                 eps_a: list[float], names_b: list[str] | None = None,
                 shifts_b: list[np.ndarray] | None = None,
                 eps_b: list[float] | None = None) -> None:
        self.n = V.check_int(n, "n", 1)
        self.two_sided = names_b is not None
        self.shifts_a = [np.asarray(s, np.float64) for s in shifts_a]
        self.shifts_b = [np.asarray(s, np.float64) for s in (shifts_b or [])]
        self.eps_a, self.eps_b = list(eps_a), list(eps_b or eps_a)
        self.reset()
        self._start({"names_a": list(names_a),
                     "names_b": list(names_a if names_b is None else names_b)}, np, "cpu")

    def _options(self) -> dict[str, Any]:
        return {"n": self.n, "two_sided": self.two_sided,
                "shifts": _digest(self.shifts_a + self.shifts_b)}

    def _dims(self, layout: dict[str, Any]) -> dict[str, int]:
        return {"layers_a": len(layout["names_a"]), "layers_b": len(layout["names_b"]),
                "n": self.n}

    @property
    def block_pairs(self) -> int:
        """Block pairs ``(i, j)``, ``i <= j``, added so far (all processes together)."""
        return int(self._values["block_pairs"])

    # ------------------------------------------------------------------ one block pair
    def _grams(self, blocks, shifts, rows_i, rows_j, side):
        """``K_ij`` of every layer (float64, ``(L, B_i, B_j)``), its row and column sums
        added to the ``rows`` state and its diagonal to ``diag`` (diagonal pairs)."""
        rows, diag = self._values[f"rows_{side}"], self._values[f"diag_{side}"]
        diagonal = rows_i == rows_j
        names = self.names_a if side == "a" else self.names_b
        out = []
        for l, ((xi, xj), s) in enumerate(zip(blocks, shifts)):
            label = f"layers_{side}[{names[l]!r}]"
            k = _block_product(xi, xj, s, diagonal, label, rows_i, rows_j)
            rows[l, rows_i] += k.sum(axis=1)
            if diagonal:
                diag[l, rows_i] += np.diagonal(k)
            else:
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
        rows, diag = self._values[f"rows_{side}"], self._values[f"diag_{side}"]
        return rows, diag, rows.sum(axis=1), diag.sum(axis=1)

    def hsic(self, estimator: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cross, self_a, self_b)``: HSIC of every pair and of every layer with itself,
        each times ``(n-1)^2`` (biased) or ``n(n-3)`` (unbiased)."""
        n = self.n
        ra, da, ta, tra = self._side_terms("a")
        rb, db, tb, trb = self._side_terms("b") if self.two_sided else (ra, da, ta, tra)

        def terms(kl, r1, d1, t1, tr1, r2, d2, t2, tr2, dot, outer):
            if estimator == "biased":
                return kl - 2.0 / n * dot(r1, r2) + outer(t1, t2) / n ** 2
            u1, u2 = r1 - d1, r2 - d2
            return (kl - dot(d1, d2) + outer(t1 - tr1, t2 - tr2) / ((n - 1) * (n - 2))
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

    def _degenerate(self, side):
        _, _, total, trace = self._side_terms(side)
        eps = self.eps_a if side == "a" else self.eps_b
        centred, tol = zip(*(degeneracy_terms(float(tr), float(t), self.n, e)
                             for tr, t, e in zip(trace, total, eps)))
        return np.asarray(centred) <= np.asarray(tol)

    def compute(self, estimator: str = "biased") -> Any:
        """Linear CKA of every pair of layers, as :func:`repsim.cka_matrix` gives it.

        Returns
        -------
        xarray.DataArray, shape (L_a, L_b)
            dims ``("layer_a", "layer_b")``; constant layers NaN with a warning naming
            them; attrs ``measure``, ``estimator``, ``kernel``, ``n``, ``block_pairs``.
        """
        V.check_n(self.n, estimator, f"layers_a[{self.names_a[0]!r}]")
        cross, self_a, self_b = self.hsic(estimator)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = cross / np.sqrt(np.outer(self_a, self_b))
        values = np.clip(values, 0.0 if estimator == "biased" else -1.0, 1.0)
        deg_a = self._degenerate("a")
        deg_b = self._degenerate("b") if self.two_sided else deg_a
        values = mask_degenerate(values, deg_a, deg_b, self.names_a, self.names_b)
        attrs = {"measure": "cka", "estimator": estimator, "kernel": "linear", "n": self.n,
                 "block_pairs": self.block_pairs}
        return similarity_array(values, self.names_a, self.names_b, attrs)


def _shifted(x, shift, label, rows):
    """One block ``(B, ...)`` flattened, checked, less the shift (in float64), in the
    dtype its gram is formed in (float32 stays float32, as in
    :func:`repsim.kernels.linear_gram`)."""
    x = np.asarray(x() if callable(x) else x)
    x = x.reshape(len(x), -1)
    V.check_finite_array(x, np, f"{label} (examples {rows.start}..{rows.stop - 1})")
    return (x.astype(np.float64) - shift).astype(B.float_dtype(x, np), copy=False)


def _block_product(xi, xj, shift, diagonal, label, rows_i, rows_j):
    """``(x_i - s)(x_j - s)^T`` as float64 ``(B_i, B_j)``."""
    ci = _shifted(xi, shift, label, rows_i)
    cj = ci if diagonal else _shifted(xj, shift, label, rows_j)
    return np.asarray(ci @ cj.T, dtype=np.float64)
