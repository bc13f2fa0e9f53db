"""Block structure: contiguous runs of layers whose representations stay mutually similar.

Nguyen, Raghu & Kornblith (2021) found that wide or deep networks trained on small data
develop a "block structure" -- many consecutive layers with near-identical
representations, a bright square on the layer x layer CKA heatmap. :func:`block_structure`
finds such runs by a fixed, documented rule and reports them as a small table;
:func:`block_score` turns them into one number for comparing models.

The rule
--------
Let ``S`` be a symmetric ``L x L`` similarity matrix (the diagonal is ignored). Scanning
from layer 0, a run starts at layer ``i`` and grows one layer at a time: layer ``j`` joins
the run ``i .. j-1`` while its *mean* similarity to the layers already in the run is at
least ``threshold``. When the next layer would fall below (or the last layer is reached),
the run ``i .. j-1`` is a block if it has at least ``min_size`` layers, and scanning
resumes after it; otherwise scanning resumes at ``i + 1``.

Consequences worth knowing:

* Every block's mean off-diagonal similarity is at least ``threshold`` (each pair counts
  once, through its later layer, whose mean was checked).
* Averaging makes one noisy entry harmless, while a layer that is dissimilar to the block
  as a whole -- a transition layer, or the first layer of a second block -- stops it:
  two adjacent blocks stay two blocks unless they are themselves mutually similar on
  average.
* A run whose similarity merely decays slowly with depth (adjacent layers similar, far
  ones not) is cut where the newest layer's mean drops below ``threshold``; ``min_size``
  keeps short runs of adjacent, similar layers from counting as blocks.
* NaN entries (constant layers) never satisfy the threshold: such a layer ends any run.

The defaults (``threshold=0.8``, ``min_size=3``) suit linear-CKA heatmaps of residual
networks, where block layers typically reach CKA 0.9 and above; they are parameters, not
constants of nature -- report them with any score.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import xarray as xr

from . import _backend as B
from . import _validation as V

RULE = (
    "grow a run from layer i while the next layer's mean similarity to the run's layers "
    ">= threshold; keep runs of >= min_size layers; resume after a block, else at i + 1"
)


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


def _options(threshold, min_size):
    threshold = V.check_float(threshold, "threshold")
    min_size = V.check_int(min_size, "min_size", 2)
    return threshold, min_size


def _find(values, threshold, min_size):
    """``[(first, last), ...]`` inclusive layer indices of the blocks (the rule above)."""
    n_layers = values.shape[0]
    blocks = []
    i = 0
    while i < n_layers:
        j = i + 1
        while j < n_layers:
            mean = values[j, i:j].mean()
            if not mean >= threshold:  # NaN fails too
                break
            j += 1
        if j - i >= min_size:
            blocks.append((i, j - 1))
            i = j
        else:
            i += 1
    return blocks


def _inside_outside(values, first, last):
    idx = np.arange(first, last + 1)
    sub = values[np.ix_(idx, idx)]
    size = idx.size
    inside = (sub.sum() - np.trace(sub)) / (size * (size - 1))
    rest = np.setdiff1d(np.arange(values.shape[0]), idx)
    outside = np.nanmean(values[np.ix_(idx, rest)]) if rest.size else math.nan
    return float(inside), float(outside)


def block_structure(sim, *, threshold=0.8, min_size=3):
    """Contiguous runs of layers whose representations stay mutually similar.

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L, L)
        A within-model layer x layer similarity matrix (from :func:`repsim.cka_matrix` or
        :meth:`repsim.MinibatchCKA.compute`), layers in network order; numpy or torch.
        Must be symmetric up to rounding; the diagonal is ignored.
    threshold : float, default 0.8
        A layer joins a run while its mean similarity to the run's layers is at least this.
    min_size : int, default 3
        Fewest layers in a block (>= 2).

    Returns
    -------
    xarray.Dataset
        One entry per block along dim ``"block"`` (possibly none), in network order, with
        variables ``first`` and ``last`` (layer names), ``first_index`` and
        ``last_index`` (positions, inclusive), ``size`` (number of layers), ``inside``
        (mean similarity between distinct layers of the block) and ``outside`` (mean
        similarity of the block's layers to all other layers; NaN when the block spans
        every layer). attrs: ``threshold``, ``min_size``, ``rule``, ``n_layers`` and
        ``block_score`` (see :func:`block_score`). Save it with
        :func:`repsim.save_result`.

    See Also
    --------
    block_score, plot_similarity

    Notes
    -----
    The rule, in full: scanning from layer 0, a run starts at layer ``i`` and grows one
    layer at a time; layer ``j`` joins the run ``i .. j-1`` while its mean similarity to
    the layers already in the run is at least ``threshold``. The run is a block if it has
    at least ``min_size`` layers, and scanning resumes after it; otherwise scanning
    resumes at ``i + 1``. Every block therefore has a mean inside similarity of at least
    ``threshold``; one noisy entry is averaged away, while a layer dissimilar to the
    block as a whole (a transition, or the start of another block) ends it. NaN entries
    (constant layers) end any run.

    References
    ----------
    Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?
    Uncovering how neural network representations vary with width and depth", ICLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> sim = np.full((8, 8), 0.3)
    >>> sim[2:6, 2:6] = 0.95
    >>> np.fill_diagonal(sim, 1.0)
    >>> blocks = repsim.block_structure(sim)
    >>> blocks["first_index"].values.tolist(), blocks["size"].values.tolist()
    ([2], [4])
    """
    threshold, min_size = _options(threshold, min_size)
    values, names = _matrix(sim)
    found = _find(values, threshold, min_size)
    rows = [(f, l, *_inside_outside(values, f, l)) for f, l in found]
    ds = xr.Dataset(
        {
            "first": ("block", np.array([names[f] for f, *_ in rows], dtype=object).astype(str)),
            "last": ("block", np.array([names[l] for _, l, *_ in rows], dtype=object).astype(str)),
            "first_index": ("block", np.array([f for f, *_ in rows], dtype=np.int64)),
            "last_index": ("block", np.array([l for _, l, *_ in rows], dtype=np.int64)),
            "size": ("block", np.array([l - f + 1 for f, l, *_ in rows], dtype=np.int64)),
            "inside": ("block", np.array([r[2] for r in rows], dtype=np.float64)),
            "outside": ("block", np.array([r[3] for r in rows], dtype=np.float64)),
        },
        coords={"block": np.arange(len(rows), dtype=np.int64)},
        attrs={
            "threshold": threshold,
            "min_size": min_size,
            "rule": RULE,
            "n_layers": int(values.shape[0]),
            "block_score": _score(values, found),
        },
    )
    return ds


def _score(values, found):
    n_layers = values.shape[0]
    if n_layers < 2:
        return 0.0
    total = 0.0
    for f, l in found:
        size = l - f + 1
        inside, _ = _inside_outside(values, f, l)
        total += size * (size - 1) * inside
    return float(total / (n_layers * (n_layers - 1)))


def block_score(sim, *, threshold=0.8, min_size=3):
    """One number for how much of a model's heatmap is block structure.

    The share of the off-diagonal area of the ``L x L`` similarity matrix that lies in
    detected blocks, weighted by the similarity there::

        score = sum_blocks size_b (size_b - 1) inside_b / (L (L - 1))

    i.e. the sum of the similarities of all ordered pairs of distinct layers that share a
    block, divided by the number of such pairs in the whole matrix. 0 without blocks; close
    to 1 when nearly all layers form one block of near-identical representations. Compare
    models only with the same ``threshold`` and ``min_size``.

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L, L)
        As in :func:`block_structure`.
    threshold : float, default 0.8
    min_size : int, default 3
        Block detection rule, as in :func:`block_structure`.

    Returns
    -------
    float
        In [0, 1] for similarities in [0, 1].

    References
    ----------
    Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?",
    ICLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> sim = np.full((10, 10), 0.2)
    >>> sim[:5, :5] = 1.0
    >>> round(repsim.block_score(sim), 3)  # 5*4 of 10*9 ordered pairs, similarity 1
    0.222
    """
    threshold, min_size = _options(threshold, min_size)
    values, _ = _matrix(sim)
    return _score(values, _find(values, threshold, min_size))


# ---------------------------------------------------------------------------- the declared block
#
# The rule above finds *stage structure*: at residual-block granularity every stage is a
# bright square, and its greedy scan returns those squares. The paper's block is a
# different object -- a run of layers with near-identical representations and sharp
# edges, dark around it. The functions below define it from the CKA matrix alone:
# segment the layer sequence optimally, then pick the run with the largest *local*
# contrast, subject to declared thresholds.

SEGMENT_RULE = (
    "optimal segmentation into contiguous runs minimising sum over runs of "
    "[sum over pairs of distinct layers in the run of (1 - similarity)] + penalty per run "
    "(NaN counts as similarity 0); block = the run of >= min_size layers with the largest "
    "local contrast (inside mean minus mean similarity to max(neighbours, ceil(size/2)) "
    "layers on each side) with inside >= min_inside and local contrast >= min_contrast"
)


class BlockContrast(NamedTuple):
    """Inside and outside similarity of a run of layers (see :func:`block_contrast`)."""

    inside: float
    outside: float
    contrast: float


def _window(n_layers, first, last, neighbours):
    """Indices of the layers compared with ``first..last``: all others (``None``) or
    ``max(neighbours, ceil(size / 2))`` on each side, clipped to the network."""
    if neighbours is None:
        return np.setdiff1d(np.arange(n_layers), np.arange(first, last + 1))
    width = max(neighbours, -(-(last - first + 1) // 2))
    return np.r_[np.arange(max(0, first - width), first), np.arange(last + 1, min(n_layers, last + 1 + width))]


def _contrast(values, first, last, neighbours):
    idx = np.arange(first, last + 1)
    sub = values[np.ix_(idx, idx)]
    off = sub[~np.eye(idx.size, dtype=bool)]
    inside = float(np.nanmean(off)) if off.size and not np.isnan(off).all() else math.nan
    rest = _window(values.shape[0], first, last, neighbours)
    cross = values[np.ix_(idx, rest)]
    outside = float(np.nanmean(cross)) if cross.size and not np.isnan(cross).all() else math.nan
    return BlockContrast(inside, outside, inside - outside)


def _span(first, last, n_layers):
    for value, name in ((first, "first"), (last, "last")):
        V.check_int(value, name, 0, n_layers - 1, f" (a layer index of the {n_layers}-layer matrix)")
    if last < first:
        raise ValueError(f"last must be >= first; got first={first}, last={last}")
    return int(first), int(last)


def block_contrast(sim, first, last, *, neighbours=3):
    """Mean similarity inside layers ``first..last`` against their surroundings.

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L, L)
        A within-model similarity matrix, as in :func:`block_structure`.
    first, last : int
        Positions of the run's first and last layer (inclusive).
    neighbours : int or None, default 3
        *Local* contrast: compare with ``max(neighbours, ceil(size / 2))`` layers on
        each side of the run (fewer at the ends of the network). ``None``: *global*
        contrast, against every other layer.

    Returns
    -------
    BlockContrast
        ``inside`` (mean similarity between distinct layers of the run), ``outside``
        (mean similarity from the run's layers to the compared layers) and ``contrast =
        inside - outside``; NaN where there is nothing to compare (a run of one layer,
        or a run spanning the network). NaN entries are left out of the means.

    See Also
    --------
    find_block

    Examples
    --------
    >>> import numpy as np, repsim
    >>> sim = np.full((12, 12), 0.3)
    >>> sim[4:8, 4:8] = 0.9
    >>> np.fill_diagonal(sim, 1.0)
    >>> [round(v, 2) for v in repsim.block_contrast(sim, 4, 7)]
    [0.9, 0.3, 0.6]
    """
    values, _ = _matrix(sim)
    first, last = _span(first, last, values.shape[0])
    if neighbours is not None:
        neighbours = V.check_int(neighbours, "neighbours", 1)
    return _contrast(values, first, last, neighbours)


def _segment(values, penalty):
    """Optimal runs ``[(first, last), ...]``: dynamic programming over run ends."""
    n_layers = values.shape[0]
    dis = np.triu(1.0 - np.nan_to_num(values, nan=0.0), 1)
    # prefix[r, c] = sum of dis[:r, :c]; cost[i, j] = sum over i <= a < b <= j
    prefix = np.zeros((n_layers + 1, n_layers + 1))
    prefix[1:, 1:] = dis.cumsum(0).cumsum(1)
    best = np.zeros(n_layers + 1)
    start = np.zeros(n_layers + 1, dtype=np.int64)
    for j in range(1, n_layers + 1):
        i = np.arange(j)
        cost = prefix[j, j] - prefix[i, j] - prefix[j, i] + prefix[i, i]
        total = best[i] + cost + penalty
        k = int(np.argmin(total))
        best[j], start[j] = total[k], k
    runs, j = [], n_layers
    while j > 0:
        runs.append((int(start[j]), j - 1))
        j = int(start[j])
    return runs[::-1]


def segment_layers(sim, *, penalty=3.0):
    """Optimal segmentation of the layer sequence into contiguous runs.

    Minimises ``sum over runs [sum over pairs of distinct layers a < b in the run of
    (1 - S[a, b])] + penalty * (number of runs)`` exactly, by dynamic programming over
    run ends (``O(L^2)`` time).

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L, L)
        A within-model similarity matrix, as in :func:`block_structure`. NaN entries
        (constant layers) count as similarity 0.
    penalty : float, default 3.0
        Cost of one more run (> 0). Larger values give fewer, longer runs. The within-run
        cost counts pairs, so it grows with the square of the number of layers: the same
        network analysed at ``r`` times finer granularity needs ``r**2`` times the penalty
        for the same segmentation.

    Returns
    -------
    list of (int, int)
        ``(first, last)`` inclusive positions of the runs, in network order, covering
        every layer once.

    See Also
    --------
    find_block

    Examples
    --------
    >>> import numpy as np, repsim
    >>> sim = np.full((9, 9), 0.2)
    >>> sim[:3, :3] = sim[3:, 3:] = 0.95
    >>> repsim.segment_layers(sim)
    [(0, 2), (3, 8)]
    """
    values, _ = _matrix(sim)
    penalty = V.check_float(penalty, "penalty")
    if penalty <= 0:
        raise ValueError(f"penalty must be > 0; got {penalty!r}")
    return _segment(values, penalty)


def _block_options(penalty, min_inside, min_contrast, min_size, neighbours):
    penalty = V.check_float(penalty, "penalty")
    if penalty <= 0:
        raise ValueError(f"penalty must be > 0; got {penalty!r}")
    return (penalty, V.check_float(min_inside, "min_inside"), V.check_float(min_contrast, "min_contrast"),
            V.check_int(min_size, "min_size", 2), V.check_int(neighbours, "neighbours", 1))


def _choose(values, runs, min_inside, min_contrast, min_size, neighbours):
    """Per run ``(inside, outside, contrast, passes)`` and the chosen run's position or -1."""
    rows, best, best_contrast = [], -1, -math.inf
    for r, (f, l) in enumerate(runs):
        c = _contrast(values, f, l, neighbours)
        passes = bool(l - f + 1 >= min_size and c.inside >= min_inside and c.contrast >= min_contrast)
        rows.append((*c, passes))
        if l - f + 1 >= min_size and np.isfinite(c.contrast) and c.contrast > best_contrast:
            best, best_contrast = r, c.contrast
    chosen = best if best >= 0 and rows[best][3] else -1
    return rows, best, chosen


