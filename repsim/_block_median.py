"""The exact median of all ``n^2`` squared distances of a layer, from pairs of example blocks.

The RBF kernel's default bandwidth (Kornblith et al. 2019) is ``threshold * sqrt(median
D)`` over every entry of the ``n x n`` squared-distance matrix ``D``, its zero diagonal
and both ``(a, b)`` and ``(b, a)`` included (:func:`repsim.kernels.median_sigma`). A store
too large for memory has ``D`` only block by block, so the median is selected in passes
over the block pairs, each pass a sum state that merges (a map-reduce on a cluster):

1. every distance is mapped to an integer key that sorts as the float does (its float64
   bits, the negative ones -- rounding below 0 -- bit-flipped), and the keys are counted
   in bins of their top bits (first 12 bits of mantissa: bins 2.4e-4 wide relative);
2. the counts locate the bin of each middle rank (``m // 2``, and ``m // 2 - 1`` for an
   even ``m = n^2``); the next pass counts only that range, in finer bins (20 bits more),
   until it holds at most :data:`CAP` distances;
3. a last pass collects the distances in the range and the middle ranks are read off
   them sorted (with the count below the range taken in that same pass).

Off-diagonal block pairs count twice (``D_ji = D_ij^T``). Typically two passes; memory per
layer: the occupied bins and at most :data:`CAP` float64 values. Every pass computes the
distances the same way (:func:`repsim._block_cka.block_sq_distances`), so the counts of
different passes agree; a disagreement (a cluster whose workers round differently) is
refused rather than answered.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np

from ._block_cka import block_sq_distances

__all__ = ["CAP", "DistanceCounts", "exact_medians"]

CAP = 1 << 21
"""Distances a range may hold before they are collected (16 MiB with their weights)."""

FIRST_SHIFT = 40  # keep the sign, 11 exponent and 12 mantissa bits
STEP = 20  # mantissa bits added per refining pass
_FLIP = np.int64(0x7FFF_FFFF_FFFF_FFFF)
_LOWEST, _HIGHEST = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def sort_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys ordered as the float64 ``values`` are (NaN excluded)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
    return np.where(bits < 0, bits ^ _FLIP, bits)


def from_keys(keys: np.ndarray) -> np.ndarray:
    """The float64 values of :func:`sort_keys` ``keys``."""
    keys = np.asarray(keys, dtype=np.int64)
    return np.where(keys < 0, keys ^ _FLIP, keys).view(np.float64)


class DistanceCounts:
    """One pass of the selection: per layer, the distances below its range, and those in
    it counted in bins (``shift`` given) or collected (``shift`` None).

    Parameters
    ----------
    names : list of str
        Layer names (for messages).
    shifts : list of arrays
        The float64 feature shifts of :class:`repsim._block_cka.BlockCKA`.
    exps : list of int, optional
        Its power-of-two scales (the distances are those of the scaled rows).
    plans : list of (lo, hi, shift) or None
        Per layer: the key range ``[lo, hi)`` and the bin width ``2**shift`` (None:
        collect the values); None for a layer already resolved (skipped).
    label : str
        The side's name, for messages.
    """

    def __init__(self, names: list[str], shifts: list[np.ndarray],
                 plans: list[tuple[int, int, int | None] | None], label: str,
                 exps: list[int] | None = None) -> None:
        self.names, self.shifts, self.plans, self.label = names, shifts, plans, label
        self.exps = list(exps or [0] * len(names))
        self.below = np.zeros(len(names), np.int64)
        self.norm_max = np.zeros(len(names))  # largest squared norm of a shifted row
        self.bins: list[tuple[np.ndarray, np.ndarray]] = [
            (np.empty(0, np.int64), np.empty(0, np.int64)) for _ in names]
        self.values: list[list[tuple[np.ndarray, int]]] = [[] for _ in names]

    def add_pair(self, rows_i: slice, rows_j: slice, blocks: list) -> None:
        """The distances of block pair ``(i, j)`` of every planned layer (``blocks`` as in
        :meth:`repsim._block_cka.BlockCKA.add_pair`)."""
        diagonal = rows_i == rows_j
        weight = 1 if diagonal else 2
        for l, plan in enumerate(self.plans):
            if plan is None:
                continue
            xi, xj = blocks[l]
            label = f"{self.label}[{self.names[l]!r}]"
            _, d2, norm = block_sq_distances(xi, xj, self.shifts[l], diagonal, label, rows_i,
                                             rows_j, exp=self.exps[l])
            self.norm_max[l] = max(self.norm_max[l], norm)
            keys = sort_keys(d2.reshape(-1))
            lo, hi, shift = plan
            self.below[l] += weight * int(np.count_nonzero(keys < lo))
            inside = keys[(keys >= lo) & (keys < hi)]
            if shift is None:
                self.values[l].append((from_keys(inside), weight))
            else:
                b, c = np.unique(inside >> shift, return_counts=True)
                self._add_bins(l, b, weight * c.astype(np.int64))

    def _add_bins(self, l: int, b: np.ndarray, c: np.ndarray) -> None:
        old_b, old_c = self.bins[l]
        both = np.concatenate([old_b, b])
        keys, where = np.unique(both, return_inverse=True)
        counts = np.zeros(len(keys), np.int64)
        np.add.at(counts, where, np.concatenate([old_c, c]))
        self.bins[l] = (keys, counts)

    def merge(self, other: "DistanceCounts") -> "DistanceCounts":
        """Add the pairs ``other`` counted (the same plans)."""
        if other.plans != self.plans:
            raise ValueError("cannot merge distance counts of different passes")
        self.below += other.below
        self.norm_max = np.maximum(self.norm_max, other.norm_max)
        for l, (b, c) in enumerate(other.bins):
            if len(b):
                self._add_bins(l, b, c)
            self.values[l].extend(other.values[l])
        return self


def _ranks(n: int) -> list[int]:
    m = n * n
    return [m // 2] if m % 2 else [m // 2 - 1, m // 2]


def _refine(counts: DistanceCounts, l: int, ranks: list[int]) -> tuple[Any, Any]:
    """``(median, None)`` when layer ``l`` is resolved, else ``(None, next plan)``."""
    lo, hi, shift = counts.plans[l]  # type: ignore[misc]
    below = int(counts.below[l])
    where = f"{counts.label}[{counts.names[l]!r}]"
    if shift is None:
        parts = counts.values[l]
        vals = np.concatenate([v for v, _ in parts]) if parts else np.empty(0)
        weights = np.concatenate([np.full(len(v), w, np.int64) for v, w in parts]) \
            if parts else np.empty(0, np.int64)
        order = np.argsort(vals, kind="stable")
        cum = np.cumsum(weights[order])
        picks = []
        for r in ranks:
            k = int(np.searchsorted(cum, r - below, side="right"))
            if r < below or k >= len(vals):
                raise RuntimeError(f"{where}: the squared distances differed between the "
                                   "passes that select their median (non-deterministic "
                                   "products?); pass sigma explicitly")
            picks.append(float(vals[order][k]))
        return picks[0] if len(picks) == 1 else 0.5 * (picks[0] + picks[1]), None
    keys, cnt = counts.bins[l]
    cum = below + np.cumsum(cnt)
    idx = [int(np.searchsorted(cum, r, side="right")) for r in ranks]
    if min(ranks) < below or max(idx) >= len(keys):
        raise RuntimeError(f"{where}: the squared distances differed between the passes "
                           "that select their median (non-deterministic products?); pass "
                           "sigma explicitly")
    if shift == 0:  # every bin is one value
        picks = [float(from_keys(keys[i:i + 1])[0]) for i in idx]
        return picks[0] if len(picks) == 1 else 0.5 * (picks[0] + picks[1]), None
    first, last = int(keys[idx[0]]), int(keys[idx[-1]])
    new_lo = first << shift
    new_hi = _HIGHEST if last == (_HIGHEST >> shift) else (last + 1) << shift
    held = int(cnt[idx[0]:idx[-1] + 1].sum())
    return None, (new_lo, new_hi, None if held <= CAP else max(0, shift - STEP))


def exact_medians(n: int, names: list[str], shifts: list[np.ndarray], label: str,
                  sweep: Callable[[DistanceCounts], DistanceCounts],
                  exps: list[int] | None = None) -> tuple[list[float], np.ndarray, int]:
    """The median of each layer's ``n^2`` squared distances, the largest squared norm of
    a shifted row per layer (the scale of the distances' rounding) and the passes it took.

    ``sweep(template)`` adds every block pair of the ``n`` examples to a copy of
    ``template`` and returns it (in order here, or merged on a cluster).
    """
    ranks = _ranks(n)
    plans: list[Any] = [(_LOWEST, _HIGHEST, FIRST_SHIFT) for _ in names]
    medians = [float("nan")] * len(names)
    norm_max = np.zeros(len(names))
    passes = 0
    while any(p is not None for p in plans):
        counts = sweep(DistanceCounts(names, shifts, copy.deepcopy(plans), label, exps))
        passes += 1
        norm_max = np.maximum(norm_max, counts.norm_max)
        for l, plan in enumerate(plans):
            if plan is None:
                continue
            median, plans[l] = _refine(counts, l, ranks)
            if median is not None:
                medians[l] = median
    return medians, norm_max, passes
