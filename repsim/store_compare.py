"""Many models at once: every model against every model, every layer against every layer.

:func:`compare_many` captures each live model once (through :func:`repsim.extract`, into a
temporary store) or reads each store once, checks that all of them hold the same examples
(:func:`repsim.store.match_examples` against the first), and fills a
``(model_a, model_b, layer_a, layer_b)`` array with :func:`repsim.similarity_matrix`;
:func:`best_matches` summarises it as the best-matching layer of every layer (the max over
layer pairs of Huh et al.'s platonic-representation study), :func:`seed_groups` as means and
spreads over the pairs of models of two groups (:func:`repsim.aggregate_seeds`), and
:func:`model_map` as a map of the models (metric MDS of the model x model distances).
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

__all__ = ["best_matches", "compare_many", "model_distances", "model_map", "seed_groups"]

#: measure kinds whose smaller values mean more alike
DISTANCE_KINDS = ("distance", "metric")


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
        Stream the stores in blocks of examples (linear CKA from gram blocks, the
        measures with a form from feature moments through them, as in
        :func:`repsim.similarity_matrix`; others refused): one symmetric pass over the
        layers of all models together, every store read block by block instead of whole.
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
        client, form = SS.stream_client(m, opts, True, batch_size, client, options)
        if client is not False:  # one pass over every model's layers at once
            sides = [SS.side_of(ds, idx, f"models[{k!r}]")
                     for k, ds, idx in zip(names, stores, indices)]
            joint_side = SS.joined(sides, "models")
            joint, _ = SS.streamed_matrix(form, joint_side, None, m, opts, options,
                                          batch_size=batch_size, client=client,
                                          progress=progress)
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
        n = joint_side.n
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
        similarity, the min of a distance or metric, as the measure's ``kind`` says); ``layer_b``:
        its position (-1 where a row is all NaN); ``model_score`` (model_a, model_b): the
        mean of ``score`` over model_a's layers (the model x model matrix).
    """
    vals = np.asarray(result.values)
    distance = result.attrs.get("kind") in DISTANCE_KINDS
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


def seed_groups(result: xr.DataArray, seeds: dict[str, Any], *, level: float = 0.9) -> xr.Dataset:
    """Means and spreads over the model pairs of every two groups (e.g. training seeds).

    Every pair of distinct models ``(a, b)`` with ``a`` in group ``g`` and ``b`` in group
    ``h`` is one sample of the comparison ``g`` vs ``h``; the samples are summarised by
    :func:`repsim.aggregate_seeds`. Within a group the pairs are its ordered pairs of
    distinct models (a model against itself is never a sample).

    Parameters
    ----------
    result : xarray.DataArray
        With dims ``model_a`` and ``model_b`` (and any others, kept): the result of
        :func:`compare_many`, or a model x model matrix such as
        ``best_matches(result)["model_score"]``.
    seeds : dict model name -> group
        The group of every model in ``result``.
    level : float, default 0.9
        Level of the t interval (as in :func:`repsim.aggregate_seeds`).

    Returns
    -------
    xarray.Dataset
        The variables of :func:`repsim.aggregate_seeds` (``mean``, ``std``, ``stderr``,
        ``ci_low``, ``ci_high``, ``min``, ``max``) with dims ``(group_a, group_b, ...)``,
        and ``n_pairs`` (group_a, group_b); NaN where a group pair has no sample (a
        one-model group against itself) and spreads NaN where it has one. The pairs share
        models, and for a symmetric measure ``(a, b)`` and ``(b, a)`` are the same
        comparison transposed, so they are not independent: ``std`` describes the spread,
        the interval is narrower than one over independent seeds would be.

    Examples
    --------
    >>> import numpy as np, xarray as xr, repsim
    >>> sim = xr.DataArray(np.array([[1.0, 0.9, 0.5], [0.9, 1.0, 0.7], [0.5, 0.7, 1.0]]),
    ...                    dims=("model_a", "model_b"),
    ...                    coords={"model_a": ["a0", "a1", "b0"], "model_b": ["a0", "a1", "b0"]})
    >>> out = repsim.seed_groups(sim, {"a0": "A", "a1": "A", "b0": "B"})
    >>> out["mean"].sel(group_a="A", group_b="B").item(), int(out["n_pairs"].sel(group_a="A", group_b="B"))
    (0.6, 2)
    """
    from .stats import aggregate_seeds

    if not isinstance(result, xr.DataArray) or not {"model_a", "model_b"} <= set(result.dims):
        raise TypeError("result must be a DataArray with dims model_a and model_b "
                        "(from compare_many or best_matches(...)['model_score'])")
    models_a = [str(v) for v in result["model_a"].values]
    models_b = [str(v) for v in result["model_b"].values]
    missing = [m for m in dict.fromkeys(models_a + models_b) if m not in seeds]
    if missing:
        raise ValueError(f"seeds has no group for the model(s) {missing}")
    groups = list(dict.fromkeys(str(seeds[m]) for m in models_a + models_b))
    rest = result.transpose("model_a", "model_b", ...).reset_coords(drop=True)
    rest_dims = rest.dims[2:]
    values = np.asarray(rest.values, dtype=np.float64)
    shape = values.shape[2:]
    names = ("mean", "std", "stderr", "ci_low", "ci_high", "min", "max")
    out = {k: np.full((len(groups),) * 2 + shape, np.nan) for k in names}
    n_pairs = np.zeros((len(groups),) * 2, dtype=np.int64)
    for gi, g in enumerate(groups):
        for hi, h in enumerate(groups):
            samples = [values[i, j] for i, a in enumerate(models_a) for j, b in enumerate(models_b)
                       if a != b and str(seeds[a]) == g and str(seeds[b]) == h]
            n_pairs[gi, hi] = len(samples)
            if not samples:
                continue
            stacked = xr.DataArray(np.stack(samples), dims=("seed",) + rest_dims)
            agg = aggregate_seeds(stacked, level=level)
            for k in names:
                out[k][gi, hi] = agg[k].values
    dims = ("group_a", "group_b") + rest_dims
    coords: dict[str, Any] = {"group_a": groups, "group_b": groups}
    coords.update({d: result[d].values for d in rest_dims if d in result.coords})
    data = {k: (dims, v) for k, v in out.items()}
    data["n_pairs"] = (("group_a", "group_b"), n_pairs)
    attrs = {k: v for k, v in result.attrs.items() if k in ("measure", "n", "kind")}
    return xr.Dataset(data, coords=coords, attrs={**attrs, "level": level, "estimate": "mean"})


