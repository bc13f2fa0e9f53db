"""The declared block: an optimal segmentation of the layers and the run with the sharpest edges.

The greedy rule of :func:`repsim.block_structure` finds *stage structure*: at residual-block
granularity every stage is a bright square, and its scan returns those squares. The paper's
block is a different object -- a run of layers with near-identical representations and
sharp edges, dark around it. The functions below define it from the CKA matrix alone
(so claims about principal components can be tested on the block rather than built into
it): segment the layer sequence optimally, then pick, among the runs that pass declared
thresholds, the one with the largest *local* contrast.

The rule
--------
1. **Segment** (:func:`segment_layers`): split layers ``0 .. L-1`` into contiguous runs
   minimising ``sum over runs [size * mean dissimilarity (1 - S) over the run's pairs of
   distinct layers] + penalty * (number of runs)``, exactly (dynamic programming).
   The cost of a run is *linear* in its size, so a uniform run is never cheaper split:
   there is no largest block the segmentation can return. (An earlier cost summed
   ``1 - S`` over pairs -- quadratic in the size -- and split any uniform run longer
   than about ``2 * sqrt(penalty / (1 - inside))`` layers: 29 % of the layers at inside
   0.95.) Two consequences fix the penalty's meaning, independent of ``L``: a uniform
   run whose mean dissimilarity ``d`` is below ``penalty * (s - 1) / s`` stays whole
   rather than falling apart into single layers, and a layer joins a run when its mean
   dissimilarity to the run's layers is below about ``(penalty + d) / 2``.
2. **Measure** every run: ``inside`` (mean similarity between its distinct layers) and
   *local contrast* (``inside`` minus the mean similarity from its layers to
   ``max(neighbours, ceil(size / 2))`` layers on each side, see :func:`block_contrast`).
3. **Choose**: the block is the run with the largest local contrast among the runs that
   pass all three thresholds -- at least ``max(min_size, ceil(min_share * L))``
   layers, ``inside >= min_inside`` and local
   contrast ``>= min_contrast``. A sharper run that fails a threshold never hides one
   that passes. No run passes: the model has no block.

Input: a symmetric ``L x L`` similarity with finite entries; a layer whose whole row is
NaN (a constant layer, for which CKA is undefined) is accepted and counts as similarity
0 to every other layer; a NaN anywhere else, or an infinite entry, is refused.

Limits, measured on planted matrices (``tests/test_block_rule.py``): with the defaults,
uniform blocks of 20-80 % of the layers at inside 0.95-0.99 (noise 0.02) on smooth and
stage-square backgrounds are returned exactly for ``L`` from 19 to 217. The thresholds
are not constants of nature: the study's values (inside 0.9, local contrast 0.2) were
calibrated on post-ReLU residual-block outputs of ResNets at 16 px, and a stage square
that is itself near-identical inside and dark around it *is* a block by this rule.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import xarray as xr

from .. import _backend as B
from .. import _validation as V
from ._reader import _block_options, _check_range, _check_values, _matrix

#: Default per-run penalty of :func:`segment_layers` / :func:`find_block`, in units of
#: dissimilarity (``1 - S``): runs stay whole while their mean dissimilarity is below
#: about this, for any number of layers.
PENALTY = 0.25

SEGMENT_RULE = (
    "optimal segmentation into contiguous runs minimising sum over runs of "
    "[size x mean over the run's pairs of distinct layers of (1 - similarity)] + penalty per run "
    "(linear in run size: no size cap; a whole-NaN layer counts as similarity 0); block = among runs of "
    ">= max(min_size, ceil(min_share x L)) layers with inside >= min_inside and local contrast "
    ">= min_contrast, the one with the largest local contrast (inside mean minus mean similarity "
    "to max(neighbours, ceil(size/2)) layers on each side)"
)


class BlockContrast(NamedTuple):
    """Inside and outside similarity of a run of layers (returned by :func:`block_contrast`).

    Attributes
    ----------
    inside : float
        Mean similarity between distinct layers of the run.
    outside : float
        Mean similarity from the run's layers to the compared layers (neighbours or all).
    contrast : float
        ``inside - outside``.
    """

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
    _check_values(values)
    first, last = _span(first, last, values.shape[0])
    if neighbours is not None:
        neighbours = V.check_int(neighbours, "neighbours", 1)
    return _contrast(values, first, last, neighbours)


def _segment(values, penalty):
    """Optimal runs ``[(first, last), ...]``: dynamic programming over run ends.

    The cost of a run of ``s`` layers is ``s`` times the mean dissimilarity ``1 - S``
    over its pairs of distinct layers (0 for one layer): linear in the run's size, so a
    uniform run is never cheaper split, however long."""
    n_layers = values.shape[0]
    dis = np.triu(1.0 - np.nan_to_num(values, nan=0.0), 1)
    # prefix[r, c] = sum of dis[:r, :c]; pair_sum[i, j] = sum over i <= a < b <= j
    prefix = np.zeros((n_layers + 1, n_layers + 1))
    prefix[1:, 1:] = dis.cumsum(0).cumsum(1)
    best = np.zeros(n_layers + 1)
    start = np.zeros(n_layers + 1, dtype=np.int64)
    for j in range(1, n_layers + 1):
        i = np.arange(j)
        pair_sum = prefix[j, j] - prefix[i, j] - prefix[j, i] + prefix[i, i]
        size = j - i
        # size * mean over size (size - 1) / 2 pairs = 2 * pair_sum / (size - 1)
        cost = np.where(size > 1, 2.0 * pair_sum / np.maximum(size - 1, 1), 0.0)
        total = best[i] + cost + penalty
        k = int(np.argmin(total))
        best[j], start[j] = total[k], k
    runs, j = [], n_layers
    while j > 0:
        runs.append((int(start[j]), j - 1))
        j = int(start[j])
    return runs[::-1]


def segment_layers(sim, *, penalty=PENALTY):
    """Optimal segmentation of the layer sequence into contiguous runs.

    Minimises ``sum over runs [s * mean over the run's pairs of distinct layers a < b of
    (1 - S[a, b])] + penalty * (number of runs)`` exactly, by dynamic programming over
    run ends (``O(L^2)`` time), where ``s`` is the run's number of layers (a run of one
    layer costs only the penalty).

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L, L)
        A within-model similarity matrix, as in :func:`block_structure`, with finite
        entries; a layer whose whole row is NaN (constant: CKA undefined) counts as
        similarity 0. Infinite entries and scattered NaN are refused.
    penalty : float, default 0.25
        Cost of one more run (> 0), in units of dissimilarity. The cost of a run is
        linear in its size, so the penalty needs no scaling with ``L`` and a uniform run
        is never split however long: a uniform run whose mean dissimilarity ``d`` is
        below ``penalty * (s - 1) / s`` stays whole rather than falling apart into single
        layers, and a layer joins a run when its mean dissimilarity to the run's layers
        is below about ``(penalty + d) / 2``. Larger values give fewer, longer runs.

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
    _check_values(values)
    penalty = V.check_float(penalty, "penalty")
    if penalty <= 0:
        raise ValueError(f"penalty must be > 0; got {penalty!r}")
    return _segment(values, penalty)


