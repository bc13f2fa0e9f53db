"""Activation stores: saved layers with the identity of their examples.

A store holds one variable per layer, dims ``(example, <layer>_feature)``, an
``example_id`` coordinate along ``example`` and attributes that explain it (the layer
order as captured, the model's parameter fingerprint, the pooling, the storage dtype, the
repsim version). :func:`repsim.extract` writes one (a Zarr store through xarray, or a
``.npz`` file for small cases); :func:`open_activations` opens it lazily (dask-backed), and
every comparison of two stores checks that they hold the same examples in the same order
(:func:`match_examples`) -- the silent failure of two saved files whose rows are not the
same inputs (a shuffled side takes CKA from 0.61 to 0.06, see the FAQ).

Here: the format (reserved names, the ``.npz`` writer), opening (:func:`open_activations`,
:func:`open_source` for the ``repsim`` command), and example identity
(:func:`match_examples`, :func:`resolve_inputs` for :func:`repsim.similarity_matrix`).
torch is never imported here; the extraction lives in :mod:`repsim.adapters._extract`.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np
import xarray as xr

from ._io import atomic_write
from ._readers import InputError, Source, display, q

__all__ = ["ALIGNS", "IDS", "IdSource", "is_zarr", "match_examples", "open_activations",
           "open_source", "resolve_inputs", "store_indices", "write_npz",
           "write_safetensors"]

#: the example dimension and the identity coordinate of every store
EXAMPLE, IDS = "example", "example_id"
#: the attribute that marks a repsim store, and its format version
FORMAT_KEY, FORMAT = "repsim_store", "repsim-activations/1"
#: reserved ``.npz`` members: the example ids and the store's attributes (JSON)
NPZ_IDS, NPZ_ATTRS = "__example_id__", "__repsim_attrs__"
#: how two stores' examples are matched: the same ids in the same order, or by id
ALIGNS = ("strict", "ids")


def feature_dim(name: str) -> str:
    """The feature dimension of layer ``name``: ``"<name>_feature"``."""
    return f"{name}_feature"


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Zarr store (a folder with ``zarr.json`` or ``.zgroup``)."""
    path = os.fspath(path)
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zgroup"))


# ------------------------------------------------------------------------ .npz output

def write_npz(path: str | os.PathLike, layers: dict[str, np.ndarray], ids: np.ndarray,
              attrs: dict[str, Any]) -> None:
    """Write a small store as one ``.npz`` file, atomically.

    Members (stored, not compressed, so they are memory-mapped on reading): every layer in
    ``layers``' order, then ``__example_id__`` (the ids) and ``__repsim_attrs__`` (the
    attributes), each a JSON text as ``uint8`` bytes. :func:`open_activations` and the
    ``repsim`` command read them back; ``numpy.load`` sees them as two more arrays.
    """
    clash = [n for n in layers if n in (NPZ_IDS, NPZ_ATTRS)]
    if clash:
        raise ValueError(f"layer name {clash[0]!r} is reserved in a .npz store")
    members = dict(layers)
    members[NPZ_IDS] = _json_bytes(np.asarray(ids).tolist())
    members[NPZ_ATTRS] = _json_bytes(attrs)

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in members.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)

    atomic_write(path, write)


#: safetensors dtype codes of the storage dtypes (bfloat16 through ml_dtypes)
_ST_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
             "int64": "I64", "int32": "I32"}


def write_safetensors(path: str | os.PathLike, layers: dict[str, np.ndarray], ids: np.ndarray,
                      attrs: dict[str, Any]) -> None:
    """Write a small store as one safetensors file, atomically.

    The layers' tensors in ``layers``' order, and in ``__metadata__`` (string values, as
    the format requires): ``layer_order`` (a JSON list, the order the ``repsim`` command
    and :func:`open_activations` read), ``example_id`` (a JSON list of the ids) and
    ``repsim_attrs`` (the attributes, JSON). The safetensors library reads it as usual.
    """
    header: dict[str, Any] = {"__metadata__": {
        "layer_order": json.dumps(list(layers)), IDS: json.dumps(np.asarray(ids).tolist()),
        "repsim_attrs": json.dumps(attrs)}}
    offset = 0
    for name, arr in layers.items():
        if name == "__metadata__":
            raise ValueError("layer name '__metadata__' is reserved in a safetensors file")
        code = _ST_CODES.get(np.dtype(arr.dtype).name)
        if code is None:
            raise ValueError(f"layer {name!r} has dtype {arr.dtype}, which safetensors "
                             "output does not take")
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data start 8-byte aligned

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            for arr in layers.values():
                f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"),
                                                         copy=False).tobytes())

    atomic_write(path, write)


