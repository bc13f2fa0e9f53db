"""Figures of many models: a grid of layer x layer heatmaps, one per model pair, and a map
of the models (metric MDS of their distances).

matplotlib (and scikit-learn, for the map) are imported inside the functions, only when
something is plotted. The heatmaps follow :func:`repsim.plot_similarity`'s conventions
(layer 0 top left, a fixed colour scale, NaN blank).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .plotting import DEFAULT_CMAP, plot_similarity_grid
from .results import similarity_array
from .store_compare import DISTANCE_KINDS, model_map

__all__ = ["plot_compare_many", "plot_model_map"]


def _pair_matrix(result: xr.DataArray, a: str, b: str) -> xr.DataArray:
    """The (layer_a, layer_b) matrix of one model pair, cut to the two models' own layers
    and labelled by their names."""
    one = result.sel(model_a=a, model_b=b)
    rows = [str(v) for v in one["layer_name_a"].values] if "layer_name_a" in one.coords \
        else [str(v) for v in one["layer_a"].values]
    cols = [str(v) for v in one["layer_name_b"].values] if "layer_name_b" in one.coords \
        else [str(v) for v in one["layer_b"].values]
    depth_a = len(rows) - sum(1 for r in rows if r == "")  # "" pads a shallower model
    depth_b = len(cols) - sum(1 for c in cols if c == "")
    values = np.asarray(one.values, dtype=np.float64)[:depth_a, :depth_b]
    return similarity_array(values, rows[:depth_a], cols[:depth_b],
                            {"measure": result.attrs.get("measure", "")})


def plot_compare_many(result: xr.DataArray, *, triangle: bool = False, cmap: Any = DEFAULT_CMAP,
                      vmin: float | None = None, vmax: float | None = None,
                      panel_size: float = 2.4, max_ticks: int = 8, suptitle: str | None = None):
    """A grid of layer x layer heatmaps, one per model pair, sharing one colour bar.

    Parameters
    ----------
    result : xarray.DataArray
        From :func:`repsim.compare_many`, dims ``(model_a, model_b, layer_a, layer_b)``.
        Each panel is cut to its two models' own layers and labelled by their names.
    triangle : bool, default False
        Draw only the pairs on and above the diagonal (for a symmetric measure the others
        are their transposes); the panels below are switched off.
    cmap : str or Colormap, default "magma"
    vmin, vmax : float, optional
        Colour limits shared by every panel; default 0 and 1 for a similarity, the range
        of the values for a distance or metric.
    panel_size : float, default 2.4
        Width and height of each panel in inches.
    max_ticks : int, default 8
    suptitle : str, optional
        Default: the measure's name.

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : numpy.ndarray of Axes, shape (M, M)
        ``axes[i, j]`` shows model i (rows, ``layer_a``) against model j (columns,
        ``layer_b``); its heatmap is ``axes[i, j].images[0]``. Model names label the
        rows (y labels of the first panel of each row) and columns (titles of the first
        panel of each column); layer names tick the first panel of each row and the last
        of each column.

    Examples
    --------
    >>> import numpy as np, xarray as xr, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((40, 5))
    >>> ds = {k: xr.Dataset({f"l{i}": (("example", f"l{i}_f"), x @ rng.standard_normal((5, 5)))
    ...                      for i in range(3)}) for k in "ab"}
    >>> fig, axes = repsim.plot_compare_many(repsim.compare_many(ds))
    >>> axes.shape
    (2, 2)
    """
    if not isinstance(result, xr.DataArray) or result.dims != ("model_a", "model_b",
                                                               "layer_a", "layer_b"):
        raise TypeError("result must be the DataArray of repsim.compare_many, dims "
                        "(model_a, model_b, layer_a, layer_b)")
    models = [str(m) for m in result["model_a"].values]
    panels = {(a, b): _pair_matrix(result, a, b) for a in models for b in models}
    if result.attrs.get("kind") in DISTANCE_KINDS:
        finite = np.asarray(result.values)[np.isfinite(result.values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    else:
        lo, hi = 0.0, 1.0
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    measure = str(result.attrs.get("measure", ""))
    fig, axes = plot_similarity_grid(
        {f"{a} vs {b}": sim for (a, b), sim in panels.items()}, ncols=len(models), cmap=cmap,
        vmin=vmin, vmax=vmax, panel_size=panel_size, max_ticks=max_ticks,
        colorbar_label=measure or "similarity", suptitle=suptitle or measure or None)
    shown = [[not (triangle and j < i) for j in range(len(models))] for i in range(len(models))]
    for i, a in enumerate(models):
        for j, b in enumerate(models):
            ax = axes[i, j]
            if not shown[i][j]:
                ax.clear()
                ax.set_axis_off()
                continue
            # models label the grid's rows and columns; layer names only at its edges
            first_in_row = shown[i].index(True) == j
            first_in_col = next(r for r in range(len(models)) if shown[r][j]) == i
            last_in_col = max(r for r in range(len(models)) if shown[r][j]) == i
            ax.set_title(b if first_in_col else "", fontsize="medium")
            ax.set_ylabel(a if first_in_row else "")
            ax.set_xlabel("")
            if not first_in_row:
                ax.tick_params(labelleft=False)
            if not last_in_col:
                ax.tick_params(labelbottom=False)
    return fig, axes


def plot_model_map(result: xr.DataArray, ax=None, *, seeds: dict[str, Any] | None = None,
                   seed: int = 0, annotate: bool = True, marker_size: float = 60.0):
    """A map of the models: metric MDS of the model x model distances, one point a model.

    Parameters
    ----------
    result : xarray.DataArray
        A :func:`repsim.compare_many` result or a ``(model_a, model_b)`` matrix (see
        :func:`repsim.model_distances`: ``1 - similarity``, symmetrised), or the
        ``(model, component)`` coordinates of :func:`repsim.model_map`.
    ax : matplotlib.axes.Axes, optional
    seeds : dict model name -> group, optional
        Colour the models by group (e.g. architecture over seeds), with a legend.
    seed : int, default 0
        Random state of the MDS.
    annotate : bool, default True
        Write each model's name beside its point.
    marker_size : float, default 60

    Returns
    -------
    matplotlib.axes.Axes
        The points are ``ax.collections[0]`` (``get_offsets()``: the map's coordinates,
        in model order); the title gives the stress-1 of the map.

    References
    ----------
    Kruskal (1964), Psychometrika 29 (stress); scikit-learn's
    :class:`sklearn.manifold.MDS`.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    coords = result if isinstance(result, xr.DataArray) and result.dims == ("model", "component") \
        else model_map(result, seed=seed)
    if coords.sizes["component"] != 2:
        raise ValueError(f"the map needs 2 components; got {coords.sizes['component']}")
    models = [str(m) for m in coords["model"].values]
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 4.2), layout="constrained")
    xy = np.asarray(coords.values, dtype=np.float64)
    if seeds is not None:
        missing = [m for m in models if m not in seeds]
        if missing:
            raise ValueError(f"seeds has no group for the model(s) {missing}")
        groups = list(dict.fromkeys(str(seeds[m]) for m in models))
        palette = plt.get_cmap("tab10")
        colours = [palette(groups.index(str(seeds[m])) % 10) for m in models]
    else:
        colours = [plt.get_cmap("tab10")(0)] * len(models)
    ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=marker_size, edgecolors="black", zorder=3)
    if seeds is not None:
        ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color=palette(i % 10),
                                  label=g) for i, g in enumerate(groups)], fontsize="small")
    if annotate:
        for (x, y), name in zip(xy, models):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize="small")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    measure = coords.attrs.get("measure", "")
    ax.set_title(f"models by {measure} (stress {coords.attrs.get('stress', np.nan):.3f})"
                 if measure else f"models (stress {coords.attrs.get('stress', np.nan):.3f})")
    return ax
