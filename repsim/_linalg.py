"""Shared linear algebra of the CCA family and the principal-component analyses.

Everything here runs through the array namespace of the input (numpy or torch, any
device) in float64, whatever the input's float dtype; the rank tolerance is taken from the
input's own precision, relative to the *centred* data (see :func:`numerical_rank`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from . import _backend as B
from . import _validation as V
from .kernels import _ldexp


class Rep:
    """One validated representation, flattened to ``(n, p)`` float64, and its SVD.

    Attributes
    ----------
    xp : namespace
    data : array, shape (n, p), float64 -- centred if ``centre``
    basis_data : array, shape (n, p) -- ``data`` times the power of two that brings its
        largest entry into ``[0.5, 1)`` (exact; no canonical correlation or rank depends on
        it, and no square of data at ``1e-200`` or ``1e200`` under- or overflows), with
        unit-norm columns if ``unit_columns`` (zero columns stay zero); the SVD is of this
    u, s, vh : thin SVD of ``basis_data``
    rank : int -- numerical rank (see :func:`numerical_rank`)
    dtype : the input's float dtype (float16/bfloat16 -> float32, ints -> float64)
    eps : machine epsilon of ``dtype``; floor : the centring's rounding (see :func:`prepared`)
        in the units of ``basis_data``
    shape : the input's shape
    """

    __slots__ = ("xp", "data", "basis_data", "u", "s", "vh", "rank", "tol", "dtype", "eps",
                 "floor", "shape", "n", "p", "name")

    xp: Any
    data: Any
    dtype: Any
    eps: float
    floor: float
    shape: tuple
    n: int
    p: int
    name: str

    def __init__(self, x, name="x", *, centre=True, rtol=None, xp=None, unit_columns=False):
        prepared(self, x, name, centre=centre, xp=xp)
        xp = self.xp
        # CCA is invariant to scale: the SVD is of data brought to max |entry| in [0.5, 1)
        # by a power of two (exact), so that no square underflows (data at 1e-200) or
        # overflows; the floor is scaled with it
        data = self.data
        amax = float(xp.max(xp.abs(data))) if self.n * self.p else 0.0
        if amax > 0:
            e = math.frexp(amax)[1]
            data = _ldexp(data, -e)
            self.floor = _ldexp(self.floor, -e)
        if unit_columns:
            # CCA is invariant to scaling a column, so equalise them first: the rank rule
            # then sees a 1e-3 column next to a 1e3 one as the direction it is
            top = xp.max(xp.abs(data), axis=0)
            safe = xp.where(top > 0, top, xp.ones_like(top))
            norms = top * xp.sqrt(xp.sum((data / safe[None, :]) ** 2, axis=0))
            ok = norms > self.floor
            data = xp.where(ok[None, :], data / xp.where(ok, norms, xp.ones_like(norms))[None, :],
                            xp.zeros_like(data))
            self.floor = self.floor / float(xp.min(xp.where(ok, norms, xp.full_like(norms, math.inf)))) \
                if bool(xp.any(ok)) else 0.0
        self.basis_data = data
        self.u, self.s, self.vh = xp.linalg.svd(data, full_matrices=False)
        self.rank, self.tol = numerical_rank(self.s, self.n, self.p, self.eps, rtol, self.floor, xp)
        if rtol is None:
            warn_dropped(self, name)


def warn_dropped(rep, name):
    """Warn when the input dtype's rank rule drops directions that float64 resolves: the
    data of such a direction are below the input dtype's rounding of the largest one
    (typically a linear combination of other features stored in float32)."""
    kept64, _ = numerical_rank(rep.s, rep.n, rep.p, 2.0 ** -52, None, rep.floor, rep.xp)
    if kept64 > rep.rank:
        warnings.warn(
            f"{name}: {kept64 - rep.rank} direction(s) with singular values below "
            f"max(n, p) * eps of its {rep.dtype} dtype (relative to the largest) were "
            f"treated as rounding and dropped (numerical rank {rep.rank}, {kept64} in "
            "float64); pass rtol (e.g. rtol=1e-12) to keep them",
            RuntimeWarning,
            stacklevel=V.user_stacklevel(),
        )


def prepared(rep, x, name, *, centre=True, xp=None):
    """Fill ``rep``'s common attributes from ``x``: ``xp``, ``shape``, ``n``, ``p``,
    ``dtype``, ``eps`` (of the input's float dtype), ``data`` (flattened, float64, centred
    if ``centre``) and ``floor``, the rounding that centring in float64 can leave (at most
    ``n * eps64 * sqrt(n) * ||column means||``, a per-column constant); validated once."""
    x = B.asarray(x, name)
    xp = xp or B.namespace(x)
    rep.xp = xp
    rep.name = name
    rep.shape = tuple(x.shape)
    x = V.as_2d(x, xp, name)
    rep.n, rep.p = int(x.shape[0]), int(x.shape[1])
    rep.dtype = B.float_dtype(x, xp)
    rep.eps = float(xp.finfo(rep.dtype).eps)
    acc = B.accumulation_dtype(xp)
    x = xp.astype(x, acc)
    V.check_finite_array(x, xp, name)
    if centre:
        mean = xp.mean(x, axis=0)
        rep.data = x - mean
        eps64 = float(xp.finfo(acc).eps)
        top = float(xp.max(xp.abs(mean))) if rep.p else 0.0  # ||mean|| without overflow
        norm = top * float(xp.sqrt(xp.sum((mean / top) ** 2))) if top > 0 else 0.0
        rep.floor = rep.n * eps64 * math.sqrt(rep.n) * norm
    else:
        rep.data = x
        rep.floor = 0.0
    if not math.isfinite(rep.floor) or not bool(xp.all(xp.isfinite(rep.data))):
        raise ValueError(f"{name} overflows float64 when centred; rescale it first")


class TopComponents:
    """The top ``k`` principal components of one representation, via its smaller gram.

    The principal-component analyses need only the leading components and the total
    variance, so instead of a full SVD of the centred ``(n, p)`` data this takes the
    eigendecomposition of ``x_c x_c^T`` (``n <= p``) or ``x_c^T x_c`` (``p < n``), both in
    float64: ``n^2 p + n^3`` flops instead of the SVD's ``~4 n^2 p + 8 n^3``, and a 5-10x
    speed-up for the per-minibatch PC removal of the wide/deep study. The leading
    eigenvalues carry an absolute error of about ``eps64 * s_1^2``, so the leading
    components and variance shares agree with the SVD's to float64 rounding; only the
    smallest singular values (below ``sqrt(eps64) * s_1``) would lose accuracy, and none
    of these analyses uses them.

    Attributes
    ----------
    xp : namespace
    data : array, shape (n, p), float64, column-centred
    variances : array, shape (k,) -- ``s_i^2`` of the top ``k`` components, largest first
    scores : array, shape (n, k) -- projections ``x_c v_i = u_i s_i``
    total : float -- ``sum_i s_i^2 = ||x_c||_F^2``
    constant : bool -- ``s_1`` within the rank tolerance of zero (see :func:`numerical_rank`)
    dtype, eps, floor, shape, n, p : as :class:`Rep`

    Built in two steps, ``TopComponents(x).decompose(k)``, so that ``k`` can be checked
    against ``n`` and ``p`` in between.
    """

    __slots__ = ("xp", "data", "variances", "scores", "basis", "total", "constant", "dtype", "eps",
                 "floor", "shape", "n", "p", "k", "name")

    xp: Any
    data: Any
    dtype: Any
    eps: float
    floor: float
    shape: tuple
    n: int
    p: int
    name: str

    def __init__(self, x, name="x"):
        prepared(self, x, name)
        self.total = float(self.xp.sum(self.data * self.data))
        self.k = 0
        self.variances = self.scores = self.basis = self.constant = None

    def decompose(self, k):
        """Find the top ``k`` components (``0 <= k <= min(n, p)``, validated by the caller
        from ``n`` and ``p``); returns ``self``."""
        xp, x = self.xp, self.data
        self.k = k
        if k == 0:  # nothing to decompose: only the centring is asked for
            return self
        wide = self.n <= self.p
        gram = xp.matmul(x, xp.matrix_transpose(x)) if wide else xp.matmul(xp.matrix_transpose(x), x)
        lam, vecs = xp.linalg.eigh(gram)  # ascending
        lam = xp.flip(lam)[:k]
        vecs = xp.flip(vecs, axis=1)[:, :k]
        lam = xp.where(lam > 0, lam, xp.zeros_like(lam))
        self.variances = lam
        if wide:  # vecs are the left singular vectors u_i: scores u_i s_i
            self.basis = ("left", vecs)
            self.scores = vecs * xp.sqrt(lam)[None, :]
        else:  # vecs are the right singular vectors v_i: scores x_c v_i
            self.basis = ("right", vecs)
            self.scores = xp.matmul(x, vecs)
        rank, _ = numerical_rank(xp.sqrt(lam), self.n, self.p, self.eps, None, self.floor, xp)
        self.constant = rank == 0
        return self

    def residual(self):
        """``x_c`` minus its projection on the top ``k`` components, shape (n, p)."""
        xp = self.xp
        if not self.k:
            return self.data
        side, vecs = self.basis
        if side == "left":  # u_k (u_k^T x_c)
            return self.data - xp.matmul(vecs, xp.matmul(xp.matrix_transpose(vecs), self.data))
        return self.data - xp.matmul(self.scores, xp.matrix_transpose(vecs))


def check_rtol(rtol):
    if rtol is None:
        return None
    value = V.check_float(rtol, "rtol")
    if not 0 <= value < 1:
        raise ValueError(f"rtol must be None or a number in [0, 1); got {rtol!r}")
    return value


def numerical_rank(s, n, p, eps, rtol, floor, xp):
    """Number of singular values above the rank tolerance, and the tolerance.

    A singular value counts as zero when it is at most ``max(rtol * s_1, floor)``, with
    ``s_1`` the largest singular value *of the centred data* and ``floor`` the rounding
    that centring can leave (see :func:`prepared`; 0 for uncentred data). The default
    ``rtol = max(n, p) * eps`` uses the machine epsilon of the *input's* float dtype
    (numpy's ``matrix_rank`` convention): float32 data that is rank deficient up to
    float32 rounding of its centred values is treated as rank deficient although the SVD
    runs in float64 (:func:`warn_dropped` says so). A common offset or a per-column scale
    never enters the tolerance: CCA is invariant to both.
    """
    if rtol is None:
        rtol = max(n, p) * eps
    if s.shape[0] == 0:
        return 0, 0.0
    s1 = float(s[0])
    tol = max(rtol * s1, floor)
    if not math.isfinite(tol):
        raise ValueError("the data overflow float64 in the SVD; rescale them first")
    return int(xp.sum(xp.astype(s > tol, xp.int64))), tol


def top_eigh(gram, k, xp):
    """The top ``k`` eigenpairs of the symmetric float64 ``gram`` ``(n, n)``: eigenvalues
    descending (rounding below zero clipped to 0), shape ``(k,)``, and their eigenvectors
    as columns, ``(n, k)``. numpy: LAPACK's subset driver (scipy), the others the full
    ``eigh`` of their namespace."""
    n = gram.shape[0]
    if k == 0:
        return xp.zeros((0,), dtype=gram.dtype), xp.zeros((n, 0), dtype=gram.dtype)
    if B.is_numpy_namespace(xp):
        from scipy.linalg import eigh

        lam, vecs = eigh(np.asarray(gram), subset_by_index=[n - k, n - 1])
        lam, vecs = xp.asarray(lam[::-1].copy()), xp.asarray(vecs[:, ::-1].copy())
    else:
        lam, vecs = xp.linalg.eigh(gram)  # ascending
        lam, vecs = xp.flip(lam)[:k], xp.flip(vecs, axis=1)[:, :k]
    return xp.where(lam > 0, lam, xp.zeros_like(lam)), vecs
