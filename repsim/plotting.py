"""Layer x layer similarity heatmaps, with detected blocks, and grids of them across models.

matplotlib is imported inside the functions, only when something is plotted (install it
with ``pip install "repsim-cka[plot]"``).

Every heatmap uses the same conventions so that figures compare at a glance: layer 0 at
the top left (rows: ``layer_a``, columns: ``layer_b``), a fixed colour scale from 0 to 1
(``vmin``/``vmax`` change it), NaN (undefined, e.g. a constant layer) left blank.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import _backend as B
from . import _validation as V

DEFAULT_CMAP = "magma"


def _values_and_labels(sim):
    if isinstance(sim, xr.DataArray):
        if sim.ndim != 2:
            raise ValueError(f"sim must be 2-d (layer_a x layer_b); got dims {sim.dims}")
        values = np.asarray(sim.values, dtype=np.float64)
        labels = []
        for dim in sim.dims:
            labels.append([str(v) for v in sim[dim].values] if dim in sim.coords
                          else [str(i) for i in range(sim.sizes[dim])])
        return values, labels[0], labels[1], tuple(str(d) for d in sim.dims)
    values = np.asarray(B.to_numpy(B.asarray(sim)), dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"sim must be a 2-d (L_a, L_b) similarity matrix; got shape {values.shape}")
    return (values, [str(i) for i in range(values.shape[0])],
            [str(i) for i in range(values.shape[1])], ("layer_a", "layer_b"))


def _set_ticks(ax, rows, cols, max_ticks):
    for labels, set_ticks, set_labels, rotate in (
        (rows, ax.set_yticks, ax.set_yticklabels, 0),
        (cols, ax.set_xticks, ax.set_xticklabels, 90),
    ):
        n = len(labels)
        step = max(1, int(np.ceil(n / max_ticks))) if max_ticks else n + 1
        ticks = np.arange(0, n, step)
        set_ticks(ticks)
        set_labels([labels[i] for i in ticks], rotation=rotate, fontsize="small")


def _block_spans(sim, blocks, block_kw):
    from .blocks import block_structure

    if blocks is None or blocks is False:
        return []
    if blocks is True:
        blocks = block_structure(sim, **(block_kw or {}))
    if isinstance(blocks, xr.Dataset):
        return list(zip(blocks["first_index"].values.tolist(),
                        blocks["last_index"].values.tolist()))
    spans = [tuple(int(v) for v in span) for span in blocks]
    if any(len(span) != 2 for span in spans):
        raise ValueError("blocks must be True, a block_structure() Dataset or (first, last) pairs")
    return spans


def plot_similarity(
    sim,
    ax=None,
    *,
    blocks=None,
    block_kw=None,
    cmap=DEFAULT_CMAP,
    vmin=0.0,
    vmax=1.0,
    colorbar=True,
    title=None,
    max_ticks=20,
    outline_color="cyan",
):
    """Heatmap of a layer x layer similarity matrix.

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L_a, L_b)
        A result of :func:`repsim.cka_matrix` or :meth:`repsim.MinibatchCKA.compute`
        (coordinates label the ticks, dims the axes), or a bare numpy array / torch tensor.
    ax : matplotlib.axes.Axes, optional
        Where to draw; default a new figure.
    blocks : None, True, xarray.Dataset or sequence of (first, last), optional
        Outline blocks of layers with rectangles: ``True`` detects them with
        :func:`repsim.block_structure` (options in ``block_kw``); a Dataset from
        :func:`repsim.block_structure`, or ``(first_index, last_index)`` pairs
        (inclusive), outlines those.
    block_kw : dict, optional
        Keyword arguments of :func:`repsim.block_structure` for ``blocks=True``.
    cmap : str or Colormap, default "magma"
    vmin, vmax : float, default 0 and 1
        Fixed colour limits, so that heatmaps of different models compare directly.
    colorbar : bool, default True
    title : str, optional
        Default: the DataArray's name and ``measure`` attribute, if any.
    max_ticks : int, default 20
        At most this many labelled ticks per axis (0: no tick labels).
    outline_color : color, default "cyan"

    Returns
    -------
    matplotlib.axes.Axes
        The heatmap is ``ax.images[0]`` (``origin="upper"``: layer 0 top left), the block
        outlines are ``ax.patches``.

    References
    ----------
    Kornblith et al. (2019), "Similarity of neural network representations revisited",
    ICML. Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same
    things?", ICLR (the heatmaps of Figs. 1-3).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> acts = [rng.standard_normal((100, 10)) for _ in range(4)]
    >>> ax = repsim.plot_similarity(repsim.cka_matrix(acts), blocks=True)
    >>> ax.images[0].get_clim()
    (0.0, 1.0)
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    values, rows, cols, dims = _values_and_labels(sim)
    spans = _block_spans(sim, blocks, block_kw)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 4.2))
    image = ax.imshow(
        np.ma.masked_invalid(values),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        origin="upper",
        interpolation="nearest",
        aspect="equal",
    )
    for first, last in spans:
        size = last - first + 1
        ax.add_patch(Rectangle((first - 0.5, first - 0.5), size, size, fill=False,
                               edgecolor=outline_color, linewidth=1.5))
    _set_ticks(ax, rows, cols, max_ticks)
    ax.set_ylabel(dims[0])
    ax.set_xlabel(dims[1])
    if title is None and isinstance(sim, xr.DataArray):
        title = sim.attrs.get("measure", sim.name)
    if title:
        ax.set_title(str(title))
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_similarity_grid(
    results,
    *,
    ncols=None,
    blocks=None,
    block_kw=None,
    cmap=DEFAULT_CMAP,
    vmin=0.0,
    vmax=1.0,
    panel_size=3.0,
    max_ticks=10,
    colorbar_label="similarity",
    suptitle=None,
):
    """A grid of heatmaps, one per model (or per condition), sharing one colour bar.

    Parameters
    ----------
    results : dict title -> sim, or sequence of sim
        Similarity matrices as accepted by :func:`plot_similarity`; dict keys become the
        panel titles (a sequence is titled by position).
    ncols : int, optional
        Panels per row; default ``min(4, len(results))``.
    blocks, block_kw, cmap, vmin, vmax, max_ticks
        As in :func:`plot_similarity`, for every panel.
    panel_size : float, default 3.0
        Width and height of each panel in inches.
    colorbar_label : str, default "similarity"
    suptitle : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : numpy.ndarray of Axes, shape (nrows, ncols)
        Unused trailing panels are switched off.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> acts = [rng.standard_normal((100, 10)) for _ in range(4)]
    >>> fig, axes = repsim.plot_similarity_grid({"A": repsim.cka_matrix(acts),
    ...                                          "B": repsim.cka_matrix(acts[::-1])})
    >>> axes.shape
    (1, 2)
    """
    import matplotlib.pyplot as plt

    if V.is_mapping(results):
        titles = [str(k) for k in results.keys()]
        sims = list(results.values())
    else:
        sims = list(results)
        titles = [str(i) for i in range(len(sims))]
    if not sims:
        raise ValueError("results must hold at least one similarity matrix; got none")
    if ncols is None:
        ncols = min(4, len(sims))
    if not (isinstance(ncols, int) and not isinstance(ncols, bool) and ncols >= 1):
        raise ValueError(f"ncols must be an integer >= 1; got {ncols!r}")
    nrows = -(-len(sims) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols + 1.0, panel_size * nrows + 0.8),
        squeeze=False, layout="constrained",
    )
    for ax, sim, title in zip(axes.flat, sims, titles):
        plot_similarity(sim, ax=ax, blocks=blocks, block_kw=block_kw, cmap=cmap, vmin=vmin,
                        vmax=vmax, colorbar=False, title=title, max_ticks=max_ticks)
    for ax in list(axes.flat)[len(sims):]:
        ax.set_axis_off()
    image = axes.flat[0].images[0]
    fig.colorbar(image, ax=axes, label=colorbar_label, shrink=0.9)
    if suptitle:
        fig.suptitle(suptitle)
    return fig, axes