def find_block(sim, *, penalty=3.0, min_inside=0.9, min_contrast=0.2, min_size=3, neighbours=3):
    """The block: the segmented run with the sharpest edges, if it passes the thresholds.

    From the similarity matrix alone: :func:`segment_layers` splits the layers into
    contiguous runs; among the runs of at least ``min_size`` layers, the candidate is the
    one with the largest *local* contrast (:func:`block_contrast` with ``neighbours``);
    it is *the block* when its inside similarity is at least ``min_inside`` and its local
    contrast at least ``min_contrast``. Otherwise the model has no block. Principal
    components play no part, so claims about PC1 can be tested on the block rather than
    built into it; :func:`pc1_runs` is the PC1 view beside it.

    Unlike :func:`block_structure` (whose greedy scan returns the bright squares of
    stage structure and favours long, moderately similar runs), this rule looks for a
    run that is near-identical inside and dark around it: the "block structure" of
    Nguyen, Raghu & Kornblith (2021).

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L, L)
        A within-model similarity matrix, layers in network order.
    penalty : float, default 3.0
        Per-run penalty of the segmentation (see :func:`segment_layers`).
    min_inside : float, default 0.9
        Least mean similarity between distinct layers of the block.
    min_contrast : float, default 0.2
        Least local contrast of the block.
    min_size : int, default 3
        Fewest layers in a block (>= 2).
    neighbours : int, default 3
        Local contrast compares with ``max(neighbours, ceil(size / 2))`` layers on each
        side.

    Returns
    -------
    xarray.Dataset
        One entry per run along dim ``"run"``: ``first``/``last`` (layer names),
        ``first_index``/``last_index``, ``size``, ``inside``, ``outside`` (mean
        similarity to the neighbouring layers), ``local_contrast`` and ``passes`` (the
        run meets all thresholds). attrs: ``block`` (position of the chosen run along
        ``run``, -1 when there is no block), ``candidate`` (the run of >= ``min_size``
        layers with the largest local contrast, -1 if none), ``has_block`` (0/1),
        ``block_first_index``/``block_last_index`` (-1 without a block), the options,
        ``rule`` and ``n_layers`` -- the definition travels with every result. Save it
        with :func:`repsim.save_result`.

    See Also
    --------
    segment_layers, block_contrast, pc1_runs, block_sensitivity, block_structure

    References
    ----------
    Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same things?",
    ICLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> sim = np.full((16, 16), 0.4)
    >>> sim[:8, :8] = sim[8:, 8:] = 0.6      # two stages
    >>> sim[10:14, 10:14] = 0.99             # a sharp late block inside stage 2
    >>> np.fill_diagonal(sim, 1.0)
    >>> ds = repsim.find_block(sim)
    >>> ds.attrs["block_first_index"], ds.attrs["block_last_index"]
    (10, 13)
    """
    opts = _block_options(penalty, min_inside, min_contrast, min_size, neighbours)
    values, names = _matrix(sim)
    return _find_block(values, names, *opts)


