"""Every user-facing check of repsim, with its message ("expected ..., got ...").

Nothing here clamps or repairs a value: bad input raises, and an undefined result
(a constant representation) becomes NaN with a :class:`DegenerateRepresentationWarning`.

Options are checked against one declarative table, :data:`PARAMS` (parameter name ->
constraint; the pattern of scikit-learn's ``validate_params``). A public function checks
all its options in one call, before any work::

    V.check_params(kernel=kernel, estimator=estimator, sigma=sigma, threshold=threshold)

and a module with options of its own registers their constraints once, at import::

    V.register_params(weighting=V.Options("pairs", "batches"))

or, for an option whose meaning is the function's own (``estimator`` of ``dcor``)::

    V.register_params("rsa", rdm=V.Options("euclidean", "sqeuclidean", "correlation"))
    V.check_params("rsa", rdm=rdm)

The measure registry (:mod:`repsim._registry`) declares each measure function's
constraints the same way, per callable.

Constraints are small callables ``(value, name) -> value`` that raise ``ValueError``
("``name`` must be ...; got ...``"): :class:`Options` (one of fixed values, type-checked:
``1`` is not ``"1"``), :class:`Positive` (finite real > 0, bools and strings refused,
optionally None), :class:`Flag` (exactly True or False), :class:`IsCallable` (a
callable, optionally None; ``TypeError``), :class:`Choices` (options computed on use, from
the registry) and :class:`Satisfies` (a module's own range check). A wrong string gets the
nearest allowed value as a suggestion ("did you mean ...?"). Containers of layers are
recognised by :func:`is_mapping` / :func:`is_layer_sequence` and unpacked by
:func:`layer_items`, the one place that decides what a container is.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any


class DegenerateRepresentationWarning(RuntimeWarning):
    """A representation is constant (zero variance), so its similarity is undefined."""


def as_2d(x, xp, name):
    """Flatten ``(n, ...)`` to ``(n, features)``; refuse scalars and vectors."""
    shape = tuple(x.shape)
    if len(shape) < 2:
        raise ValueError(
            f"{name} must have shape (n, features) or (n, ...) with at least 2 dimensions; "
            f"got shape {shape}"
        )
    if len(shape) > 2:
        x = xp.reshape(x, (shape[0], math.prod(shape[1:])))
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no features; got shape {shape}")
    return x


def check_same_n(n_a, n_b, name_a, name_b, shape_a=None, shape_b=None):
    """Both sides must describe the same examples."""
    if n_a != n_b:
        sa = f" shape {tuple(shape_a)}" if shape_a is not None else ""
        sb = f" shape {tuple(shape_b)}" if shape_b is not None else ""
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of examples (first axis); "
            f"got {name_a}{sa} with n={n_a} and {name_b}{sb} with n={n_b}"
        )


def check_n(n, estimator, name="x"):
    """The unbiased estimator needs n >= 4; any estimator needs n >= 2."""
    need = 4 if estimator == "unbiased" else 2
    if n < need:
        raise ValueError(
            f"estimator={estimator!r} needs at least {need} examples; got n={n} for {name}"
        )


def check_square(k, name):
    shape = tuple(k.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{name} must be a square (n, n) gram matrix; got shape {shape}")


def check_finite(value, name):
    """``value`` is a float summarising an array (its trace, say); it must be finite.

    A NaN or Inf anywhere in row ``i`` of ``x`` makes ``(x x^T)_ii`` non-finite, so the
    trace of a gram tells whether its input was finite at O(n) cost.
    """
    if not math.isfinite(value):
        raise ValueError(
            f"{name} contains NaN or Inf (or overflows its dtype when squared); "
            "clean or rescale it first"
        )


# --------------------------------------------------------------------------- constraints


def _suggest(value, choices):
    import difflib

    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


class Options:
    """Constraint: one of a fixed set of values (compared with ``==``, type-checked).

    ``aliases`` maps other accepted spellings to a canonical value (``{"debiased":
    "unbiased"}``); the constraint returns the canonical value, so only callers that use
    the returned value should declare aliases. A wrong string gets the nearest choice
    as a suggestion, or its ``hints`` entry (``{"debiased": "unbiased"}`` where the alias
    is not accepted: a spelling close to the wrong choice)."""

    def __init__(self, *allowed, aliases=None, hints=None):
        self.allowed = allowed
        self.aliases = dict(aliases or {})
        self.hints = dict(hints or {})

    def __call__(self, value, name):
        if isinstance(value, str) and value in self.aliases:
            return self.aliases[value]
        if not any(isinstance(value, type(a)) and value == a for a in self.allowed):
            choices = ", ".join(repr(a) for a in self.allowed)
            hint = (f"; did you mean {self.hints[value]!r}?"
                    if isinstance(value, str) and value in self.hints
                    else _suggest(value, [*self.allowed, *self.aliases]))
            raise ValueError(f"{name} must be one of {choices}; got {value!r}{hint}")
        return value


class Choices(Options):
    """:class:`Options` whose allowed values are computed on first use by ``get()``
    (choices derived from the measure registry)."""

    def __init__(self, get):
        super().__init__()
        self._get = get

    def __call__(self, value, name):
        self.allowed = tuple(self._get())
        return super().__call__(value, name)


class Satisfies:
    """Constraint: ``check(value) -> value`` raises ValueError itself (a module's own
    checker, such as a range test on a float, reused as a table entry)."""

    def __init__(self, check):
        self.check = check

    def __call__(self, value, name):
        return self.check(value)


class Positive:
    """Constraint: a finite real number > 0 (not a bool, not a string); ``none_ok`` also
    lets None through (meaning "pick a default")."""

    def __init__(self, none_ok=False):
        self.none_ok = none_ok

    def __call__(self, value, name):
        if value is None and self.none_ok:
            return None
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and math.isfinite(value) and value > 0):
            alt = " or None" if self.none_ok else ""
            raise ValueError(f"{name} must be a finite number > 0{alt}; got {value!r}")
        return float(value)


class Flag:
    """Constraint: exactly True or False (not 0/1, not a string)."""

    def __call__(self, value, name):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False; got {value!r}")
        return value


class IsCallable:
    """Constraint: a callable (raises ``TypeError``, since the type is wrong); ``none_ok``
    also lets None through; ``what`` describes the expected signature in the message."""

    def __init__(self, none_ok=False, what=""):
        self.none_ok, self.what = none_ok, what

    def __call__(self, value, name):
        if (value is None and self.none_ok) or callable(value):
            return value
        alt = " or None" if self.none_ok else ""
        raise TypeError(f"{name} must be a callable{self.what}{alt}; got {value!r}")


#: The declarative table of repsim's option constraints: parameter name -> constraint.
#: One entry per option, shared by every public function that takes it
#: (:func:`check_params` applies it; the pattern of scikit-learn's ``validate_params``).
#: Other modules add their own options with :func:`register_params`.
PARAMS: dict[str, Callable[..., Any]] = {
    "kernel": Options("linear", "rbf"),
    "estimator": Options("biased", "unbiased", hints={"debiased": "unbiased"}),
    "engine": Options("auto", "numpy", "numba"),
    "method": Options("auto", "gram", "features"),
    "summary": Options("mean", "mean_squared"),
    "side": Options("x", "y", "smaller"),
    "convention": Options("morcos", "svcca"),
    "keep_by": Options("variance", "singular_values"),
    "sigma": Positive(none_ok=True),
    "threshold": Positive(),
    "centre": Flag(),
    "transform": IsCallable(none_ok=True, what=" (n, features) -> (n, features')"),
    "forward": IsCallable(none_ok=True, what=" (model, batch) -> output"),
}


#: Per-callable constraints: owner (a function's name, or a module's option group) ->
#: parameter name -> constraint. They win over :data:`PARAMS` for that owner, so one
#: parameter name (``estimator``, ``measure``) can mean different things for different
#: functions -- scikit-learn's per-estimator ``_parameter_constraints``.
CALLABLE_PARAMS: dict = {}


def register_params(owner=None, /, **constraints):
    """Add constraints: to :data:`PARAMS` (refusing to redefine an existing one
    differently), or with ``owner`` to that owner's own table in :data:`CALLABLE_PARAMS`."""
    table = PARAMS if owner is None else CALLABLE_PARAMS.setdefault(owner, {})
    for name, constraint in constraints.items():
        if name in table and table[name] is not constraint:
            raise ValueError(f"parameter constraint {name!r} is already defined"
                             + (f" for {owner}" if owner else ""))
        table[name] = constraint