def _json_bytes(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)


def _from_json_bytes(arr) -> Any:
    return json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8"))


class IdSource(Source):
    """A :class:`repsim._readers.Source` that knows its examples' ids.

    A ``.npz`` store written by :func:`repsim.extract` keeps its ids and attributes in
    reserved members, which are not layers; any other file has no ids
    (``example_ids`` is None) and reads exactly as before.
    """

    example_ids: np.ndarray | None = None
    store_attrs: dict[str, Any] = {}

    def _npz(self):
        super()._npz()
        reserved = [k for k in (NPZ_IDS, NPZ_ATTRS) if k in self._layers]
        if not reserved:
            return
        if NPZ_IDS in reserved:
            self.example_ids = np.asarray(_from_json_bytes(self.read(NPZ_IDS)))
        if NPZ_ATTRS in reserved:
            self.store_attrs = _from_json_bytes(self.read(NPZ_ATTRS))
        for k in reserved:
            del self._layers[k]
            self._cache.pop(k, None)
        order = self.store_attrs.get("layers")
        if isinstance(order, list) and sorted(order) == sorted(self._layers):
            self._layers = {k: self._layers[k] for k in order}
            self.order = "layer order as captured (the store's attributes)"

    def _safetensors(self):
        super()._safetensors()  # the header is checked there; its metadata are read here
        with open(self.path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(size).decode("utf-8")).get("__metadata__") or {}
        try:
            if IDS in meta:
                self.example_ids = np.asarray(json.loads(meta[IDS]))
            if "repsim_attrs" in meta:
                self.store_attrs = json.loads(meta["repsim_attrs"])
        except (TypeError, ValueError) as err:
            raise InputError(f"{self.label}: malformed repsim metadata ({err})") from None


class ZarrSource:
    """A Zarr store seen as the ``repsim`` command's source of layers (the interface of
    :class:`repsim._readers.Source`): rows are read from disk as they are asked for."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.label = display(self.path)
        self.files = [self.path]
        self.order_warning = None
        self.order = "layer order as captured (the store's attributes)"
        self.ds = open_activations(self.path)
        self.names = [str(k) for k in self.ds.data_vars]
        self.example_ids = _ids_of(self.ds)
        self.store_attrs = dict(self.ds.attrs)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self.ds[name].shape)

    def where(self, name: str) -> str:
        return f"layer {q(name)} of {self.label}"

    def nbytes(self, name: str) -> int:
        return int(self.ds[name].nbytes)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        return np.asarray(self.ds[name].data[slice(start, stop)].compute())

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.ds[name].data[rows].compute())

    def close(self) -> None:
        self.ds.close()


class RowSubset:
    """A source whose rows are ``index`` of another's (examples aligned by id)."""

    def __init__(self, src, index: np.ndarray):
        self.src, self.index = src, np.asarray(index, dtype=np.int64)

    def __getattr__(self, key):
        return getattr(self.src, key)

    def shape(self, name: str) -> tuple[int, ...]:
        return (len(self.index),) + tuple(self.src.shape(name)[1:])

    def nbytes(self, name: str) -> int:
        full = self.src.shape(name)[0]
        return self.src.nbytes(name) // max(full, 1) * len(self.index)

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        rows = self.index[slice(start, stop)]
        if hasattr(self.src, "read_rows"):
            return self.src.read_rows(name, rows)
        return np.asarray(self.src.read(name))[rows]


def open_source(path: str | os.PathLike):
    """The ``repsim`` command's reader of ``path``: a Zarr store or any file
    :class:`repsim._readers.Source` reads; ``.example_ids`` where the input has them."""
    path = os.fspath(path)
    if is_zarr(path):
        try:
            return ZarrSource(path)
        except (ValueError, KeyError, OSError) as err:
            raise InputError(f"cannot read {display(path)}: {err}") from None
    return IdSource(path)


# ------------------------------------------------------------------------------ opening

