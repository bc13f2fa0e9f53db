"""The similarity-matrix reader shared by :mod:`repsim.blocks` and
:mod:`repsim.blocks.declared` (a private module, so neither imports the other)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import _backend as B


def _matrix(sim):
    """``(values float64 symmetric, layer names)`` of a square similarity matrix."""
    if isinstance(sim, xr.Dataset):
        raise TypeError("sim must be a layer x layer DataArray or 2-d array; got a Dataset")
    if isinstance(sim, xr.DataArray):
        if sim.ndim != 2:
            raise ValueError(f"sim must be 2-d (layer x layer); got dims {sim.dims}")
        values = np.asarray(sim.values, dtype=np.float64)
        dim = sim.dims[0]
        names = ([str(v) for v in sim[dim].values] if dim in sim.coords
                 else [str(i) for i in range(values.shape[0])])
        if sim.dims[1] in sim.coords and sim.sizes[sim.dims[0]] == sim.sizes[sim.dims[1]]:
            other = [str(v) for v in sim[sim.dims[1]].values]
            if other != names:
                raise ValueError(
                    "sim must compare one model's layers with themselves (the same "
                    f"layer_a and layer_b coordinates); got {names[:5]}... vs {other[:5]}..."
                )
    else:
        values = np.asarray(B.to_numpy(B.asarray(sim)), dtype=np.float64)
        names = [str(i) for i in range(values.shape[0])] if values.ndim == 2 else []
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"sim must be a square (L, L) similarity matrix; got shape {values.shape}")
    if values.shape[0] == 0:
        raise ValueError("sim must hold at least one layer; got shape (0, 0)")
    both = np.isfinite(values) & np.isfinite(values.T)
    if not np.allclose(values[both], values.T[both], rtol=1e-6, atol=1e-9):
        raise ValueError(
            "sim must be symmetric (a within-model layer x layer similarity); this one is "
            "not -- block structure is not defined for a comparison of two models"
        )
    return 0.5 * (values + values.T), names
