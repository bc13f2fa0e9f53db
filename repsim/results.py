"""Labelled results: a layer x layer ``xarray.DataArray`` and its netCDF round trip.

Maths runs on bare arrays; labels (layer names, model names) and provenance
(estimator, kernel, n, batches, seed, ...) are attached here, at the edge, so that a
saved file explains itself.

:func:`atomic_write` is the one atomic file write of the package (``save_result``, the
adapter's checkpoints and the CIFAR-10 download all use it), public here so that scripts
built on repsim -- the wide/deep study among them -- write their own files the same way.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from . import _backend as B
from ._io import atomic_write

__all__ = ["atomic_write", "load_result", "netcdf_attrs", "save_result", "similarity_array"]


#: the integers a netCDF attribute holds natively (int64, or uint64 above it)
_INT_RANGE = (-(2**63), 2**64 - 1)


def _fits(v: Any) -> bool:
    """Whether ``v`` is a number netCDF stores as a number (a Python int must fit in
    int64 or uint64: ``2**70`` would become an object array that HDF5 refuses)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return not isinstance(v, int) or _INT_RANGE[0] <= v <= _INT_RANGE[1]


def _netcdf_attr(value: Any) -> Any:
    """netCDF attributes hold strings, numbers and 1-d numeric arrays only.

    An integer beyond int64/uint64 (``seed=2**70``, say) is stored losslessly as its
    decimal string, as is every entry of a list that holds one (or that mixes floats with
    an integer beyond 2**53, which float64 would round)."""
    if isinstance(value, bool):
        return int(value)
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        if all(_fits(v) for v in value):
            arr = np.asarray(value)
            # ints and floats together make float64: exact for integers up to 2**53 only
            if arr.dtype.kind in "iu" or all(not isinstance(v, int) or abs(v) <= 2**53 for v in value):
                return arr
        return [str(v) for v in value]
    if isinstance(value, int) and not isinstance(value, np.integer) and not _fits(value):
        return str(value)
    if isinstance(value, str):
        return str(value)  # h5py refuses str subclasses (torch's TorchVersion, say)
    if isinstance(value, (int, float, np.integer, np.floating, np.ndarray)):
        return value
    return str(value)


def similarity_array(values: Any, names_a, names_b, attrs: dict | None = None,
                     name: str = "cka") -> xr.DataArray:
    """Wrap an ``(L_a, L_b)`` similarity matrix as a DataArray.

    Parameters
    ----------
    values : array, shape (L_a, L_b)
        numpy array or torch tensor (copied to host memory).
    names_a, names_b : sequence of str
        Layer names, the ``layer_a`` and ``layer_b`` coordinates.
    attrs : dict, optional
        Provenance, stored as netCDF-compatible attributes.

    Returns
    -------
    xarray.DataArray
        dims ``("layer_a", "layer_b")``.
    """
    attrs = {k: _netcdf_attr(v) for k, v in (attrs or {}).items()}
    return xr.DataArray(
        B.to_numpy(values),
        dims=("layer_a", "layer_b"),
        coords={"layer_a": [str(n) for n in names_a], "layer_b": [str(n) for n in names_b]},
        name=name,
        attrs=attrs,
    )


def _storable_attrs(attrs: dict, owner: str) -> dict:
    """``attrs`` in the forms netCDF stores (:func:`_netcdf_attr`); an attribute that has
    none (an array of objects or complex numbers) is refused by name."""
    out = {}
    for key, value in attrs.items():
        v = _netcdf_attr(value)
        if isinstance(v, np.ndarray) and v.dtype.kind not in "biuf":
            raise TypeError(
                f"attribute {key!r} of {owner} cannot be stored in netCDF: a numpy array of "
                f"dtype {v.dtype}; netCDF attributes must be strings, numbers or numeric "
                "arrays -- convert it (or drop it) before saving"
            )
        if not isinstance(key, str):
            raise TypeError(
                f"attribute names must be strings; {owner} has an attribute named {key!r}"
            )
        out[key] = v
    return out


