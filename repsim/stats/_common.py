"""Shared pieces of the statistics modules: Student t, result datasets, data handling,
and the measures with a packed-gram fast path (derived from the registry's ``gram``
declarations)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from .. import _backend as B
from .. import _validation as V
from .. import _registry as R
from .._io import progress as _progress_display
from .._pairs import prepare_pair
from ..results import _netcdf_attr

# per-callable option constraints of the statistics (repsim._validation.CALLABLE_PARAMS)
V.register_params("bootstrap", interval=V.Options("basic", "percentile"))
V.register_params(correction=V.Options("holm", "bh", "none"))  # p-values of a matrix of tests
V.register_params("permutation_test", alternative=V.Options("greater", "less", "two-sided"))
V.register_params("compare_seeds", test=V.Options("welch", "permutation"))


# ---------------------------------------------------------------- Student t (scipy)
def t_two_sided_p(t: Any, df: Any) -> np.ndarray:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom.

    ``df = inf`` gives the normal limit; NaN in, NaN out; ``df <= 0`` gives NaN
    (:func:`scipy.special.stdtr`).
    """
    from scipy import special

    t = np.abs(np.asarray(t, dtype=np.float64))
    df = np.broadcast_to(np.asarray(df, dtype=np.float64), t.shape)
    with np.errstate(invalid="ignore"):
        out = 2.0 * special.stdtr(np.where(df > 0, df, np.nan), -t)
    return np.minimum(out, 1.0)


