"""Every user-facing check of repsim, with its message ("expected ..., got ...").

Nothing here clamps or repairs a value: bad input raises, and an undefined result
(a constant representation) becomes NaN with a :class:`DegenerateRepresentationWarning`.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings


class DegenerateRepresentationWarning(RuntimeWarning):
    """A representation is constant (zero variance), so its similarity is undefined."""


def check_option(value, name, allowed):
    """Raise ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value


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


def check_positive(value, name):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")


def check_level(level, name="level"):
    """A confidence level: a number strictly between 0 and 1 (0.9 for 90% intervals)."""
    if not (isinstance(level, (int, float)) and not isinstance(level, bool) and 0 < level < 1):
        raise ValueError(f"{name} must be a number strictly between 0 and 1; got {level!r}")
    return float(level)


def warn_degenerate(names):
    """Warn that the named layers are constant and their similarities are NaN."""
    names = list(names)
    if names:
        shown = ", ".join(repr(n) for n in names[:10])
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        warnings.warn(
            f"CKA is undefined (set to NaN) for constant representation(s) {shown}{more}: "
            "zero variance after centring",
            DegenerateRepresentationWarning,
            stacklevel=3,
        )


def layer_items(acts, name):
    """Turn a sequence or mapping of per-layer arrays into ``(names, arrays)``."""
    if isinstance(acts, dict) or hasattr(acts, "keys"):
        names = [str(k) for k in acts.keys()]
        arrays = list(acts.values())
    elif isinstance(acts, (list, tuple)):
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
