"""Stores streamed in blocks of examples, on one process or on a dask.distributed cluster.

Two kinds of work read a store (:func:`repsim.open_activations`) block by block and never
hold a layer whole:

* :func:`stream_store` feeds an accumulator with ``update(acts_a, acts_b)`` --
  :class:`repsim.MinibatchCKA`, :class:`repsim.FeatureMoments` -- one block of
  ``batch_size`` examples at a time;
* :mod:`repsim.store_blocks` gives full-data CKA (linear or RBF, the median bandwidth
  selected exactly by :mod:`repsim._block_median`), distance correlation, Pearson RSA and
  the k-NN measures of neighbour lists -- the values the loaded layers give -- from pairs
  of example blocks;
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
import sys
from typing import Any, Callable, NamedTuple

import numpy as np
import xarray as xr

from . import _registry as R
from . import _validation as V
from . import store as S
from ._io import progress as _progress
from .results import similarity_array

__all__ = ["example_blocks", "moment_matrix", "resolve_client", "stream_store"]


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
    pairs of example blocks; "" when it has one (the registry's ``blocks``, under its
    ``blocks_when``)."""
    if m.family.blocks is None:
        return "no form from example block pairs"
    return m.family.blocks_when(opts) if m.family.blocks_when is not None else ""


def stream_client(m: Any, opts: dict, stores: bool, batch_size: Any, client: Any,
                  options: dict | None = None) -> tuple[Any, str]:
    """``(client, form)``: the client to stream with (None: this process, False: read
    layers whole) and the measure's form in blocks of examples, ``"blocks"`` (the
    registry's form from example block pairs, :mod:`repsim.store_blocks`) or ``"moments"``
    (:func:`moment_matrix`).

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
    :func:`stream_client` chose: the registry's form in example block pairs
    (:mod:`repsim.store_blocks`) or :func:`moment_matrix`."""
    from . import store_blocks as SB

    kind = m.family.blocks if form == "blocks" else None
    if kind in ("rdm", "neighbour_lists"):
        if kind == "rdm":  # Pearson RSA: sums of RDM entries
            from ._block_rdm import rsa_matrix_in_blocks

            values, info = rsa_matrix_in_blocks(a, b, opts, batch_size=batch_size,
                                                client=client, progress=progress)
        else:  # a k-NN measure of merged neighbour lists
            values, info = SB.neighbour_matrix_in_blocks(a, b, m.family.function.__name__,
                                                         opts, batch_size=batch_size,
                                                         client=client, progress=progress)
        return similarity_array(values, a.names, a.names if b is None else b.names, {}), info
    if kind in ("gram", "distance"):
        return SB.block_cka(a, b, estimator=opts["estimator"],
                            kernel="distance" if kind == "distance" else opts["kernel"],
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