def t_quantile(q: float, df: Any) -> float | np.ndarray:
    """Quantile of Student's t: ``q`` a probability, ``df`` scalar or array (> 0).

    :func:`scipy.special.stdtrit`; ``df = inf`` gives the normal quantile, ``df <= 0`` or
    NaN gives NaN. Returns a float for scalar ``df``, else an array of its shape.
    """
    from scipy import special

    if not 0 < q < 1:
        raise ValueError(f"q must be strictly between 0 and 1; got {q!r}")
    df = np.asarray(df, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = special.stdtrit(np.where(df > 0, df, np.nan), q)
    out = np.asarray(out, dtype=np.float64)
    return out if out.ndim else float(out)


# ---------------------------------------------------------------- multiple comparisons
def adjust_p_values(p: Any, method: str, family: Any = None) -> np.ndarray:
    """Multiple-comparison adjusted p-values of a matrix (any shape) of tests.

    ``method``: ``"holm"`` (Holm 1979, step-down Bonferroni; controls the family-wise
    error rate under any dependence), ``"bh"`` (Benjamini & Hochberg 1995; controls the
    false discovery rate for independent or positively dependent tests;
    :func:`scipy.stats.false_discovery_control`) or ``"none"`` (``p`` itself).

    ``family`` (bool, ``p``'s shape; default: every finite entry) marks the entries that
    are the family's tests, counted once each; entries outside it (NaN, no test
    performed) come back as NaN. Adjusted values are capped at 1.
    """
    p = np.asarray(p, dtype=np.float64)
    V.check_params(correction=method)
    if method == "none":
        return p.copy()
    fam = np.isfinite(p) if family is None else (np.asarray(family, dtype=bool) & np.isfinite(p))
    out = np.full(p.shape, np.nan)
    vals = p[fam]
    m = vals.size
    if m == 0:
        return out
    if method == "bh":
        from scipy import stats

        adj = stats.false_discovery_control(vals, method="bh")
    else:
        order = np.argsort(vals, kind="stable")
        steps = (m - np.arange(m)) * vals[order]
        adj = np.empty(m)
        adj[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    out[fam] = adj
    return out


# ---------------------------------------------------------------- progress
def progress(iterable, total, enabled, desc):
    """The package's progress display (:func:`repsim._io.progress`) for one loop."""
    return _progress_display(iterable, total=total, desc=desc, enabled=enabled)


# ---------------------------------------------------------------- result datasets
def attrs_for_netcdf(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _netcdf_attr(v) for k, v in attrs.items()}


def _uncertainty_dataset(estimate, stderr, low, high, names_a, names_b, attrs,
                         name: str = "cka") -> xr.Dataset:
    """A Dataset with the estimate and its interval, dims (layer_a, layer_b) or scalar."""
    if names_a is None:
        dims: tuple[str, ...] = ()
        coords: dict[str, list[str]] = {}
    else:
        dims = ("layer_a", "layer_b")
        coords = {"layer_a": [str(n) for n in names_a], "layer_b": [str(n) for n in names_b]}
    variables = {name: estimate, "stderr": stderr, "ci_low": low, "ci_high": high}
    return xr.Dataset(
        {k: (dims, np.asarray(v, dtype=np.float64).reshape(np.shape(estimate)))
         for k, v in variables.items()},
        coords=coords,
        attrs=attrs_for_netcdf({**attrs, "estimate": name}),
    )


def result_dataset(full, theta, se, low, high, name, attrs):
    """The estimate and its interval shaped like ``full`` (DataArray, matrix, scalar...)."""
    if isinstance(full, xr.DataArray):
        ds = xr.Dataset(
            {name: full.copy(data=theta), "stderr": full.copy(data=se),
             "ci_low": full.copy(data=low), "ci_high": full.copy(data=high)}
        )
        for v in ds.data_vars.values():
            v.attrs = {}
        ds.attrs = attrs_for_netcdf({**attrs, "estimate": name})
        return ds
    if theta.ndim == 2:
        la, lb = theta.shape
        return _uncertainty_dataset(theta, se, low, high, [str(i) for i in range(la)],
                                    [str(j) for j in range(lb)], attrs, name)
    if theta.ndim == 0:
        return _uncertainty_dataset(theta, se, low, high, None, None, attrs, name)
    dims = tuple(f"dim_{i}" for i in range(theta.ndim))
    return xr.Dataset(
        {name: (dims, theta), "stderr": (dims, se), "ci_low": (dims, low), "ci_high": (dims, high)},
        attrs=attrs_for_netcdf({**attrs, "estimate": name}),
    )


def as_numpy_result(value) -> np.ndarray:
    if isinstance(value, xr.DataArray):
        return np.asarray(value.values, dtype=np.float64)
    return np.asarray(B.to_numpy(value), dtype=np.float64)


# ---------------------------------------------------------------- data arguments
def _is_pandas(a) -> bool:
    return type(a).__module__.split(".")[0] == "pandas" and hasattr(a, "to_numpy")


def _is_array(a) -> bool:
    return B.is_numpy(a) or B.is_torch(a) or isinstance(a, xr.DataArray)


def is_container(a) -> bool:
    """A dict / mapping / sequence of layers (not an array, not a DataArray)."""
    return V.is_layer_sequence(a) or (V.is_mapping(a) and not _is_array(a)
                                       and not _is_pandas(a))


def as_data(a, name: str):
    """One data argument in a form the resampling code handles, or a clear refusal.

    numpy arrays, torch tensors and xarray DataArrays are kept (a DataArray is resampled
    along its first dimension); arrays of other array-API libraries become host numpy
    arrays (:func:`repsim._backend.asarray`); a pandas DataFrame or Series becomes its float64 values
    (rows are examples); dicts and sequences of layers are converted layer by layer. An
    xarray Dataset of activations (:func:`repsim.open_activations`: its ``layers``
    attribute names its variables, in captured order) is its layers; any other Dataset
    (which variable is the representation?) and a nested list of numbers (one
    representation, or one layer per element?) are refused with a message.
    """
    if isinstance(a, xr.Dataset):
        if list(a.attrs.get("layers", ())) == list(a.data_vars) and len(a.data_vars):
            return as_data({k: a[k] for k in a.attrs["layers"]}, name)
        raise TypeError(
            f"{name} is an xarray.Dataset; pass its representation as a DataArray "
            f"(ds['name']), or its layers as dict(ds.data_vars)"
        )
    if B.is_array(a) and not (B.is_numpy(a) or B.is_torch(a)):
        return B.asarray(a, name)  # JAX, CuPy, array-api-strict, ...: host numpy
    if _is_pandas(a):
        try:
            return a.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} is a pandas {type(a).__name__} that does not convert to float64 "
                f"values: {err}"
            ) from None
    if V.is_mapping(a) and not _is_array(a):
        return {k: as_data(v, f"{name}[{k!r}]") for k, v in a.items()}
    if V.is_layer_sequence(a):
        if a and not any(_is_array(v) or _is_pandas(v) or is_container(v) and _holds_arrays(v)
                         for v in a):
            raise TypeError(
                f"{name} is a {type(a).__name__} of numbers; a sequence here means one array "
                f"per layer. Pass numpy.asarray({name}) for one representation of shape (n, ...)"
            )
        return type(a)(as_data(v, f"{name}[{i}]") for i, v in enumerate(a))
    return a


def _holds_arrays(a) -> bool:
    values = a.values() if V.is_mapping(a) else a
    return any(_is_array(v) or _is_pandas(v) for v in values)


def is_data(a) -> bool:
    """Arrays and containers of them are data (resampled); anything else is passed as is."""
    return is_container(a) or _is_array(a)


def take_rows(a, idx):
    """Rows ``idx`` of one array (numpy, torch, DataArray), or of each layer of a container."""
    if isinstance(a, xr.DataArray):
        return a.isel({a.dims[0]: np.asarray(idx)})
    if V.is_mapping(a):
        return {k: take_rows(v, idx) for k, v in a.items()}
    if V.is_layer_sequence(a):
        return type(a)(take_rows(v, idx) for v in a)
    a = B.asarray(a)
    if B.is_numpy(a):
        return a[idx]
    xp = B.namespace(a)
    return xp.take(a, xp.asarray(idx, device=B.device(a)), axis=0)


def n_rows(a) -> int:
    """Examples (first-axis length) of an array, or of the first layer of a container."""
    if isinstance(a, xr.DataArray):
        return int(a.shape[0])
    if V.is_mapping(a) or V.is_layer_sequence(a):
        layers = list(a.values()) if V.is_mapping(a) else a
        if not layers:
            raise ValueError("the data must contain at least one layer; got an empty "
                             f"{type(a).__name__}")
        return n_rows(layers[0])
    shape = B.asarray(a).shape
    if len(shape) == 0:
        raise ValueError("every data argument must have a first axis of examples; got a 0-d array")
    return int(shape[0])


