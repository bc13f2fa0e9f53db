"""Confidence intervals by resampling examples (subsampling without replacement).

For the CKA functions the grams are formed and centred once and every resample indexes
them; any other measure is recomputed on each resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import _backend as B
from .. import _validation as V
from .._pairs import prepare_pair
from .._rules import mask_degenerate as _mask_degenerate
from ..cka import cka, pair_cka
from ..kernels import centre_into
from ..results import similarity_array
from ._common import (
    _uncertainty_dataset,
    as_data,
    as_numpy_result,
    gram_call,
    is_data,
    measure_name,
    n_rows,
    progress as _progress,
    result_dataset,
    take_rows,
    unwrap,
)

__all__ = ["bootstrap"]


def bootstrap(
    measure: Callable[..., Any],
    *args: Any,
    data: Sequence[Any] | None = None,
    measure_kwargs: Mapping[str, Any] | None = None,
    n_resamples: int = 200,
    level: float = 0.9,
    fraction: float = 0.5,
    interval: str = "basic",
    seed: int = 0,
    progress: bool = True,
    statistic: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> xr.Dataset:
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

    For :func:`repsim.cka` and :func:`repsim.cka_matrix` -- also as
    :func:`repsim.measure` objects (``repsim.measure("cka_linear_unbiased")``) and wrapped
    in :func:`functools.partial` -- the grams are formed and centred once; a resample indexes
    them (``K[s][:, s]``), re-centres the ``m x m`` block and pairs all layers with one
    product -- about ``(m/n)^2`` (a quarter) of one ``cka_matrix`` per resample, never
    recomputing a gram. (Where :func:`repsim.cka` takes its feature-space path -- linear,
    biased, few features next to ``n`` -- it is instead recomputed on each subsample:
    ``O(m p q)`` beats holding ``n x n`` grams.) RBF bandwidths are fixed at their
    full-data values (median heuristic on all examples, or ``sigma``). The choice is made
    by the measure function (after unwrapping :func:`functools.partial` and measure
    objects, ``repsim.measure("cka_linear")``), not by its name: a measure whose
    declaration says it is the CKA of packed centred grams (:func:`repsim.cka`'s family;
    see the contributor guide). Any other callable (the CCA family, say) is recomputed on
    each subsample.

    Parameters
    ----------
    measure : callable
        ``measure(*data, **measure_kwargs)`` returning a scalar, an array or a DataArray.
    *args
        The data, positionally (the older call form): the same as ``data=args``.
    data : sequence, optional
        The measure's positional arguments, as in :func:`scipy.stats.bootstrap`. Every
        array (numpy, torch or xarray DataArray), and every array in a list/tuple/dict,
        is resampled along its first axis (examples); all must have the same ``n``.
        pandas DataFrames/Series are converted to their float64 values; an xarray
        Dataset or a list of numbers is refused (ambiguous). Other values (a number, a
        string) are passed unchanged.
    measure_kwargs : mapping, optional
        The measure's keyword arguments (``kernel``, ``estimator``, ...) -- in their own
        namespace, so a measure option named like one of bootstrap's (``seed``,
        ``level``) reaches the measure.
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
        Show progress: a tqdm bar on a terminal or in Jupyter (when tqdm is installed),
        one plain line per stage in a non-interactive log.
    statistic : callable, optional
        A quantity derived from the measure's result, bootstrapped instead of the result
        itself: called on the full-data result and on every resample's (a DataArray for
        :func:`repsim.cka_matrix`, a float for :func:`repsim.cka`), e.g.
        :func:`repsim.block_score`, the mean CKA along the diagonal, or the CKA of one
        layer of A with its best-matching layer of B. The fast gram path is kept.
    **kwargs
        The measure's keyword arguments (the older call form): the same as
        ``measure_kwargs=kwargs``. Give one form or the other, not both.

    Returns
    -------
    xarray.Dataset
        The estimate (variable ``cka`` for the CKA functions, else the result's name or
        the measure's -- or the statistic's -- name), ``stderr``, ``ci_low``,
        ``ci_high``; dims ``(layer_a, layer_b)`` for a matrix, scalars for a scalar
        measure, else the result's dims. attrs: the measure's provenance plus ``method``,
        ``n_resamples``, ``level``, ``fraction``, ``subsample_size``, ``interval``,
        ``seed``, and ``estimate`` (the estimate's variable name).

    Raises
    ------
    TypeError
        If ``measure`` or ``statistic`` is not callable, both ``*args`` and ``data`` (or
        both ``**kwargs`` and ``measure_kwargs``) are given, or a data argument has a
        type that cannot be resampled unambiguously.
    ValueError
        If the data arguments disagree in ``n``, or ``fraction`` gives fewer than 2
        examples per subsample.

    References
    ----------
    Politis, D. N., Romano, J. P. and Wolf, M. (1999). Subsampling. Springer.

    Examples
    --------
    >>> import functools, numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((200, 10))
    >>> y = x + rng.standard_normal((200, 10))
    >>> ds = repsim.bootstrap(repsim.cka, data=(x, y), measure_kwargs={"estimator": "unbiased"},
    ...                       progress=False)
    >>> bool(ds.ci_low < ds.cka < ds.ci_high)
    True
    >>> rbf = repsim.bootstrap(functools.partial(repsim.cka, kernel="rbf"), data=(x, y),
    ...                        progress=False)
    >>> rbf.attrs["kernel"]
    'rbf'
    """
    if not callable(measure):
        raise TypeError(f"measure must be callable; got {type(measure).__name__}")
    if data is not None and args:
        raise TypeError("pass the data either positionally or as data=(...), not both")
    if measure_kwargs is not None and kwargs:
        raise TypeError(
            f"pass the measure's options either as keywords ({sorted(kwargs)}) or as "
            "measure_kwargs=, not both"
        )
    if data is not None and (not isinstance(data, (list, tuple)) or not data):
        raise TypeError(
            "data must be a non-empty tuple or list of the measure's positional arguments, "
            f"e.g. data=(x, y); got {type(data).__name__}"
        )
    args = tuple(data) if data is not None else args
    kwargs = dict(measure_kwargs) if measure_kwargs is not None else kwargs
    n_resamples = V.check_int(n_resamples, "n_resamples", 10)
    level = V.check_level(level)
    V.check_params("bootstrap", interval=interval)
    if not (isinstance(fraction, float) and 0 < fraction < 1):
        raise ValueError(f"fraction must be a float strictly between 0 and 1; got {fraction!r}")
    if statistic is not None and not callable(statistic):
        raise TypeError(f"statistic must be callable; got {type(statistic).__name__}")
    if not args:
        raise ValueError("bootstrap needs the measure's data (data=(x, y), or positionally); got none")
    args = tuple(as_data(a, f"data[{i}]") for i, a in enumerate(args))
    if not is_data(args[0]):
        raise TypeError(
            f"data[0] must be an array (n, ...) or a sequence/dict of them; got "
            f"{type(args[0]).__name__}"
        )
    sizes = {n_rows(a) for a in args if is_data(a)}
    if len(sizes) > 1:
        raise ValueError(
            f"all data arguments must have the same number of examples (first axis); got {sorted(sizes)}"
        )
    n = n_rows(args[0])
    m = int(math.floor(fraction * n))
    if m < 2 or m >= n:
        raise ValueError(
            f"fraction={fraction} of n={n} examples gives subsamples of m={m}; need 2 <= m < n"
        )
    rng = np.random.default_rng(seed)
    common = dict(n_resamples=n_resamples, level=level, fraction=fraction,
                  subsample_size=m, interval=interval, seed=seed,
                  method="subsampling without replacement")
    call = gram_call(measure, args, kwargs)
    if call is not None:
        return _bootstrap_grams(call, m, rng, progress, common, statistic)
    derive = statistic if statistic is not None else (lambda v: v)
    result = measure(*args, **kwargs)
    full = derive(result)
    theta = as_numpy_result(full)
    reps = np.empty((n_resamples,) + theta.shape)
    for r in _progress(range(n_resamples), n_resamples, progress, "bootstrap"):
        idx = np.sort(rng.choice(n, m, replace=False))
        sub = [take_rows(a, idx) if is_data(a) else a for a in args]
        reps[r] = as_numpy_result(derive(measure(*sub, **kwargs)))
    se, low, high = _interval(theta, reps, math.sqrt(m / (n - m)), level, interval)
    attrs = dict(getattr(result, "attrs", {}) or {})
    is_cka = unwrap(measure)[0] is cka  # its feature-space path: labelled as the gram path
    if is_cka:
        attrs.update(measure="cka", estimator="biased", kernel="linear")
    attrs.update(common, n=n)
    if statistic is not None:
        attrs["statistic"] = getattr(statistic, "__name__", "statistic")
        name = getattr(full, "name", None) or attrs["statistic"]
    else:
        name = getattr(full, "name", None) or ("cka" if is_cka else measure_name(measure))
    return result_dataset(full, theta, se, low, high, name, attrs)