# ---------------------------------------------------------------- uncertainty figures
def _estimate_of(ds, name="ds"):
    """The estimate of an uncertainty Dataset (repsim.bootstrap, permutation_test,
    aggregate_seeds, MinibatchCKA.compute(uncertainty=True)) and its interval arrays."""
    if not isinstance(ds, xr.Dataset) or "ci_low" not in ds or "ci_high" not in ds:
        raise ValueError(
            f"{name} must be an xarray.Dataset with ci_low and ci_high (from repsim.bootstrap, "
            "repsim.aggregate_seeds or MinibatchCKA.compute(uncertainty=True)); "
            f"got {type(ds).__name__}"
        )
    est = ds.attrs.get("estimate", "cka")
    if est not in ds:
        raise ValueError(f"{name} has no estimate variable {est!r}; variables: {list(ds.data_vars)}")
    return ds[est], np.asarray(ds["ci_low"].values, float), np.asarray(ds["ci_high"].values, float)


def plot_similarity_intervals(ds, threshold, ax=None, *, marker="x", marker_color="cyan", **kwargs):
    """Heatmap of a similarity with intervals, marking entries whose interval contains
    ``threshold`` (the data cannot tell them from it).

    Parameters
    ----------
    ds : xarray.Dataset
        dims ``(layer_a, layer_b)`` with the estimate, ``ci_low`` and ``ci_high``: from
        :func:`repsim.bootstrap`, :func:`repsim.aggregate_seeds` or
        :meth:`repsim.MinibatchCKA.compute` with ``uncertainty=True``.
    threshold : float
        For example the value a claim rests on ("layers match above 0.9") or a chance
        level.
    ax : matplotlib.axes.Axes, optional
    marker, marker_color
        How marked entries are drawn (a scatter over the cell centres).
    **kwargs
        Passed to :func:`plot_similarity` (``blocks``, ``cmap``, ``vmin``, ...).

    Returns
    -------
    matplotlib.axes.Axes
        The marks are ``ax.collections[0]``; its offsets are ``(column, row)`` of every
        marked entry.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> acts = [rng.standard_normal((100, 10)) for _ in range(4)]
    >>> ds = repsim.bootstrap(repsim.cka_matrix, acts, estimator="unbiased",
    ...                       n_resamples=20, progress=False)
    >>> ax = repsim.plot_similarity_intervals(ds, threshold=0.0)  # unrelated layers
    >>> len(ax.collections[0].get_offsets())
    12
    """
    sim, low, high = _estimate_of(ds)
    if sim.ndim != 2:
        raise ValueError(f"ds must hold a 2-d (layer_a, layer_b) estimate; got dims {sim.dims}")
    if not (isinstance(threshold, (int, float)) and np.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}")
    kwargs.setdefault("title", f"{ds.attrs.get('measure', sim.name)} ({marker}: interval contains {threshold:g})")
    ax = plot_similarity(sim, ax=ax, **kwargs)
    rows, cols = np.nonzero((low <= threshold) & (threshold <= high))
    size = (150.0 / max(sim.shape)) ** 2
    ax.scatter(cols, rows, marker=marker, c=marker_color, s=size, linewidths=1.0)
    return ax


