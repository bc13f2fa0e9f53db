"""Shared linear algebra of the CCA family and the principal-component analyses.

Everything here runs through the array namespace of the input (numpy or torch, any
device) in float64, whatever the input's float dtype; the rank tolerance is taken from the
input's own precision (see :func:`numerical_rank`).
"""

from __future__ import annotations

import math

from . import _backend as B
from . import _validation as V


class Rep:
    """One validated representation, flattened to ``(n, p)`` float64, and its SVD.

    Attributes
    ----------
    xp : namespace
    data : array, shape (n, p), float64 -- centred if ``centre``
    u, s, vh : thin SVD of ``data``
    rank : int -- numerical rank (see :func:`numerical_rank`)
    dtype : the input's float dtype (float16/bfloat16 -> float32, ints -> float64)
    shape : the input's shape
    """

    __slots__ = ("xp", "data", "u", "s", "vh", "rank", "tol", "dtype", "shape", "n", "p")

    def __init__(self, x, name="x", *, centre=True, rtol=None, xp=None):
        x = B.asarray(x)
        xp = xp or B.namespace(x)
        self.xp = xp
        self.shape = tuple(x.shape)
        x = V.as_2d(x, xp, name)
        self.n, self.p = int(x.shape[0]), int(x.shape[1])
        self.dtype = B.float_dtype(x, xp)
        eps = float(xp.finfo(self.dtype).eps)
        x = xp.astype(x, xp.float64)
        V.check_finite_array(x, xp, name)
        scale = float(xp.sqrt(xp.sum(x * x)))  # ||x||_F before centring
        if centre:
            x = x - xp.mean(x, axis=0)
        self.data = x
        self.u, self.s, self.vh = xp.linalg.svd(x, full_matrices=False)
        self.rank, self.tol = numerical_rank(self.s, self.n, self.p, eps, rtol, scale, xp)


def check_rtol(rtol):
    if rtol is None:
        return None
    value = V.check_float(rtol, "rtol")
    if not 0 <= value < 1:
        raise ValueError(f"rtol must be None or a number in [0, 1); got {rtol!r}")
    return value


def numerical_rank(s, n, p, eps, rtol, scale, xp):
    """Number of singular values above the rank tolerance, and the tolerance.

    A singular value counts as zero when it is at most ``rtol * max(s_1, scale)``, with
    ``s_1`` the largest singular value and ``scale`` the Frobenius norm of the data before
    centring (so that the rounding left by centring a constant column never counts as a
    direction). The default ``rtol = max(n, p) * eps`` uses the machine epsilon of the
    *input's* float dtype (numpy's ``matrix_rank`` convention): float32 data that is rank
    deficient up to float32 rounding is treated as rank deficient although the SVD runs in
    float64.
    """
    if rtol is None:
        rtol = max(n, p) * eps
    if s.shape[0] == 0:
        return 0, 0.0
    s1 = float(s[0])
    tol = rtol * max(s1, scale)
    if not math.isfinite(tol):
        raise ValueError("the data overflow float64 in the SVD; rescale them first")
    return int(xp.sum(xp.astype(s > tol, xp.int64))), tol
