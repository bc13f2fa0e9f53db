"""Measures of stores from pairs of example blocks: full-data CKA (linear and RBF),
distance correlation, Pearson RSA and the k-NN measures of neighbour lists, on one process
or as a map-reduce on a dask cluster.

Every unordered pair ``(i, j)`` of example blocks updates an accumulator with ``add_pair``
and ``merge`` (:class:`repsim._block_cka.BlockCKA`,
:class:`repsim._block_median.DistanceCounts`, :class:`repsim._block_rdm.BlockRSA`,
:class:`repsim._block_neighbours.BlockNeighbours`); :func:`sweep_pairs` runs the pairs in
order here or as tasks on the cluster, tree-merged there. :mod:`repsim.store_stream`
chooses this form for :func:`repsim.similarity_matrix` and :func:`repsim.compare_many`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np

from . import _backend as B
from . import _validation as V
from ._block_cka import BlockCKA, scale_exponent, typical_sq_distance
from ._block_median import exact_medians
from ._block_neighbours import neighbour_matrix_in_blocks
from ._io import progress as _progress
from .store_stream import Side, default_batch_size, example_blocks, map_reduce, read

__all__ = ["block_cka", "block_pairs", "neighbour_matrix_in_blocks", "sweep_pairs"]


def _pair_task(template, rows_i, rows_j, *blocks):
    acc = copy.deepcopy(template)
    acc.add_pair(rows_i, rows_j, *blocks)
    return acc


def layer_terms(side: Side, bounds: list[slice]):
    """Per layer, from the first block: the feature shift (float64 column means), the
    product dtype's epsilon, the power-of-two scale exponent of the shifted rows (0 while
    their largest entry lies within ``[2**-30, 2**10]``, else the least scaling that brings it
    there; every later block is checked
    against it, :func:`repsim._block_cka.scale_exponent`; a constant first block takes the
    scale of all blocks, one more pass over that layer) and a typical squared distance of
    the scaled rows."""
    shifts, eps, exps, typical = [], [], [], []
    rows = bounds[0]
    for i, name in enumerate(side.names):
        x = read(side.block(i, rows))
        x = x.reshape(len(x), -1)
        V.check_finite_array(x, np, f"{side.label}[{name!r}] (examples {rows.start}.."
                             f"{rows.stop - 1})")
        shifts.append(x.mean(axis=0, dtype=np.float64))
        eps.append(float(np.finfo(B.float_dtype(x, np)).eps))
        c = x.astype(np.float64) - shifts[-1]
        amax = float(np.abs(c).max(initial=0.0))
        for later in bounds[1:] if amax == 0 else []:  # a constant first block sets no
            y = read(side.block(i, later))              # scale: the other blocks do
            y = y.reshape(len(y), -1).astype(np.float64) - shifts[-1]
            amax = max(amax, float(np.abs(y).max(initial=0.0)))
        exps.append(scale_exponent(amax))
        typical.append(typical_sq_distance(np.ldexp(c, -exps[-1])))
    return shifts, eps, exps, typical


def block_cka(a: Side, b: Side | None, *, estimator: str, kernel: str = "linear",
              sigma: float | None = None, threshold: float = 1.0,
              batch_size: int | None = None, client: Any = None, progress: bool = False):
    """Full-data CKA of every layer pair of two stores, from pairs of example blocks.

    Parameters
    ----------
    a, b : Side
        The layers (:func:`sides`); ``b`` None: ``a`` against itself.
    estimator : {"biased", "unbiased"}
    kernel : {"linear", "rbf", "distance"}, default "linear"
        ``"distance"``: Euclidean distance matrices in float64, so that the values are the
        squared distance correlation of :func:`repsim.dcor`.
    sigma : float, optional
        RBF bandwidth of every layer. None: each layer's median heuristic, ``threshold *
        sqrt(median squared distance)`` over all ``n^2`` pairs, selected exactly in passes
        over the block pairs before the CKA pass (:mod:`repsim._block_median`; typically
        two).
    threshold : float, default 1.0
    batch_size : int, optional
        Examples per block (default the store's chunk along ``example``): ``k`` blocks make
        ``k (k + 1) / 2`` block pairs, each reading two blocks of one layer at a time.
    client : distributed.Client, optional
        Block pairs as tasks on the cluster, their states tree-merged there; None: in
        order on this process (:func:`stream_client` resolves the active client).

    Returns
    -------
    values : xarray.DataArray, shape (L_a, L_b)
        From :meth:`repsim._block_cka.BlockCKA.compute` (RBF: bandwidths in the attrs
        ``sigma_a``, ``sigma_b``).
    info : dict
        ``batch_size``, ``blocks``, ``scheduler`` (``"local"`` or
        ``"dask.distributed"``), ``streamed`` ("gram block pairs"), for the result's attrs;
        RBF adds ``bandwidth_passes`` (passes over the block pairs spent on the medians)
        and ``sigma_a`` / ``sigma_b``.
    """
    n = a.n
    batch = default_batch_size(a) if batch_size is None else batch_size
    bounds = example_blocks(n, batch)
    shifts_a, eps_a, exps_a, typical_a = layer_terms(a, bounds)
    shifts_b, eps_b, exps_b, typical_b = layer_terms(b, bounds) if b is not None \
        else (None, None, None, None)
    if kernel == "distance":  # dcor reads every layer as float64 (its constant rule too)
        eps64 = float(np.finfo(np.float64).eps)
        eps_a = [eps64] * len(a.names)
        eps_b = None if b is None else [eps64] * len(b.names)
    pairs = block_pairs(bounds)

    def run(template, desc, *sides_):
        return sweep_pairs(template, pairs, sides_, client=client, desc=desc, progress=progress)

    info: dict[str, Any] = {}
    sigmas: dict[str, list[float] | None] = {"a": None, "b": None}
    if kernel == "rbf":
        passes = 0
        todo = [("a", a, shifts_a, eps_a, exps_a)] + \
            ([] if b is None else [("b", b, shifts_b, eps_b, exps_b)])
        for key, side, shifts, eps, exps in todo:
            if sigma is not None:
                sigmas[key] = [float(sigma)] * len(side.names)
                continue

            def sweep(template: Any, side: Side = side) -> Any:
                return run(template, "rbf bandwidth: pass over block pairs", side)

            medians, norms, used = exact_medians(n, side.names, shifts, side.label, sweep, exps)
            passes += used
            # in the data's units: the medians are those of the rows scaled by 2**-exp
            sigmas[key] = [math.ldexp(_median_sigma(m, nm, s.size, e, threshold), x)
                           for m, nm, s, e, x in zip(medians, norms, shifts, eps, exps)]
        info["bandwidth_passes"] = passes
    acc = BlockCKA(n, a.names, shifts_a, eps_a, None if b is None else b.names, shifts_b, eps_b,
                   sigmas_a=sigmas["a"], sigmas_b=sigmas["b"], typical_a=typical_a,
                   typical_b=typical_b, kernel=kernel, exps_a=exps_a, exps_b=exps_b)
    acc = run(acc, "cka: example block pairs", a, *([] if b is None else [b]))
    info.update({"batch_size": batch, "blocks": len(bounds),
                 "scheduler": "local" if client is None else "dask.distributed",
                 "streamed": "gram block pairs"})
    result = acc.compute(estimator)
    if kernel == "rbf":
        info["sigma_a"], info["sigma_b"] = result.attrs["sigma_a"], result.attrs["sigma_b"]
    return result, info


def block_pairs(bounds: list[slice]) -> list[tuple[slice, slice]]:
    """Every unordered pair ``(i, j)``, ``i <= j``, of the example blocks ``bounds``."""
    return [(ri, rj) for i, ri in enumerate(bounds) for rj in bounds[i:]]


def _pair_blocks(side: Side, ri: slice, rj: slice, lazy: bool) -> list:
    if lazy:  # one layer's two blocks read at a time, when add_pair gets to it
        return [(_reader(side, k, ri), _reader(side, k, rj)) for k in range(len(side.names))]
    return [(side.block(k, ri), side.block(k, rj)) for k in range(len(side.names))]


def sweep_pairs(template: Any, pairs: list, sides_: tuple | list, *, client: Any, desc: str,
                progress: bool) -> Any:
    """``template.add_pair(ri, rj, blocks_of_each_side...)`` for every block pair: in
    order on this process (``client`` None; returns ``template`` itself), or each pair on
    its own copy on the cluster, tree-merged there (returns the merged copy)."""
    if client is None:
        for ri, rj in _progress(pairs, total=len(pairs), desc=desc, enabled=progress,
                                unit="pair"):
            template.add_pair(ri, rj, *(_pair_blocks(s, ri, rj, True) for s in sides_))
        return template
    args = [(ri, rj, *(_pair_blocks(s, ri, rj, False) for s in sides_)) for ri, rj in pairs]
    return map_reduce(client, _pair_task, template, args)


def _median_sigma(median: float, norm_max: float, p: int, eps: float,
                  threshold: float) -> float:
    """``threshold * sqrt(median)``; NaN where the median is 0 up to the distances'
    rounding (``4 p eps max |x - s|^2``): identical rows need not give exactly 0 in
    blocks, and a bandwidth from rounding noise would be a number without meaning."""
    return threshold * math.sqrt(median) if median > 4 * p * eps * norm_max else math.nan


def _reader(side: Side, layer: int, rows: slice) -> Callable[[], np.ndarray]:
    return lambda: read(side.block(layer, rows))
