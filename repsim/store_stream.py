"""Stores streamed in blocks of examples, on one process or on a dask.distributed cluster.

Two kinds of work read a store (:func:`repsim.open_activations`) block by block and never
hold a layer whole:

* :func:`stream_store` feeds an accumulator with ``update(acts_a, acts_b)`` --
  :class:`repsim.MinibatchCKA`, :class:`repsim.FeatureMoments` -- one block of
  ``batch_size`` examples at a time;
* :func:`block_cka` gives full-data CKA (linear or RBF, the median bandwidth selected
  exactly by :mod:`repsim._block_median`), the value :func:`repsim.cka_matrix` gives on the
  loaded layers, from pairs of example blocks (:mod:`repsim._block_cka`);
* :func:`moment_matrix` gives every other measure with a form from feature moments (the
  CCA family, shape metrics, ridge R², GULP, NBS) through :class:`repsim.FeatureMoments`.

:func:`repsim.similarity_matrix` and :func:`repsim.compare_many` run the two on stores
given ``batch_size=`` or ``client=``.

On a cluster (``client=``, or the active ``dask.distributed`` client) both are a
map-reduce: each block (or block pair) updates its own copy of the accumulator on a
worker, its inputs read there by dask, and the copies are merged pairwise in a binary
tree with the accumulator's ``merge`` (exact: every state is a sum). Results equal the
one-process ones up to the order of the sums.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any, Callable, NamedTuple

import numpy as np
import xarray as xr

from . import _backend as B
from . import _registry as R
from . import _validation as V
from . import store as S
from ._block_cka import BlockCKA, typical_sq_distance
from ._block_median import exact_medians
from ._io import progress as _progress

__all__ = ["block_cka", "example_blocks", "moment_matrix", "resolve_client", "stream_store"]


class Side(NamedTuple):
    """Layers of one or more stores, lazily: names, arrays ``(n_store, ...)`` with examples
    first (dask or numpy), and each layer's rows compared (None: all, in order)."""

    label: str
    names: list[str]
    arrays: list[Any]
    indices: list[np.ndarray | None]

    @property
    def n(self) -> int:
        index = self.indices[0]
        return len(index) if index is not None else int(self.arrays[0].shape[0])

    def block(self, layer: int, rows: slice) -> Any:
        """Rows ``rows`` (positions among the compared examples) of one layer, lazily."""
        x, index = self.arrays[layer], self.indices[layer]
        return x[rows] if index is None else x[index[rows]]

    def blocks(self, rows: slice) -> dict[str, Any]:
        return {name: self.block(i, rows) for i, name in enumerate(self.names)}


def side_of(ds: xr.Dataset, index: np.ndarray | None, label: str) -> Side:
    """The layers of a store (its variables along ``example``, in the Dataset's order)."""
    names, arrays = [], []
    for name, var in ds.data_vars.items():
        if S.EXAMPLE in var.dims:
            names.append(str(name))
            arrays.append(var.transpose(S.EXAMPLE, ...).data)
    if not names:
        raise ValueError(f"{label} holds no variable along {S.EXAMPLE!r}")
    return Side(label, names, arrays, [index] * len(names))


def joined(sides: list[Side], label: str) -> Side:
    """Several stores' layers as one side (names ``"<k>:<layer>"`` for store ``k``), for
    one symmetric pass over all of them."""
    for s in sides[1:]:
        if s.n != sides[0].n:
            raise ValueError(f"{sides[0].label} holds {sides[0].n} examples and {s.label} "
                             f"{s.n}; the same examples are needed everywhere")
    names = [f"{k}:{name}" for k, s in enumerate(sides) for name in s.names]
    return Side(label, names, [x for s in sides for x in s.arrays],
                [i for s in sides for i in s.indices])


def read(x: Any) -> np.ndarray:
    """A block in memory, read on this process (dask's synchronous scheduler, whatever
    client is active)."""
    if hasattr(x, "compute"):
        x = x.compute(scheduler="synchronous")
    return np.asarray(x)


