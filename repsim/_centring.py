"""Centring of gram matrices, and the degeneracy test on centred grams.

The one centring formula: :func:`_centre_rows` forms ``H K H`` (or Székely & Rizzo's
U-centring) of packed float64 rows; the public :func:`centre_gram` / :func:`ucentre_gram`,
the per-layer :func:`centre_into` (numba where it pays) and the stacked
:func:`centre_stack_into` (on accelerators) all call it. :func:`degeneracy_terms` turns a
centred gram's trace and total into the "constant layer" test. Split from
:mod:`repsim.kernels` (which forms the grams and re-exports these names).

References
----------
Gretton et al. (2005), "Measuring statistical dependence with Hilbert-Schmidt norms".
Song et al. (2012), "Feature selection via dependence maximization" (unbiased HSIC).
Székely & Rizzo (2014), "Partial distance correlation with methods for dissimilarities"
(U-centring).
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from . import _validation as V


def _prepare_gram(k, name):
    k = B.asarray(k, name)
    xp = B.namespace(k)
    V.check_square(k, name)
    k = B.as_float(k, xp)
    V.check_finite_array(k, xp, name)
    return xp, k


def _centred(k, unbiased):
    xp, k = _prepare_gram(k, "k")
    n = k.shape[0]
    if unbiased and n < 3:
        raise ValueError(f"U-centring needs n >= 3 examples; got n={n} for k of shape {tuple(k.shape)}")
    rows = xp.empty((1, n * n), dtype=B.accumulation_dtype(xp), device=B.device(k))
    _centre_rows(xp.astype(k, B.accumulation_dtype(xp))[None], unbiased, rows, xp)
    return xp.reshape(rows, (n, n))


def centre_gram(k):
    """Doubly centred gram ``H K H`` with ``H = I - 11^T / n``.

    Parameters
    ----------
    k : array, shape (n, n)
        Gram matrix (numpy array or torch tensor); must be finite.

    Returns
    -------
    array, shape (n, n), float64

    Raises
    ------
    ValueError
        If ``k`` is not square or contains NaN or Inf.

    References
    ----------
    .. [1] Gretton et al. (2005), "Measuring statistical dependence with Hilbert-Schmidt
       norms", ALT.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> kc = repsim.centre_gram(np.arange(9.0).reshape(3, 3))
    >>> np.allclose(kc.sum(axis=0), 0) and np.allclose(kc.sum(axis=1), 0)
    True
    """
    return _centred(k, False)


def ucentre_gram(k):
    """U-centred gram of Székely & Rizzo (zero diagonal), the unbiased-HSIC building block.

    For ``i != j``: ``U_ij = K~_ij - r_i/(n-2) - c_j/(n-2) + s/((n-1)(n-2))`` with ``K~``
    the gram with its diagonal zeroed, ``r, c`` its row and column sums and ``s`` its
    total. Then ``HSIC_unbiased(K, L) = <U(K), U(L)> / (n (n-3))``.

    Parameters
    ----------
    k : array, shape (n, n), n >= 3
        Gram matrix; its off-diagonal entries must be finite (the diagonal is ignored).

    Returns
    -------
    array, shape (n, n), float64

    Raises
    ------
    ValueError
        If ``k`` is not square, ``n < 3``, or ``k`` contains NaN or Inf.

    References
    ----------
    .. [1] Székely & Rizzo (2014), "Partial distance correlation with methods for
       dissimilarities", Annals of Statistics 42(6).
    .. [2] Song et al. (2012), "Feature selection via dependence maximization", JMLR 13.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> u = repsim.ucentre_gram(repsim.gram(np.random.default_rng(0).standard_normal((6, 3))))
    >>> np.allclose(np.diag(u), 0) and np.allclose(u.sum(axis=0), 0)
    True
    """
    return _centred(k, True)


def centre_into(k, unbiased, out, xp, engine="auto", norms=False):
    """Write centred (``unbiased=False``) or U-centred ``k`` flattened into ``out``.

    ``out`` is a float64 vector of length ``n*n`` (a row of the packed pairing matrix).
    Returns ``(trace(k), sum(k))`` (floats, or 0-d arrays on the array's device so that
    a GPU is not synchronised once per layer); with ``norms`` also ``||k - diag k||_F``
    and ``||out||_F`` (:func:`unbiased_degeneracy_terms`; fused into the numba loop).
    """
    if B.use_numba(engine, k, out):
        from . import _numba

        tr, total, off, norm = _numba.centre_into(B.numba_view(k), unbiased, B.numba_view(out))
        return (float(tr), float(total)) + ((off, norm) if norms else ())
    tr, total = _centre_rows(xp.astype(k, B.accumulation_dtype(xp))[None], unbiased, out[None], xp)
    if not norms:
        return tr[0], total[0]
    return tr[0], total[0], offdiagonal_norm(k, xp), xp.sqrt(B.sum_of_squares(out, xp))


def _centre_rows(k64, unbiased, rows, xp):
    """Centre (or U-centre) a stack ``k64`` of float64 grams ``(m, n, n)`` into ``rows``
    ``(m, n*n)``; returns their traces and total sums, arrays of shape ``(m,)``.

    The one centring formula of repsim (:func:`centre_gram`, :func:`ucentre_gram`,
    :func:`centre_into` and :func:`centre_stack_into` use it; the numba kernel of
    :mod:`repsim._numba` is its fused loop, tested equal).
    """
    n = k64.shape[-1]
    diag = xp.linalg.diagonal(k64)  # (m, n)
    tr = xp.sum(diag, axis=1)
    rs = xp.sum(k64, axis=2)
    cs = xp.sum(k64, axis=1)
    total = xp.sum(rs, axis=1)
    if unbiased:
        a = 1.0 / (n - 2)
        t = (total - tr) / ((n - 1) * (n - 2))
        c = k64 - ((rs - diag) * a)[:, :, None] - ((cs - diag) * a - t[:, None])[:, None, :]
    else:
        c = k64 - (rs / n)[:, :, None] - (cs / n - (total / (n * n))[:, None])[:, None, :]
    rows[...] = xp.reshape(c, (c.shape[0], n * n))
    if unbiased:
        rows[:, :: n + 1] = 0.0
    return tr, total


#: Layers centred together by :func:`centre_stack_into` (bounds its float64 temporaries at
#: two ``(chunk, n, n)`` arrays).
STACK_CHUNK = 32


def stacks_centring(k) -> bool:
    """Whether grams like ``k`` are centred in stacks (:func:`centre_stack_into`): on an
    accelerator, where the per-layer path is launch-bound. On the CPU the per-layer path is
    faster (numba by default; the stack's extra copy costs more than it saves)."""
    return B.on_accelerator(k)


def centre_stack_into(ks, unbiased, out, xp):
    """:func:`centre_into` for many grams at once (on an accelerator, see :func:`stacks_centring`).

    ``ks`` is a list of ``(n, n)`` grams (one library and device) and ``out`` the
    ``(len(ks), n*n)`` float64 rows they go to. The grams are centred in stacks of
    ``STACK_CHUNK``: a fixed number of array operations per stack instead of per layer,
    which on a GPU turns hundreds of small kernel launches per batch into a handful.
    Returns ``(traces, totals)`` as numpy float64 arrays of shape ``(len(ks),)``: one
    device-to-host transfer for all layers.
    """
    traces, totals = [], []
    for start in range(0, len(ks), STACK_CHUNK):
        chunk = ks[start:start + STACK_CHUNK]
        k64 = xp.stack([xp.astype(k, B.accumulation_dtype(xp)) for k in chunk])
        tr, total = _centre_rows(k64, unbiased, out[start:start + len(chunk)], xp)
        traces.append(tr)
        totals.append(total)
    acc = B.accumulation_dtype(np)
    return (np.asarray(B.to_numpy(xp.concat(traces)), dtype=acc),
            np.asarray(B.to_numpy(xp.concat(totals)), dtype=acc))


def degeneracy_terms(trace, total, n, gram_dtype_eps):
    """``(tr(HKH), tolerance)`` of a gram with this trace and total sum.

    ``tr(HKH) = tr(K) - sum(K)/n`` is n times the total variance of the representation.
    It counts as constant (zero variance, CKA undefined) when ``tr(HKH) <= tolerance``,
    with ``tolerance = (4 eps + n eps_64) tr(K)`` the rounding error of that difference:
    entries within a few ``eps sqrt(K_ii K_jj)`` (``eps`` of the gram's precision) move
    ``sum(K)/n`` by at most ``eps tr(K)`` (Cauchy-Schwarz), and its float64 summation over
    ``n^2`` entries by less than ``n eps_64 tr(K)`` (``n eps tr(K)``, as before, called
    every layer constant in bfloat16 from ``n = 128`` on). Taken on the
    *centred* gram of :func:`repsim.kernels.linear_gram` (``sum(K)`` is then zero up to
    rounding), the tolerance scales with the spread of the data, not with its mean: a
    constant layer (which centres to exactly zero, or to a per-column constant that
    ``H K H`` removes) is caught, and an offset never makes a varying layer look constant.
    """
    eps64 = float(np.finfo(np.float64).eps)
    return trace - total / n, (4.0 * gram_dtype_eps + n * eps64) * trace


def offdiagonal_norm(k, xp):
    """``||K - diag(K)||_F`` of a gram (float64 sums; a 0-d array, not synchronised)."""
    d = xp.astype(xp.linalg.diagonal(k), B.accumulation_dtype(xp))
    return xp.sqrt(xp.clip(B.sum_of_squares(k, xp) - xp.sum(d * d), 0.0, None))


def unbiased_degeneracy_terms(ucentred_norm, offdiagonal, trace, n, gram_dtype_eps):
    """``(||U(K)||_F, tolerance)`` of a U-centred gram: the unbiased estimator's test.

    The unbiased HSIC of a layer with itself is ``<U(K), U(K)> / (n (n - 3))``, with
    ``U(K)`` the U-centred gram (zero diagonal). It is zero, and unbiased CKA with the
    layer undefined (0/0), not only for a constant layer (``tr(HKH) = 0``) but whenever
    ``K``'s off-diagonal entries are additive, ``K_ij = a_i + a_j`` for ``i != j``: rows
    that are orthogonal with equal norms (one-hot or identity layers), or an RBF gram whose
    off-diagonal entries are all equal. U-centring removes that additive part of the
    off-diagonal ``K~``; the layer counts as degenerate when what is left is at the
    rounding of ``K~``'s entries, ``||U(K)||_F <= sqrt(n) eps ||K~||_F + 8 eps_64 |tr K|``
    (the second term: the diagonal's part in the centring's sums), ``eps`` that of the
    gram but at most float32's. Random centred rows leave ``||U(K)|| / ||K~||`` near 1, or
    near ``n / (2 sqrt(d))`` when ``d >> n^2`` (the additive part ``-(|x_i|^2 + |x_j|^2)/n``
    then dominates ``K~``), far above ``sqrt(n)`` float32 eps; a bfloat16 or TF32 gram's own
    eps would reach that at widths in the millions, so in those modes only structures its
    products keep exactly (one-hot rows) are caught.
    """
    eps64 = float(np.finfo(np.float64).eps)
    eps = np.minimum(gram_dtype_eps, float(np.finfo(np.float32).eps))
    return ucentred_norm, math.sqrt(n) * eps * offdiagonal + 8.0 * eps64 * np.abs(trace)


def zero_ucentred_sum(value, magnitude, offdiagonal_sq, n, gram_dtype_eps):
    """Layers whose ``<U(K), U(K)>`` -- ``value``, formed as a difference of sums (streamed
    block pairs, feature moments) whose absolute terms add up to ``magnitude`` -- is zero:
    within that difference's rounding, ``16 eps_64 magnitude``, or below the in-memory
    tolerance of :func:`unbiased_degeneracy_terms` (``offdiagonal_sq = ||K~||_F^2``; no
    trace term, the sums keep the diagonal apart). Such sums cannot resolve
    ``||U|| / ||K~||`` below ``sqrt(eps)``."""
    eps64 = float(np.finfo(np.float64).eps)
    _, memory = unbiased_degeneracy_terms(0.0, np.sqrt(np.abs(offdiagonal_sq)), 0.0, n,
                                          gram_dtype_eps)
    return value <= 16.0 * eps64 * magnitude + memory ** 2


def equidistant(k, n, gram_dtype_eps, xp) -> bool:
    """Whether the examples of a linear gram ``k`` are all equally far apart: ``U(k) = 0``
    (``U(D^2) = -2 U(k)``, the squared distances' additive part is all there is), tested
    in the sum form of :func:`zero_ucentred_sum` without forming ``U(k)``. Every kernel
    of the distances (RBF) then has one off-diagonal value and a zero ``U(K)``, which its
    own rounding (far below ``k``'s once a constant is subtracted) cannot show."""
    acc = B.accumulation_dtype(xp)
    d = xp.astype(xp.linalg.diagonal(k), acc)
    rows = xp.sum(k, axis=1, dtype=acc) - d
    kl = np.float64(B.item(B.sum_of_squares(k, xp) - xp.sum(d * d)))
    return bool(zero_ucentred_rows(kl, B.to_numpy(rows)[None], n, gram_dtype_eps)[0])


def zero_ucentred_rows(kl, rows, n, gram_dtype_eps):
    """:func:`zero_ucentred_sum` of grams given by ``kl = ||K~||_F^2`` ``(L,)`` and their
    off-diagonal row sums ``rows = K~ 1`` ``(L, n)`` (numpy): ``<U, U> = kl + (1'K~1)^2 /
    ((n-1)(n-2)) - 2/(n-2) |K~1|^2`` (Song et al. 2012), one formula for the streamed
    blocks and :func:`equidistant`."""
    outer = rows.sum(axis=1) ** 2 / ((n - 1) * (n - 2))
    dot = 2.0 / (n - 2) * np.einsum("ij,ij->i", rows, rows)
    return zero_ucentred_sum(kl + outer - dot, np.abs(kl) + outer + dot, kl, n, gram_dtype_eps)


def eps_of(k, xp):
    """Machine epsilon of ``k``'s float dtype."""
    return float(xp.finfo(k.dtype).eps)