def _min_layers(n_layers, min_size, min_share):
    """Fewest layers a block of an ``n_layers`` matrix must span:
    ``max(min_size, ceil(min_share * n_layers))`` (e.g. 3, 6, 11, 22 for 19, 54, 109, 217
    layers with the defaults). The absolute floor keeps two layers from being "a set of
    layers" in a small network; the relative part keeps a 3-layer run of a 109-layer
    network from counting as the block."""
    # the tolerance keeps 0.1 * 110 = 11.000000000000002 from asking for 12 layers
    return max(int(min_size), math.ceil(min_share * n_layers - 1e-9))


def _choose(values, runs, min_inside, min_contrast, need, neighbours):
    """Per run ``(inside, outside, contrast, passes)``, the candidate's position and the
    chosen run's position (-1 when none).

    The block is the run with the largest local contrast *among the runs that pass* every
    threshold (at least ``need`` layers, inside >= ``min_inside``, local contrast >=
    ``min_contrast``): a sharper run that fails one of them never hides one that passes.
    The candidate is the block when there is one, else the run of at least ``need`` layers
    with the largest local contrast (what came closest), else -1."""
    rows, chosen, best_passing, candidate, best_any = [], -1, -math.inf, -1, -math.inf
    for r, (f, l) in enumerate(runs):
        c = _contrast(values, f, l, neighbours)
        big = l - f + 1 >= need
        passes = bool(big and c.inside >= min_inside and c.contrast >= min_contrast)
        rows.append((*c, passes))
        if passes and c.contrast > best_passing:
            chosen, best_passing = r, c.contrast
        if big and np.isfinite(c.contrast) and c.contrast > best_any:
            candidate, best_any = r, c.contrast
    return rows, (chosen if chosen >= 0 else candidate), chosen


