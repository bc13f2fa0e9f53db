"""The similarity-matrix reader and the checks of its values and of the block rule's
thresholds, shared by :mod:`repsim.blocks` and :mod:`repsim.blocks.declared` (a private
module, so neither imports the other)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import _backend as B
from .. import _validation as V


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


def _check_values(values, name="sim"):
    """Refuse infinite entries and NaN that does not fill a whole layer.

    A constant layer has an undefined similarity to every layer (a NaN row and column,
    diagonal included): accepted, it ends any run. Any other NaN or an infinite entry is
    not a similarity: refused, naming the argument and the first bad position."""
    inf = np.argwhere(np.isinf(values))
    if inf.size:
        a, b = (int(v) for v in inf[0])
        raise ValueError(
            f"{name} must hold finite similarities; got {float(values[a, b])!r} at ({a}, {b}) "
            f"({len(inf)} infinite entries)"
        )
    nan = np.isnan(values)
    if not nan.any():
        return
    off = nan | np.eye(values.shape[0], dtype=bool)
    layer = off.all(axis=1) if values.shape[0] > 1 else nan[:, 0]
    stray = np.argwhere(nan & ~(layer[:, None] | layer[None, :]))
    if stray.size:
        a, b = (int(v) for v in stray[0])
        raise ValueError(
            f"{name} must be finite apart from whole NaN layers (a constant layer); got NaN at "
            f"({a}, {b}) where neither layer {a} nor layer {b} is NaN throughout ({len(stray)} such entries)"
        )


def _block_options(penalty, min_inside, min_contrast, min_size, neighbours, min_share=0.1):
    penalty = V.check_float(penalty, "penalty")
    if penalty <= 0:
        raise ValueError(f"penalty must be > 0; got {penalty!r}")
    return (penalty, _check_range(min_inside, "min_inside", -1.0, 1.0),
            _check_range(min_contrast, "min_contrast", -2.0, 2.0),
            V.check_int(min_size, "min_size", 2), V.check_int(neighbours, "neighbours", 1),
            _check_range(min_share, "min_share", 0.0, 1.0))


def _check_range(value, name, low, high):
    """A finite threshold inside the range a similarity (or a difference of two) can take."""
    value = V.check_float(value, name)
    if not low <= value <= high:
        raise ValueError(
            f"{name} must lie in [{low:g}, {high:g}] (similarities lie in [-1, 1], so no run could "
            f"pass a threshold outside it); got {value!r}"
        )
    return value