def _find_block(values, names, penalty, min_inside, min_contrast, min_size, neighbours):
    runs = _segment(values, penalty)
    rows, candidate, chosen = _choose(values, runs, min_inside, min_contrast, min_size, neighbours)
    first = [f for f, _ in runs]
    last = [l for _, l in runs]
    return xr.Dataset(
        {
            "first": ("run", np.array([names[f] for f in first], dtype=object).astype(str)),
            "last": ("run", np.array([names[l] for l in last], dtype=object).astype(str)),
            "first_index": ("run", np.array(first, dtype=np.int64)),
            "last_index": ("run", np.array(last, dtype=np.int64)),
            "size": ("run", np.array(last, dtype=np.int64) - np.array(first, dtype=np.int64) + 1),
            "inside": ("run", np.array([r[0] for r in rows])),
            "outside": ("run", np.array([r[1] for r in rows])),
            "local_contrast": ("run", np.array([r[2] for r in rows])),
            "passes": ("run", np.array([r[3] for r in rows], dtype=bool)),
        },
        coords={"run": np.arange(len(runs), dtype=np.int64)},
        attrs={
            "block": chosen, "candidate": candidate, "has_block": int(chosen >= 0),
            "block_first_index": first[chosen] if chosen >= 0 else -1,
            "block_last_index": last[chosen] if chosen >= 0 else -1,
            "penalty": penalty, "min_inside": min_inside, "min_contrast": min_contrast,
            "min_size": min_size, "neighbours": neighbours, "rule": SEGMENT_RULE,
            "n_layers": int(values.shape[0]),
        },
    )