def model_distances(result: xr.DataArray) -> xr.DataArray:
    """The model x model distance matrix of a comparison of many models.

    Parameters
    ----------
    result : xarray.DataArray
        The 4-d result of :func:`compare_many` (reduced by :func:`best_matches` to its
        ``model_score``) or a 2-d ``(model_a, model_b)`` matrix with the measure's ``kind``
        in its attrs.

    Returns
    -------
    xarray.DataArray, shape (M, M)
        dims ``("model_a", "model_b")``: ``1 - s`` of a similarity ``s`` (the values of a
        distance or metric), made symmetric (the mean of the matrix and its transpose),
        with zeros on the diagonal.
    """
    if not isinstance(result, xr.DataArray):
        raise TypeError(f"result must be a DataArray from compare_many; got {type(result).__name__}")
    if result.ndim == 4:
        result = best_matches(result)["model_score"].assign_attrs(result.attrs)
    if result.dims != ("model_a", "model_b") or result.shape[0] != result.shape[1]:
        raise ValueError(f"result must be a compare_many result or a square (model_a, "
                         f"model_b) matrix; got dims {result.dims} and shape {result.shape}")
    values = np.asarray(result.values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the model x model matrix has NaN or infinite entries (a model "
                         "without a layer, a constant layer?); cannot place the models")
    distance = values if result.attrs.get("kind") in DISTANCE_KINDS else 1.0 - values
    distance = (distance + distance.T) / 2
    np.fill_diagonal(distance, 0.0)
    return xr.DataArray(distance, dims=("model_a", "model_b"),
                        coords={"model_a": result["model_a"].values,
                                "model_b": result["model_b"].values},
                        attrs={**result.attrs, "distance": "1 - similarity"
                               if result.attrs.get("kind") not in DISTANCE_KINDS else "measure"})


def model_map(result: xr.DataArray, *, n_components: int = 2, seed: int = 0) -> xr.DataArray:
    """Place the models in the plane: metric MDS of their distance matrix.

    Needs scikit-learn (``pip install "repsim-cka[study]"``), imported on first call.

    Parameters
    ----------
    result : xarray.DataArray
        As for :func:`model_distances` (a :func:`compare_many` result, or a model x model
        matrix).
    n_components : int, default 2
    seed : int, default 0
        Random state of :class:`sklearn.manifold.MDS` (its SMACOF iterations).

    Returns
    -------
    xarray.DataArray, shape (M, n_components)
        dims ``("model", "component")``; attrs ``stress``: Kruskal's stress-1,
        ``sqrt(sum (d_ij - D_ij)^2 / sum D_ij^2)`` of the map's distances ``d`` against the
        model distances ``D`` (0: reproduced exactly), and the distances' attrs.

    References
    ----------
    Kruskal (1964), "Multidimensional scaling by optimizing goodness of fit to a nonmetric
    hypothesis", Psychometrika 29. scikit-learn's :class:`sklearn.manifold.MDS` (SMACOF,
    initialised by classical MDS where available).
    """
    import inspect

    from sklearn.manifold import MDS

    dist = model_distances(result)
    params = inspect.signature(MDS).parameters
    if "metric_mds" in params:  # scikit-learn >= 1.8
        mds = MDS(n_components=n_components, metric="precomputed", metric_mds=True,
                  init="classical_mds", random_state=seed)
    else:
        mds = MDS(n_components=n_components, dissimilarity="precomputed", metric=True,
                  n_init=4, random_state=seed)
    target = dist.values
    coords = mds.fit_transform(target) if len(target) > 1 else np.zeros((1, n_components))
    diff = coords[:, None, :] - coords[None, :, :]
    mapped = np.sqrt((diff ** 2).sum(-1))
    denom = (target ** 2).sum()
    stress = float(np.sqrt(((mapped - target) ** 2).sum() / denom)) if denom > 0 else 0.0
    return xr.DataArray(coords, dims=("model", "component"),
                        coords={"model": dist["model_a"].values,
                                "component": np.arange(n_components)},
                        attrs={**dist.attrs, "stress": stress})
