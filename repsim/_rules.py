"""Rules shared by several measure modules (private helpers, not measures).

* :func:`mask_degenerate` -- NaN the rows and columns of constant layers in an all-pairs
  result and warn once naming them (CKA, minibatch CKA, feature moments, statistics).
* :func:`check_ridge`, :func:`check_alpha` -- the range checks of a ridge penalty and of
  the shape metrics' partial-whitening ``alpha`` (full-data functions, their streaming
  forms and the registry's constraints use the same ones).
"""

from __future__ import annotations

import numpy as np

from . import _validation as V


def mask_degenerate(values, deg_a, deg_b, names_a, names_b, measure="CKA", reason="constant"):
    """NaN the rows/columns of degenerate layers and warn once naming them (and ``measure``;
    ``reason`` as in :func:`repsim._validation.warn_degenerate`)."""
    deg_a = np.asarray(deg_a, dtype=bool)
    deg_b = np.asarray(deg_b, dtype=bool)
    if deg_a.any() or deg_b.any():
        values = np.array(values, dtype=np.float64, copy=True)
        values[deg_a, :] = np.nan
        values[:, deg_b] = np.nan
        bad = [n for n, d in zip(names_a, deg_a) if d]
        bad += [n for n, d in zip(names_b, deg_b) if d and n not in bad]
        V.warn_degenerate(bad, measure, reason)
    return values


def check_ridge(ridge, allow_zero=True):
    """A ridge penalty: a finite number >= 0 (> 0 without ``allow_zero``)."""
    ridge = V.check_float(ridge, "ridge")
    if ridge < 0 or (not allow_zero and ridge == 0):
        raise ValueError(f"ridge must be a finite number {'>=' if allow_zero else '>'} 0; got {ridge!r}")
    return ridge


def check_alpha(alpha):
    """The shape metrics' regularisation: a number in [0, 1]."""
    alpha = V.check_float(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1]; got {alpha!r}")
    return alpha