def pc1_runs(pc1_share, *, threshold=0.5, min_size=3):
    """The PC1 view of a block: maximal runs of layers whose PC1 share exceeds a threshold.

    A second, reported definition beside :func:`find_block` (which uses similarities
    only). Nguyen, Raghu & Kornblith (2021) found the block's layers dominated by their
    first principal component; this view lists where that is so.

    Parameters
    ----------
    pc1_share : array, shape (L,)
        Share of variance in the first principal component of each layer, in network order
        (from :func:`repsim.pc_variance_fraction` or :class:`repsim.DominantExamples`),
        each in [0, 1] or NaN (a constant layer: never above the threshold).
    threshold : float, default 0.5
        A layer belongs to a run when its share is strictly greater.
    min_size : int, default 3
        Fewest layers in a reported run (>= 1).

    Returns
    -------
    list of (int, int)
        ``(first, last)`` inclusive positions of the maximal runs, in network order.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> repsim.pc1_runs(np.array([0.1, 0.6, 0.7, 0.8, 0.2, 0.9, 0.95, 0.3]), min_size=2)
    [(1, 3), (5, 6)]
    """
    share = np.asarray(B.to_numpy(B.asarray(pc1_share)), dtype=np.float64)
    if share.ndim != 1 or share.size == 0:
        raise ValueError(f"pc1_share must be a non-empty 1-d array (one share per layer); got shape {share.shape}")
    bad = np.flatnonzero(np.isfinite(share) & ((share < 0) | (share > 1)) | np.isinf(share))
    if bad.size:
        raise ValueError(f"pc1_share must lie in [0, 1] (or be NaN); got {share[bad[0]]!r} at layer {int(bad[0])}")
    threshold = V.check_float(threshold, "threshold")
    min_size = V.check_int(min_size, "min_size", 1)
    above = np.r_[False, np.nan_to_num(share, nan=0.0) > threshold, False]
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    return [(int(f), int(l) - 1) for f, l in zip(edges[::2], edges[1::2]) if l - f >= min_size]