def plot_diagonal_band(results, ax=None, *, offsets=(0,), x="depth", capsize=2.0, ylim=(0.0, 1.05)):
    """Similarity along the diagonal band of layer x layer matrices, with error bars.

    Entry ``(i, j(i) + k)`` for every offset ``k``, where ``j(i) = round(i (L_b - 1) /
    (L_a - 1))`` maps layer ``i`` of model A to the layer of model B at the same relative
    depth (``j = i`` for square matrices). Answers "does layer i of A match the layer of
    B at the same depth, beyond the noise?" for one or several comparisons at once.

    Parameters
    ----------
    results : xarray.Dataset or dict label -> Dataset
        Uncertainty Datasets as for :func:`plot_similarity_intervals`; one line each.
    ax : matplotlib.axes.Axes, optional
    offsets : sequence of int, default (0,)
        Band offsets ``k`` (0: the diagonal; 1: each layer against the next).
    x : {"depth", "index"}, default "depth"
        Horizontal axis: relative depth ``i / (L_a - 1)`` (compares models of different
        depths) or the index of ``layer_a``.
    capsize : float, default 2
        Half-width of the bars' end caps, in points.
    ylim : (float, float) or None

    Returns
    -------
    matplotlib.axes.Axes
        Per (result, offset): a line of estimates (in ``ax.get_legend_handles_labels()``)
        and the intervals as vertical bars (a ``LineCollection`` in ``ax.collections``).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> acts = [rng.standard_normal((100, 10)) for _ in range(4)]
    >>> ds = repsim.bootstrap(repsim.cka_matrix, acts, n_resamples=20, progress=False)
    >>> ax = repsim.plot_diagonal_band({"A vs A": ds}, offsets=(0, 1))
    >>> ax.get_legend_handles_labels()[1]
    ['A vs A (offset 0)', 'A vs A (offset 1)']
    """
    import matplotlib.pyplot as plt

    if x not in ("depth", "index"):
        raise ValueError(f"x must be one of 'depth', 'index'; got {x!r}")
    if isinstance(results, xr.Dataset):
        results = {results.attrs.get("measure", "similarity"): results}
    if not results:
        raise ValueError("results must hold at least one Dataset; got none")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, ds in results.items():
        sim, low, high = _estimate_of(ds, f"results[{label!r}]")
        if sim.ndim != 2:
            raise ValueError(f"results[{label!r}] must be 2-d (layer_a, layer_b); got dims {sim.dims}")
        la, lb = sim.shape
        est = np.asarray(sim.values, float)
        rows = np.arange(la)
        base = np.rint(rows * (lb - 1) / max(la - 1, 1)).astype(int) if la != lb else rows
        for k in offsets:
            cols = base + int(k)
            ok = (cols >= 0) & (cols < lb)
            r, c = rows[ok], cols[ok]
            xs = r / max(la - 1, 1) if x == "depth" else r
            name = str(label) if len(offsets) == 1 else f"{label} (offset {k})"
            (line,) = ax.plot(xs, est[r, c], marker="o", markersize=3, label=name)
            # the interval as a bar of its own: a bias-correcting (basic) interval need not
            # contain the estimate, so it is not drawn as +- errors around it
            ax.vlines(xs, low[r, c], high[r, c], colors=line.get_color(), linewidth=1.2)
            ax.plot(xs, low[r, c], "_", xs, high[r, c], "_", color=line.get_color(),
                    markersize=2 * capsize + 2)
    ax.set_xlabel("relative depth of layer_a" if x == "depth" else "layer_a index")
    ax.set_ylabel("similarity")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize="small")
    return ax
