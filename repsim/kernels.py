"""Gram matrices and their centring.

References
----------
Gretton et al. (2005), "Measuring statistical dependence with Hilbert-Schmidt norms".
Song et al. (2012), "Feature selection via dependence maximization" (unbiased HSIC).
Székely & Rizzo (2014), "Partial distance correlation with methods for dissimilarities"
(U-centring). Kornblith et al. (2019), "Similarity of neural network representations
revisited" (RBF bandwidth heuristic).
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from . import _validation as V

KERNELS = ("linear", "rbf")
ESTIMATORS = ("biased", "unbiased")


def prepare(x, name="x"):
    """Validate one representation: ``(namespace, (n, features) float array)``."""
    x = B.asarray(x)
    xp = B.namespace(x)
    x = V.as_2d(x, xp, name)
    return xp, B.as_float(x, xp)


def linear_gram(x, xp):
    """``x @ x.T`` (numpy runs BLAS syrk on it; see :func:`repsim._backend.self_product`)."""
    return B.self_product(x, xp)


def _diag(k, xp):
    return xp.linalg.diagonal(k)


def squared_distances(k, xp):
    """Squared Euclidean distances ``d_ij = k_ii + k_jj - 2 k_ij`` from a linear gram, float64."""
    k = xp.astype(k, xp.float64)
    d = _diag(k, xp)
    return d[:, None] + d[None, :] - 2.0 * k


def _median(v, xp):
    """Median of all entries (mean of the two middle values for an even count)."""
    v = xp.sort(xp.reshape(v, (-1,)))
    m = v.shape[0]
    if m % 2:
        return float(v[m // 2])
    return 0.5 * (float(v[m // 2 - 1]) + float(v[m // 2]))


def median_sigma(x, threshold=1.0):
    """RBF bandwidth by the median heuristic of Kornblith et al. (2019).

    Parameters
    ----------
    x : array, shape (n, ...)
        Representation; flattened to ``(n, features)``.
    threshold : float, default 1.0
        Fraction of the median distance: ``sigma = threshold * sqrt(median(d2))``.

    Returns
    -------
    float
        ``sigma``, where ``median`` runs over all ``n * n`` squared distances ``d2``
        (the zero diagonal included, as in the reference implementation).

    References
    ----------
    .. [1] Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of neural network
       representations revisited", ICML (the RBF CKA demo's bandwidth).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.array([[0.0], [1.0], [3.0]])
    >>> round(repsim.median_sigma(x), 6)  # median of the 9 squared distances is 1
    1.0
    """
    V.check_positive(threshold, "threshold")
    xp, x = prepare(x)
    d2 = squared_distances(linear_gram(x, xp), xp)
    return threshold * math.sqrt(_median(d2, xp))


def rbf_from_linear(k, xp, sigma=None, threshold=1.0, engine="auto", name="x"):
    """RBF gram (float64) from a linear gram; returns ``(gram, sigma)``.

    numpy's vectorised ``exp`` beats the fused numba loop on this step (0.40 ms against
    0.63 ms at n=256, ``benchmarks/core_ratios.py``), so ``engine="auto"`` keeps numpy
    here; ``engine="numba"`` still selects the fused kernel.
    """
    use_nb = engine == "numba" and B.use_numba(engine, k)
    if sigma is None:
        V.check_positive(threshold, "threshold")
        d2 = squared_distances(k, xp)
        med = _median(d2, xp)
        if not med > 0:
            raise ValueError(
                f"cannot pick an RBF bandwidth for {name}: the median squared distance "
                f"between examples is {med}; pass sigma explicitly"
            )
        sigma = threshold * math.sqrt(med)
    else:
        V.check_positive(float(sigma), "sigma")
        sigma = float(sigma)
        d2 = None
    inv = 1.0 / (2.0 * sigma * sigma)
    if use_nb:
        import numpy as np

        from . import _numba

        out = np.empty(k.shape, dtype=np.float64)
        out = _numba.rbf_from_linear(B.numba_view(k), inv, out)
        return (out if B.is_numpy(k) else xp.asarray(out)), sigma
    if d2 is None:
        d2 = squared_distances(k, xp)
    return xp.exp(-d2 * inv), sigma


def gram(x, kernel="linear", *, sigma=None, threshold=1.0):
    """Gram matrix of a representation.

    Parameters
    ----------
    x : array, shape (n, ...)
        numpy array or torch tensor; flattened to ``(n, features)``. float16/bfloat16 are
        upcast to float32, integers to float64.
    kernel : {"linear", "rbf"}
        ``"linear"``: ``x x^T``. ``"rbf"``: ``exp(-||x_i - x_j||^2 / (2 sigma^2))``.
    sigma : float, optional
        RBF bandwidth. Default: ``threshold * sqrt(median squared distance)``.
    threshold : float, default 1.0
        Fraction of the median distance used when ``sigma`` is None.

    Returns
    -------
    array, shape (n, n)
        Same array type and device as ``x``; the linear gram keeps ``x``'s float dtype,
        the RBF gram is float64.

    References
    ----------
    .. [1] Kornblith et al. (2019), "Similarity of neural network representations
       revisited", ICML.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.arange(6.0).reshape(3, 2)
    >>> repsim.gram(x)
    array([[ 1.,  3.,  5.],
           [ 3., 13., 23.],
           [ 5., 23., 41.]])
    >>> repsim.gram(x, "rbf", sigma=1.0).round(4)[0]
    array([1.    , 0.0183, 0.    ])
    """
    V.check_option(kernel, "kernel", KERNELS)
    xp, x = prepare(x)
    k = linear_gram(x, xp)
    V.check_finite(B.item(xp.sum(_diag(k, xp))), "x")
    if kernel == "rbf":
        k, _ = rbf_from_linear(k, xp, sigma=sigma, threshold=threshold)
    return k


def _prepare_gram(k, name):
    k = B.asarray(k)
    xp = B.namespace(k)
    V.check_square(k, name)
    return xp, B.as_float(k, xp)


def centre_gram(k):
    """Doubly centred gram ``H K H`` with ``H = I - 11^T / n``.

    Parameters
    ----------
    k : array, shape (n, n)

    Returns
    -------
    array, shape (n, n), float64

    References
    ----------
    .. [1] Gretton et al. (2005), "Measuring statistical dependence with Hilbert-Schmidt
       norms", ALT.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> kc = repsim.centre_gram(repsim.gram(np.arange(6.0).reshape(3, 2)))
    >>> np.allclose(kc.sum(axis=0), 0) and np.allclose(kc.sum(axis=1), 0)
    True
    """
    xp, k = _prepare_gram(k, "k")
    k = xp.astype(k, xp.float64)
    rm = xp.mean(k, axis=1)
    cm = xp.mean(k, axis=0)
    return k - rm[:, None] - cm[None, :] + xp.mean(rm)


def ucentre_gram(k):
    """U-centred gram of Székely & Rizzo (zero diagonal), the unbiased-HSIC building block.

    For ``i != j``: ``U_ij = K~_ij - r_i/(n-2) - c_j/(n-2) + s/((n-1)(n-2))`` with ``K~``
    the gram with its diagonal zeroed, ``r, c`` its row and column sums and ``s`` its
    total. Then ``HSIC_unbiased(K, L) = <U(K), U(L)> / (n (n-3))``.

    Parameters
    ----------
    k : array, shape (n, n), n >= 3

    Returns
    -------
    array, shape (n, n), float64

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
    xp, k = _prepare_gram(k, "k")
    n = k.shape[0]
    if n < 3:
        raise ValueError(f"U-centring needs n >= 3 examples; got n={n}")
    k = xp.astype(k, xp.float64)
    eye = xp.eye(n, dtype=xp.bool, device=B.device(k))
    kt = xp.where(eye, xp.zeros_like(k), k)
    r = xp.sum(kt, axis=1) / (n - 2)
    c = xp.sum(kt, axis=0) / (n - 2)
    s = xp.sum(kt) / ((n - 1) * (n - 2))
    u = kt - r[:, None] - c[None, :] + s
    return xp.where(eye, xp.zeros_like(u), u)


