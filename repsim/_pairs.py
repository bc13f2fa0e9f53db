"""Preparing the two sides of a comparison: one function for every all-pairs path.

:func:`prepare_pair` checks the options, turns each side (a sequence or dict of layers)
into names and arrays, checks that both sides hold the same examples on one library, and
centres (or U-centres) every layer's gram into one packed ``(L, n^2)`` matrix per side.
:mod:`repsim.stats` (bootstrap, permutation test) and :func:`repsim.cka_matrix` call it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _backend as B
from . import _validation as V
from .hsic import centred_gram_stack


class PreparedPair(NamedTuple):
    """Packed centred grams of both sides and what the caller needs besides them."""

    names_a: list[str]
    names_b: list[str]
    packed_a: Any
    """``(L_a, n*n)`` float64 array of the centred (or U-centred) grams of ``xs``."""
    packed_b: Any
    """Same for ``ys``; None when ``ys`` is None (compare ``xs`` with itself)."""
    sigmas_a: list
    sigmas_b: list
    degenerate_a: np.ndarray
    degenerate_b: np.ndarray
    n: int


def _side(acts, side, kernel, estimator, sigma, threshold, engine, normalise, precision):
    names, arrays = V.layer_items(acts, side)
    packed, sig, cen, tol = centred_gram_stack(
        arrays, names, kernel=kernel, estimator=estimator, sigmas=[sigma] * len(arrays),
        threshold=threshold, engine=engine, side=side, normalise=normalise,
        precision=precision,
    )
    return names, arrays, packed, list(sig), np.asarray(cen <= tol, dtype=bool)


def prepare_pair(xs, ys=None, *, kernel="linear", estimator="biased", sigma=None,
                 threshold=1.0, engine="auto", normalise=True,
                 precision="float32") -> PreparedPair:
    """Check the options and both sides, and form each side's packed centred grams.

    Parameters
    ----------
    xs : sequence or dict name -> array, each of shape (n, ...)
    ys : sequence or dict, optional
        None: ``xs`` against itself (``packed_b`` is None, names and flags shared).
    kernel, estimator, sigma, threshold, engine, precision
        As in :func:`repsim.cka_matrix` (checked here, ``sigma`` refused with the linear
        kernel).
    normalise : bool, default True
        Scale each layer by a power of two where its gram or the pairing products would
        leave float64's range (see :func:`repsim.hsic.centred_gram_stack`): right for any
        result that does not depend on a layer's scale, resampled CKA included.

    Returns
    -------
    PreparedPair
        Layer names, packed grams, bandwidths, constant-layer flags of each side, ``n``.
    """
    V.check_params(kernel=kernel, estimator=estimator, sigma=sigma, threshold=threshold,
                   engine=engine, precision=precision)
    V.check_sigma_kernel(sigma, kernel)
    opts = (kernel, estimator, sigma, threshold, engine, normalise, precision)
    names_a, arrays_a, ga, sig_a, deg_a = _side(xs, "xs", *opts)
    n = int(B.asarray(arrays_a[0]).shape[0])
    if ys is None:
        return PreparedPair(names_a, names_a, ga, None, sig_a, sig_a, deg_a, deg_a, n)
    names_b, arrays_b = V.layer_items(ys, "ys")
    a0, b0 = B.asarray(arrays_a[0], "xs"), B.asarray(arrays_b[0], "ys")
    B.namespace(a0, b0, names=["xs", "ys"])
    V.check_same_n(a0.shape[0], b0.shape[0], "xs", "ys", a0.shape, b0.shape)
    names_b, _, gb, sig_b, deg_b = _side(ys, "ys", *opts)
    return PreparedPair(names_a, names_b, ga, gb, sig_a, sig_b, deg_a, deg_b, n)
