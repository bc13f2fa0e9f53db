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
  NaN is accepted only as a whole layer (a NaN row and column); a NaN elsewhere, or an
  infinite entry, is refused.

The defaults (``threshold=0.8``, ``min_size=3``) suit linear-CKA heatmaps of residual
networks, where block layers typically reach CKA 0.9 and above; they are parameters, not
constants of nature -- report them with any score.

What this rule finds is *stage structure*: at residual-block granularity every stage of a
ResNet is a bright square, and the scan returns those squares (its largest favours long,
moderately similar runs). The paper's block -- near-identical inside, dark around it -- is
what :func:`repsim.find_block` (in :mod:`repsim.blocks.declared`) looks for.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from .. import _validation as V
from ._reader import _matrix
from .declared import (
    BlockContrast, block_contrast, block_sensitivity, find_block, pc1_runs, segment_layers,
)
from ._reader import _check_values as _refuse_nonfinite  # infinities; NaN but whole layers

RULE = (
    "grow a run from layer i while the next layer's mean similarity to the run's layers "
    ">= threshold; keep runs of >= min_size layers; resume after a block, else at i + 1"
)


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
    _refuse_nonfinite(values)
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
    _refuse_nonfinite(values)
    return _score(values, _find(values, threshold, min_size))
