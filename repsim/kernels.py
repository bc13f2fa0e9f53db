"""Gram matrices: linear (from centred features) and RBF, and the RBF bandwidth.

Their centring lives in :mod:`repsim._centring`; its public names (``centre_gram``,
``ucentre_gram``) and the helpers other modules use are re-exported here.

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
from ._host_gram import OFFSET_RATIO, SHIFT_ROWS, centred_from_product  # noqa: F401 (re-exported)
from ._precision import check_device, reduced_product
from ._centring import (  # the centring of grams; re-exported (repsim.kernels.centre_gram)
    STACK_CHUNK,
    centre_gram,
    centre_into,
    centre_stack_into,
    degeneracy_terms,
    eps_of,
    stacks_centring,
    ucentre_gram,
)

KERNELS = ("linear", "rbf")
ESTIMATORS = ("biased", "unbiased")


def prepare(x, name="x"):
    """Validate one representation: ``(namespace, (n, features) float array)``."""
    x = B.asarray(x, name)
    xp = B.namespace(x)
    x = V.as_2d(x, xp, name)
    return xp, B.as_float(x, xp)


def column_means(x, xp):
    """Column means of ``x`` ``(n, p)`` accumulated in float64, shape ``(p,)``, float64.

    On the host (numpy arrays, and CPU tensors through a zero-copy numpy view) one
    buffered float64 reduction of the float32 data (no float64 copy of ``x``); on an
    accelerator one fused float64 reduction. The error is about ``n * eps64 * |mean|``:
    the float32 rounding of the data alone.
    """
    n = x.shape[0]
    if B.on_accelerator(x) or B.tracks_grad(x):  # one fused float64 reduction
        return xp.sum(x, axis=0, dtype=B.accumulation_dtype(xp)) / n
    return xp.asarray(_host_means(B.to_numpy(x)))


def _host_means(xn):
    return np.sum(xn, axis=0, dtype=np.float64) / xn.shape[0]


def centre_features(x, xp):
    """``x`` minus its column means, in ``x``'s own float dtype.

    The means are accumulated in float64 (:func:`column_means`) and subtracted in ``x``'s
    dtype: the centred entries then carry a rounding error of at most
    ``eps * |x_ij - mean_j|`` plus a per-column constant of about ``eps * |mean_j|``,
    which no centred kernel sees (``H K H`` and U-centring remove column constants) and
    which is far below the spread for any offset that the dtype resolves
    (``|mean| * eps < spread``). A constant column centres to exactly zero.

    Host data (numpy, CPU tensors) is centred by numpy on a zero-copy view -- a float64
    reduction and one subtraction, about 15 % of a 256 x 4096 gram on two cores, where
    torch's CPU reductions and elementwise kernels took several times longer -- and
    handed back in the caller's library without a copy; tensors on an accelerator or
    recorded by autograd are centred by torch.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf are reported by the caller
        if B.on_accelerator(x) or B.tracks_grad(x):  # in torch (autograd sees it)
            acc = B.accumulation_dtype(xp)
            mean = column_means(x, xp)
            return x - (mean if x.dtype == acc else xp.astype(mean, x.dtype))
        xn = B.to_numpy(x)
        xc = xn - _host_means(xn).astype(xn.dtype, copy=False)
        return xc if B.is_numpy_namespace(xp) else xp.asarray(xc)


def _ldexp(a, e):
    """``a * 2**e`` exactly, for exponents beyond one float's range."""
    h = e // 2
    return a * math.ldexp(1.0, h) * math.ldexp(1.0, e - h)


def gram_range(dtype, xp):
    """``(lo, hi)``: largest squared row norms of a centred gram formed in ``dtype``
    without losing accuracy to underflow (below ``lo = tiny / eps``) or overflowing."""
    fi = xp.finfo(dtype)
    return float(fi.smallest_normal) / float(fi.eps), float(fi.max) / 4.0


#: Range of the largest squared row norm that :func:`scaled_centred_gram` keeps in
#: ``normalise`` mode: squares of such grams (the pairing products) stay normal in float64.
NORMAL_RANGE = (2.0 ** -100, 2.0 ** 100)


def centred_gram_unchecked(x, xp, precision="float32"):
    """The centred linear gram in ``x``'s float dtype (or ``precision``) without the range
    check of :func:`scaled_centred_gram` (and so without its host synchronisation): for
    callers that check the largest diagonal entry of many grams at once."""
    x = B.as_float(x, xp)
    if precision != "float32":
        check_device(x, precision)
    return _product(centre_features(x, xp), xp, precision)