def _interval(theta, reps, scale, level, interval):
    """stderr and interval from resampled values ``reps`` (R, ...) around ``theta``."""
    dev = (reps - theta[None]) * scale
    lo_q, hi_q = np.quantile(dev, [0.5 - level / 2, 0.5 + level / 2], axis=0)
    se = np.std(reps, axis=0, ddof=1) * scale
    if interval == "basic":
        return se, theta - hi_q, theta - lo_q
    return se, theta + lo_q, theta + hi_q


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


def _bootstrap_grams(call, m, rng, progress, common, statistic=None):
    opts = call.options
    kernel, estimator, engine = opts["kernel"], opts["estimator"], opts["engine"]
    if estimator == "unbiased" and m < 4:
        raise ValueError(f"estimator='unbiased' needs subsamples of at least 4 examples; got m={m}")
    pp = prepare_pair(call.xs, call.ys, **opts)
    names_a, names_b, ga, gb, n = pp.names_a, pp.names_b, pp.packed_a, pp.packed_b, pp.n
    xp = B.namespace(ga)
    theta = _mask_degenerate(pair_cka(ga, gb), pp.degenerate_a, pp.degenerate_b, names_a, names_b,
                             reason=V.degenerate_reason(estimator))
    unbiased = estimator == "unbiased"
    dev = B.device(ga)
    ga3 = xp.reshape(ga, (ga.shape[0], n, n))
    gb3 = None if gb is None else xp.reshape(gb, (gb.shape[0], n, n))
    buf_a = xp.empty((ga.shape[0], m * m), dtype=xp.float64, device=dev)
    buf_b = None if gb is None else xp.empty((gb.shape[0], m * m), dtype=xp.float64, device=dev)
    R = common["n_resamples"]
    attrs = {"measure": "cka", "estimator": estimator, "kernel": kernel, "n": n, **common}
    if kernel == "rbf":
        attrs.update(sigma_a=list(pp.sigmas_a), sigma_b=list(pp.sigmas_b),
                     threshold=opts["threshold"])
    bad_a, bad_b = pp.degenerate_a, pp.degenerate_b

    def derive(values):
        if call.scalar:
            return statistic(np.float64(values[0, 0]))
        return statistic(similarity_array(values, names_a, names_b, attrs))

    if statistic is not None:
        full = derive(theta)
        theta = as_numpy_result(full)
    reps = np.empty((R,) + theta.shape)
    for r in _progress(range(R), R, progress, "bootstrap"):
        idx = xp.asarray(np.sort(rng.choice(n, m, replace=False)), device=dev)
        sa = _subsample_centred(ga3, idx, unbiased, engine, xp, buf_a)
        sb = None if gb is None else _subsample_centred(gb3, idx, unbiased, engine, xp, buf_b)
        values = pair_cka(sa, sb)
        values[bad_a, :] = np.nan
        values[:, bad_b] = np.nan
        reps[r] = values if statistic is None else as_numpy_result(derive(values))
    se, low, high = _interval(theta, reps, math.sqrt(m / (n - m)), common["level"], common["interval"])
    if statistic is not None:
        attrs["statistic"] = getattr(statistic, "__name__", "statistic")
        name = getattr(full, "name", None) or attrs["statistic"]
        return result_dataset(full, theta, se, low, high, name, attrs)
    if call.scalar:
        return _uncertainty_dataset(theta[0, 0], se[0, 0], low[0, 0], high[0, 0], None, None, attrs)
    return _uncertainty_dataset(theta, se, low, high, names_a, names_b, attrs)
