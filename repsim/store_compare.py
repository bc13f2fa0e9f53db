"""Many models at once: every model against every model, every layer against every layer.

:func:`compare_many` captures each live model once (through :func:`repsim.extract`, into a
temporary store) or reads each store once, checks that all of them hold the same examples
(:func:`repsim.store.match_examples` against the first), and fills a
``(model_a, model_b, layer_a, layer_b)`` array with :func:`repsim.similarity_matrix`;
:func:`best_matches` summarises it as the best-matching layer of every layer (the max over
layer pairs of Huh et al.'s platonic-representation study).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import xarray as xr

from . import _registry as R
from . import store as S
from . import store_stream as SS
from .similarity import similarity_matrix

__all__ = ["best_matches", "compare_many"]


def _as_store(name: str, entry: Any, data, layers, tmp: str, extract_options: dict):
    if isinstance(entry, xr.Dataset):
        return entry
    if isinstance(entry, (str, os.PathLike)):
        return S.open_activations(entry)
    if hasattr(entry, "named_modules"):  # a torch.nn.Module, captured once
        if data is None:
            raise ValueError(f"models[{name!r}] is a model: pass data= (and layers=) to "
                             "capture it")
        from .adapters._extract import extract

        out = os.path.join(tmp, f"{len(os.listdir(tmp))}.zarr")
        ds = extract(entry, data, layers=layers, out=out, progress=False, **extract_options)
        return ds
    raise TypeError(f"models[{name!r}] must be a torch.nn.Module, a store path or an "
                    f"xarray.Dataset from repsim.open_activations; got {type(entry).__name__}")


def compare_many(models: dict[str, Any], *, measure: str = "cka_linear", layers: Any = None,
                 data: Any = None, align: str = "strict", progress: bool = False,
                 extract_options: dict | None = None, batch_size: int | None = None,
                 client: Any = None, **options) -> xr.DataArray:
    """A measure between every pair of models, layer by layer.

    Parameters
    ----------
    models : dict name -> torch.nn.Module, store path or xarray.Dataset
        Live models are captured once over ``data`` (:func:`repsim.extract` into a
        temporary store); stores are read once (every layer, only the compared rows).
    measure : str, default "cka_linear"
        Any name :func:`repsim.measure` accepts.
    layers : layer spec, optional
        The modules to capture from live models (:func:`repsim.select_layers`); stores
        keep their layers.
    data : iterable, optional
        The batches live models run on (as for :func:`repsim.extract`).
    align : {"strict", "ids"}, default "strict"
        Every model's ``example_id`` must equal the first's (``"strict"``), or all are
        cut to the ids every model holds, in the first's order (``"ids"``).
    progress : bool, default False
    extract_options : dict, optional
        More arguments of :func:`repsim.extract` (``pooling``, ``forward``, ...).
    batch_size : int, optional
        Stream the stores in blocks of examples (the linear CKA measures only, as in
        :func:`repsim.similarity_matrix`): one symmetric pass over the layers of all
        models together, every store read block by block instead of whole.
    client : distributed.Client, optional
        Run that pass on a dask cluster (default: the active client, for measures that
        stream; ``False``: this process).
    **options
        Options of the measure (see :func:`repsim.similarity_matrix`).

    Returns
    -------
    xarray.DataArray, shape (M, M, L, L)
        dims ``("model_a", "model_b", "layer_a", "layer_b")``; ``layer_a``/``layer_b`` are
        layer positions (models may differ in depth; missing positions are NaN), with the
        names in coords ``layer_name_a`` (model_a, layer_a) and ``layer_name_b``; attrs
        ``measure``, ``n``, ``align``, ``examples_dropped`` (per model, in model order).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((50, 6))
    >>> stores = {"a": {"l0": x, "l1": x @ rng.standard_normal((6, 6))},
    ...           "b": {"l0": x[:, ::-1].copy()}}
    >>> import xarray as xr
    >>> ds = {k: xr.Dataset({n: (("example", n + "_feature"), v) for n, v in d.items()})
    ...       for k, d in stores.items()}
    >>> sim = repsim.compare_many(ds)
    >>> sim.dims, sim.shape
    (('model_a', 'model_b', 'layer_a', 'layer_b'), (2, 2, 2, 2))
    >>> round(float(sim.sel(model_a="a", model_b="b", layer_a=0, layer_b=0)), 6)
    1.0
    """
    if not isinstance(models, dict) or len(models) < 1:
        raise TypeError("models must be a dict name -> model or store with at least one entry")
    m = R.resolve(measure)
    names = [str(k) for k in models]
    with tempfile.TemporaryDirectory() as tmp:
        stores = [_as_store(n, e, data, layers, tmp, dict(extract_options or {}))
                  for n, e in models.items()]
        indices, dropped = _match_all(names, [S._ids_of(ds) for ds in stores], align)
        opts = m.bind(options)
        client = SS.stream_client(m, opts, True, batch_size, client)
        if client is not False:  # one pass over every model's layers at once
            sides = [SS.side_of(ds, idx, f"models[{k!r}]")
                     for k, ds, idx in zip(names, stores, indices)]
            joint, _ = SS.block_cka(SS.joined(sides, "models"), None,
                                    estimator=opts["estimator"], batch_size=batch_size,
                                    client=client, progress=progress)
            layer_lists = [s.names for s in sides]
        else:
            loaded = [S._load(ds, idx) for ds, idx in zip(stores, indices)]  # each read once
            layer_lists = [list(d) for d in loaded]
    depth = max(len(d) for d in layer_lists)
    values = np.full((len(names),) * 2 + (depth,) * 2, np.nan)
    if client is not False:
        ends = np.cumsum([0] + [len(d) for d in layer_lists])
        for i, j in np.ndindex(len(names), len(names)):
            values[i, j, :ends[i + 1] - ends[i], :ends[j + 1] - ends[j]] = \
                joint.values[ends[i]:ends[i + 1], ends[j]:ends[j + 1]]
        n = joint.attrs["n"]
    else:
        n = _pairs_of_models(loaded, values, m.is_symmetric(opts), measure, progress, options)
    layer_names = np.array([list(d) + [""] * (depth - len(d)) for d in layer_lists],
                           dtype=object)
    return xr.DataArray(
        values, dims=("model_a", "model_b", "layer_a", "layer_b"),
        coords={"model_a": names, "model_b": names, "layer_a": np.arange(depth),
                "layer_b": np.arange(depth),
                "layer_name_a": (("model_a", "layer_a"), layer_names),
                "layer_name_b": (("model_b", "layer_b"), layer_names)},
        name=m.name,
        attrs={"measure": m.name, "n": n, "align": align, "examples_dropped": dropped,
               "kind": m.kind},
    )


def _pairs_of_models(loaded, values, symmetric, measure, progress, options):
    """Fill ``values[i, j]`` with the measure between model i's and model j's layers (in
    memory); returns ``n``."""
    n = None
    for i, a in enumerate(loaded):
        for j, b in enumerate(loaded):
            if j < i and symmetric:  # m(b_l, a_k) = m(a_k, b_l)
                values[i, j] = values[j, i].T
                continue
            sim = similarity_matrix(a, b, measure=measure, progress=progress, **options)
            values[i, j, :len(a), :len(b)] = sim.values
            n = sim.attrs["n"]
    return n


def _match_all(names: list[str], ids: list[np.ndarray | None], align: str):
    """Rows of every model to compare (None: all) and how many each loses, ids matched
    against the first model's (or the ids all of them hold, ``align="ids"``)."""
    known = [i for i in ids if i is not None]
    if not known:
        if align != "strict":
            raise ValueError("align='ids' needs example ids in every store")
        return [None] * len(ids), [0] * len(ids)
    if len(known) != len(ids):
        raise ValueError("some models have example ids and some do not; give every store "
                         "ids, or none")
    first = known[0]
    if align == "ids":
        common = set(first.tolist())
        for other in known[1:]:
            common &= set(other.tolist())
        first = np.asarray([v for v in first.tolist() if v in common])
    indices: list[np.ndarray | None] = []
    dropped: list[int] = []
    for name, other in zip(names, known):
        _, index, _ = S.match_examples(first, other, align=align, labels=(names[0], name))
        indices.append(index)
        dropped.append(len(other) - (len(first) if index is None else len(index)))
    return indices, dropped


