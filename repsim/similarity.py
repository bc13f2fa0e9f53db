"""Any registered measure by name: for one pair, or as a layer x layer matrix.

:func:`measure` looks a measure up (canonical name, alias or similarity-repository id),
:func:`compare` computes it for one pair of representations and
:func:`similarity_matrix` for every pair of layers -- each layer prepared once (its
centred gram, k-NN lists, RDM, SVD basis or moments), each pair from the prepared
layers, half of a symmetric matrix computed and mirrored, and the CKA measures through
the one-product path of :func:`repsim.cka_matrix`. Everything about a measure comes from
its declaration in the registry (:mod:`repsim._registry`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from . import _backend as B
from . import _registry as R
from . import _validation as V
from ._io import progress as _progress
from .results import similarity_array
from . import store_stream as SS
from .store import resolve_inputs

__all__ = ["compare", "measure", "measure_names", "similarity_matrix"]


def measure(name: str) -> R.Measure:
    """The registered measure called ``name``: a callable with its metadata.

    Parameters
    ----------
    name : str
        A canonical name (``"cka_linear"``, ``"procrustes_angular"``), an alias
        (``"cka"``, ``"procrustes"``, ``"cka_debiased"``) or an id of the similarity
        repository's naming grammar (Cloos et al. 2024:
        ``"cka-kernel=linear-hsic=song-score"``, ``"procrustes-angular"``; a
        ``"measure/<repo>/"`` prefix is ignored).

    Returns
    -------
    Measure
        ``m(x, y, **options)`` computes it; ``m.name`` (canonical), ``m.function`` (the
        ``repsim`` function), ``m.options`` (its preset options), ``m.aliases``,
        ``m.repository`` (similarity-repository ids), ``m.kind``, ``m.range``,
        ``m.invariances``, ``m.symmetric``, ``m.streaming``, ``m.cost``,
        ``m.definition``, ``m.reference``, ``m.chance``.

    Raises
    ------
    ValueError
        An unknown name, with the nearest known one ("did you mean ...?").

    Examples
    --------
    >>> import repsim
    >>> m = repsim.measure("cka-kernel=linear-hsic=song-score")
    >>> m.name, m.function, dict(m.options)
    ('cka_linear_unbiased', 'cka', {'estimator': 'unbiased'})
    >>> repsim.measure("procrustes").name
    'procrustes_angular'
    """
    return R.resolve(name)


def measure_names(*, aliases: bool = False) -> list[str] | dict[str, str]:
    """The registered measures' names.

    Parameters
    ----------
    aliases : bool, default False
        Return every accepted name instead (canonical names, aliases, similarity-repository
        ids), mapped to its canonical name.

    Returns
    -------
    list of str or dict str -> str
        Canonical names in the order of :func:`repsim.measures`; with ``aliases=True`` the
        dict of all accepted names.

    Examples
    --------
    >>> import repsim
    >>> repsim.measure_names()[:3]
    ['cka_linear', 'cka_linear_unbiased', 'cka_rbf']
    >>> repsim.measure_names(aliases=True)["cka_debiased"]
    'cka_linear_unbiased'
    """
    V.Flag()(aliases, "aliases")
    return R.names("all") if aliases else R.names()


def compare(x, y, measure: str = "cka_linear", **options):
    """One measure between two representations of the same examples.

    Parameters
    ----------
    x, y : array, shape (n, ...)
        numpy arrays or torch tensors (not mixed).
    measure : str, default "cka_linear"
        Any name :func:`measure` accepts.
    **options
        Options of the measure's function, overriding the measure's presets
        (``compare(x, y, "cka_linear", estimator="unbiased")``); unknown names and bad
        values are refused with the nearest valid one.

    Returns
    -------
    scalar
        What the function returns (a numpy float64 or a 0-d tensor).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.random.default_rng(0).standard_normal((100, 8))
    >>> float(repsim.compare(x, 2 * x, "procrustes")) < 1e-6
    True
    >>> bool(repsim.compare(x, x, "cka", estimator="debiased") == 1.0)
    True
    """
    m = R.resolve(measure)
    opts = m.bind(options)
    return m.family.function(x, y, **opts)


def _layers(layers, label):
    names, arrays = V.layer_items(layers, label)
    return names, [B.asarray(a, f"{label}[{n!r}]") for n, a in zip(names, arrays)]


def _check_examples(names_a, arrays_a, names_b, arrays_b):
    labels = [f"layers_a[{n!r}]" for n in names_a] + [f"layers_b[{n!r}]" for n in names_b]
    arrays = arrays_a + arrays_b
    B.namespace(*arrays, names=labels)
    for a, label in zip(arrays, labels):
        if len(a.shape) < 1:
            raise ValueError(f"{label} must have shape (n, ...); got a scalar")
        V.check_same_n(int(arrays[0].shape[0]), int(a.shape[0]), labels[0], label,
                       arrays[0].shape, a.shape)
    return int(arrays[0].shape[0])


def _netcdf_value(value):
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def similarity_matrix(layers_a, layers_b=None, *, measure: str = "cka_linear",
                      progress: bool = True, align: str = "strict",
                      batch_size: int | None = None, client: Any = None, **options):
    """A registered measure between every pair of layers, as a labelled matrix.

    Each layer is prepared once (its centred gram, k-NN lists, RDM, SVD basis or
    moments, as the measure's declaration says), every pair is computed from the two
    prepared layers, and for a symmetric measure within one set of layers only the upper
    half is computed and mirrored. ``cka_linear``, ``cka_linear_unbiased`` and
    ``cka_rbf`` go through :func:`repsim.cka_matrix` (all pairs from one product).
    Values equal the per-pair function's (``measure(x, y)``) up to rounding.

    Parameters
    ----------
    layers_a : sequence or dict name -> array, each (n, ...), or xarray.Dataset
        Representations of the same ``n`` examples (one library, one device), or a store
        from :func:`repsim.open_activations` (its layers in the captured order, each read
        once, only the rows compared).
    layers_b : sequence, dict or xarray.Dataset, optional
        Another model's layers; None compares ``layers_a`` with itself. Two stores must
        hold the same ``example_id`` in the same order (see ``align``).
    measure : str, default "cka_linear"
        Any name :func:`measure` accepts.
    progress : bool, default True
        Show progress (layers prepared, pairs computed) on stderr.
    align : {"strict", "ids"}, default "strict"
        Two sides with ``example_id`` (stores): ``"strict"`` refuses a different set or
        order of ids, naming the first mismatch and the counts; ``"ids"`` compares the ids
        both hold, in ``layers_a``'s order, and records ``examples_dropped_a`` /
        ``examples_dropped_b`` in the attrs (:func:`repsim.store.match_examples`).
    batch_size : int, optional
        Stream stores in blocks of ``batch_size`` examples instead of reading each layer
        whole (default with ``client``: the store's chunk along ``example``); the
        full-data value, the same as in memory up to rounding. The CKA measures (linear and
        RBF, biased and unbiased, ``precision="float32"``) stream from pairs of example
        blocks (:mod:`repsim._block_cka`; memory: two blocks of one layer, ``(L_a + L_b)
        batch_size^2`` and ``2 (L_a + L_b) n`` floats; every block is read about ``k + 1``
        times for ``k`` blocks; RBF's median bandwidth is selected exactly in typically two
        more passes, :mod:`repsim._block_median`, and is in the attrs ``sigma_a`` /
        ``sigma_b``); distance correlation (the distance kernel) and Pearson RSA (sums of
        RDM entries, :mod:`repsim._block_rdm`) from the same block pairs; mutual k-NN,
        Jaccard k-NN and rank similarity from neighbour lists merged over them
        (:mod:`repsim._block_neighbours`; memory ``16 (k + 1) n`` bytes a layer); the measures with a form from feature moments (CCA, SVCCA,
        PWCCA, the shape metrics, ridge R², GULP, NBS) through
        :class:`repsim.FeatureMoments` (each block read once; memory: about ``(sum of
        widths)^2`` float64, checked before the first block); other measures (RSA's rank
        comparisons, second-order cosine, CKNNA) are refused.
    client : distributed.Client, optional
        Run that streaming on a dask cluster (block pairs as tasks, their sum states
        tree-merged; :mod:`repsim.store_stream`). Default: the active client, if there is
        one and the measure streams; measures without the form then read each layer.
        ``False``: this process, whatever client is active.
    **options
        Options of the measure's function, over its presets (see :func:`compare`).

    Returns
    -------
    xarray.DataArray, shape (L_a, L_b)
        dims ``("layer_a", "layer_b")``, named after the measure; attrs ``measure``
        (canonical name), ``function``, ``similarity_repository`` (its id, ``"none"``
        when the repository has no such measure), ``options`` and each option by name,
        ``symmetric``, ``n``, ``repsim_version`` (streamed: ``batch_size``, ``blocks``,
        ``scheduler``, ``streamed``). Which estimator a default means (the
        biased full-data CKA here, the unbiased minibatch one in
        :class:`repsim.MinibatchCKA`) is in ``estimator`` where the measure has one.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((60, 5))
    >>> layers = {"x": x, "2x": 2 * x, "noise": rng.standard_normal((60, 5))}
    >>> sim = repsim.similarity_matrix(layers, measure="procrustes", progress=False)
    >>> round(float(sim.sel(layer_a="x", layer_b="2x")), 6)
    0.0
    >>> sim.attrs["measure"], sim.attrs["similarity_repository"]
    ('procrustes_angular', 'procrustes-angular')
    """
    from . import __version__

    m = R.resolve(measure)
    opts = m.bind(options)
    V.Flag()(progress, "progress")
    same = layers_b is None
    symmetric = same and m.is_symmetric(opts)
    stores = any(isinstance(x, xr.Dataset) for x in (layers_a, layers_b))
    client, form = SS.stream_client(m, opts, stores, batch_size, client, options)
    stream: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if client is not False:
            a, b, id_attrs = SS.sides(layers_a, layers_b, align)
            sim, stream = SS.streamed_matrix(form, a, b, m, opts, options, batch_size=batch_size,
                                             client=client, progress=progress)
            values, names_a, n = sim.values, a.names, a.n
            names_b = names_a if b is None else b.names
        else:
            values, names_a, names_b, n, id_attrs = _in_memory(
                m, opts, layers_a, layers_b, align, symmetric, progress)
    seen = set()
    for w in caught:  # one warning per message, however many pairs raised it
        if str(w.message) not in seen:
            seen.add(str(w.message))
            warnings.warn(w.message, w.category, stacklevel=V.user_stacklevel())
    attrs: dict[str, Any] = {
        "measure": m.name, "function": m.function,
        "similarity_repository": m.repository_id or "none",
        "options": ", ".join(f"{k}={v!r}" for k, v in opts.items()),
        "symmetric": bool(symmetric), "n": n, "repsim_version": __version__, **id_attrs,
        **stream,
    }
    for key, value in opts.items():
        attrs.setdefault(key, _netcdf_value(value))
    return similarity_array(values, names_a, names_b, attrs, name=m.name)


def _in_memory(m, opts, layers_a, layers_b, align, symmetric, progress):
    """Every layer read whole (a store's once), then the measure's matrix or pair path."""
    layers_a, layers_b, id_attrs = resolve_inputs(layers_a, layers_b, align)
    names_a, arrays_a = _layers(layers_a, "layers_a")
    same = layers_b is None
    names_b, arrays_b = (names_a, arrays_a) if same else _layers(layers_b, "layers_b")
    n = _check_examples(names_a, arrays_a, [] if same else names_b, [] if same else arrays_b)
    family = m.family
    if family.matrix is not None:
        values = np.asarray(family.matrix(dict(zip(names_a, arrays_a)),
                                          None if same else dict(zip(names_b, arrays_b)),
                                          **opts), dtype=np.float64)
    else:
        values = _pairwise(family, opts, names_a, arrays_a, names_b, arrays_b, same,
                           symmetric, progress, m.name)
    return values, names_a, names_b, n, id_attrs


def _pairwise(family, opts, names_a, arrays_a, names_b, arrays_b, same, symmetric, progress,
              title):
    fn = family.function
    prepare = family.prepare or (lambda x, name, **_: x)
    pair = family.pair or (lambda a, b, **o: fn(a, b, **o))
    todo = [("layers_a", names_a, arrays_a)] + ([] if same else [("layers_b", names_b, arrays_b)])
    total = sum(len(t[1]) for t in todo)
    prepared = []
    with _progress(total=total, desc=f"{title}: layers", enabled=progress, unit="layer") as bar:
        for label, names, arrays in todo:
            side = []
            for name, a in zip(names, arrays):
                side.append(prepare(a, f"{label}[{name!r}]", **opts))
                bar.update(1)
            prepared.append(side)
    prep_a = prepared[0]
    prep_b = prep_a if same else prepared[1]
    pairs = [(i, j) for i in range(len(prep_a)) for j in range(len(prep_b))
             if not (symmetric and j < i)]
    values = np.full((len(prep_a), len(prep_b)), np.nan)
    with _progress(total=len(pairs), desc=f"{title}: pairs", enabled=progress,
                   unit="pair") as bar:
        for i, j in pairs:
            values[i, j] = B.item(pair(prep_a[i], prep_b[j], **opts))
            bar.update(1)
    if symmetric:
        lower = np.tril_indices(len(prep_a), -1)
        values[lower] = values.T[lower]
    return values
