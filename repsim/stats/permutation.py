"""The permutation null of a similarity: chance level, p-value, chance-corrected score.

The null hypothesis is "no relation between the two sides": the example order of one side
is shuffled. For CKA the centred grams are permuted instead of recomputed and the chance
level has a closed form; any other measure ``(x, y) -> scalar`` is recomputed on each
permutation and its chance level is the permutation null's mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from .. import _backend as B
from .. import _validation as V
from .._pairs import prepare_pair
from .._rules import mask_degenerate as _mask_degenerate
from ..cka import pair_cka
from ._common import (
    adjust_p_values,
    as_data,
    as_numpy_result,
    attrs_for_netcdf,
    bare,
    gram_options,
    is_container,
    measure_name,
    progress as _progress,
    take_rows,
    unwrap,
)

__all__ = ["permutation_test"]

#: permutations index the centred grams in chunks of layers of about this many bytes
_CHUNK_BYTES = 256 * 2**20
_CKA_DEFAULTS = {"kernel": "linear", "estimator": "biased", "sigma": None, "threshold": 1.0,
                 "engine": "auto"}


def permutation_test(
    xs: Any,
    ys: Any = None,
    *,
    measure: Callable[..., Any] | None = None,
    measure_kwargs: Mapping[str, Any] | None = None,
    kernel: str = "linear",
    estimator: str = "biased",
    sigma: float | None = None,
    threshold: float = 1.0,
    n_permutations: int = 200,
    seed: int = 0,
    progress: bool = True,
    engine: str = "auto",
    alternative: str = "greater",
    correction: str = "holm",
) -> xr.Dataset:
    """Chance level, p-value and chance-corrected score of a similarity, for every pair.

    The null hypothesis is "no relation between the two sides": the example order of one
    side is shuffled.

    *CKA* (the default, or ``measure`` :func:`repsim.cka` / :func:`repsim.cka_matrix`,
    a :func:`repsim.measure` object of them such as ``repsim.measure("cka_linear")``, any
    of these wrapped in :func:`functools.partial`; the functions whose registry
    declaration has a packed-gram form): a permutation ``P`` maps a centred (or
    U-centred) gram to ``P K P^T`` -- centring commutes with it -- so each permutation
    indexes the centred grams formed once and pairs all layers with one product; self
    terms do not change. Besides the Monte-Carlo null, the exact permutation expectation
    (``chance``) is returned in closed form: ``tr(K) tr(L) / ((n - 1) ||K||_F ||L||_F)``
    for the biased estimator (centred ``K, L``; the geometric mean of the two effective
    ranks over ``n - 1``, which tends to 1 when features greatly outnumber examples --
    see :mod:`repsim.stats` for measured values) and exactly 0 for the unbiased one.

    *Any other measure* ``measure(x, y, **measure_kwargs) -> scalar`` (the CCA family, a
    shape metric, k-NN overlap, ...): recomputed on the unpermuted data and on each
    permutation, for every pair of layers (one permutation shared by all pairs of a
    replicate). No closed form is known in general, so ``chance`` is the permutation
    null's mean (attribute ``chance_method``).

    Parameters
    ----------
    xs : array (n, ...), or sequence/dict of them
        One representation, or every layer of model A (numpy, torch, xarray DataArray;
        a pandas DataFrame is converted to its float64 values).
    ys : array or sequence/dict, optional
        The other side (its examples are permuted). None: every layer of ``xs`` against
        a shuffled copy of every layer of ``xs``.
    measure : callable, optional
        The similarity; default CKA with the options below.
    measure_kwargs : mapping, optional
        The measure's keyword arguments (over a :func:`repsim.measure` object's presets).
        For the CKA measures these are ``kernel``, ``estimator``, ``sigma``,
        ``threshold``, ``engine``, ``precision`` (and :func:`repsim.cka`'s ``method``,
        which does not change the value).
    kernel, estimator, sigma, threshold, engine
        Options of the default CKA, as in :func:`repsim.cka_matrix`; with ``measure``
        given, put them in ``measure_kwargs`` instead.
    n_permutations : int, default 200
        At least 10; the smallest attainable p-value is ``1 / (n_permutations + 1)``.
        0: no Monte Carlo -- only the observed value, the exact ``chance`` and
        ``calibrated`` (CKA only: other measures have no closed form).
    seed : int, default 0
    progress : bool, default True
        Show progress: a tqdm bar on a terminal or in Jupyter (when tqdm is installed),
        one plain line per stage in a non-interactive log.
    alternative : {"greater", "less", "two-sided"}, default "greater"
        Which values are more extreme than the observed one: larger (a similarity),
        smaller (a distance), or farther from the null mean in either direction.
    correction : {"holm", "bh", "none"}, default "holm"
        Multiple-comparison correction of the p-values over the layer pairs (one test
        per pair): Holm's step-down (family-wise error rate, any dependence),
        Benjamini-Hochberg (false discovery rate, :func:`scipy.stats.false_discovery_control`)
        or none. The family is every pair with a finite p-value (constant layers are
        NaN and left out); with ``ys=None`` both ``(a, b)`` and ``(b, a)`` are tests (each
        shuffles its ``layer_b``). A single pair is unchanged by it.

    Returns
    -------
    xarray.Dataset
        dims ``(layer_a, layer_b)`` (scalars when ``xs`` and ``ys`` are single arrays):
        the observed value (variable ``cka``, or the measure's name), ``chance`` (null
        expectation), ``null_mean``, ``null_std`` (Monte Carlo), ``p_value``
        (``(1 + #{more extreme}) / (n_permutations + 1)``, per pair), ``p_adjusted``
        (corrected over the pairs; absent with ``correction="none"``), ``calibrated``
        (``(observed - chance) / (1 - chance)``: 0 at chance, 1 for identical
        representations -- meaningful for similarities whose maximum is 1) and ``z``
        (``(observed - null_mean) / null_std``). attrs: ``measure``, ``estimate`` (the
        observed variable's name), ``chance_method`` (``"exact"`` or ``"permutation null
        mean"``), ``alternative``, ``correction``, ``n_tests`` (the family's size),
        ``n_permutations``, ``seed``, ``n``, ...

    Raises
    ------
    TypeError
        If ``measure`` is not callable, CKA options are given beside another measure, or
        the measure does not return a scalar.
    ValueError
        If the sides disagree in ``n``, or an option is invalid.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((100, 1000)), rng.standard_normal((100, 1000))
    >>> ds = repsim.permutation_test(x, y, progress=False)
    >>> round(float(ds.cka), 2), round(float(ds.chance), 2), bool(ds.p_value > 0.05)
    (0.91, 0.91, True)
    >>> cc = repsim.permutation_test(x[:, :5], x[:, :5] + y[:, :5], measure=repsim.cca,
    ...                              n_permutations=20, progress=False)
    >>> cc.attrs["estimate"], float(cc.p_value)
    ('cca', 0.047619047619047616)
    """
    if n_permutations != 0:
        n_permutations = V.check_int(n_permutations, "n_permutations", 10)
    V.check_params("permutation_test", alternative=alternative, correction=correction)
    cka_opts: dict[str, Any] = dict(kernel=kernel, estimator=estimator, sigma=sigma, threshold=threshold,
                    engine=engine)
    if measure is not None:
        if not callable(measure):
            raise TypeError(f"measure must be callable; got {type(measure).__name__}")
        changed = sorted(k for k, v in cka_opts.items() if v != _CKA_DEFAULTS[k])
        if changed:
            raise TypeError(
                f"{changed} are options of the default CKA measure; with measure= given, "
                "pass the measure's options in measure_kwargs"
            )
    elif measure_kwargs is not None:
        raise TypeError("measure_kwargs needs measure=; for CKA pass kernel=, estimator=, ... directly")
    xs = as_data(xs, "xs")
    ys = None if ys is None else as_data(ys, "ys")
    single = not is_container(xs) and (ys is None or not is_container(ys))
    if not is_container(xs):
        xs = {"x": xs}
    if ys is not None and not is_container(ys):
        ys = {"y": ys}
    common = dict(n_permutations=n_permutations, seed=seed, symmetric=ys is None,
                  alternative=alternative,
                  method="permutation null (example order of layer_b shuffled)")
    opts: dict[str, Any] | None
    if measure is None:
        opts = cka_opts
    else:
        opts = gram_options(measure, measure_kwargs or {})
    if opts is not None:
        out, names_a, names_b, attrs = _cka_null(bare(xs), None if ys is None else bare(ys),
                                                 opts, n_permutations, seed, progress,
                                                 alternative)
    else:
        if n_permutations == 0:
            raise ValueError(
                f"n_permutations=0 needs a closed-form chance level, which "
                f"{measure_name(measure)} does not have; use at least 10 permutations"
            )
        out, names_a, names_b, attrs = _generic_null(measure, dict(measure_kwargs or {}), xs, ys,
                                                     n_permutations, seed, progress, alternative)
    if "p_value" in out:
        if correction != "none":
            out["p_adjusted"] = adjust_p_values(out["p_value"], correction)
        attrs.update(correction=correction, n_tests=int(np.sum(np.isfinite(out["p_value"]))))
    attrs = attrs_for_netcdf({**attrs, **common})
    if single:
        return xr.Dataset({k: ((), v[0, 0]) for k, v in out.items()}, attrs=attrs)
    coords = {"layer_a": list(names_a), "layer_b": list(names_b)}
    return xr.Dataset({k: (("layer_a", "layer_b"), v) for k, v in out.items()}, coords=coords,
                      attrs=attrs)


def _summarise(name, observed, chance, null, alternative):
    """The output variables from the observed values, chance level and null (R, ...)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        calibrated = (observed - chance) / (1 - chance)
    out = {name: observed, "chance": chance, "calibrated": calibrated}
    r = null.shape[0]
    if r:
        null_mean = null.mean(0)
        null_std = null.std(0, ddof=1)
        tol = 1e-12
        if alternative == "greater":
            extreme = null >= observed[None] - tol
        elif alternative == "less":
            extreme = null <= observed[None] + tol
        else:
            extreme = np.abs(null - null_mean) >= np.abs(observed - null_mean)[None] - tol
        with np.errstate(divide="ignore", invalid="ignore"):
            p_value = (1 + np.sum(extreme, axis=0)) / (r + 1)
            z = (observed - null_mean) / null_std
        out.update(null_mean=null_mean, null_std=null_std, p_value=p_value, z=z)
    return out


def _cka_null(xs, ys, opts, n_permutations, seed, progress, alternative):
    pp = prepare_pair(xs, ys, **opts)
    names_a, names_b, ga, gb, n = pp.names_a, pp.names_b, pp.packed_a, pp.packed_b, pp.n
    xp = B.namespace(ga)
    gb_eff = ga if gb is None else gb
    observed = _mask_degenerate(pair_cka(ga, gb), pp.degenerate_a, pp.degenerate_b, names_a, names_b,
                                reason=V.degenerate_reason(opts["estimator"]))
    sa = B.to_numpy(xp.sum(ga * ga, axis=1))
    sb = B.to_numpy(xp.sum(gb_eff * gb_eff, axis=1))
    if opts["estimator"] == "unbiased":
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
    out = _summarise("cka", observed, chance, null, alternative)
    bad = pp.degenerate_a[:, None] | pp.degenerate_b[None, :]
    for k in out:
        out[k] = np.where(bad, np.nan, out[k])
    attrs = {"measure": "cka", "estimator": opts["estimator"], "kernel": opts["kernel"], "n": n,
             "estimate": "cka", "chance_method": "exact"}
    if opts["kernel"] == "rbf":
        attrs.update(sigma_a=list(pp.sigmas_a), sigma_b=list(pp.sigmas_b),
                     threshold=opts["threshold"])
    return out, names_a, names_b, attrs


def _scalar(value, name, pair):
    v = as_numpy_result(value)
    if v.ndim != 0:
        raise TypeError(
            f"permutation_test needs a measure returning a scalar; {name} returned shape "
            f"{v.shape} for layers {pair}"
        )
    return float(v)


def _generic_null(measure, kwargs, xs, ys, n_permutations, seed, progress, alternative):
    names_a, arrays_a = V.layer_items(xs, "xs")
    names_b, arrays_b = V.layer_items(xs if ys is None else ys, "xs" if ys is None else "ys")
    n = int(B.asarray(bare(arrays_a[0])).shape[0])
    for side, names, arrays in (("xs", names_a, arrays_a), ("ys", names_b, arrays_b)):
        for nm, a in zip(names, arrays):
            V.check_same_n(n, int(np.shape(a)[0]), f"xs[{names_a[0]!r}]", f"{side}[{nm!r}]",
                           np.shape(arrays_a[0]), np.shape(a))
    name = measure_name(measure)
    la, lb = len(arrays_a), len(arrays_b)
    observed = np.empty((la, lb))
    for i, j in np.ndindex(la, lb):
        observed[i, j] = _scalar(measure(arrays_a[i], arrays_b[j], **kwargs), name,
                                 (names_a[i], names_b[j]))
    rng = np.random.default_rng(seed)
    null = np.empty((n_permutations, la, lb))
    for r in _progress(range(n_permutations), n_permutations, progress, "permutations"):
        perm = rng.permutation(n)
        for j in range(lb):
            shuffled = take_rows(arrays_b[j], perm)
            for i in range(la):
                null[r, i, j] = _scalar(measure(arrays_a[i], shuffled, **kwargs), name,
                                        (names_a[i], names_b[j]))
    chance = null.mean(0)
    out = _summarise(name, observed, chance, null, alternative)
    func, _, bound = unwrap(measure, (), kwargs)
    attrs = {"measure": name, "n": n, "estimate": name, "chance_method": "permutation null mean",
             **{f"measure_{k}": v for k, v in bound.items()
                if isinstance(v, (str, int, float, bool)) or v is None}}
    return out, names_a, names_b, attrs