def check_params(owner=None, /, **values):
    """Check every keyword against its constraint -- ``owner``'s own table first (see
    :data:`CALLABLE_PARAMS`), then :data:`PARAMS`; raise ValueError (TypeError for
    :class:`IsCallable`) naming the first bad one ("``name`` must be ...; got ...").

    Examples
    --------
    >>> check_params(kernel="rbf", sigma=None)
    >>> check_params(kernel="poly")
    Traceback (most recent call last):
    ...
    ValueError: kernel must be one of 'linear', 'rbf'; got 'poly'
    >>> register_params("my_function", estimator=Options("plain", "robust"))
    >>> check_params("my_function", estimator="robsut")
    Traceback (most recent call last):
    ...
    ValueError: estimator must be one of 'plain', 'robust'; got 'robsut'; did you mean 'robust'?
    """
    own = CALLABLE_PARAMS.get(owner, {}) if owner is not None else {}
    for name, value in values.items():
        constraint = own.get(name) or PARAMS[name]
        constraint(value, name)


def check_sigma_kernel(sigma, kernel, name="sigma"):
    """A bandwidth only means something for the RBF kernel: refuse it for the linear one
    (silently ignoring it would hide a mistake)."""
    if sigma is not None and kernel != "rbf":
        raise ValueError(
            f"{name} applies to kernel='rbf' only; got {name}={sigma!r} with kernel={kernel!r} "
            "(leave it None or use kernel='rbf')"
        )


