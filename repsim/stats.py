"""Statistical confidence for similarities: intervals, chance levels and seed comparisons.

A CKA heatmap without error bars invites over-reading. This module attaches uncertainty
to every entry of a similarity matrix, computed from the grams of the full data only
(they are formed once; every resample or permutation indexes them):

- :func:`bootstrap` -- confidence intervals by resampling examples, for
  :func:`repsim.cka`, :func:`repsim.cka_matrix` (gram entries re-indexed, never
  recomputed) and any other measure callable (the CCA family, say; recomputed on each
  resample).
- :func:`permutation_test` -- the chance level of every entry (example order of one
  side shuffled), its exact expectation, a p-value and a chance-corrected score.
- :func:`aggregate_seeds` and :func:`compare_seeds` -- mean and spread over training
  seeds, and whether two architectures differ beyond seed-to-seed variation.

The minibatch estimator gets its intervals from :class:`repsim.MinibatchCKA` itself
(``groups=`` at construction, ``compute(uncertainty=True)``), by the delete-a-group
jackknife implemented here in :func:`jackknife_ratio`.

Why biased CKA of unrelated representations is far from 0
-------------------------------------------------------------
Under the permutation null (one side's examples shuffled) the biased HSIC of the centred
grams ``K, L`` has the exact expectation ``tr(K) tr(L) / (n - 1)``, so the expected
chance-level CKA is

    ``E_null[CKA] = sqrt(r_K r_L) / (n - 1)``,  ``r_K = tr(K)^2 / ||K||_F^2``,

the geometric mean of the two effective ranks over ``n - 1``. For isotropic features
``r_K ~ min(p, n - 1)``: with ``p << n`` chance CKA is about ``p / n``; once ``p >> n``
the centred gram is nearly ``p * H`` (the diagonal, each example's squared norm,
dominates) and chance CKA tends to 1 -- the biased estimator cannot tell unrelated wide
layers apart. The unbiased estimator (Song et al. 2012) drops the diagonal; its null
expectation is exactly 0 at every ``n`` and ``p``.

Measured on independent standard Gaussian ``x, y`` of shape ``(100, p)``
(``default_rng(0)``, ``x`` drawn first; null from 200 permutations, seed 0; the same
numbers come out of ``repsim.stats.permutation_test``):

=====  ==========  ============  ==============  ===============  =======  ==========
p      biased CKA  unbiased CKA  chance (exact)  null mean +- sd  p-value  calibrated
=====  ==========  ============  ==============  ===============  =======  ==========
10     0.0943      +0.0073       0.0896          0.0884 +- 0.014  0.32     +0.0052
100    0.5152      +0.0269       0.5020          0.5022 +- 0.007  0.05     +0.0264
1000   0.9098      +0.0158       0.9084          0.9083 +- 0.001  0.13     +0.0159
10000  0.9903      +0.0056       0.9903          0.9903 +- 1e-4   0.37     +0.0061
=====  ==========  ============  ==============  ===============  =======  ==========

The unbiased estimator's own permutation null has mean ~0 (within 0.0015) and sd 0.014
to 0.015 at every ``p`` here: its spread depends on ``n``, not on the width. The
chance-corrected biased score tracks the unbiased estimate closely.

So a biased CKA of 0.9 between two 1000-wide layers seen on 100 examples is chance level;
report the unbiased estimator, or the chance-corrected score
``(CKA - chance) / (1 - chance)`` that :func:`permutation_test` returns.
"""

from __future__ import annotations

import inspect
import itertools
import math
import statistics
import warnings

from typing import NamedTuple

import numpy as np
import xarray as xr

from . import _backend as B
from . import _validation as V
from .cka import _mask_degenerate, cka, cka_matrix, pair_cka
from .hsic import centred_gram_stack
from .kernels import ESTIMATORS, KERNELS, centre_into
from .results import similarity_array

INTERVALS = ("basic", "percentile")
#: permutations index the centred grams in chunks of layers of about this many bytes
_CHUNK_BYTES = 256 * 2**20
SEED_TESTS = ("welch", "permutation")