def centre_into(k, unbiased, out, xp, engine="auto"):
    """Write centred (``unbiased=False``) or U-centred ``k`` flattened into ``out``.

    ``out`` is a float64 vector of length ``n*n`` (a row of the packed pairing matrix).
    Returns ``(trace(k), sum(k))`` (floats, or 0-d arrays on the array's device so that
    a GPU is not synchronised once per layer).
    """
    if B.use_numba(engine, k, out):
        from . import _numba

        tr, total = _numba.centre_into(B.numba_view(k), unbiased, B.numba_view(out))
        return float(tr), float(total)
    tr, total = _centre_rows(xp.astype(k, xp.float64)[None], unbiased, out[None], xp)
    return tr[0], total[0]


def _centre_rows(k64, unbiased, rows, xp):
    """Centre (or U-centre) a stack ``k64`` of float64 grams ``(m, n, n)`` into ``rows``
    ``(m, n*n)``; returns their traces and total sums, arrays of shape ``(m,)``."""
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
    return B.is_torch(k) and k.device.type != "cpu"


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
        k64 = xp.stack([xp.astype(k, xp.float64) for k in chunk])
        tr, total = _centre_rows(k64, unbiased, out[start:start + len(chunk)], xp)
        traces.append(tr)
        totals.append(total)
    return (np.asarray(B.to_numpy(xp.concat(traces)), dtype=np.float64),
            np.asarray(B.to_numpy(xp.concat(totals)), dtype=np.float64))


def degeneracy_terms(trace, total, n, gram_dtype_eps):
    """``(tr(HKH), tolerance)`` of a gram with this trace and total sum.

    ``tr(HKH) = tr(K) - sum(K)/n`` is n times the total variance of the representation.
    It counts as constant (zero variance, CKA undefined) when ``tr(HKH) <= tolerance``,
    with ``tolerance = n * eps * tr(K)`` the rounding error of that difference.
    """
    return trace - total / n, n * gram_dtype_eps * trace


def eps_of(k, xp):
    return float(xp.finfo(k.dtype).eps)
