"""Labelled results: a layer x layer ``xarray.DataArray`` and its netCDF round trip.

Maths runs on bare arrays; labels (layer names, model names) and provenance
(estimator, kernel, n, batches, seed, ...) are attached here, at the edge, so that a
saved file explains itself.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import xarray as xr

from . import _backend as B


def _netcdf_attr(value):
    """netCDF attributes hold strings, numbers and 1-d numeric arrays only."""
    if isinstance(value, bool):
        return int(value)
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return np.asarray(value)
        return [str(v) for v in value]
    if isinstance(value, str):
        return str(value)  # h5py refuses str subclasses (torch's TorchVersion, say)
    if isinstance(value, (int, float, np.integer, np.floating, np.ndarray)):
        return value
    return str(value)


def similarity_array(values, names_a, names_b, attrs=None, name="cka"):
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


def save_result(result, path):
    """Write a DataArray or Dataset to netCDF atomically (write, then rename).

    Parameters
    ----------
    result : xarray.DataArray or xarray.Dataset
    path : str or os.PathLike
        Destination ``.nc`` file; an existing file is replaced only once the new one is
        complete, so an interrupted write never leaves a truncated result.

    Examples
    --------
    >>> import numpy as np, os, tempfile, repsim
    >>> sim = repsim.cka_matrix([np.random.default_rng(0).standard_normal((20, 3))])
    >>> path = os.path.join(tempfile.mkdtemp(), "sim.nc")
    >>> repsim.save_result(sim, path)
    >>> repsim.load_result(path).attrs["estimator"]
    'biased'
    """
    path = os.fspath(path)
    result = result.copy(deep=False)
    result.attrs = {k: _netcdf_attr(v) for k, v in result.attrs.items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".nc.tmp")
    os.close(fd)
    try:
        result.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_result(path):
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