# ---------------------------------------------------------------- Student t (numpy only)
def _betacf(a, b, x, iters=400):
    """Continued fraction of the regularised incomplete beta (modified Lentz), vectorised."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = np.where(np.abs(d) < tiny, tiny, d)
    d = 1.0 / d
    h = d.copy()
    for m in range(1, iters + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        h = h * d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        delta = d * c
        h = h * delta
        if np.all(np.abs(delta - 1.0) < 1e-15):
            break
    return h


_lgamma = np.vectorize(math.lgamma, otypes=[float])


def _betainc(a, b, x):
    """Regularised incomplete beta ``I_x(a, b)`` for arrays (broadcast)."""
    a, b, x = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(a, b, x))
    xc = np.clip(x, 1e-300, 1.0 - 1e-16)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        front = np.exp(
            _lgamma(a + b) - _lgamma(a) - _lgamma(b) + a * np.log(xc) + b * np.log1p(-xc)
        )
        flip = x > (a + 1.0) / (a + b + 2.0)
        aa, bb = np.where(flip, b, a), np.where(flip, a, b)
        xx = np.where(flip, 1.0 - xc, xc)
        res = front * _betacf(aa, bb, xx) / aa
    out = np.where(flip, 1.0 - res, res)
    return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, out))


def t_two_sided_p(t, df):
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom.

    numpy-only (regularised incomplete beta); ``df = inf`` gives the normal limit. NaN in,
    NaN out.
    """
    t = np.abs(np.asarray(t, dtype=np.float64))
    df = np.broadcast_to(np.asarray(df, dtype=np.float64), t.shape)
    out = np.full(t.shape, np.nan)
    finite_df = np.isfinite(df) & (df > 0) & ~np.isnan(t)
    if finite_df.any():
        tt, dd = t[finite_df], df[finite_df]
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.where(np.isinf(tt), 0.0, dd / (dd + tt * tt))
        out[finite_df] = _betainc(dd / 2.0, 0.5, x)
    normal = np.isinf(df) & ~np.isnan(t)
    if normal.any():
        out[normal] = np.vectorize(math.erfc)(t[normal] / math.sqrt(2.0))
    return out


def _t_cdf(t, df):
    p = t_two_sided_p(t, df)
    return np.where(np.asarray(t) >= 0, 1.0 - 0.5 * p, 0.5 * p)


def _t_pdf(t, df):
    return np.exp(
        _lgamma((df + 1) / 2) - _lgamma(df / 2) - 0.5 * np.log(df * np.pi)
        - (df + 1) / 2 * np.log1p(t * t / df)
    )