def block_sensitivity(sim, *, penalties=(1.5, 3.0, 6.0), min_insides=(0.85, 0.9, 0.95),
                      min_contrasts=(0.1, 0.2, 0.3), min_size=3, neighbours=3):
    """:func:`find_block` over a grid of its thresholds: does the verdict hinge on one value?

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L, L)
        As in :func:`find_block`.
    penalties, min_insides, min_contrasts : sequence of float
        Values of the three thresholds to try (every combination).
    min_size, neighbours : int
        Held fixed, as in :func:`find_block`.

    Returns
    -------
    xarray.Dataset
        dims ``(penalty, min_inside, min_contrast)``: ``has_block`` (bool),
        ``first_index`` and ``last_index`` (-1 without a block). attrs: ``found_share``
        (share of the grid that finds a block), ``n_settings``.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> sim = np.full((12, 12), 0.3)
    >>> sim[4:9, 4:9] = 0.98
    >>> np.fill_diagonal(sim, 1.0)
    >>> float(repsim.block_sensitivity(sim).attrs["found_share"])
    1.0
    """
    values, names = _matrix(sim)
    grids = []
    for seq, name in ((penalties, "penalties"), (min_insides, "min_insides"), (min_contrasts, "min_contrasts")):
        seq = list(np.atleast_1d(np.asarray(seq, dtype=object)))
        if not seq:
            raise ValueError(f"{name} must hold at least one value; got an empty sequence")
        grids.append([V.check_float(v, name) for v in seq])
    shape = tuple(len(g) for g in grids)
    found = np.zeros(shape, dtype=bool)
    first = np.full(shape, -1, dtype=np.int64)
    last = np.full(shape, -1, dtype=np.int64)
    for i, p in enumerate(grids[0]):
        opts = _block_options(p, 0.0, 0.0, min_size, neighbours)
        runs = _segment(values, opts[0])
        for j, mi in enumerate(grids[1]):
            for k, mc in enumerate(grids[2]):
                _, _, chosen = _choose(values, runs, mi, mc, opts[3], opts[4])
                if chosen >= 0:
                    found[i, j, k] = True
                    first[i, j, k], last[i, j, k] = runs[chosen]
    dims = ("penalty", "min_inside", "min_contrast")
    return xr.Dataset(
        {"has_block": (dims, found), "first_index": (dims, first), "last_index": (dims, last)},
        coords={"penalty": grids[0], "min_inside": grids[1], "min_contrast": grids[2]},
        attrs={"found_share": float(found.mean()), "n_settings": int(found.size), "min_size": opts[3],
               "neighbours": opts[4], "rule": SEGMENT_RULE},
    )