def _product(x, xp, precision):
    """``x @ x.T`` in the data's dtype, or in a reduced ``precision`` (float32 result)."""
    if precision == "float32":
        return B.self_product(x, xp)
    return reduced_product(x, xp, precision)


def scaled_centred_gram(x, xp, name="x", bounds=None, centred=True, precision="float32"):
    """The linear gram of the centred features, formed in ``x``'s float dtype, scaled by
    a power of two where its magnitudes would under- or overflow.

    The one step that forms a gram from features (:func:`linear_gram` and every
    measure go through it). Returns ``(k, e, dmax)``: ``k = (2^-e x_c)(2^-e x_c)^T``
    with ``x_c`` = :func:`centre_features` of ``x``, ``e`` an integer (0 unless the largest
    squared row norm ``dmax`` of the centred data falls outside ``bounds``, default
    :func:`gram_range` of the gram's dtype), and ``dmax`` of the unscaled data (a float).

    Host data (numpy, CPU tensors) is multiplied once and centred after the product, in
    float64 (:func:`repsim._host_gram.centred_from_product`): the product of ``x`` itself where its column
    means are small against its spread (typical of Gaussian-like features), else of ``x``
    less the mean of a few of its rows (post-ReLU activations), checked on the product to
    have ``||m - shift||^2 <=`` :data:`OFFSET_RATIO` ``* tr(HKH)/n`` -- the same centred gram
    within about ``2 (1 + OFFSET_RATIO)`` times the error bound below, at the cost of the
    product plus at most one subtraction. Data that fails the check (rows unlike the rest), accelerator and
    autograd tensors, and the reduced precisions are centred first with the exact float64
    means: two passes over ``x`` (column sums, subtraction) next to the gram's ``n^2 p``
    flops, and one host synchronisation (the largest diagonal entry, to decide on the
    rescaling); on an accelerator that sync waits for the work queued so far, about the
    launch latency of one kernel per layer when the queue is short.

    Error bound: each entry of ``k`` is the dot product of two centred rows formed in the
    gram dtype, so ``|k_ij - exact| <= p * eps * |x_ci| |x_cj|`` (``p`` features, ``eps``
    of the dtype; blocked BLAS sums do better in practice), independent of the mean --
    where a gram of the uncentred data would err by ``p * eps * |x_i| |x_j|``, which a
    large common offset makes larger than the centred gram itself. ``precision`` other
    than ``"float32"`` forms the product as :mod:`repsim._precision` states (bound there);
    the gram is then float32.
    """
    x = B.as_float(x, xp)
    reduced = precision != "float32"
    if reduced:
        check_device(x, precision)
    lo, hi = gram_range(xp.float32 if reduced else x.dtype, xp) if bounds is None else bounds
    if not (reduced or B.on_accelerator(x) or B.tracks_grad(x)):  # host: one product
        fast = centred_from_product(x, xp, centred)
        if fast is not None and lo <= fast[1] <= hi:
            return fast[0], 0, fast[1]
    xc = centre_features(x, xp)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # handled below
        k = _product(xc, xp, precision)
    dmax = B.item(xp.max(xp.linalg.diagonal(k)))
    if lo <= dmax <= hi:
        return k, 0, dmax
    if not math.isfinite(dmax):
        V.check_finite_array(x, xp, name)
    # dmax == 0 is a constant layer, or squares that underflowed: the slow path tells
    # slow path: centre in float64, scale by a power of two (exact), then form the gram
    acc = B.accumulation_dtype(xp)
    x64 = xp.astype(x, acc)
    xc64 = x64 - xp.mean(x64, axis=0)
    amax = B.item(xp.max(xp.abs(xc64)))
    if amax == 0.0:
        return _product(xp.astype(xc64, x.dtype), xp, precision), 0, 0.0
    e = math.frexp(amax)[1]
    k = _product(xp.astype(_ldexp(xc64, -e), x.dtype), xp, precision)
    dmax = _ldexp(B.item(xp.max(xp.linalg.diagonal(xp.astype(k, acc)))), 2 * e)  # inf past float64
    return k, e, dmax