def netcdf_attrs(attrs: dict) -> dict:
    """Attributes in the forms a netCDF file stores, as :func:`save_result` writes them.

    Parameters
    ----------
    attrs : dict
        Attribute name (str) -> value.

    Returns
    -------
    dict
        The same names; ``bool`` -> ``int``, ``None`` -> ``"none"``, a list of numbers ->
        a numpy array, a list of anything else -> a list of ``str``, an integer outside
        ``[-2**63, 2**64 - 1]`` (which no netCDF number holds, e.g. ``seed=2**70``) -> its
        decimal string, losslessly (``int(value)`` gives it back), other objects ->
        ``str``; strings, numbers and numeric arrays unchanged. Assigning the result to a
        result's ``attrs`` before saving makes the object in memory equal to what
        :func:`load_result` returns.

    Raises
    ------
    TypeError
        For a name that is not a string, or a value no netCDF attribute can hold (an
        array of objects or complex numbers), naming the attribute.

    Examples
    --------
    >>> from repsim.results import netcdf_attrs
    >>> netcdf_attrs({"centre": True, "sigma": None, "layers": ["a", 1]})
    {'centre': 1, 'sigma': 'none', 'layers': ['a', '1']}
    """
    return _storable_attrs(attrs, "attrs")


def save_result(result: xr.DataArray | xr.Dataset, path: str | os.PathLike) -> None:
    """Write a DataArray or Dataset to netCDF atomically (write, then rename).

    Parameters
    ----------
    result : xarray.DataArray or xarray.Dataset
    path : str or os.PathLike
        Destination ``.nc`` file; an existing file is replaced only once the new one is
        complete, so an interrupted write never leaves a truncated result.

    Raises
    ------
    TypeError
        If ``result`` is not a DataArray or Dataset, or an attribute (of the result, a
        variable or a coordinate) cannot be stored in netCDF; the message names it.

    Notes
    -----
    Attributes are converted as netCDF requires (booleans to 0/1, None to ``"none"``,
    lists of strings kept, integers beyond int64/uint64 such as ``seed=2**70`` to their
    exact decimal string, other objects to their ``str``; see :func:`netcdf_attrs`). The file is written beside
    the target and renamed over it once complete: it replaces an existing file with that
    file's permissions, and a new file gets the usual ``0o666`` less the umask.

    Examples
    --------
    >>> import numpy as np, os, tempfile, repsim
    >>> sim = repsim.cka_matrix([np.random.default_rng(0).standard_normal((20, 3))])
    >>> path = os.path.join(tempfile.mkdtemp(), "sim.nc")
    >>> repsim.save_result(sim, path)
    >>> repsim.load_result(path).attrs["estimator"]
    'biased'
    """
    if not isinstance(result, (xr.DataArray, xr.Dataset)):
        raise TypeError(
            f"result must be an xarray.DataArray or xarray.Dataset; got {type(result).__name__}"
        )
    result = result.copy(deep=False)
    what = "the DataArray" if isinstance(result, xr.DataArray) else "the Dataset"
    result.attrs = _storable_attrs(result.attrs, what)
    if isinstance(result, xr.DataArray):
        variables = [(name, result.coords[name].variable) for name in result.coords]
    else:
        variables = list(result.variables.items())
    for name, var in variables:
        var.attrs = _storable_attrs(var.attrs, f"variable {name!r}")
    atomic_write(path, lambda tmp: result.to_netcdf(tmp, engine="h5netcdf"))


def load_result(path: str | os.PathLike) -> xr.DataArray | xr.Dataset:
    """Read a result written by :func:`save_result` (fully loaded, file closed).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        A DataArray when the file holds a single variable, else the Dataset.

    Examples
    --------
    See :func:`save_result`.
    """
    with xr.open_dataset(os.fspath(path), engine="h5netcdf") as ds:
        ds = ds.load()
    if len(ds.data_vars) == 1:
        return ds[next(iter(ds.data_vars))]
    return ds
