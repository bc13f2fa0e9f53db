"""Fused numba kernels for the memory-bound steps of the numpy path.

Each kernel reads an ``(n, n)`` gram once or twice and writes its float64 result straight
into the row of the packed ``(L, n*n)`` matrix that the pairing product consumes, where the
plain numpy path makes four to six passes and as many temporaries. Imported only when the
numba engine is selected (see :func:`repsim._backend.use_numba`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def centre_into(k, unbiased, out):  # pragma: no cover - compiled
    """Write the centred (or U-centred) ``k`` into ``out`` (length ``n*n``, float64).

    Returns ``(trace(k), sum(k), ||k - diag k||_F, ||out||_F)`` in float64, for the
    finiteness and degeneracy checks (the norms for the unbiased estimator's).
    """
    n = k.shape[0]
    rs = np.zeros(n)
    cs = np.zeros(n)
    tr = 0.0
    sq = 0.0
    osq = 0.0
    for i in range(n):
        s = 0.0
        for j in range(n):
            v = np.float64(k[i, j])
            s += v
            sq += v * v
            cs[j] += v
        rs[i] = s
        d = np.float64(k[i, i])
        tr += d
        sq -= d * d
    total = rs.sum()
    if unbiased:
        a = 1.0 / (n - 2)
        t = (total - tr) / ((n - 1) * (n - 2))
        for i in range(n):
            d = np.float64(k[i, i])
            rs[i] = (rs[i] - d) * a
            cs[i] = (cs[i] - d) * a - t
        for i in range(n):
            base = i * n
            ri = rs[i]
            for j in range(n):
                v = np.float64(k[i, j]) - ri - cs[j]
                out[base + j] = v
                osq += v * v
            osq -= out[base + i] * out[base + i]
            out[base + i] = 0.0
    else:
        m = total / (n * n)
        for i in range(n):
            rs[i] = rs[i] / n
            cs[i] = cs[i] / n - m
        for i in range(n):
            base = i * n
            ri = rs[i]
            for j in range(n):
                v = np.float64(k[i, j]) - ri - cs[j]
                out[base + j] = v
                osq += v * v
    return tr, total, math.sqrt(max(sq, 0.0)), math.sqrt(max(osq, 0.0))


@njit(cache=True, nogil=True)
def rbf_from_linear(k, inv_two_sigma2, shift, b, zero_diagonal, out):  # pragma: no cover - compiled
    """:func:`repsim.kernels.rbf_less_constant` of ``a_ij = (k_ii + k_jj - 2 k_ij) *
    inv_two_sigma2 - shift`` in one pass (``b`` already shifted; ``inf`` for the plain
    ``exp(-a)``); the diagonal 0 with ``zero_diagonal``."""
    n = k.shape[0]
    d = np.empty(n)
    for i in range(n):
        d[i] = np.float64(k[i, i])
    eb = math.exp(-b)
    plain = b > 700.0
    for i in range(n):
        di = d[i]
        for j in range(n):
            a = (di + d[j] - 2.0 * np.float64(k[i, j])) * inv_two_sigma2 - shift
            if plain:
                out[i, j] = math.exp(-a)
            elif not (zero_diagonal and i == j):
                out[i, j] = eb * math.expm1(b - a)
        if zero_diagonal:
            out[i, i] = 0.0
    return out
