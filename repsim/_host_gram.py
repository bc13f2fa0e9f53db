"""Host grams formed with one product: the centring decision, the shift and its buffer.

The fast path of :func:`repsim.kernels.scaled_centred_gram` for numpy arrays and CPU
tensors: the product of the features themselves where their column means are small
against the spread, else of the features less the mean of a few rows, checked on the
product and centred in float64 after it (:func:`centred_from_product`). Split from
:mod:`repsim.kernels`, which re-exports the tunables (``OFFSET_RATIO``, ``SHIFT_ROWS``).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from . import _backend as B

#: Largest ``||mean - shift||^2 / (tr(H K H) / n)`` (squared norm of the column means, less
#: the shift subtracted before the product, against the mean squared centred row norm) for
#: which host data is centred after the product (:func:`centred_from_product`); the
#: product's error is then within about ``2 (1 + OFFSET_RATIO)`` times the bound of
#: centring with the exact means. 16 leaves about half of ResNet-56's layers unshifted
#: (their offset ratios have median 7): max |dCKA| against float64 8.5e-7 on its 223 x 223
#: every-module matrix, against 1.1e-8 at 1 (every layer but two shifted, 3-4 % more time)
#: and 1.2e-6 with no shift at all (``benchmarks/tree_ratios.py``, docs/user_guide/performance.rst).
OFFSET_RATIO = 16.0

#: Rows, spread evenly over the batch, whose mean is the shift subtracted before the
#: product where the column means are large (:func:`_shift`), and the rows that decide
#: whether they are (:func:`_shift_estimate`).
SHIFT_ROWS = 16


def _shift_estimate(xn):
    """``(offset, spread)`` of a host array ``xn`` ``(n, p)`` estimated from :data:`SHIFT_ROWS`
    evenly spaced rows and at most 1,024 evenly spaced columns (strided views, no copy of
    ``xn``): ``offset`` the squared norm of their column means, ``spread`` the unbiased
    estimate of their mean squared centred row norm (over those columns).

    Their ratio estimates ``||m||^2 / (tr(HKH)/n)``, the decision of
    :func:`centred_from_product`, at well under 1 % of a 256-row gram. No BLAS call:
    OpenBLAS's threads spin after one and slowed the product that follows to about
    twice its time (2.2x the gram floor on ResNet-56's every-module workload).
    """
    n, p = xn.shape
    step = max(1, p // 1024)
    sub = xn[:: max(1, n // SHIFT_ROWS)][:SHIFT_ROWS, ::step]
    c = np.mean(sub, axis=0)
    d = sub - c
    spread = float(np.einsum("ij,ij->", d, d)) / max(sub.shape[0] - 1, 1)
    return float(np.einsum("i,i->", c, c)), spread


def _shift(xn):
    """The shift subtracted before the product: the mean of :data:`SHIFT_ROWS` evenly
    spaced rows, in ``xn``'s dtype (any shift is exact after the float64 centring; for rows
    drawn alike ``E ||m - c||^2 = spread / SHIFT_ROWS``, about 6 % of the spread whatever
    the offset, which the product then checks exactly)."""
    return np.mean(xn[:: max(1, xn.shape[0] // SHIFT_ROWS)][:SHIFT_ROWS], axis=0)


_SCRATCH = threading.local()

#: Largest buffer (bytes) kept between calls by :func:`_scratch`; larger layers allocate.
SCRATCH_BYTES = 64 * 2**20


def _scratch(x, xn):
    """An ``xn``-shaped buffer of ``xn``'s dtype in ``x``'s library, on storage kept per
    thread and dtype (up to :data:`SCRATCH_BYTES`) and reused by the next layer, 64-byte
    aligned (a fresh
    allocation of every layer's size page-faults on each use, which cost about as much
    as the subtraction itself; BLAS products of a 16-byte-aligned numpy buffer ran 20 %
    slower)."""
    kept = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = kept.get(xn.dtype.str)
    if buf is None or buf.shape[0] < xn.size:
        raw = np.empty(xn.size + 64, dtype=xn.dtype)
        skip = (-raw.ctypes.data % 64) // xn.dtype.itemsize
        buf = raw[skip: skip + xn.size]
        if xn.nbytes <= SCRATCH_BYTES:
            kept[xn.dtype.str] = buf
    out = buf[: xn.size].reshape(xn.shape)
    if B.is_numpy(x):
        return out
    import torch

    return torch.from_numpy(out)  # a fresh view: a plain tensor in or out of inference mode


def _shifted(x, xn, shift):
    """``x - shift`` (``shift`` in ``x``'s dtype) written into the scratch buffer."""
    out = _scratch(x, xn)
    if B.is_numpy(x):
        return np.subtract(xn, shift, out=out)
    import torch

    return torch.sub(x, torch.from_numpy(shift), out=out)  # torch's threads: twice numpy's speed


def centred_from_product(x, xp, centred=True):
    """``(k, dmax)``: the gram formed once -- of ``x`` itself where its column means are small
    against the spread (:func:`_shift_estimate`), else of ``x - c`` with ``c`` the mean of a
    few rows (:func:`_shift`) -- then centred in float64; None where the product shows a
    residual offset beyond :data:`OFFSET_RATIO` (the caller then centres with the exact
    float64 means first and forms the gram again).

    ``k_ij`` of features ``x - c`` errs by at most ``p eps |x_i - c| |x_j - c|``; with
    ``||m - c||^2 <= OFFSET_RATIO * tr(HKH)/n`` (checked on the product itself, in float64)
    a typical row has ``|x_i - c|^2 <= 2 |x_ci|^2 + 2 ||m - c||^2``, so that error stays
    within about ``2 (1 + OFFSET_RATIO)`` times the bound of centring with the exact means,
    whatever the offset -- at the cost of the product plus, for data with large offsets
    (many post-ReLU activations, and the conv and BN layers that follow them), one
    subtraction into a reused buffer (about 6 % of a 256-row gram). The decision used to be
    taken from the product of the raw features, which such layers failed: two grams each.
    Host arrays only (numpy, CPU tensors through zero-copy views); the n x n steps run in
    numpy.
    """
    xn = B.to_numpy(x)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        offset, spread = _shift_estimate(xn)
        if not (math.isfinite(offset) and math.isfinite(spread) and spread > 0.0):
            return None  # NaN/Inf, a constant layer or extreme scales: the checked path
        if offset > 0.5 * OFFSET_RATIO * spread:  # the half leaves room for the estimate's noise
            x = _shifted(x, xn, _shift(xn))
        k = B.self_product(x, xp)
        kn = B.to_numpy(k)
        n = kn.shape[0]
        rows = np.sum(kn, axis=1, dtype=np.float64) / n  # x m, without a float64 copy of k
        diag = np.diagonal(kn).astype(np.float64)
        c = float(rows.sum()) / n  # ||m||^2
        spread = float(diag.sum()) / n - c  # tr(HKH) / n
        if not (math.isfinite(c) and math.isfinite(spread) and 0.0 < spread
                and c <= OFFSET_RATIO * spread):
            return None
        if not centred:  # the caller centres it (in float64) anyway
            return k, float(np.max(diag - 2.0 * rows)) + c
        k64 = kn.astype(np.float64)
        k64 -= rows[:, None]
        k64 -= rows[None, :]
        k64 += c
    dmax = float(np.max(np.diagonal(k64)))
    kc = k64 if kn.dtype == np.float64 else k64.astype(kn.dtype)
    return (kc if B.is_numpy(k) else xp.asarray(kc)), dmax