def t_quantile(q, df):
    """Quantile of Student's t: ``q`` a probability, ``df`` scalar or array (> 0).

    Exact forms for ``df`` 1 and 2, else a Cornish-Fisher start refined by safeguarded
    Newton steps on :func:`t_two_sided_p` (agrees with scipy to ~1e-10).
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be strictly between 0 and 1; got {q!r}")
    df = np.asarray(df, dtype=np.float64)
    z = statistics.NormalDist().inv_cdf(q)
    out = np.full(df.shape, np.nan)
    ok = np.isfinite(df) & (df > 0)
    out[np.isinf(df) & (df > 0)] = z
    if not ok.any():
        return out if out.ndim else float(out)
    v = df[ok]
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    t = z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4
    t = np.where(v == 1, math.tan(math.pi * (q - 0.5)), t)
    t = np.where(v == 2, (2 * q - 1) / math.sqrt(2 * q * (1 - q)), t)
    for _ in range(50):
        step = (_t_cdf(t, v) - q) / _t_pdf(t, v)
        step = np.clip(step, -abs(t) / 2 - 1.0, abs(t) / 2 + 1.0)
        t = t - step
        if np.all(np.abs(step) <= 1e-12 * np.maximum(1.0, np.abs(t))):
            break
    out[ok] = t
    return out if out.ndim else float(out)


# ---------------------------------------------------------------- minibatch jackknife
def jackknife_ratio(ab, aa, bb, counts, level=0.9, replicates=False):
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


def jackknife_interval(results, statistic, level=None):
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
        From ``MinibatchCKA.compute(uncertainty=True)`` or ``compare_models(groups=G)``.
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
                "MinibatchCKA(groups=G).compute(uncertainty=True) or compare_models(groups=G)"
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
        estimate, se, low, high = (float(v) for v in (estimate, se, low, high))
    return Interval(estimate, se, low, high, level, g)


class Interval(NamedTuple):
    """An estimate with its standard error and confidence interval
    (:func:`jackknife_interval`)."""

    estimate: float
    stderr: float
    ci_low: float
    ci_high: float
    level: float
    n_groups: int


# ---------------------------------------------------------------- helpers
def _progress(iterable, total, progress, desc):
    if not progress:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional (the "progress" extra)
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def _uncertainty_dataset(estimate, stderr, low, high, names_a, names_b, attrs, name="cka"):
    """A Dataset with the estimate and its interval, dims (layer_a, layer_b) or scalar."""
    if names_a is None:
        dims, coords = (), {}
    else:
        dims = ("layer_a", "layer_b")
        coords = {"layer_a": [str(n) for n in names_a], "layer_b": [str(n) for n in names_b]}
    variables = {name: estimate, "stderr": stderr, "ci_low": low, "ci_high": high}
    from .results import _netcdf_attr

    attrs = {k: _netcdf_attr(v) for k, v in {**attrs, "estimate": name}.items()}
    return xr.Dataset(
        {k: (dims, np.asarray(v, dtype=np.float64).reshape(np.shape(estimate))) for k, v in variables.items()},
        coords=coords,
        attrs=attrs,
    )


def _interval(theta, reps, scale, level, interval):
    """stderr and interval from resampled values ``reps`` (R, ...) around ``theta``."""
    dev = (reps - theta[None]) * scale
    lo_q, hi_q = np.quantile(dev, [0.5 - level / 2, 0.5 + level / 2], axis=0)
    se = np.std(reps, axis=0, ddof=1) * scale
    if interval == "basic":
        return se, theta - hi_q, theta - lo_q
    return se, theta + lo_q, theta + hi_q


def _take_rows(a, idx):
    """Rows ``idx`` of one array (numpy or torch), or of each layer of a dict/sequence."""
    if isinstance(a, dict) or (hasattr(a, "keys") and not B.is_torch(a)):
        return {k: _take_rows(v, idx) for k, v in a.items()}
    if isinstance(a, (list, tuple)):
        return type(a)(_take_rows(v, idx) for v in a)
    a = B.asarray(a)
    if B.is_numpy(a):
        return a[idx]
    xp = B.namespace(a)
    return xp.take(a, xp.asarray(idx, device=B.device(a)), axis=0)


def _n_rows(a):
    if isinstance(a, dict) or hasattr(a, "keys"):
        return _n_rows(next(iter(a.values())))
    if isinstance(a, (list, tuple)):
        return _n_rows(a[0])
    return int(B.asarray(a).shape[0])


def _as_numpy_result(value):
    if isinstance(value, xr.DataArray):
        return np.asarray(value.values, dtype=np.float64)
    return np.asarray(B.to_numpy(value), dtype=np.float64)


# ---------------------------------------------------------------- bootstrap
def bootstrap(
    measure,
    *args,
    n_resamples=200,
    level=0.9,
    fraction=0.5,
    interval="basic",
    seed=0,
    progress=True,
    statistic=None,
    **kwargs,
):
    """Confidence intervals for a similarity by resampling examples.

    Each resample draws ``m = floor(fraction * n)`` distinct examples without replacement
    (a half-sample by default) and evaluates the measure on them. The spread of the
    resampled values around the full-data value, rescaled by ``sqrt(m / (n - m))``
    (exact for asymptotically linear statistics: the variance of a size-``m`` subsample
    value around the full-data value is ``sigma^2 (1/m - 1/n)``; at ``m = n/2`` the factor
    is 1), estimates the sampling distribution of the full-data estimate (Politis, Romano &
    Wolf 1999). Subsampling without replacement keeps every resample free of duplicated
    examples, which matters here: a duplicated example puts its squared norm off the
    diagonal of the gram, which is exactly the term the unbiased HSIC estimator removes.
    For unrelated representations (population CKA 0) the estimator converges at rate
    ``1/n`` rather than ``1/sqrt(n)`` and these intervals are conservative (measured:
    90% intervals covered 0 in 99% of 200 draws, about twice as wide as needed, n=100,
    p=3); to ask "more than chance?" use :func:`permutation_test`.

    For :func:`repsim.cka` and :func:`repsim.cka_matrix` the grams are formed and centred
    once; a resample indexes them (``K[s][:, s]``), re-centres the ``m x m`` block and
    pairs all layers with one product -- about ``(m/n)^2`` (a quarter) of one
    ``cka_matrix`` per resample, never recomputing a gram. (Where :func:`repsim.cka` takes
    its feature-space path -- linear, biased, few features next to ``n`` -- it is instead
    recomputed on each subsample: ``O(m p q)`` beats holding ``n x n`` grams.) RBF bandwidths are fixed at
    their full-data values (median heuristic on all examples, or ``sigma``). Any other
    callable (the CCA family, say) is recomputed on each subsample.

    Parameters
    ----------
    measure : callable
        ``measure(*args, **kwargs)`` returning a scalar, an array or a DataArray;
        :func:`repsim.cka` and :func:`repsim.cka_matrix` take the fast path.
    *args
        Its positional arguments. Every array argument (numpy or torch), and every array
        in a list/tuple/dict argument, is resampled along its first axis (examples); all
        must have the same ``n``.
    n_resamples : int, default 200
        At least 10; a 90% interval's ends are stable to about 0.1 standard errors
        from ~200.
    level : float, default 0.9
        Confidence level of the interval.
    fraction : float, default 0.5
        Subsample size as a fraction of ``n`` (``2 <= m < n``; ``m >= 4`` for the unbiased
        estimator).
    interval : {"basic", "percentile"}, default "basic"
        ``"basic"``: ``[theta - q_hi, theta - q_lo]`` of the rescaled deviations (the
        subsampling interval; corrects a bias that shrinks like ``1/n``, as biased CKA's
        does -- so for the biased estimator of weakly related layers the interval can lie
        below the estimate). ``"percentile"``: ``[theta + q_lo, theta + q_hi]`` (doubles
        such a bias: 90% intervals of biased linear CKA at n=100, p=10 covered the
        population value in 1.5% of draws, against 84.5% for "basic"). Measured coverage
        of 90% "basic" intervals of the unbiased estimator: 91% (n=100, p=3) and 92.5%
        (n=100, p=10) of 200 draws.
    seed : int, default 0
        Seeds :func:`numpy.random.default_rng`; same seed, same intervals.
    progress : bool, default True
        tqdm progress bar (when tqdm is installed).
    statistic : callable, optional
        A quantity derived from the measure's result, bootstrapped instead of the result
        itself: called on the full-data result and on every resample's (a DataArray for
        :func:`repsim.cka_matrix`, a float for :func:`repsim.cka`), e.g.
        :func:`repsim.block_score`, the mean CKA along the diagonal, or the CKA of one
        layer of A with its best-matching layer of B. The fast gram path is kept.
    **kwargs
        The measure's keyword arguments (``kernel``, ``estimator``, ...).

    Returns
    -------
    xarray.Dataset
        The estimate (variable ``cka`` for the CKA functions, else the result's name or
        the measure's -- or the statistic's -- name), ``stderr``, ``ci_low``, ``ci_high``; dims ``(layer_a,
        layer_b)`` for a matrix, scalars for a scalar measure, else the result's dims.
        attrs: the measure's provenance plus ``method``, ``n_resamples``, ``level``,
        ``fraction``, ``subsample_size``, ``interval``, ``seed``, and ``estimate`` (the
        estimate's variable name).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((200, 10))
    >>> y = x + rng.standard_normal((200, 10))
    >>> ds = repsim.bootstrap(repsim.cka, x, y, estimator="unbiased", progress=False)
    >>> bool(ds.ci_low < ds.cka < ds.ci_high)
    True
    """
    if not callable(measure):
        raise TypeError(f"measure must be callable; got {type(measure).__name__}")
    n_resamples = V.check_int(n_resamples, "n_resamples", 10)
    level = V.check_level(level)
    V.check_option(interval, "interval", INTERVALS)
    if not (isinstance(fraction, float) and 0 < fraction < 1):
        raise ValueError(f"fraction must be a float strictly between 0 and 1; got {fraction!r}")
    if not args:
        raise ValueError("bootstrap needs the measure's data as positional arguments; got none")
    n = _n_rows(args[0])
    m = int(math.floor(fraction * n))
    if m < 2 or m >= n:
        raise ValueError(
            f"fraction={fraction} of n={n} examples gives subsamples of m={m}; need 2 <= m < n"
        )
    rng = np.random.default_rng(seed)
    common = dict(n_resamples=n_resamples, level=level, fraction=fraction,
                  subsample_size=m, interval=interval, seed=seed,
                  method="subsampling without replacement")
    if (measure is cka and not _cka_takes_feature_path(args, kwargs)) or measure is cka_matrix:
        bound = inspect.signature(measure).bind(*args, **kwargs)
        bound.apply_defaults()
        p = bound.arguments
        if measure is cka:
            xs, ys, scalar_out = {"x": p["x"]}, {"y": p["y"]}, True
        else:
            xs, ys, scalar_out = p["xs"], p["ys"], False
        return _bootstrap_grams(
            xs, ys, scalar_out, p["kernel"], p["estimator"], p["sigma"], p["threshold"],
            p["engine"], m, rng, progress, common, statistic,
        )
    sizes = {_n_rows(a) for a in args if _is_data(a)}
    if len(sizes) > 1:
        raise ValueError(
            f"all data arguments must have the same number of examples (first axis); got {sorted(sizes)}"
        )
    if statistic is not None and not callable(statistic):
        raise TypeError(f"statistic must be callable; got {type(statistic).__name__}")
    derive = statistic if statistic is not None else (lambda v: v)
    result = measure(*args, **kwargs)
    full = derive(result)
    theta = _as_numpy_result(full)
    reps = np.empty((n_resamples,) + theta.shape)
    for r in _progress(range(n_resamples), n_resamples, progress, "bootstrap"):
        idx = np.sort(rng.choice(n, m, replace=False))
        sub = [_take_rows(a, idx) if _is_data(a) else a for a in args]
        reps[r] = _as_numpy_result(derive(measure(*sub, **kwargs)))
    se, low, high = _interval(theta, reps, math.sqrt(m / (n - m)), level, interval)
    attrs = dict(getattr(result, "attrs", {}) or {})
    if measure is cka:  # its feature-space path
        attrs.update(measure="cka", estimator="biased", kernel="linear")
    attrs.update(common, n=n)
    if statistic is not None:
        attrs["statistic"] = getattr(statistic, "__name__", "statistic")
        name = getattr(full, "name", None) or attrs["statistic"]
    else:
        name = getattr(full, "name", None) or getattr(measure, "__name__", "value")
    return _result_dataset(full, theta, se, low, high, name, attrs)


def _result_dataset(full, theta, se, low, high, name, attrs):
    """The estimate and its interval shaped like ``full`` (DataArray, matrix, scalar...)."""
    if isinstance(full, xr.DataArray):
        ds = xr.Dataset(
            {name: full.copy(data=theta), "stderr": full.copy(data=se),
             "ci_low": full.copy(data=low), "ci_high": full.copy(data=high)}
        )
        for v in ds.data_vars.values():
            v.attrs = {}
        from .results import _netcdf_attr

        ds.attrs = {k: _netcdf_attr(v) for k, v in {**attrs, "estimate": name}.items()}
        return ds
    if theta.ndim == 2:
        la, lb = theta.shape
        return _uncertainty_dataset(theta, se, low, high, [str(i) for i in range(la)],
                                    [str(j) for j in range(lb)], attrs, name)
    if theta.ndim == 0:
        return _uncertainty_dataset(theta, se, low, high, None, None, attrs, name)
    dims = tuple(f"dim_{i}" for i in range(theta.ndim))
    from .results import _netcdf_attr

    return xr.Dataset(
        {name: (dims, theta), "stderr": (dims, se), "ci_low": (dims, low), "ci_high": (dims, high)},
        attrs={k: _netcdf_attr(v) for k, v in {**attrs, "estimate": name}.items()},
    )


def _cka_takes_feature_path(args, kwargs):
    """Whether :func:`repsim.cka` would use its feature-space path (linear, biased, ``p, q``
    small next to ``n``): then recomputing it on each subsample (``O(m p q)``) beats
    forming ``n x n`` grams once."""
    from .cka import _feature_path_cheaper

    try:
        p = inspect.signature(cka).bind(*args, **kwargs)
    except TypeError:
        return False  # let the gram path raise the usual error
    p.apply_defaults()
    a = p.arguments
    if a["kernel"] != "linear" or a["estimator"] != "biased" or a["method"] == "gram":
        return False
    if a["method"] == "features":
        return True
    x, y = B.asarray(a["x"]), B.asarray(a["y"])
    if x.ndim < 2 or y.ndim < 2:
        return False
    n = x.shape[0]
    return _feature_path_cheaper(n, math.prod(x.shape[1:]), math.prod(y.shape[1:]))


def _is_data(a):
    if isinstance(a, (dict, list, tuple)) or hasattr(a, "keys"):
        return True
    return B.is_numpy(a) or B.is_torch(a)


def _stack_side(acts, side, kernel, estimator, sigma, threshold, engine):
    names, arrays = V.layer_items(acts, side)
    packed, sig, cen, tol = centred_gram_stack(
        arrays, names, kernel=kernel, estimator=estimator, sigmas=[sigma] * len(arrays),
        threshold=threshold, engine=engine, side=side,
    )
    return names, arrays, packed, sig, cen <= tol


def _prepare_pair(xs, ys, kernel, estimator, sigma, threshold, engine):
    V.check_option(kernel, "kernel", KERNELS)
    V.check_option(estimator, "estimator", ESTIMATORS)
    V.check_option(engine, "engine", B.ENGINES)
    names_a, arrays_a, ga, sig_a, deg_a = _stack_side(xs, "xs", kernel, estimator, sigma, threshold, engine)
    if ys is None:
        return names_a, names_a, ga, None, sig_a, sig_a, deg_a, deg_a, int(B.asarray(arrays_a[0]).shape[0])
    names_b, arrays_b = V.layer_items(ys, "ys")
    B.namespace(B.asarray(arrays_a[0]), B.asarray(arrays_b[0]), names=["xs", "ys"])
    V.check_same_n(arrays_a[0].shape[0], arrays_b[0].shape[0], "xs", "ys", arrays_a[0].shape, arrays_b[0].shape)
    names_b, _, gb, sig_b, deg_b = _stack_side(ys, "ys", kernel, estimator, sigma, threshold, engine)
    return names_a, names_b, ga, gb, sig_a, sig_b, deg_a, deg_b, int(B.asarray(arrays_a[0]).shape[0])


def _subsample_centred(g3, idx, unbiased, engine, xp, out):
    """Re-centre the ``idx`` block of each layer's centred gram into ``out`` (L, m*m).

    Double centring (and U-centring) of a principal block of a centred gram equals the
    centring of that block of the raw gram: the two differ by terms ``a_i + b_j + c``,
    which centring removes (the diagonal is ignored by U-centring).
    """
    sub = xp.take(xp.take(g3, idx, axis=1), idx, axis=2)
    for i in range(sub.shape[0]):
        centre_into(sub[i], unbiased, out[i], xp, engine=engine)
    return out


def _bootstrap_grams(xs, ys, scalar_out, kernel, estimator, sigma, threshold, engine, m, rng,
                     progress, common, statistic=None):
    if estimator == "unbiased" and m < 4:
        raise ValueError(f"estimator='unbiased' needs subsamples of at least 4 examples; got m={m}")
    names_a, names_b, ga, gb, sig_a, sig_b, deg_a, deg_b, n = _prepare_pair(
        xs, ys, kernel, estimator, sigma, threshold, engine
    )
    xp = B.namespace(ga)
    theta = _mask_degenerate(pair_cka(ga, gb), deg_a, deg_b, names_a, names_b)
    unbiased = estimator == "unbiased"
    dev = B.device(ga)
    ga3 = xp.reshape(ga, (ga.shape[0], n, n))
    gb3 = None if gb is None else xp.reshape(gb, (gb.shape[0], n, n))
    buf_a = xp.empty((ga.shape[0], m * m), dtype=xp.float64, device=dev)
    buf_b = None if gb is None else xp.empty((gb.shape[0], m * m), dtype=xp.float64, device=dev)
    R = common["n_resamples"]
    attrs = {"measure": "cka", "estimator": estimator, "kernel": kernel, "n": n, **common}
    if kernel == "rbf":
        attrs.update(sigma_a=list(sig_a), sigma_b=list(sig_b), threshold=threshold)
    bad_a, bad_b = np.asarray(deg_a, bool), np.asarray(deg_b, bool)
    if statistic is not None:
        if not callable(statistic):
            raise TypeError(f"statistic must be callable; got {type(statistic).__name__}")

        def derive(values):
            if scalar_out:
                return statistic(np.float64(values[0, 0]))
            return statistic(similarity_array(values, names_a, names_b, attrs))

        full = derive(theta)
        theta = _as_numpy_result(full)
    reps = np.empty((R,) + theta.shape)
    for r in _progress(range(R), R, progress, "bootstrap"):
        idx = xp.asarray(np.sort(rng.choice(n, m, replace=False)), device=dev)
        sa = _subsample_centred(ga3, idx, unbiased, engine, xp, buf_a)
        sb = None if gb is None else _subsample_centred(gb3, idx, unbiased, engine, xp, buf_b)
        values = pair_cka(sa, sb)
        values[bad_a, :] = np.nan
        values[:, bad_b] = np.nan
        reps[r] = values if statistic is None else _as_numpy_result(derive(values))
    se, low, high = _interval(theta, reps, math.sqrt(m / (n - m)), common["level"], common["interval"])
    if statistic is not None:
        attrs["statistic"] = getattr(statistic, "__name__", "statistic")
        name = getattr(full, "name", None) or attrs["statistic"]
        return _result_dataset(full, theta, se, low, high, name, attrs)
    if scalar_out:
        return _uncertainty_dataset(theta[0, 0], se[0, 0], low[0, 0], high[0, 0], None, None, attrs)
    return _uncertainty_dataset(theta, se, low, high, names_a, names_b, attrs)


# ---------------------------------------------------------------- permutation null
def permutation_test(
    xs,
    ys=None,
    *,
    kernel="linear",
    estimator="biased",
    sigma=None,
    threshold=1.0,
    n_permutations=200,
    seed=0,
    progress=True,
    engine="auto",
):
    """Chance level, p-value and chance-corrected score of every CKA entry.

    The null hypothesis is "no relation between the two sides": the example order of one
    side is shuffled. A permutation ``P`` maps a centred (or U-centred) gram to
    ``P K P^T`` -- centring commutes with it -- so each permutation indexes the centred
    grams formed once and pairs all layers with one product; self terms do not change.

    Besides the Monte-Carlo null, the exact permutation expectation (``chance``) is
    returned in closed form: ``tr(K) tr(L) / ((n - 1) ||K||_F ||L||_F)`` for the biased
    estimator (centred ``K, L``; the geometric mean of the two effective ranks over
    ``n - 1``, which tends to 1 when features greatly outnumber examples -- see the
    module notes for measured values) and exactly 0 for the unbiased one.

    Parameters
    ----------
    xs : array (n, ...), or sequence/dict of them
        One representation, or every layer of model A.
    ys : array or sequence/dict, optional
        The other side (its examples are permuted). None: every layer of ``xs`` against
        a shuffled copy of every layer of ``xs``.
    kernel, estimator, sigma, threshold, engine
        As in :func:`repsim.cka_matrix`.
    n_permutations : int, default 200
        At least 10; the smallest attainable p-value is ``1 / (n_permutations + 1)``.
        0: no Monte Carlo -- only ``cka``, the exact ``chance`` and ``calibrated``, at the
        cost of one :func:`repsim.cka_matrix`.
    seed : int, default 0
    progress : bool, default True

    Returns
    -------
    xarray.Dataset
        dims ``(layer_a, layer_b)`` (scalars when ``xs`` and ``ys`` are single arrays):
        ``cka`` (observed), ``chance`` (exact null expectation), ``null_mean``,
        ``null_std`` (Monte Carlo), ``p_value`` (one-sided, ``(1 + #{null >= cka}) /
        (n_permutations + 1)``), ``calibrated`` (``(cka - chance) / (1 - chance)``: 0 at
        chance, 1 for identical representations) and ``z`` (``(cka - null_mean) /
        null_std``).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((100, 1000)), rng.standard_normal((100, 1000))
    >>> ds = repsim.permutation_test(x, y, progress=False)
    >>> round(float(ds.cka), 2), round(float(ds.chance), 2), bool(ds.p_value > 0.05)
    (0.91, 0.91, True)
    """
    if n_permutations != 0:
        n_permutations = V.check_int(n_permutations, "n_permutations", 10)
    single = _is_single_array(xs) and (ys is None or _is_single_array(ys))
    if _is_single_array(xs):
        xs = {"x": xs}
    if ys is not None and _is_single_array(ys):
        ys = {"y": ys}
    names_a, names_b, ga, gb, _, _, deg_a, deg_b, n = _prepare_pair(
        xs, ys, kernel, estimator, sigma, threshold, engine
    )
    xp = B.namespace(ga)
    gb_eff = ga if gb is None else gb
    observed = _mask_degenerate(pair_cka(ga, gb), deg_a, deg_b, names_a, names_b)
    sa = B.to_numpy(xp.sum(ga * ga, axis=1))
    sb = B.to_numpy(xp.sum(gb_eff * gb_eff, axis=1))
    if estimator == "unbiased":
        chance = np.zeros_like(observed)
    else:
        tr_a = B.to_numpy(xp.sum(ga[:, :: n + 1], axis=1))
        tr_b = B.to_numpy(xp.sum(gb_eff[:, :: n + 1], axis=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            chance = np.outer(tr_a, tr_b) / ((n - 1) * np.sqrt(np.outer(sa, sb)))
    rng = np.random.default_rng(seed)
    dev = B.device(ga)
    gb3 = xp.reshape(gb_eff, (gb_eff.shape[0], n, n))
    denom = xp.asarray(np.sqrt(np.outer(sa, sb)), device=dev)
    null = np.empty((n_permutations,) + observed.shape)
    # permuted copies of at most ~_CHUNK_BYTES at a time, not a second copy of all grams
    step = max(1, _CHUNK_BYTES // (8 * n * n))
    for r in _progress(range(n_permutations), n_permutations, progress, "permutations"):
        perm = xp.asarray(rng.permutation(n), device=dev)
        parts = []
        for c in range(0, gb3.shape[0], step):
            block = xp.take(xp.take(gb3[c:c + step], perm, axis=1), perm, axis=2)
            parts.append(xp.matmul(ga, xp.reshape(block, (block.shape[0], n * n)).T))
        cross = parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            null[r] = B.to_numpy(cross / denom)
    with np.errstate(divide="ignore", invalid="ignore"):
        calibrated = (observed - chance) / (1 - chance)
    out = {"cka": observed, "chance": chance, "calibrated": calibrated}
    if n_permutations:
        null_mean = null.mean(0)
        null_std = null.std(0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            p_value = (1 + np.sum(null >= observed[None] - 1e-12, axis=0)) / (n_permutations + 1)
            z = (observed - null_mean) / null_std
        out.update(null_mean=null_mean, null_std=null_std, p_value=p_value, z=z)
    bad = np.asarray(deg_a, bool)[:, None] | np.asarray(deg_b, bool)[None, :]
    for k in out:
        out[k] = np.where(bad, np.nan, out[k])
    attrs = {"measure": "cka", "estimator": estimator, "kernel": kernel, "n": n,
             "method": "permutation null (example order of layer_b shuffled)",
             "n_permutations": n_permutations, "seed": seed, "symmetric": ys is None,
             "estimate": "cka"}
    from .results import _netcdf_attr

    attrs = {k: _netcdf_attr(v) for k, v in attrs.items()}
    if single:
        return xr.Dataset({k: ((), v[0, 0]) for k, v in out.items()}, attrs=attrs)
    coords = {"layer_a": list(names_a), "layer_b": list(names_b)}
    return xr.Dataset({k: (("layer_a", "layer_b"), v) for k, v in out.items()}, coords=coords, attrs=attrs)


def _is_single_array(a):
    return not isinstance(a, (dict, list, tuple)) and not hasattr(a, "keys")


# ---------------------------------------------------------------- across seeds
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
    arrays = [np.asarray(_as_numpy_result(r)) for r in results]
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


def aggregate_seeds(results, *, level=0.9, dim="seed"):
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
    base = dict(stacked.attrs)
    from .results import _netcdf_attr

    ds.attrs = {kk: _netcdf_attr(v) for kk, v in {**base, "n_seeds": k, "level": level,
                                                  "estimate": "mean"}.items()}
    for v in ds.data_vars.values():
        v.attrs = {}
    return ds


def compare_seeds(
    results_a,
    results_b,
    *,
    level=0.9,
    test="welch",
    n_permutations=2000,
    seed=0,
    dim="seed",
):
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
        is below ``1 - level``.
    test : {"welch", "permutation"}, default "welch"
        ``"welch"``: Welch's unequal-variance t test (Welch-Satterthwaite degrees of
        freedom). ``"permutation"``: the seed labels are permuted (all splits when there
        are at most ``n_permutations`` of them, else that many random ones); two-sided on
        the difference of means. With 3 + 3 seeds there are only 20 splits, so its
        smallest p-value is 0.1: use more seeds or the t test.
    n_permutations : int, default 2000
    seed : int, default 0
        For the random permutations.
    dim : str, default "seed"

    Returns
    -------
    xarray.Dataset
        ``mean_a``, ``mean_b``, ``difference`` (``mean_a - mean_b``), ``stderr``,
        ``ci_low``, ``ci_high`` (Welch t interval), ``t``, ``df``, ``p_value``,
        ``differs`` (bool); attrs ``n_seeds_a``, ``n_seeds_b``, ``test``, ``level``.

    Examples
    --------
    >>> import repsim
    >>> ds = repsim.compare_seeds([0.80, 0.82, 0.81], [0.70, 0.69, 0.72])
    >>> round(float(ds.difference), 3), bool(ds.differs)
    (0.107, True)
    """
    level = V.check_level(level)
    V.check_option(test, "test", SEED_TESTS)
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
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / se
        df = (va + vb) ** 2 / (va**2 / (ka - 1) + vb**2 / (kb - 1))
    half = se * t_quantile(0.5 + level / 2, np.where(np.isfinite(df), df, np.inf))
    if test == "welch":
        p = t_two_sided_p(t, np.where(np.isfinite(df), df, np.inf))
        p = np.where(se == 0, np.where(diff == 0, 1.0, 0.0), p)
        p = np.where(np.isnan(diff), np.nan, p)
    else:
        p = _seed_permutation_p(av, bv, n_permutations, seed)
    template = a.isel({dim: 0}, drop=True)
    out = {"mean_a": ma, "mean_b": mb, "difference": diff, "stderr": se, "ci_low": diff - half,
           "ci_high": diff + half, "t": t, "df": df, "p_value": p, "differs": p < 1 - level}
    ds = xr.Dataset({k: template.copy(data=np.asarray(v)) for k, v in out.items()})
    for v in ds.data_vars.values():
        v.attrs = {}
    ds.attrs = {"n_seeds_a": ka, "n_seeds_b": kb, "test": test, "level": level,
                "estimate": "difference"}
    return ds


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
