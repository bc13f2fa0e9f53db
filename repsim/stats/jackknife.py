"""The delete-a-group jackknife of minibatch CKA: single entries and any statistic.

:class:`repsim.MinibatchCKA` keeps its sums per group of batches (``groups=``); each
leave-one-group-out value is then one matrix expression, and :func:`jackknife_interval`
carries the same jackknife through any function of the matrices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from .. import _backend as B
from .. import _validation as V
from ._common import _uncertainty_dataset, t_quantile

__all__ = ["Interval", "jackknife_interval", "jackknife_ratio"]


def jackknife_ratio(ab: Any, aa: Any, bb: Any, counts: Any, level: float = 0.9,
                    replicates: bool = False) -> tuple:
    """Delete-a-group jackknife for the ratio ``S_ab / sqrt(S_aa S_bb)`` of group sums.

    The estimator of :class:`repsim.MinibatchCKA` is a ratio of sums over batches; with
    the batches split into ``G`` groups (sums kept per group) each leave-one-group-out
    ratio ``theta_(g)`` is one matrix expression, and

        ``se^2 = (G - 1)/G * sum_g (theta_(g) - mean_g theta_(g))^2``,

    with a Student-t interval on ``G' - 1`` degrees of freedom (``G'`` non-empty groups).

    Parameters
    ----------
    ab : array, shape (G, L_a, L_b)
        Per-group sums of cross HSIC terms.
    aa, bb : arrays, shapes (G, L_a) and (G, L_b)
        Per-group sums of the self terms.
    counts : array, shape (G,)
        Batches per group; empty groups are left out.
    level : float
    replicates : bool, default False
        Also return the leave-one-group-out ratios.

    Returns
    -------
    estimate, stderr, ci_low, ci_high : numpy arrays, shape (L_a, L_b)
    n_groups : int
        Non-empty groups used.
    loo : numpy array, shape (n_groups, L_a, L_b)
        Only with ``replicates=True``: ``theta_(g)`` (NaN when fewer than 2 groups).
    """
    level = V.check_level(level)
    ab, aa, bb = (np.asarray(B.to_numpy(v), dtype=np.float64) for v in (ab, aa, bb))
    keep = np.asarray(B.to_numpy(counts)) > 0
    ab, aa, bb = ab[keep], aa[keep], bb[keep]
    g = int(keep.sum())
    tab, taa, tbb = ab.sum(0), aa.sum(0), bb.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = tab / np.sqrt(taa[:, None] * tbb[None, :])
        if g < 2:
            warnings.warn(
                f"a standard error needs batches in at least 2 groups; got {g} "
                "(stderr and interval set to NaN)",
                RuntimeWarning,
                stacklevel=3,
            )
            nan = np.full(est.shape, np.nan)
            out = (est, nan, nan.copy(), nan.copy(), g)
            return out + (np.full((g,) + est.shape, np.nan),) if replicates else out
        loo = (tab[None] - ab) / np.sqrt((taa[None] - aa)[:, :, None] * (tbb[None] - bb)[:, None, :])
        se, low, high = _delete_a_group(est, loo, level)
    out = (est, se, low, high, g)
    return out + (loo,) if replicates else out


def _delete_a_group(estimate, loo, level):
    """Jackknife standard error from the leave-one-group-out values ``loo`` (G, ...), and
    the Student-t interval on ``G - 1`` degrees of freedom around ``estimate`` (NaN for
    fewer than 2 groups)."""
    g = loo.shape[0]
    if g < 2:
        nan = np.full(np.shape(estimate), np.nan)
        return nan, nan.copy(), nan.copy()
    se = np.sqrt((g - 1) / g * np.sum((loo - loo.mean(0)) ** 2, axis=0))
    half = t_quantile(0.5 + level / 2, g - 1) * se
    return se, estimate - half, estimate + half


def jackknife_interval(
    results: xr.Dataset | Sequence[xr.Dataset],
    statistic: Callable[..., Any],
    level: float | None = None,
) -> Interval:
    """Standard error and interval of any function of minibatch CKA matrices.

    The delete-a-group jackknife of :meth:`repsim.MinibatchCKA.compute` gives intervals
    for single entries; a claim such as "the block's layers are more similar to each
    other than to the rest" is a function of many entries. With the leave-one-group-out
    matrices ``theta_(g)`` kept in the result (variable ``jackknife``), any statistic
    ``f`` gets

        ``se^2 = (G - 1)/G * sum_g (f(theta_(g)) - mean_g f(theta_(g)))^2``

    and a Student-t interval on ``G - 1`` degrees of freedom around ``f(theta)``. Given
    several results whose groups hold the same batches (the same loader order, seed and
    ``groups``, e.g. CKA before and after a per-batch transform), ``f`` receives one matrix
    per result and the jackknife is paired: the interval of a difference then accounts for
    what the two estimates share.

    Parameters
    ----------
    results : xarray.Dataset or sequence of Datasets
        From ``MinibatchCKA.compute(uncertainty=True)`` or ``compare_models(statistics=repsim.StatisticsOptions(groups=G))``.
    statistic : callable
        ``statistic(m_1, ..., m_r) -> float or array`` of numpy ``(L_a, L_b)`` matrices
        (NaN entries for constant layers: use ``nanmean`` and friends).
    level : float, optional
        Confidence level; default: the results' ``level`` attribute.

    Returns
    -------
    Interval
        ``estimate``, ``stderr``, ``ci_low``, ``ci_high`` (floats, or arrays of the
        statistic's shape), ``level`` and ``n_groups``.

    Raises
    ------
    ValueError
        If a result has no ``jackknife`` variable, or the results disagree in their number
        of groups.

    References
    ----------
    Efron, B. and Stein, C. (1981). The jackknife estimate of variance. Annals of
    Statistics 9(3), 586-596.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> acc = repsim.MinibatchCKA(groups=10)
    >>> for _ in range(20):
    ...     x = rng.standard_normal((64, 8))
    ...     acc.update({"a": x, "b": x + rng.standard_normal((64, 8)), "c": rng.standard_normal((64, 8))})
    >>> res = acc.compute(uncertainty=True)
    >>> gap = repsim.stats.jackknife_interval(res, lambda m: m[0, 1] - m[0, 2])
    >>> bool(gap.ci_low > 0.3), gap.n_groups
    (True, 10)
    """
    if isinstance(results, xr.Dataset):
        results = [results]
    results = list(results)
    if not results:
        raise ValueError("jackknife_interval needs at least one result")
    for i, r in enumerate(results):
        if not isinstance(r, xr.Dataset) or "jackknife" not in r:
            raise ValueError(
                f"result {i} has no leave-one-group-out matrices ('jackknife'); compute it with "
                "MinibatchCKA(groups=G).compute(uncertainty=True) or compare_models(statistics=repsim.StatisticsOptions(groups=G))"
            )
    groups = {int(r.sizes["group"]) for r in results}
    if len(groups) != 1:
        raise ValueError(f"the results have different numbers of groups: {sorted(groups)}")
    g = groups.pop()
    if level is None:
        level = float(results[0].attrs.get("level", 0.9))
    level = V.check_level(level)
    estimate = np.asarray(statistic(*(r[r.attrs.get("estimate", "cka")].values for r in results)), dtype=float)
    reps = np.stack([
        np.asarray(statistic(*(r["jackknife"].values[j] for r in results)), dtype=float) for j in range(g)
    ])
    se, low, high = _delete_a_group(estimate, reps, level)
    if estimate.ndim == 0:
        return Interval(float(estimate), float(se), float(low), float(high), level, g)
    return Interval(estimate, se, low, high, level, g)


class Interval(NamedTuple):
    """An estimate with its standard error and confidence interval.

    Returned by :func:`repsim.jackknife_interval`; a named tuple, so it also unpacks as
    ``estimate, stderr, ci_low, ci_high, level, n_groups = interval``.

    Attributes
    ----------
    estimate : float or numpy.ndarray
        The statistic on the full data (an array of the statistic's shape when it
        returns one).
    stderr : float or numpy.ndarray
        Delete-a-group jackknife standard error.
    ci_low, ci_high : float or numpy.ndarray
        Student-t interval on ``n_groups - 1`` degrees of freedom.
    level : float
        Confidence level.
    n_groups : int
        Number of jackknife groups used.
    """

    estimate: float | np.ndarray
    stderr: float | np.ndarray
    ci_low: float | np.ndarray
    ci_high: float | np.ndarray
    level: float
    n_groups: int


def grouped_uncertainty(plain: xr.DataArray, groups: dict[str, Any], level: float,
                        names_a: Sequence[str], names_b: Sequence[str]) -> xr.Dataset:
    """The uncertainty of a grouped accumulator's CKA matrix (``compute(uncertainty=True)``).

    Parameters
    ----------
    plain : xarray.DataArray, shape (L_a, L_b)
        The accumulator's ``compute()`` (NaN for constant layers; its attrs are kept).
    groups : dict
        The per-group sums ``group_ab`` (G, L_a, L_b), ``group_aa`` (G, L_a),
        ``group_bb`` (G, L_b) and ``group_batches`` (G,), on any library.
    level : float
        Confidence level of the interval.
    names_a, names_b : sequence of str
        The layer names of the two sides (the coordinates).

    Returns
    -------
    xarray.Dataset
        ``cka``, ``stderr``, ``ci_low``, ``ci_high`` (dims ``layer_a, layer_b``) from
        :func:`jackknife_ratio`, and ``jackknife`` (dims ``group, layer_a, layer_b``): the
        leave-one-group-out matrices; NaN wherever ``plain`` is NaN.
    """
    _, se, low, high, used, loo = jackknife_ratio(
        groups["group_ab"], groups["group_aa"], groups["group_bb"],
        B.to_numpy(groups["group_batches"]), level, replicates=True
    )
    bad = np.isnan(plain.values)
    se, low, high = (np.where(bad, np.nan, v) for v in (se, low, high))
    loo = np.where(bad[None], np.nan, loo)
    attrs = dict(plain.attrs, method="delete-a-group jackknife", level=level, n_groups=used)
    ds = _uncertainty_dataset(plain.values, se, low, high, names_a, names_b, attrs)
    ds["jackknife"] = (("group", "layer_a", "layer_b"), loo)
    return ds