def open_activations(path: str | os.PathLike) -> xr.Dataset:
    """A saved store (or any activations file) as a lazy, dask-backed Dataset.

    Parameters
    ----------
    path : str or os.PathLike
        A Zarr store written by :func:`repsim.extract`, a ``.npz`` store it wrote, or any
        input of the ``repsim`` command (``.npz``, ``.npy`` or a folder of them,
        ``.safetensors``, netCDF/HDF5, ``.pt``).

    Returns
    -------
    xarray.Dataset
        One variable per layer, dims ``("example", "<layer>_feature")`` (outputs of more
        than two dims flattened), in the order the layers were captured (``attrs["layers"]``)
        or the file's order; coordinate ``example_id`` where the input has ids (a store
        always does); the store's attributes. Nothing is read until asked for: pass it to
        :func:`repsim.similarity_matrix`, or ``.sel``/``.isel`` and ``.compute()``.

    Raises
    ------
    ValueError
        A Zarr store whose extraction did not finish (run :func:`repsim.extract` again to
        resume it), or an unreadable input (one line naming the file and the layer).

    Examples
    --------
    >>> import numpy as np, repsim, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "acts.npz")
    >>> np.savez(path, conv=np.ones((8, 2, 3)), fc=np.zeros((8, 4)))
    >>> ds = repsim.open_activations(path)
    >>> list(ds.data_vars), ds["conv"].dims, ds["conv"].shape
    (['conv', 'fc'], ('example', 'conv_feature'), (8, 6))
    """
    import dask.array as da

    path = os.fspath(path)
    if is_zarr(path):
        ds = xr.open_zarr(path, consolidated=False)
        if ds.attrs.get(FORMAT_KEY) != FORMAT:
            raise ValueError(f"{display(path)} is a Zarr store that repsim.extract did not "
                             "write (no repsim_store attribute)")
        if not ds.attrs.get("complete", False):
            raise ValueError(f"{display(path)} holds an unfinished extraction "
                             f"({ds.attrs.get('examples_done', 0)} examples written); run "
                             "repsim.extract with the same arguments to resume it")
        return ds[list(ds.attrs["layers"])]
    src = IdSource(path)
    variables, n = {}, None
    for name in src.names:
        arr = src.read(name)
        n = arr.shape[0] if n is None else n
        flat = da.from_array(arr, chunks=arr.shape).reshape(arr.shape[0], -1)
        variables[name] = ((EXAMPLE, feature_dim(name)), flat)
    coords = {} if src.example_ids is None else {IDS: (EXAMPLE, src.example_ids)}
    attrs = dict(src.store_attrs) or {"layers": list(src.names), "layer_order": src.order}
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _ids_of(ds: xr.Dataset) -> np.ndarray | None:
    return np.asarray(ds[IDS].values) if IDS in ds.coords else None


# ----------------------------------------------------------------------- example identity

def _show(value) -> str:
    return repr(value.item() if hasattr(value, "item") else value)