def bare(a):
    """DataArrays replaced by their values (the gram path needs plain arrays)."""
    if isinstance(a, xr.DataArray):
        return a.values
    if V.is_mapping(a):
        return {k: bare(v) for k, v in a.items()}
    if V.is_layer_sequence(a):
        return type(a)(bare(v) for v in a)
    return a


# ---------------------------------------------------------------- the measure
def unwrap(measure, args=(), kwargs=None):
    """Peel :func:`functools.partial` layers and :func:`repsim.measure` objects:
    ``(function, args, kwargs)`` of the call that ``measure(*args, **kwargs)`` makes
    (a measure's preset options under the call's, as calling it does)."""
    kwargs = dict(kwargs or {})
    args = tuple(args)
    while True:
        if isinstance(measure, functools.partial):
            args = tuple(measure.args) + args
            kwargs = {**measure.keywords, **kwargs}
            measure = measure.func
        elif isinstance(measure, R.Measure):
            kwargs = {**measure.options, **kwargs}
            measure = measure.family.function
        else:
            return measure, args, kwargs


def measure_name(measure) -> str:
    """The name a result is labelled with: a :func:`repsim.measure` object's canonical
    name, else the (partial's) function's name."""
    while isinstance(measure, functools.partial):
        measure = measure.func
    return getattr(measure, "__name__", None) or type(measure).__name__


class GramCall(NamedTuple):
    """A measure call that the packed-gram path evaluates: both sides and its options."""

    xs: Any
    ys: Any
    scalar: bool
    options: dict


def _bind(func, args, kwargs):
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except TypeError:
        return None  # the measure itself raises its usual error on the slow path
    bound.apply_defaults()
    return dict(bound.arguments)


def _options(form: R.GramForm, bound) -> dict:
    """The packed-gram options of a bound call: the form's, over :func:`prepare_pair`'s
    defaults (what the statistics' gram paths read)."""
    params = inspect.signature(prepare_pair).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY}
    return {**defaults, **{k: bound[k] for k in form.options}}


def _data_names(func) -> list[str]:
    """The two data parameters of a measure or all-pairs function (its first two)."""
    return list(inspect.signature(func).parameters)[:2]


def _pair_call(form: R.GramForm, func, args, kwargs) -> GramCall | None:
    a = _bind(func, args, kwargs)
    if a is None:
        return None
    x, y = _data_names(func)
    a[x], a[y] = bare(a[x]), bare(a[y])
    if form.recompute is not None and form.recompute(a):
        return None
    return GramCall({x: a[x]}, {y: a[y]}, True, _options(form, a))


def _matrix_call(form: R.GramForm, func, args, kwargs) -> GramCall | None:
    a = _bind(func, args, kwargs)
    if a is None:
        return None
    xs, ys = _data_names(func)
    return GramCall(bare(a[xs]), None if a[ys] is None else bare(a[ys]), False,
                    _options(form, a))


def gram_hooks() -> dict[Callable, Callable[..., GramCall | None]]:
    """The fast-path hooks, derived from the registry: for every declared function with a
    packed-gram form (:class:`repsim._registry.GramForm`) and for its all-pairs function,
    ``hook(args, kwargs)`` returns a :class:`GramCall` when the packed centred grams can
    evaluate ``function(*args, **kwargs)`` (formed once, indexed per resample or
    permutation), or None for "recompute the measure"."""
    hooks: dict[Callable, Callable[..., GramCall | None]] = {}
    for family in R.families().values():
        form = family.gram
        if form is None:
            continue
        hooks[family.function] = functools.partial(_pair_call, form, family.function)
        if form.matrix is not None:
            hooks[form.matrix] = functools.partial(_matrix_call, form, form.matrix)
    return hooks


def _gram_form(func) -> R.GramForm | None:
    for family in R.families().values():
        if family.gram is not None and func in (family.function, family.gram.matrix):
            return family.gram
    return None


def gram_call(measure, args, kwargs) -> GramCall | None:
    """The :class:`GramCall` of ``measure(*args, **kwargs)``, or None (no fast path).
    ``measure``: a function of :func:`gram_hooks`, a :func:`repsim.measure` object of one
    (its presets applied) or :func:`functools.partial` of either."""
    func, args, kwargs = unwrap(measure, args, kwargs)
    hook = gram_hooks().get(func)
    return None if hook is None else hook(args, kwargs)


def gram_options(measure, kwargs) -> dict | None:
    """The packed-gram options of ``measure(x, y, **kwargs)`` when it has the packed-gram
    path (as :func:`gram_call`, whatever the data), else None. Options the function does
    not take give None: calling it raises its own error."""
    func, args, kwargs = unwrap(measure, (), kwargs)
    form = _gram_form(func)
    if form is None or args:
        return None
    a = _bind(func, (None, None), kwargs)
    return None if a is None else _options(form, a)