def best_matches(result: xr.DataArray) -> xr.Dataset:
    """The best-matching layer of model_b for every layer of model_a.

    Parameters
    ----------
    result : xarray.DataArray
        From :func:`compare_many`.

    Returns
    -------
    xarray.Dataset
        ``score`` (model_a, model_b, layer_a): the best value over ``layer_b`` (the max of a
        similarity, the min of a distance, as the measure's ``kind`` says); ``layer_b``:
        its position (-1 where a row is all NaN); ``model_score`` (model_a, model_b): the
        mean of ``score`` over model_a's layers (the model x model matrix).
    """
    vals = np.asarray(result.values)
    distance = result.attrs.get("kind") == "distance"
    filled = np.where(np.isnan(vals), np.inf if distance else -np.inf, vals)
    pos = filled.argmin(-1) if distance else filled.argmax(-1)
    score = np.take_along_axis(vals, pos[..., None], -1)[..., 0]
    pos = np.where(np.isnan(score), -1, pos)
    dims = ("model_a", "model_b", "layer_a")
    coords = {d: result[d].values for d in dims}
    return xr.Dataset({"score": (dims, score), "layer_b": (dims, pos),
                       "model_score": (dims[:2], _mean_over_layers(score))},
                      coords=coords, attrs=dict(result.attrs))


def _mean_over_layers(score: np.ndarray) -> np.ndarray:
    count = np.isfinite(score).sum(-1)
    total = np.where(np.isfinite(score), score, 0.0).sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