def match_examples(ids_a, ids_b, *, align: str = "strict", labels=("a", "b"),
                   hint: str = "align='ids'"):
    """Check that two sides hold the same examples in the same order, or match them by id.

    Parameters
    ----------
    ids_a, ids_b : array, shape (n_a,), (n_b,)
        Each side's ``example_id`` values (unique within a side).
    align : {"strict", "ids"}, default "strict"
        ``"strict"`` refuses any difference of set or order; ``"ids"`` keeps the ids both
        sides hold, in ``ids_a``'s order.
    labels : pair of str
        How messages name the sides.
    hint : str
        How the refusal names the way to align by id.

    Returns
    -------
    index_a, index_b : numpy.ndarray of int64 or None
        Rows of each side to compare (None: all rows, as they are).
    info : dict
        ``align``, ``examples_dropped_a``, ``examples_dropped_b`` (rows left out of each
        side; 0 under ``"strict"``).

    Raises
    ------
    ValueError
        Duplicate ids within a side; under ``"strict"`` a different set or order, naming
        the first position where the sides differ and the counts (each side's, the common
        ones); under ``"ids"`` no id in common.
    """
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}; got {align!r}")
    a, b = np.asarray(ids_a).tolist(), np.asarray(ids_b).tolist()
    for ids, label in ((a, labels[0]), (b, labels[1])):
        if len(set(ids)) != len(ids):
            seen: set = set()
            dup = next(v for v in ids if v in seen or seen.add(v))  # type: ignore[func-returns-value]
            raise ValueError(f"example_id of {label} holds {dup!r} more than once; ids must "
                             "name one example each")
    if a == b:
        return None, None, {"align": align, "examples_dropped_a": 0, "examples_dropped_b": 0}
    where_b = {v: i for i, v in enumerate(b)}
    common = [v for v in a if v in where_b]
    if align == "strict":
        i = next((k for k, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
        at = (f"position {i} ({labels[0]} has {_show(a[i]) if i < len(a) else 'nothing'}, "
              f"{labels[1]} has {_show(b[i]) if i < len(b) else 'nothing'})")
        what = ("the same examples in a different order" if len(common) == len(a) == len(b)
                else "different examples")
        raise ValueError(
            f"example_id of {labels[0]} and {labels[1]} differ ({what}): first mismatch at "
            f"{at}; {labels[0]} holds {len(a)} examples, {labels[1]} {len(b)}, "
            f"{len(common)} in common" + (f"; pass {hint} to compare the {len(common)} "
                                          "shared examples in one order" if common else ""))
    if not common:
        raise ValueError(f"example_id of {labels[0]} and {labels[1]} have no id in common "
                         f"({len(a)} and {len(b)} examples)")
    index_a = np.array([i for i, v in enumerate(a) if v in where_b], dtype=np.int64)
    index_b = np.array([where_b[v] for v in common], dtype=np.int64)
    return index_a, index_b, {"align": align, "examples_dropped_a": len(a) - len(common),
                              "examples_dropped_b": len(b) - len(common)}


def _load(ds: xr.Dataset, index: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every layer of ``ds`` (data variables along ``example``), rows ``index``, read once."""
    out = {}
    for name, var in ds.data_vars.items():
        if EXAMPLE not in var.dims:
            continue
        data = var.data
        if index is not None:
            order = np.argsort(index, kind="stable")  # read sorted rows, then put in order
            data = data[index[order]]
            loaded = np.asarray(data.compute() if hasattr(data, "compute") else data)
            out[str(name)] = loaded[np.argsort(order, kind="stable")]
        else:
            out[str(name)] = np.asarray(data.compute() if hasattr(data, "compute") else data)
    return out


def store_indices(layers_a, layers_b, align: str = "strict"):
    """Which rows of each side :func:`repsim.similarity_matrix` compares.

    Returns
    -------
    stores : (bool, bool)
        Whether each side is an :class:`xarray.Dataset` (``False`` for ``layers_b`` None).
    index_a, index_b : numpy.ndarray of int64 or None
        Rows of each store to compare, in order (None: all, as they are); set where both
        sides have ``example_id`` (matched by :func:`match_examples`).
    attrs : dict
        ``align`` and the examples dropped from each side where ids were checked; empty
        otherwise.
    """
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}; got {align!r}")
    stores = (isinstance(layers_a, xr.Dataset), isinstance(layers_b, xr.Dataset))
    if not any(stores):
        if align != "strict":
            raise ValueError("align='ids' needs example ids on both sides: pass Datasets "
                             "from repsim.open_activations")
        return stores, None, None, {}
    ids = [_ids_of(x) if s else None for x, s in zip((layers_a, layers_b), stores)]
    if layers_b is not None and ids[0] is not None and ids[1] is not None:
        return (stores, *match_examples(ids[0], ids[1], align=align,
                                        labels=("layers_a", "layers_b")))
    if align != "strict":
        raise ValueError("align='ids' needs example ids on both sides (an example_id "
                         "coordinate in layers_a and layers_b)")
    return stores, None, None, {}


def resolve_inputs(layers_a, layers_b, align: str = "strict"):
    """:func:`repsim.similarity_matrix`'s inputs as layers, with example identity checked.

    An :class:`xarray.Dataset` (from :func:`open_activations`) becomes a dict of its layers
    in the Dataset's order, each read once, only the rows compared (:func:`store_indices`);
    anything else passes through.

    Returns
    -------
    layers_a, layers_b, attrs
        ``attrs`` (for the result): ``align`` and the examples dropped from each side where
        ids were checked; empty otherwise.
    """
    stores, index_a, index_b, attrs = store_indices(layers_a, layers_b, align)
    a = _load(layers_a, index_a) if stores[0] else layers_a
    b = None if layers_b is None else _load(layers_b, index_b) if stores[1] else layers_b
    return a, b, attrs