def check_level(level, name="level"):
    """A confidence level: a number strictly between 0 and 1 (0.9 for 90% intervals)."""
    if not (isinstance(level, (int, float)) and not isinstance(level, bool) and 0 < level < 1):
        raise ValueError(f"{name} must be a number strictly between 0 and 1; got {level!r}")
    return float(level)


#: why a layer's value is undefined, by estimator (see :func:`degenerate_reason`)
_REASONS = {
    "constant": "constant representation(s) {names}: zero variance after centring",
    "unbiased": ("representation(s) {names} whose U-centred gram or distance matrix is "
                 "zero (constant, or orthogonal rows of equal norm such as one-hot rows, or "
                 "equal kernel values or distances between all pairs): the unbiased "
                 "estimator's value for them with themselves is 0"),
}


def degenerate_reason(estimator="biased"):
    """The key of :func:`warn_degenerate`'s message for CKA with this ``estimator``."""
    return "unbiased" if estimator == "unbiased" else "constant"


def warn_degenerate(names, measure="CKA", reason="constant"):
    """Warn that the named layers are degenerate (constant, or with ``reason="unbiased"``
    a zero U-centred gram) and their ``measure`` values are NaN."""
    names = list(names)
    if names:
        shown = ", ".join(repr(n) for n in names[:10])
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        warnings.warn(
            f"{measure} is undefined (set to NaN) for "
            + _REASONS[reason].format(names=shown + more),
            DegenerateRepresentationWarning,
            stacklevel=user_stacklevel(),
        )


def is_mapping(obj) -> bool:
    """Whether ``obj`` is a container of named layers (a dict, an xarray Dataset, any
    object with ``keys``) rather than an array -- the one place repsim decides this."""
    if isinstance(obj, Mapping):
        return True
    from ._backend import is_array

    return hasattr(obj, "keys") and not is_array(obj)


def is_layer_sequence(obj) -> bool:
    """Whether ``obj`` is a list or tuple of per-layer arrays."""
    return isinstance(obj, (list, tuple))


def layer_items(acts, name):
    """Turn a sequence or mapping of per-layer arrays into ``(names, arrays)``.

    Names are ``str(key)`` (``"0", "1", ...`` for a sequence); keys whose strings
    coincide (``1`` and ``"1"``) are refused, since results are labelled by the strings.
    """
    if is_mapping(acts):
        keys = list(acts.keys())
        names = [str(k) for k in keys]
        if len(set(names)) != len(names):
            seen, dup = {}, None
            for k, s in zip(keys, names):
                if s in seen:
                    dup = (seen[s], k)
                    break
                seen[s] = k
            raise ValueError(
                f"{name} has layer keys {dup[0]!r} and {dup[1]!r} that are both labelled "
                f"{str(dup[0])!r}; layer names must be distinct as strings"
            )
        arrays = list(acts.values())
    elif is_layer_sequence(acts):
        names = [str(i) for i in range(len(acts))]
        arrays = list(acts)
    else:
        raise TypeError(
            f"{name} must be a sequence or a dict name->array of per-layer activations; "
            f"got {type(acts).__name__}"
        )
    if not arrays:
        raise ValueError(f"{name} must contain at least one layer; got none")
    return names, arrays


class UnderdeterminedCCAWarning(RuntimeWarning):
    """Too few examples for the dimensions compared: some canonical correlations equal 1
    by construction (the two column spaces must intersect), whatever the data."""


def check_int(value, name, low, high=None, what=""):
    """``value`` must be an integer (not a bool) with ``low <= value <= high``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return int(value)
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"{name} must be an integer {bound}{what}; got {value!r}")


def check_float(value, name):
    """``value`` must be a finite real number (bools refused)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"{name} must be a finite number; got {value!r}")


def check_finite_array(x, xp, name):
    """Every entry of ``x`` must be finite (one reduction, one host sync)."""
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or Inf; clean it first")


def user_stacklevel():
    """``stacklevel`` for :func:`warnings.warn` that points at the first caller outside
    repsim (call it from the function that warns)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("repsim."):
        frame, level = frame.f_back, level + 1
    return level