def linear_gram(x, xp, *, name="x", centred=True, precision="float32"):
    """The centred linear gram ``x_c x_c^T`` of a representation ``(n, p)``.

    ``x_c`` is ``x`` with its column means (accumulated in float64) subtracted, and the
    product is formed in ``x``'s float dtype (numpy hands it to BLAS syrk, see
    :func:`repsim._backend.self_product`). Every centred kernel -- ``H K H``, the U-centred
    gram, squared distances -- is the same for ``x`` and ``x_c``, so both HSIC estimators
    and the RBF kernel take this gram; forming it from uncentred float32 data would cancel
    catastrophically when the mean is large against the spread (see
    :func:`scaled_centred_gram` for the error bound).

    Parameters
    ----------
    x : array, shape (n, p)
        Float array (float16/bfloat16 are upcast to float32, integers to float64).
    xp : namespace
        ``x``'s array namespace.
    name : str
        The argument's name, for error messages.
    centred : bool, default True
        False for callers that centre the gram themselves (``H K H``, U-centring): host
        data then gets the uncentred product of ``x`` (or of ``x`` less a shift, where its
        column means are large) -- the gram floor, plus at most one subtraction -- which
        centres to the same result within the error bound of :func:`scaled_centred_gram`.
    precision : {"float32", "bfloat16", "tf32"}, default "float32"
        How the product is formed: ``"float32"`` in ``x``'s own float dtype (exact as
        stated); the reduced modes of :mod:`repsim._precision` centre first and return a
        float32 gram (``"tf32"`` on CUDA only).

    Returns
    -------
    array, shape (n, n)
        In ``x``'s float dtype; float64 for float32 data whose gram would under- or
        overflow float32 (squared row norms beyond about ``1e-31 ... 1e38``).

    Raises
    ------
    ValueError
        If ``x`` contains NaN or Inf, or is float64 data whose gram cannot be represented
        in float64 (squared row norms below about ``1e-292``); rescale such data
        (:func:`repsim.cka` and :func:`repsim.cka_matrix` rescale by themselves).
    """
    k, e, dmax = scaled_centred_gram(x, xp, name, centred=centred, precision=precision)
    if e == 0:
        return k
    acc = B.accumulation_dtype(xp)
    lo, hi = gram_range(acc, xp)
    if not lo <= dmax <= hi:
        raise ValueError(
            f"{name}'s gram cannot be represented in float64: its centred rows have squared "
            f"norms up to {dmax:.3g}; rescale {name} (similarity measures are scale invariant)"
        )
    return _ldexp(xp.astype(k, acc), 2 * e)


def _diag(k, xp):
    return xp.linalg.diagonal(k)


def squared_distances(k, xp):
    """Squared Euclidean distances ``d_ij = k_ii + k_jj - 2 k_ij`` from a linear gram, float64.

    With the centred gram of :func:`linear_gram` the terms are of the size of the spread
    of the data, not of its mean, so the distances keep the gram dtype's relative accuracy
    (``|error| <= 4 p eps max(k_ii, k_jj)``).
    """
    k = xp.astype(k, B.accumulation_dtype(xp))
    d = _diag(k, xp)
    return d[:, None] + d[None, :] - 2.0 * k