def example_blocks(n: int, batch_size: int, smallest: int = 1) -> list[slice]:
    """Consecutive blocks of ``batch_size`` examples; a last block smaller than
    ``smallest`` joins the one before it (the unbiased estimator needs 4 examples)."""
    bounds = [slice(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1].stop - bounds[-1].start < smallest:
        bounds[-2:] = [slice(bounds[-2].start, n)]
    return bounds


def default_batch_size(side: Side) -> int:
    """The store's own chunk along ``example`` (one Zarr chunk per read), or all rows."""
    chunks = getattr(side.arrays[0], "chunks", None)
    return int(chunks[0][0]) if chunks else side.n


def resolve_client(client: Any = None) -> Any:
    """``client`` itself, else the active ``dask.distributed`` client, else None (also for
    ``client=False``: this process, whatever client is active).

    ``distributed`` is not imported here unless the caller already imported it (then a
    client may be active).
    """
    if client is False:
        return None
    if client is not None:
        return client
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client
        return None


def _merged(a: Any, b: Any) -> Any:
    out = copy.deepcopy(a)  # task results stay as they were (a retried task re-reads them)
    out.merge(b)
    return out


def tree(parts: list, merge: Callable[[Any, Any], Any]) -> Any:
    """``parts`` merged pairwise, level by level (a binary tree of depth log2(len))."""
    while len(parts) > 1:
        parts = [merge(parts[k], parts[k + 1]) if k + 1 < len(parts) else parts[k]
                 for k in range(0, len(parts), 2)]
    return parts[0]


def map_reduce(client: Any, task: Callable, template: Any, args: list[tuple]) -> Any:
    """``task(template, *a)`` for every ``a`` in ``args`` on the cluster (dask arrays among
    the arguments are read by the workers as the task's inputs; ``template`` is sent once),
    the results tree-merged there; the merged accumulator comes back."""
    import dask

    leaf, merge = dask.delayed(task, pure=True), dask.delayed(_merged, pure=True)
    shared = dask.delayed(template, pure=True)
    return client.compute(tree([leaf(shared, *a) for a in args], merge)).result()


def block_refusal(m: Any, opts: dict) -> str:
    """Why measure ``m`` (:func:`repsim.measure`) with the bound ``opts`` has no form in
    blocks of examples; "" when it has one: a packed centred-gram form (the registry's
    ``gram``: CKA, linear or RBF) with grams in the data's own dtype."""
    if m.family.gram is None:
        return "no form from gram blocks (CKA only)"
    if opts.get("precision") != "float32":
        return f"precision={opts.get('precision')!r} grams are formed whole"
    return ""


def stream_client(m: Any, opts: dict, stores: bool, batch_size: Any, client: Any,
                  options: dict | None = None) -> tuple[Any, str]:
    """``(client, form)``: the client to stream with (None: this process, False: read
    layers whole) and the measure's form in blocks of examples, ``"blocks"`` (linear CKA
    from block pairs, :func:`block_cka`) or ``"moments"`` (:func:`moment_matrix`).

    Stores stream when ``batch_size`` or ``client`` is given (a measure without a form
    is then refused, as are inputs that are not stores) or a dask.distributed client is
    active (measures without a form then read their layers whole, as without one).
    ``options`` are the caller's own options of the measure (its presets come from the
    registry)."""
    asked = batch_size is not None or client not in (None, False)
    if batch_size is not None:
        V.check_int(batch_size, "batch_size", 1)
    if not stores:
        if asked:
            raise ValueError("batch_size and client stream stores (xarray.Datasets from "
                             "repsim.open_activations); these layers are in memory already")
        return False, ""
    client = resolve_client(client)
    if not asked and client is None:
        return False, ""
    why, form = block_refusal(m, opts), "blocks"
    if why:
        why_moments = moment_refusal(m, options or {})
        why, form = (f"{why}; {why_moments}", "") if why_moments else ("", "moments")
    if why and asked:
        raise ValueError(f"measure {m.name!r} cannot be streamed in blocks of examples "
                         f"({why}); without batch_size and client each layer is read "
                         "whole, once")
    return (False, "") if why else (client, form)


def moment_refusal(m: Any, options: dict) -> str:
    """Why measure ``m`` with the caller's ``options`` has no exact form from feature
    moments (:meth:`repsim.FeatureMoments.compute`); "" when it has one."""
    if m.family.moments is None:
        return f"{m.function} has no form from feature moments"
    try:
        R.moment_params(m.name, options)
    except (TypeError, ValueError) as err:
        return str(err)
    return ""


# ---------------------------------------------------------------------- stream_store

def _batch_task(template, acts_a, acts_b, where):
    acc = copy.deepcopy(template)
    kind, value = where
    if kind == "group":
        acc.set_group(value)
    acc.update(acts_a, acts_b, **({"fold": value} if kind == "fold" else {}))
    return acc


def _empty_like(acc):
    """A copy of ``acc`` with its options and layout (layer names, bandwidths, shift: all
    fixed by the first batch) and every state zero."""
    clone = copy.deepcopy(acc)
    clone._values = {k: v * 0 for k, v in clone._values.items()}
    return clone


def _where(acc, t):
    """Where the stream's batch ``t`` goes in an accumulator that keeps per-group or
    per-fold sums: as one process would send it (round robin from its batch count)."""
    groups, folds = getattr(acc, "groups", None), getattr(acc, "folds", None)
    if groups and getattr(acc, "_pinned_group", None) is None:
        return "group", (acc.n_batches + t) % groups
    if folds:
        return "fold", (acc.n_batches + t) % folds
    return None, None


def stream_store(acc: Any, store_a: xr.Dataset, store_b: xr.Dataset | None = None, *,
                 batch_size: int | None = None, align: str = "strict", client: Any = None,
                 progress: bool = False) -> Any:
    """Feed a store to an accumulator, one block of examples at a time.

    Parameters
    ----------
    acc : MinibatchCKA or FeatureMoments
        Any accumulator with ``update(acts_a, acts_b=None)`` and ``merge`` (the
        :class:`repsim._accumulator.Accumulator` API); it may hold batches already.
    store_a : xarray.Dataset
        From :func:`repsim.open_activations`: its layers (variables along ``example``), in
        the Dataset's order; select with ``store[["l1", "l2"]]``.
    store_b : xarray.Dataset, optional
        A second model's store of the same examples (``example_id`` checked as in
        :func:`repsim.similarity_matrix`); None: within one model.
    batch_size : int, optional
        Examples per ``update``; default the store's chunk along ``example`` (one Zarr
        chunk per read). A last batch of fewer than 4 examples joins the one before.
        Memory: one batch of every layer of both stores.
    align : {"strict", "ids"}, default "strict"
        As in :func:`repsim.similarity_matrix`.
    client : distributed.Client, optional
        Run on a dask cluster: the first batch updates ``acc`` here (fixing its layers,
        RBF bandwidths, shift), every other batch updates its own copy on a worker, and
        the copies are tree-merged with ``merge``, then into ``acc``. Default: the active
        client if there is one, else (and with ``client=False``) batches in order on this
        process. Per-group
        (``groups=``) and per-fold (``folds=``) sums get each batch where one process
        would put it.
    progress : bool, default False
        Show progress (batches, on one process).

    Returns
    -------
    acc
        The same accumulator, updated; call its ``compute``.

    Examples
    --------
    >>> import numpy as np, xarray as xr, repsim
    >>> x = np.random.default_rng(0).standard_normal((256, 6))
    >>> ds = xr.Dataset({"x": (("example", "x_feature"), x),
    ...                  "2x": (("example", "2x_feature"), 2 * x)}).chunk({"example": 64})
    >>> acc = repsim.stream_store(repsim.MinibatchCKA(), ds)
    >>> acc.n_batches, round(float(acc.compute().sel(layer_a="x", layer_b="2x")), 6)
    (4, 1.0)
    """
    V.Flag()(progress, "progress")
    if not (callable(getattr(acc, "update", None)) and callable(getattr(acc, "merge", None))):
        raise TypeError("acc must be an accumulator with update() and merge() (MinibatchCKA, "
                        f"FeatureMoments); got {type(acc).__name__}")
    a, b, _ = sides(store_a, store_b, align, "store_a", "store_b")
    if batch_size is not None:
        V.check_int(batch_size, "batch_size", 1)
    return feed(acc, a, b, batch_size=batch_size, client=resolve_client(client),
                progress=progress)


def feed(acc: Any, a: Side, b: Side | None, *, batch_size: int | None, client: Any,
         progress: bool) -> Any:
    """:func:`stream_store` on :class:`Side` s: ``acc`` updated block by block, in order
    here (``client`` None) or as a map-reduce on the cluster; returns ``acc``."""
    batch = default_batch_size(a) if batch_size is None else batch_size
    bounds = example_blocks(a.n, batch, smallest=4)

    def local(rows):
        acc.update({k: read(v) for k, v in a.blocks(rows).items()},
                   None if b is None else {k: read(v) for k, v in b.blocks(rows).items()})

    if client is None:
        for rows in _progress(bounds, total=len(bounds), desc="stream: batches",
                              enabled=progress, unit="batch"):
            local(rows)
        return acc
    local(bounds[0])  # fixes the layout: every copy starts from it
    if len(bounds) > 1:
        template = _empty_like(acc)
        args = [(a.blocks(rows), None if b is None else b.blocks(rows), _where(acc, t))
                for t, rows in enumerate(bounds[1:])]
        acc.merge(map_reduce(client, _batch_task, template, args))
    return acc


def streamed_matrix(form: str, a: Side, b: Side | None, m: Any, opts: dict, options: dict, *,
                    batch_size: int | None, client: Any, progress: bool):
    """The measure ``m`` for every layer pair of the stores, in the ``form``
    :func:`stream_client` chose: :func:`block_cka` or :func:`moment_matrix`."""
    if form == "blocks":
        return block_cka(a, b, estimator=opts["estimator"], kernel=opts["kernel"],
                         sigma=opts.get("sigma"), threshold=opts.get("threshold", 1.0),
                         batch_size=batch_size, client=client, progress=progress)
    return moment_matrix(a, b, m.name, options, batch_size=batch_size, client=client,
                         progress=progress)


def moment_matrix(a: Side, b: Side | None, measure: str, options: dict, *,
                  batch_size: int | None = None, client: Any = None, progress: bool = False):
    """A measure with a form from feature moments (the CCA family, shape metrics, ridge
    R², GULP, NBS, linear CKA) for every layer pair of two stores, streamed.

    Each block of examples updates one :class:`repsim.FeatureMoments` (memory: about
    ``(sum of widths)^2`` float64 moments, checked at the first block), in order here or
    as a map-reduce on the cluster; the full-data value comes from the summed moments
    (:meth:`repsim.FeatureMoments.compute`), equal to the measure on the loaded layers up
    to rounding.

    Returns
    -------
    values : xarray.DataArray, shape (L_a, L_b)
    info : dict
        ``batch_size``, ``blocks``, ``scheduler`` and ``streamed`` ("feature moments").
    """
    from .moments import FeatureMoments

    batch = default_batch_size(a) if batch_size is None else batch_size
    acc = feed(FeatureMoments(), a, b, batch_size=batch, client=client, progress=progress)
    info = {"batch_size": batch, "blocks": len(example_blocks(a.n, batch, smallest=4)),
            "scheduler": "local" if client is None else "dask.distributed",
            "streamed": "feature moments"}
    return acc.compute(measure, **options), info


def sides(store_a, store_b, align, label_a="layers_a", label_b="layers_b"):
    """Both stores as :class:`Side` (``b`` None within one store), ``example_id``
    matched, and the identity attrs (:func:`repsim.store.store_indices`)."""
    stores, index_a, index_b, attrs = S.store_indices(store_a, store_b, align)
    if not stores[0] or (store_b is not None and not stores[1]):
        raise TypeError(f"{label_a} and {label_b} must be xarray.Datasets from "
                        "repsim.open_activations to be streamed")
    a = side_of(store_a, index_a, label_a)
    b = None if store_b is None else side_of(store_b, index_b, label_b)
    if b is not None and b.n != a.n:
        raise ValueError(f"{label_a} holds {a.n} examples and {label_b} {b.n}; the same "
                         "examples are needed on both sides")
    return a, b, attrs


# ------------------------------------------------------------------------ block_cka

def _pair_task(template, rows_i, rows_j, *blocks):
    acc = copy.deepcopy(template)
    acc.add_pair(rows_i, rows_j, *blocks)
    return acc


def _shifts_and_eps(side: Side, rows: slice):
    """Per layer, from the first block: the feature shift (float64 column means), the
    product dtype's epsilon and a typical squared distance (for the RBF blocks)."""
    shifts, eps, typical = [], [], []
    for i, name in enumerate(side.names):
        x = read(side.block(i, rows))
        x = x.reshape(len(x), -1)
        V.check_finite_array(x, np, f"{side.label}[{name!r}] (examples {rows.start}.."
                             f"{rows.stop - 1})")
        shifts.append(x.mean(axis=0, dtype=np.float64))
        eps.append(float(np.finfo(B.float_dtype(x, np)).eps))
        typical.append(typical_sq_distance(x.astype(np.float64)))
    return shifts, eps, typical


def block_cka(a: Side, b: Side | None, *, estimator: str, kernel: str = "linear",
              sigma: float | None = None, threshold: float = 1.0,
              batch_size: int | None = None, client: Any = None, progress: bool = False):
    """Full-data CKA of every layer pair of two stores, from pairs of example blocks.

    Parameters
    ----------
    a, b : Side
        The layers (:func:`sides`); ``b`` None: ``a`` against itself.
    estimator : {"biased", "unbiased"}
    kernel : {"linear", "rbf"}, default "linear"
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
    shifts_a, eps_a, typical_a = _shifts_and_eps(a, bounds[0])
    shifts_b, eps_b, typical_b = _shifts_and_eps(b, bounds[0]) if b is not None \
        else (None, None, None)
    pairs = [(ri, rj) for i, ri in enumerate(bounds) for rj in bounds[i:]]

    def blocks(side, ri, rj, lazy):
        if side is None:
            return None
        if lazy:  # one layer's two blocks read at a time, when add_pair gets to it
            return [(_reader(side, k, ri), _reader(side, k, rj)) for k in range(len(side.names))]
        return [(side.block(k, ri), side.block(k, rj)) for k in range(len(side.names))]

    def run(template, desc, *sides_):
        if client is None:
            for ri, rj in _progress(pairs, total=len(pairs), desc=desc, enabled=progress,
                                    unit="pair"):
                template.add_pair(ri, rj, *(blocks(s, ri, rj, True) for s in sides_))
            return template
        args = [(ri, rj, *(blocks(s, ri, rj, False) for s in sides_)) for ri, rj in pairs]
        return map_reduce(client, _pair_task, template, args)

    info: dict[str, Any] = {}
    sigmas: dict[str, list[float] | None] = {"a": None, "b": None}
    if kernel == "rbf":
        passes = 0
        todo = [("a", a, shifts_a, eps_a)] + ([] if b is None else [("b", b, shifts_b, eps_b)])
        for key, side, shifts, eps in todo:
            if sigma is not None:
                sigmas[key] = [float(sigma)] * len(side.names)
                continue

            def sweep(template: Any, side: Side = side) -> Any:
                return run(template, "rbf bandwidth: pass over block pairs", side)

            medians, norms, used = exact_medians(n, side.names, shifts, side.label, sweep)
            passes += used
            sigmas[key] = [_median_sigma(m, nm, s.size, e, threshold)
                           for m, nm, s, e in zip(medians, norms, shifts, eps)]
        info["bandwidth_passes"] = passes
    acc = BlockCKA(n, a.names, shifts_a, eps_a, None if b is None else b.names, shifts_b, eps_b,
                   sigmas_a=sigmas["a"], sigmas_b=sigmas["b"], typical_a=typical_a,
                   typical_b=typical_b)
    acc = run(acc, "cka: example block pairs", a, *([] if b is None else [b]))
    info.update({"batch_size": batch, "blocks": len(bounds),
                 "scheduler": "local" if client is None else "dask.distributed",
                 "streamed": "gram block pairs"})
    result = acc.compute(estimator)
    if kernel == "rbf":
        info["sigma_a"], info["sigma_b"] = result.attrs["sigma_a"], result.attrs["sigma_b"]
    return result, info


def _median_sigma(median: float, norm_max: float, p: int, eps: float,
                  threshold: float) -> float:
    """``threshold * sqrt(median)``; NaN where the median is 0 up to the distances'
    rounding (``4 p eps max |x - s|^2``): identical rows need not give exactly 0 in
    blocks, and a bandwidth from rounding noise would be a number without meaning."""
    return threshold * math.sqrt(median) if median > 4 * p * eps * norm_max else math.nan


def _reader(side: Side, layer: int, rows: slice) -> Callable[[], np.ndarray]:
    return lambda: read(side.block(layer, rows))
