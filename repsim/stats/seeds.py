"""Similarities over training seeds: their mean and spread, and whether two
architectures differ beyond seed-to-seed variation."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import xarray as xr

from .. import _validation as V
from ._common import adjust_p_values, as_numpy_result, attrs_for_netcdf, t_quantile

__all__ = ["aggregate_seeds", "compare_seeds"]



def _stack_seeds(results, dim, name):
    """Stack per-seed results (DataArrays, arrays or scalars) along ``dim``."""
    if isinstance(results, xr.DataArray):
        if dim not in results.dims:
            raise ValueError(f"{name} must have a {dim!r} dimension; got dims {results.dims}")
        return results.transpose(dim, ...)
    if isinstance(results, xr.Dataset) or not isinstance(results, (list, tuple)):
        raise TypeError(
            f"{name} must be a list of per-seed results (DataArrays, arrays or numbers) or a "
            f"DataArray with a {dim!r} dimension; got {type(results).__name__}"
        )
    if len(results) == 0:
        raise ValueError(f"{name} must hold at least one result; got none")
    results = [_estimate_variable(r, name) if isinstance(r, xr.Dataset) else r for r in results]
    if all(isinstance(r, xr.DataArray) for r in results):
        try:
            return xr.concat(list(results), dim=dim, join="exact", coords="minimal", compat="override")
        except ValueError as err:
            raise ValueError(f"the results in {name} must share their coordinates (layer names): {err}") from None
    arrays = [np.asarray(as_numpy_result(r)) for r in results]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"the results in {name} must all have one shape; got {sorted(shapes)}")
    stacked = np.stack(arrays)
    return xr.DataArray(stacked, dims=(dim,) + tuple(f"dim_{i}" for i in range(stacked.ndim - 1)))


def _estimate_variable(ds, name):
    """The estimate of an uncertainty Dataset (its ``attrs["estimate"]`` variable)."""
    est = ds.attrs.get("estimate")
    if est is None or est not in ds:
        raise TypeError(
            f"{name} holds a Dataset without an 'estimate' attribute naming one of its "
            f"variables ({list(ds.data_vars)}); pass the DataArray to aggregate"
        )
    return ds[est]


def aggregate_seeds(results: Any, *, level: float = 0.9, dim: str = "seed") -> xr.Dataset:
    """Mean and spread of a similarity over training seeds.

    Parameters
    ----------
    results : list of DataArray/array/number, or DataArray with a ``dim`` dimension
        One result per seed (same layers, same shape). Uncertainty Datasets (from
        :func:`bootstrap`, ``MinibatchCKA.compute(uncertainty=True)``) contribute their
        estimate.
    level : float, default 0.9
        Level of the Student-t interval for the mean.
    dim : str, default "seed"

    Returns
    -------
    xarray.Dataset
        ``mean``, ``std`` (sample, ddof=1: the seed-to-seed spread), ``stderr``
        (``std / sqrt(k)``), ``ci_low``, ``ci_high`` (t interval on ``k - 1`` degrees of
        freedom), ``min``, ``max``; attrs ``n_seeds``, ``level``, ``estimate="mean"``.
        NaN entries propagate. One seed gives NaN spread.

    Examples
    --------
    >>> import repsim
    >>> ds = repsim.aggregate_seeds([0.80, 0.84, 0.82])
    >>> round(float(ds["mean"]), 3), round(float(ds["std"]), 3)
    (0.82, 0.02)
    """
    level = V.check_level(level)
    stacked = _stack_seeds(results, dim, "results")
    k = stacked.sizes[dim]
    mean = stacked.mean(dim, skipna=False)
    std = stacked.std(dim, ddof=1, skipna=False) if k > 1 else mean * np.nan
    se = std / math.sqrt(k)
    half = se * (t_quantile(0.5 + level / 2, k - 1) if k > 1 else np.nan)
    ds = xr.Dataset(
        {"mean": mean, "std": std, "stderr": se, "ci_low": mean - half, "ci_high": mean + half,
         "min": stacked.min(dim, skipna=False), "max": stacked.max(dim, skipna=False)}
    )
    ds.attrs = attrs_for_netcdf({**stacked.attrs, "n_seeds": k, "level": level,
                                 "estimate": "mean"})
    for v in ds.data_vars.values():
        v.attrs = {}
    return ds


def compare_seeds(
    results_a: Any,
    results_b: Any,
    *,
    level: float = 0.9,
    test: str = "welch",
    n_permutations: int = 2000,
    seed: int = 0,
    dim: str = "seed",
    correction: str = "holm",
) -> xr.Dataset:
    """Do two architectures differ beyond seed-to-seed variation? Per entry.

    ``results_a`` holds one result per seed of architecture A (say a similarity of the
    wide model), ``results_b`` the same quantity for architecture B. The difference of
    the seed means is tested against the seed spread of both sides.

    Parameters
    ----------
    results_a, results_b : list of DataArray/array/number, or DataArray with ``dim``
        At least 2 seeds each; same shape and coordinates.
    level : float, default 0.9
        Level of the interval for the difference; an entry ``differs`` when its p-value
        (adjusted for the number of entries tested, see ``correction``) is below
        ``1 - level``.
    test : {"welch", "permutation"}, default "welch"
        ``"welch"``: Welch's unequal-variance t test (Welch-Satterthwaite degrees of
        freedom; :func:`scipy.stats.ttest_ind` with ``equal_var=False``). An entry whose
        seeds are all equal on both sides has no spread to test against: p = 1 when the
        two means are equal (nothing to test), and undefined (NaN, ``differs`` False, a
        warning counting such entries) when they differ -- a t test cannot weigh a
        difference against zero spread; the exact ``"permutation"`` test can. ``"permutation"``: the seed labels are permuted (all splits when there
        are at most ``n_permutations`` of them, else that many random ones); two-sided on
        the difference of means. With 3 + 3 seeds there are only 20 splits, so its
        smallest p-value is 0.1: use more seeds or the t test.
    n_permutations : int, default 2000
    seed : int, default 0
        For the random permutations.
    dim : str, default "seed"
    correction : {"holm", "bh", "none"}, default "holm"
        Multiple-comparison correction over the entries (a layer x layer matrix is one
        test per entry): Holm's step-down (family-wise error rate, any dependence),
        Benjamini-Hochberg (false discovery rate, :func:`scipy.stats.false_discovery_control`)
        or none. The family is every entry with a finite p-value where a test was
        performed (some seed spread, or different means); for a symmetric matrix (the
        same layer names on both axes and symmetric values in every seed) only the
        upper triangle with the diagonal counts, and the lower triangle mirrors it. One
        entry: the correction changes nothing.

    Returns
    -------
    xarray.Dataset
        ``mean_a``, ``mean_b``, ``difference`` (``mean_a - mean_b``), ``stderr``,
        ``ci_low``, ``ci_high`` (Welch t interval, per entry: not simultaneous), ``t``,
        ``df``, ``p_value`` (per entry, unadjusted), ``p_adjusted`` (unless
        ``correction="none"``), ``differs`` (bool, from ``p_adjusted``); attrs
        ``n_seeds_a``, ``n_seeds_b``, ``test``, ``level``, ``correction``, ``n_tests``
        (the family's size), ``n_undefined`` (entries whose Welch p is undefined).

    Examples
    --------
    >>> import repsim
    >>> ds = repsim.compare_seeds([0.80, 0.82, 0.81], [0.70, 0.69, 0.72])
    >>> round(float(ds.difference), 3), bool(ds.differs)
    (0.107, True)
    """
    level = V.check_level(level)
    V.check_params("compare_seeds", test=test, correction=correction)
    n_permutations = V.check_int(n_permutations, "n_permutations", 10)
    a = _stack_seeds(results_a, dim, "results_a")
    b = _stack_seeds(results_b, dim, "results_b")
    ka, kb = a.sizes[dim], b.sizes[dim]
    if ka < 2 or kb < 2:
        raise ValueError(f"compare_seeds needs at least 2 seeds per side; got {ka} and {kb}")
    try:
        a, b = xr.align(a, b, join="exact", exclude=[dim])
    except ValueError as err:
        raise ValueError(
            "results_a and results_b must share their coordinates (layer names); to compare "
            f"entries by position across architectures, pass their .values: {err}"
        ) from None
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"results_a and results_b must have one shape per seed; got {a.shape[1:]} and {b.shape[1:]}"
        )
    av, bv = np.asarray(a.values, np.float64), np.asarray(b.values, np.float64)
    ma, mb = av.mean(0), bv.mean(0)
    va, vb = av.var(0, ddof=1) / ka, bv.var(0, ddof=1) / kb
    diff = ma - mb
    se = np.sqrt(va + vb)
    t, df, p_welch = _welch(av, bv, diff, se)
    half = se * t_quantile(0.5 + level / 2, np.where(np.isfinite(df), df, np.inf))
    undefined = 0
    if test == "welch":
        p = p_welch
        undefined = int(np.sum((se == 0) & (diff != 0) & np.isfinite(diff)))
        if undefined:
            warnings.warn(
                f"compare_seeds: {undefined} entr{'y has' if undefined == 1 else 'ies have'} no "
                "seed spread on either side but different means; Welch's p is undefined there "
                "(NaN). Use test='permutation' for an exact test.", RuntimeWarning, stacklevel=2)
    else:
        p = _seed_permutation_p(av, bv, n_permutations, seed)
    family = np.isfinite(p) & ~((se == 0) & (diff == 0))
    symmetric = _symmetric(a, b, av, bv, dim)
    if symmetric:
        family &= np.triu(np.ones(p.shape, dtype=bool))
    p_adj = adjust_p_values(p, correction, family)
    p_adj = np.where(np.isfinite(p) & ~family, p, p_adj)  # no test performed: p stays 1
    if symmetric:
        lower = np.tril(np.ones(p.shape, dtype=bool), -1)
        p_adj = np.where(lower, p_adj.T, p_adj)
    template = a.isel({dim: 0}, drop=True)
    out = {"mean_a": ma, "mean_b": mb, "difference": diff, "stderr": se, "ci_low": diff - half,
           "ci_high": diff + half, "t": t, "df": df, "p_value": p}
    if correction != "none":
        out["p_adjusted"] = p_adj
    out["differs"] = p_adj < 1 - level
    ds = xr.Dataset({k: template.copy(data=np.asarray(v)) for k, v in out.items()})
    for v in ds.data_vars.values():
        v.attrs = {}
    ds.attrs = {"n_seeds_a": ka, "n_seeds_b": kb, "test": test, "level": level,
                "estimate": "difference", "correction": correction,
                "n_tests": int(np.sum(family)), "n_undefined": undefined, "family": "upper triangle with diagonal"
                if symmetric else "every entry tested"}
    return ds


def _welch(av, bv, diff, se):
    """Welch's t, its Welch-Satterthwaite degrees of freedom and two-sided p-value per
    entry, from :func:`scipy.stats.ttest_ind` (``equal_var=False``) where the seeds
    spread; where they do not (``se == 0``) t is ``diff / 0``, the degrees of freedom
    undefined, and p undefined (NaN) for different means, 1 for equal ones."""
    from scipy import stats

    shape = diff.shape
    fa, fb = av.reshape(av.shape[0], -1), bv.reshape(bv.shape[0], -1)
    d, s = diff.reshape(-1), se.reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d / s
    df = np.full(d.shape, np.nan)
    p = np.where(d == 0, 1.0, np.nan)
    spread = np.isfinite(s) & (s > 0)
    if spread.any():
        res = stats.ttest_ind(fa[:, spread], fb[:, spread], axis=0, equal_var=False)
        t[spread], df[spread], p[spread] = res.statistic, res.df, res.pvalue
    return t.reshape(shape), df.reshape(shape), p.reshape(shape)


def _symmetric(a, b, av, bv, dim):
    """Whether the entries are a symmetric layer x layer matrix on both sides (the same
    names on both axes, symmetric values in every seed up to rounding)."""
    dims = [d for d in a.dims if d != dim]
    if len(dims) != 2 or av.shape[1] != av.shape[2]:
        return False
    ca, cb = (a.coords.get(d) for d in dims)
    if ca is None or cb is None or list(ca.values) != list(cb.values):
        return False
    return all(np.allclose(v, np.swapaxes(v, 1, 2), rtol=1e-12, atol=0, equal_nan=True)
               for v in (av, bv))


def _seed_permutation_p(av, bv, n_permutations, seed):
    pooled = np.concatenate([av, bv])
    k, ka = pooled.shape[0], av.shape[0]
    observed = np.abs(av.mean(0) - bv.mean(0))
    if math.comb(k, ka) <= n_permutations:
        splits = [np.array(c) for c in itertools.combinations(range(k), ka)]
    else:
        rng = np.random.default_rng(seed)
        splits = [rng.permutation(k)[:ka] for _ in range(n_permutations)]
    total = pooled.sum(0)
    count = np.zeros(observed.shape)
    for idx in splits:
        sa = pooled[idx].sum(0)
        d = np.abs(sa / ka - (total - sa) / (k - ka))
        count += d >= observed - 1e-12
    exact = math.comb(k, ka) <= n_permutations
    p = count / len(splits) if exact else (count + 1) / (len(splits) + 1)
    return np.where(np.isnan(observed), np.nan, p)