def _median(v, xp):
    """Median of all entries (mean of the two middle values for an even count)."""
    v = xp.sort(xp.reshape(v, (-1,)))
    m = v.shape[0]
    if m % 2:
        return float(v[m // 2])
    return 0.5 * (float(v[m // 2 - 1]) + float(v[m // 2]))


def median_sigma(x, *, threshold: float = 1.0) -> float:
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
        (the zero diagonal included, as in the reference implementation), computed from
        the centred data (see :func:`repsim.gram`), so a large common offset costs no
        accuracy.

    Raises
    ------
    ValueError
        If ``x`` contains NaN or Inf, or ``threshold`` is not a finite number > 0.

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
    V.check_params(threshold=threshold)
    xp, x = prepare(x)
    V.check_finite_array(x, xp, "x")
    k, e, _ = scaled_centred_gram(x, xp, "x", NORMAL_RANGE)  # any scale: sigma scales back
    return threshold * math.ldexp(math.sqrt(_median(squared_distances(k, xp), xp)), e)


#: the unbiased estimator's off-diagonal is rescaled (exactly, up to rounding) when its
#: largest RBF value lies below ``exp(-RBF_SHIFT)`` (2**-64): all of them would underflow
#: or lose digits otherwise
RBF_SHIFT = 64 * math.log(2.0)
#: without rescaling (sums over batches), the largest off-diagonal value may not lie below
#: ``exp(-RBF_UNSCALED_LIMIT)`` (2**-300: its products would leave float64's range)
RBF_UNSCALED_LIMIT = 300 * math.log(2.0)


def rbf_less_constant(a, b, xp):
    """``exp(-a) - exp(-b)`` elementwise for an array ``a >= 0`` (or ``a <= b`` where
    negative) and a float ``b``, without cancellation and with one transcendental per
    entry: ``exp(-b) expm1(b - a)``, exact to rounding even when both terms are near 1
    (a bandwidth far above the spread); for ``b > 700`` (``exp(-b) < 1e-304``, a bandwidth
    below the spread) simply ``exp(-a)``: subtracting ``exp(-b)`` would change no entry
    above ``2**-1000`` beyond rounding."""
    if b > 700.0:
        return xp.exp(-a)
    return math.exp(-b) * xp.expm1(b - a)


def rbf_underflow_error(name):
    """The refusal of an unbiased RBF gram summed over batches (or blocks) whose
    off-diagonal values all lie below ``2**-300``."""
    return ValueError(
        f"the RBF bandwidth of {name} lies so far below the distances between its "
        "examples that every off-diagonal kernel value is below 2**-300: the unbiased "
        "estimator's sums (over batches or blocks) would underflow; pass a larger sigma "
        "(CKA of one batch, repsim.cka or repsim.cka_matrix, rescales instead)")


def rbf_from_linear(k, xp, sigma=None, threshold=1.0, engine="auto", name="x", centring=None,
                    scale_free=True, mean_d2=None):
    """RBF gram (float64) from a (centred) linear gram; returns ``(gram, sigma)``.

    Parameters
    ----------
    k : array, shape (n, n)
        Linear gram of the layer (centred, see :func:`linear_gram`).
    sigma, threshold, name
        As in :func:`gram`.
    engine : {"auto", "numpy", "numba"}
        numpy's vectorised ``exp`` beats the fused numba loop here (0.40 ms against
        0.63 ms at n=256, ``benchmarks/core_ratios.py``), so ``"auto"`` keeps numpy.
    centring : {None, "biased", "unbiased"}
        None: the RBF gram ``K = exp(-D / (2 sigma^2))`` itself. Otherwise a gram with the
        same centred (``"biased"``) or U-centred (``"unbiased"``) form up to a positive
        factor, formed so that it keeps its digits: ``K - exp(-mean(D) / (2 sigma^2))``
        (centring removes a constant; near a constant gram, when the bandwidth far exceeds
        the spread, the difference comes from ``expm1``). ``"unbiased"`` ignores the
        diagonal (set to 0), and when even the largest off-diagonal value lies below
        ``2**-64`` (a bandwidth far below the distances) the off-diagonal is divided by it.
    scale_free : bool, default True
        Whether that division is allowed (CKA of one batch); without it (sums over
        batches) such a gram is refused.
    mean_d2 : float, optional
        The mean of ``D`` over all ``n^2`` entries, ``2 tr(k)/n - 2 sum(k)/n^2``, when
        the caller has ``k``'s trace and sum already.
    """
    if sigma is None:
        V.check_params(threshold=threshold)
        d2 = squared_distances(k, xp)
        med = _median(d2, xp)
        if not med > 0:
            raise ValueError(
                f"cannot pick an RBF bandwidth for {name}: the median squared distance "
                f"between examples is {med} (at least half of the pairs of examples have "
                f"identical rows after centring); pass sigma explicitly"
            )
        sigma = threshold * math.sqrt(med)
    else:
        V.check_params(sigma=sigma)
        sigma = float(sigma)
        d2 = None
    inv = 1.0 / (2.0 * sigma * sigma)
    use_nb = engine == "numba" and B.use_numba(engine, k)
    if centring is None and not use_nb:
        d2 = squared_distances(k, xp) if d2 is None else d2
        return xp.exp(-d2 * inv), sigma
    n = k.shape[0]
    if mean_d2 is None:  # mean(D) = 2 tr(k)/n - 2 sum(k)/n^2
        acc = B.accumulation_dtype(xp)
        mean_d2 = 2.0 * (B.item(xp.sum(_diag(k, xp), dtype=acc)) / n
                         - B.item(xp.sum(k, dtype=acc)) / n ** 2)
    mean_d2 = max(0.0, mean_d2)
    unbiased = centring == "unbiased"
    if unbiased and n > 1:  # the off-diagonal's mean (>= its smallest, the shift below)
        mean_d2 *= n / (n - 1)
    # exp(-b) is subtracted (any constant is exact; this one keeps the digits of a gram
    # near a constant and never exceeds the largest off-diagonal value)
    b = mean_d2 * inv
    if centring is None:
        b = math.inf  # nothing subtracted
    elif mean_d2 > 0 and b < 1e-290:
        raise ValueError(
            f"the RBF bandwidth of {name} exceeds the spread of its examples (the root mean "
            "squared distance between them) by so much (over 1e144 times) that every "
            "D / (2 sigma^2) underflows; pass a smaller sigma")
    shift = 0.0
    if unbiased and n > 1:  # the largest off-diagonal value is exp(-smallest)
        d2 = B.fill_diagonal(squared_distances(k, xp) if d2 is None else d2, math.inf, xp)
        smallest = B.item(xp.min(d2)) * inv
        if smallest > RBF_SHIFT:
            if not scale_free and smallest > RBF_UNSCALED_LIMIT:
                raise rbf_underflow_error(name)
            if scale_free:
                shift = smallest
                b = max(b, shift)  # mean >= min; rounding must not turn b - shift negative
    if use_nb:
        from . import _numba

        out = np.empty(k.shape, dtype=B.accumulation_dtype(np))
        out = _numba.rbf_from_linear(B.numba_view(k), inv, shift, b - shift, unbiased, out)
        return (out if B.is_numpy(k) else xp.asarray(out)), sigma
    d2 = squared_distances(k, xp) if d2 is None else d2
    a = d2 * inv - shift if shift else d2 * inv
    if centring is None:
        return xp.exp(-a), sigma
    if unbiased:  # the diagonal is not used: exactly 0 (exp(-b) - exp(-b))
        a = B.fill_diagonal(a, b - shift, xp)
    return rbf_less_constant(a, b - shift, xp), sigma


def gram(x, *, kernel: str = "linear", sigma: float | None = None, threshold: float = 1.0):
    """Gram matrix of a representation, from its centred features.

    Parameters
    ----------
    x : array, shape (n, ...)
        numpy array or torch tensor; flattened to ``(n, features)``. float16/bfloat16 are
        upcast to float32, integers to float64.
    kernel : {"linear", "rbf"}
        ``"linear"``: ``x_c x_c^T`` with ``x_c`` the column-centred ``x`` (means
        accumulated in float64). ``"rbf"``: ``exp(-||x_i - x_j||^2 / (2 sigma^2))``.
        Every measure that takes grams (HSIC, CKA) centres them, and centring removes the
        difference between ``x x^T`` and ``x_c x_c^T`` exactly, so the result is the same
        -- but the centred gram keeps its accuracy in float32 when the mean is large
        against the spread, where ``x x^T`` cancels catastrophically.
    sigma : float, optional
        RBF bandwidth (``kernel="rbf"`` only). Default: ``threshold * sqrt(median squared
        distance)``.
    threshold : float, default 1.0
        Fraction of the median distance used when ``sigma`` is None.

    Returns
    -------
    array, shape (n, n)
        Same array type and device as ``x``; the linear gram keeps ``x``'s float dtype
        (float64 for float32 data whose gram would leave float32's range), the RBF gram is
        float64.

    Raises
    ------
    ValueError
        For NaN/Inf in ``x``, ``sigma`` with ``kernel="linear"``, or a bad option.

    References
    ----------
    .. [1] Kornblith et al. (2019), "Similarity of neural network representations
       revisited", ICML.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> x = np.arange(6.0).reshape(3, 2)  # centred: [[-2, -2], [0, 0], [2, 2]]
    >>> repsim.gram(x)
    array([[ 8.,  0., -8.],
           [ 0.,  0.,  0.],
           [-8.,  0.,  8.]])
    >>> repsim.gram(x, kernel="rbf", sigma=1.0).round(4)[0]
    array([1.    , 0.0183, 0.    ])
    """
    V.check_params(kernel=kernel, sigma=sigma, threshold=threshold)
    V.check_sigma_kernel(sigma, kernel)
    xp, x = prepare(x)
    k = linear_gram(x, xp, name="x")
    if kernel == "rbf":
        k, _ = rbf_from_linear(k, xp, sigma=sigma, threshold=threshold)
    return k