def find_block(sim, *, penalty=PENALTY, min_inside=0.9, min_contrast=0.2, min_size=3, min_share=0.1,
               neighbours=3):
    """The block: among the segmented runs that pass the thresholds, the one with the sharpest edges.

    From the similarity matrix alone: :func:`segment_layers` splits the layers into
    contiguous runs (a cost linear in a run's size: no largest block); a run *passes*
    when it spans at least ``max(min_size, ceil(min_share * L))`` layers, its inside
    similarity is at least ``min_inside`` and its *local* contrast (:func:`block_contrast`
    with ``neighbours``) at least ``min_contrast``. *The block* is the passing run with
    the largest local contrast; no passing run, no block. A sharper run that fails a
    threshold does not hide one that passes. Principal components play no part, so
    claims about PC1 can be tested on the block rather than built into it;
    :func:`pc1_runs` is the PC1 view beside it.

    Unlike :func:`block_structure` (whose greedy scan returns the bright squares of
    stage structure and favours long, moderately similar runs), this rule looks for a
    run that is near-identical inside and dark around it: the "block structure" of
    Nguyen, Raghu & Kornblith (2021).

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L, L)
        A within-model similarity matrix, layers in network order, with finite entries
        (a whole-NaN layer -- a constant layer -- is accepted and counts as similarity 0;
        infinite entries and scattered NaN are refused).
    penalty : float, default 0.25
        Per-run penalty of the segmentation, in units of dissimilarity (see
        :func:`segment_layers`); the same value serves every ``L``.
    min_inside : float in [-1, 1], default 0.9
        Least mean similarity between distinct layers of the block.
    min_contrast : float in [-2, 2], default 0.2
        Least local contrast of the block.
    min_size : int, default 3
        Absolute floor on the block's number of layers (>= 2).
    min_share : float in [0, 1], default 0.1
        Relative floor: the block spans at least ``ceil(min_share * L)`` layers, so a
        3-layer run of a 109-layer network is not "a large set of layers". 0 leaves
        ``min_size`` alone.
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
        ``run``, -1 when there is no block), ``candidate`` (the block; without one, the
        run of >= ``min_layers`` layers with the largest local contrast -- what came
        closest -- or -1), ``has_block`` (0/1), ``block_first_index``/``block_last_index``
        (-1 without a block), the options, ``min_layers`` (the size floor applied),
        ``rule`` and ``n_layers`` -- the definition travels with every result. Save it
        with :func:`repsim.save_result`.

    See Also
    --------
    segment_layers, block_contrast, pc1_runs, block_sensitivity, block_structure

    Notes
    -----
    The thresholds' defaults were calibrated on linear CKA between post-ReLU residual-block
    outputs of CIFAR ResNets at 16 px; other layer selections (every conv/BN/ReLU output,
    transformer layers) need their own -- an alternation of layer kinds lowers ``inside``
    of every run. Report them with any verdict and run :func:`block_sensitivity`.

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
    opts = _block_options(penalty, min_inside, min_contrast, min_size, neighbours, min_share)
    values, names = _matrix(sim)
    _check_values(values)
    return _find_block(values, names, *opts)


def _find_block(values, names, penalty, min_inside, min_contrast, min_size, neighbours, min_share=0.1):
    runs = _segment(values, penalty)
    need = _min_layers(int(values.shape[0]), min_size, min_share)
    rows, candidate, chosen = _choose(values, runs, min_inside, min_contrast, need, neighbours)
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
            "min_size": min_size, "min_share": min_share, "min_layers": need, "neighbours": neighbours,
            "rule": SEGMENT_RULE, "n_layers": int(values.shape[0]),
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


def block_sensitivity(sim, *, penalties=(0.125, PENALTY, 0.5), min_insides=(0.85, 0.9, 0.95),
                      min_contrasts=(0.1, 0.2, 0.3), min_size=3, min_share=0.1, neighbours=3):
    """:func:`find_block` over a grid of its thresholds: does the verdict hinge on one value?

    Parameters
    ----------
    sim : xarray.DataArray or array, shape (L, L)
        As in :func:`find_block`.
    penalties, min_insides, min_contrasts : sequence of float
        Values of the three thresholds to try (every combination); each in the range
        :func:`find_block` accepts.
    min_size, min_share, neighbours
        Held fixed, as in :func:`find_block`.

    Returns
    -------
    xarray.Dataset
        dims ``(penalty, min_inside, min_contrast)``: ``has_block`` (bool),
        ``first_index`` and ``last_index`` (-1 without a block). attrs: ``found_share``
        (share of the grid that finds a block), ``n_settings``, ``min_size``,
        ``min_share``, ``min_layers``, ``neighbours``, ``rule``.

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
    _check_values(values)
    grids = []
    for seq, name in ((penalties, "penalties"), (min_insides, "min_insides"), (min_contrasts, "min_contrasts")):
        seq = list(np.atleast_1d(np.asarray(seq, dtype=object)))
        if not seq:
            raise ValueError(f"{name} must hold at least one value; got an empty sequence")
        grids.append([V.check_float(v, name) for v in seq])
    for mi in grids[1]:
        _check_range(mi, "min_insides", -1.0, 1.0)
    for mc in grids[2]:
        _check_range(mc, "min_contrasts", -2.0, 2.0)
    shape = tuple(len(g) for g in grids)
    found = np.zeros(shape, dtype=bool)
    first = np.full(shape, -1, dtype=np.int64)
    last = np.full(shape, -1, dtype=np.int64)
    need = None
    for i, p in enumerate(grids[0]):
        opts = _block_options(p, 0.0, 0.0, min_size, neighbours, min_share)
        runs = _segment(values, opts[0])
        need = _min_layers(int(values.shape[0]), opts[3], opts[5])
        for j, mi in enumerate(grids[1]):
            for k, mc in enumerate(grids[2]):
                _, _, chosen = _choose(values, runs, mi, mc, need, opts[4])
                if chosen >= 0:
                    found[i, j, k] = True
                    first[i, j, k], last[i, j, k] = runs[chosen]
    dims = ("penalty", "min_inside", "min_contrast")
    return xr.Dataset(
        {"has_block": (dims, found), "first_index": (dims, first), "last_index": (dims, last)},
        coords={"penalty": grids[0], "min_inside": grids[1], "min_contrast": grids[2]},
        attrs={"found_share": float(found.mean()), "n_settings": int(found.size), "min_size": opts[3],
               "min_share": opts[5], "min_layers": need, "neighbours": opts[4], "rule": SEGMENT_RULE},
    )
