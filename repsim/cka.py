"""Centered kernel alignment of two representations, and of all pairs of many.

References
----------
Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of neural network representations
revisited", ICML. Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the
same things?", ICLR.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from . import _validation as V
from ._pairs import prepare_pair
from .hsic import centred_gram_stack, pairing_terms, scalar
from .kernels import NORMAL_RANGE, _ldexp, degeneracy_terms, eps_of, prepare
from ._registry import GramForm, Measure, declare
from ._rules import mask_degenerate
from .results import similarity_array

METHODS = ("auto", "gram", "features")


def _feature_path_cheaper(n, p, q):
    # 2n(pq + p^2 + q^2) flops for the three cross-products against 2n^2(p + q) for grams
    return p * q + p * p + q * q < n * (p + q)


def _centred_scaled(a, xp, name):
    """Column-centred float64 features, scaled by a power of two (exact, CKA is scale
    invariant) when their squares would leave float64's normal range; and whether the
    representation is constant (:func:`repsim.kernels.degeneracy_terms` on the centred
    data, with the input dtype's eps)."""
    n = a.shape[0]
    a64 = xp.astype(a, B.accumulation_dtype(xp))
    V.check_finite_array(a64, xp, name)
    c = a64 - xp.mean(a64, axis=0)
    amax = B.item(xp.max(xp.abs(c)))
    if amax > 0 and not NORMAL_RANGE[0] <= amax * amax <= NORMAL_RANGE[1]:
        c = _ldexp(c, -math.frexp(amax)[1])
    tr = B.item(xp.sum(c * c))
    total = B.item(xp.sum(xp.sum(c, axis=0) ** 2))
    centred, tol = degeneracy_terms(tr, total, n, eps_of(a, xp))
    return c, centred <= tol


def _feature_space_linear_cka(x, y, xp):
    """Biased linear CKA terms ``||y'x||_F^2, ||x'x||_F, ||y'y||_F`` on centred columns,
    and whether each side is constant (``tr(HKH)`` within rounding of zero, see
    :func:`repsim.kernels.degeneracy_terms`)."""
    x, flag_x = _centred_scaled(x, xp, "x")
    y, flag_y = _centred_scaled(y, xp, "y")
    xy = xp.sum(xp.matmul(y.T, x) ** 2)
    xx = xp.sqrt(xp.sum(xp.matmul(x.T, x) ** 2))
    yy = xp.sqrt(xp.sum(xp.matmul(y.T, y) ** 2))
    return xy, xx, yy, [flag_x, flag_y]


def _clip(value, estimator, xp):
    """CKA's range: [0, 1] for the biased estimator (an inner product of two PSD centred
    grams), [-1, 1] for the unbiased one (Cauchy-Schwarz); only rounding lies outside."""
    return xp.clip(value, 0.0 if estimator == "biased" else -1.0, 1.0)


def cka(
    x,
    y,
    *,
    kernel: str = "linear",
    estimator: str = "biased",
    sigma: float | None = None,
    threshold: float = 1.0,
    method: str = "auto",
    engine: str = "auto",
    precision: str = "float32",
):
    """Centered kernel alignment between two representations of the same examples.

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with ``K, L`` the grams of ``x``
    and ``y``.

    Parameters
    ----------
    x : array, shape (n, ...)
        numpy array or torch tensor; flattened to ``(n, p)``.
    y : array, shape (n, ...)
        Same library and example order as ``x``; flattened to ``(n, q)``.
    kernel : {"linear", "rbf"}
    estimator : {"biased", "unbiased"}
        HSIC estimator (see :func:`repsim.hsic`); ``"unbiased"`` needs ``n >= 4``.
    sigma : float, optional
        RBF bandwidth for both sides (``kernel="rbf"`` only; refused with the linear
        kernel); default: median heuristic per side, ``threshold * sqrt(median squared
        distance)``.
    threshold : float, default 1.0
    method : {"auto", "gram", "features"}
        Linear biased CKA can be computed from ``p x q`` feature cross-products instead of
        ``n x n`` grams; ``"auto"`` takes whichever costs fewer flops.
    engine : {"auto", "numpy", "numba"}
        Implementation of the centring step on the numpy path.
    precision : {"float32", "bfloat16", "tf32"}, default "float32"
        How each gram's product is formed. ``"float32"``: in the data's own float dtype
        (float32 or wider), exact as stated in the Notes. ``"bfloat16"``: features centred
        first, products in bfloat16 accumulated in float32 (faster only on CPUs with
        ``avx512_bf16``/AMX and on GPUs of compute capability >= 8.0; it warns once
        elsewhere); ``"tf32"``: CUDA tensors only. Error bounds:
        :mod:`repsim._precision`, :func:`repsim.precision_support`.

    Returns
    -------
    scalar
        float64 in [0, 1] for the biased estimator, in [-1, 1] for the unbiased one (which
        can dip slightly below 0 for unrelated representations); rounding beyond those
        ranges (``1.0000000000000002`` at ``n = 2``) is clipped. NaN with a warning when
        either side is constant, and for the unbiased estimator also when either side's
        U-centred gram is zero (orthogonal rows of equal norm, such as one-hot rows: its
        unbiased HSIC with itself is 0). A numpy scalar for numpy input, a 0-d tensor on
        the input's device for torch.

    Notes
    -----
    Accuracy: features are centred (column means accumulated in float64) before the gram
    is formed in the input's float dtype, and each side is scaled by a power of two
    where its squares would leave float64's range; so the error is that of the gram of
    the *centred* data, about ``p * eps`` relative to it (``eps`` of the input dtype;
    typically far less with blocked sums), whatever the offset and scale of the data.
    float32 inputs with offsets up to ``1e4`` standard deviations and scales from
    ``1e-20`` to ``1e20`` agree with the float64 computation to ``1e-4`` (tested).
    RBF grams are formed less a constant (:func:`repsim.kernels.rbf_from_linear`), so
    RBF CKA keeps its digits at any bandwidth: it tends to linear CKA as ``sigma`` grows.

    References
    ----------
    .. [1] Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of neural network
       representations revisited", ICML.
    .. [2] Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same
       things?", ICLR (unbiased HSIC in CKA).

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((100, 10))
    >>> round(float(repsim.cka(x, 2 * x @ np.linalg.qr(rng.standard_normal((10, 10)))[0])), 6)
    1.0
    """
    V.check_params(kernel=kernel, estimator=estimator, sigma=sigma, threshold=threshold,
                   method=method, engine=engine, precision=precision)
    V.check_sigma_kernel(sigma, kernel)
    B.namespace(B.asarray(x, "x"), B.asarray(y, "y"), names=["x", "y"])
    xp, x = prepare(x, "x")
    _, y = prepare(y, "y")
    B.use_numba(engine, x, y)  # refuses engine="numba" for torch input up front
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    V.check_same_n(n, y.shape[0], "x", "y", x.shape, y.shape)
    V.check_n(n, estimator, "x")
    features = kernel == "linear" and estimator == "biased" and precision == "float32" and (
        method == "features" or (method == "auto" and _feature_path_cheaper(n, p, q))
    )
    if method == "features" and not features:
        raise ValueError(
            "method='features' applies to linear biased CKA at precision='float32' only; got "
            f"kernel={kernel!r}, estimator={estimator!r}, precision={precision!r}"
        )
    if features:
        xy, xx, yy, flags = _feature_space_linear_cka(x, y, xp)
        bad = [nm for nm, d in zip(("x", "y"), flags) if d]
        if bad:
            V.warn_degenerate(bad)
            return scalar(xy * float("nan"), xp)
        return scalar(_clip(xy / (xx * yy), estimator, xp), xp)
    packed_x, _, cx, tx = centred_gram_stack(
        [x], ["x"], kernel=kernel, estimator=estimator, sigmas=[sigma], threshold=threshold,
        engine=engine, side="x", normalise=True, precision=precision,
    )
    packed_y, _, cy, ty = centred_gram_stack(
        [y], ["y"], kernel=kernel, estimator=estimator, sigmas=[sigma], threshold=threshold,
        engine=engine, side="y", normalise=True, precision=precision,
    )
    gx, gy = packed_x[0], packed_y[0]
    bad = [nm for nm, c, t in (("x", cx[0], tx[0]), ("y", cy[0], ty[0])) if c <= t]
    xy = xp.sum(gx * gy)
    if bad:
        V.warn_degenerate(bad, reason=V.degenerate_reason(estimator))
        return scalar(xy * float("nan"), xp)
    return scalar(_clip(xy / xp.sqrt(xp.sum(gx * gx) * xp.sum(gy * gy)), estimator, xp), xp)


def _normalise(cross, self_a, self_b, xp):
    """``cross / sqrt(self_a self_b^T)``; 0/0 of constant layers is NaN, masked later."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / xp.sqrt(self_a[:, None] * self_b[None, :])


def cka_matrix(
    xs,
    ys=None,
    *,
    kernel: str = "linear",
    estimator: str = "biased",
    sigma: float | None = None,
    threshold: float = 1.0,
    engine: str = "auto",
    precision: str = "float32",
):
    """CKA between every pair of layers, from one matrix product.

    Each layer's gram is centred (or U-centred, for the unbiased estimator), flattened and
    stacked into a ``(L, n^2)`` float64 matrix ``G``; all pairwise HSICs are then
    ``G_a G_b^T`` -- ``2 L_a L_b n^2`` flops instead of ``2 L_a L_b n^3`` for a loop over
    pairs of ``n x n`` products.

    Parameters
    ----------
    xs : sequence or dict name -> array, each of shape (n, ...)
        Representations of the same ``n`` examples (one library, one device). Layer names
        are the dict keys, or ``"0", "1", ...`` for a sequence.
    ys : sequence or dict, optional
        A second set (another model). None compares ``xs`` with itself (symmetric result,
        each gram formed once).
    kernel, estimator, sigma, threshold, engine, precision
        As in :func:`repsim.cka`; ``sigma`` is one bandwidth for every layer, or None for
        the per-layer median heuristic.

    Returns
    -------
    xarray.DataArray, shape (L_a, L_b)
        dims ``("layer_a", "layer_b")`` with layer names as coordinates and attrs
        ``measure``, ``estimator``, ``kernel``, ``n``, ``precision``. Constant layers give NaN rows and
        columns with a warning naming them.

    References
    ----------
    .. [1] Kornblith et al. (2019), "Similarity of neural network representations
       revisited", ICML.
    .. [2] Nguyen, Raghu & Kornblith (2021), "Do wide and deep networks learn the same
       things?", ICLR.

    Examples
    --------
    >>> import numpy as np, repsim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((100, 8))
    >>> sim = repsim.cka_matrix({"x": x, "2x": 2 * x, "noise": rng.standard_normal((100, 8))})
    >>> sim.sel(layer_a="x", layer_b="2x").item()
    1.0
    """
    p = prepare_pair(xs, ys, kernel=kernel, estimator=estimator, sigma=sigma,
                     threshold=threshold, engine=engine, precision=precision)
    names_a, names_b, sig_a, sig_b = p.names_a, p.names_b, p.sigmas_a, p.sigmas_b
    values = _clip(pair_cka(p.packed_a, p.packed_b), estimator, np)
    values = mask_degenerate(values, p.degenerate_a, p.degenerate_b, names_a, names_b,
                             reason=V.degenerate_reason(estimator))
    attrs = {
        "measure": "cka",
        "estimator": estimator,
        "kernel": kernel,
        "n": p.n,
        "precision": precision,
    }
    if kernel == "rbf":
        attrs["sigma_a"] = list(sig_a)
        attrs["sigma_b"] = list(sig_b)
        attrs["threshold"] = threshold
    return similarity_array(values, names_a, names_b, attrs)


def pair_cka(ga, gb=None):
    """All-pairs CKA (numpy, ``(L_a, L_b)``) of packed centred grams from one product.

    ``gb`` None pairs ``ga`` with itself (the self terms are then the product's diagonal).
    Constant layers come out as NaN (0/0) for :func:`repsim._rules.mask_degenerate` to name. Values
    are not clipped here (callers clip to their estimator's range).
    """
    cross, self_a, self_b = pairing_terms(ga, gb)
    return B.to_numpy(_normalise(cross, self_a, self_b, B.namespace(ga)))


# --------------------------------------------------------------------------- registry


def _cka_matrix_values(layers_a, layers_b, *, kernel, estimator, sigma, threshold, engine,
                       precision="float32", **_):
    """The all-pairs path of the registry: :func:`cka_matrix` (one product)."""
    return cka_matrix(layers_a, layers_b, kernel=kernel, estimator=estimator, sigma=sigma,
                      threshold=threshold, engine=engine, precision=precision).values


def _recomputes(bound):
    """Whether ``cka(**bound)`` takes its feature-space path (linear, biased, float32
    products, ``p, q`` small next to ``n``): then recomputing it on each subsample
    (``O(m p q)``) beats indexing ``n x n`` grams formed once."""
    if bound["kernel"] != "linear" or bound["estimator"] != "biased" \
            or bound["precision"] != "float32" or bound["method"] == "gram":
        return False
    if bound["method"] == "features":
        return True
    x, y = B.asarray(bound["x"]), B.asarray(bound["y"])
    if x.ndim < 2 or y.ndim < 2:
        return False
    return _feature_path_cheaper(x.shape[0], math.prod(x.shape[1:]), math.prod(y.shape[1:]))


_OIT = ("orthogonal", "isotropic_scaling", "translation")
_GRAM = "O(n^2 (p + q))"

declare(
    cka,
    constraints={
        "kernel": V.PARAMS["kernel"], "sigma": V.PARAMS["sigma"],
        "threshold": V.PARAMS["threshold"], "method": V.PARAMS["method"],
        "engine": V.PARAMS["engine"], "precision": V.PARAMS["precision"],
        "estimator": V.Options("biased", "unbiased", aliases={"debiased": "unbiased"}),
    },
    matrix=_cka_matrix_values,
    moments=("estimator",),
    gram=GramForm(("kernel", "estimator", "sigma", "threshold", "engine", "precision"),
                  matrix=cka_matrix, recompute=_recomputes),
    blocks="gram",
    blocks_when=lambda o: "" if o.get("precision") == "float32" else
    f"precision={o.get('precision')!r} grams are formed whole",
    measures=[
        Measure("cka_linear", {}, "similarity", "[0, 1]", _OIT, True,
                "exact from feature moments; minibatch U-statistic (MinibatchCKA)",
                "O(n min(n, p + q) (p + q))",
                "HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), linear grams, biased HSIC",
                "Kornblith et al. 2019", "closed form (permutation_test)",
                aliases=("cka", "linear_cka", "cka_biased"),
                repository=("cka-kernel=linear-hsic=gretton-score", "cka-hsic_gretton")),
        Measure("cka_linear_unbiased", {"estimator": "unbiased"}, "similarity", "<= 1", _OIT,
                True, "minibatch U-statistic (MinibatchCKA); exact from moments", _GRAM,
                "CKA with the unbiased HSIC of Song et al. 2012", "Nguyen et al. 2021",
                "0 (exact)",
                aliases=("cka_linear_debiased", "cka_debiased", "cka_unbiased"),
                repository=("cka-kernel=linear-hsic=song-score", "cka-hsic_song")),
        Measure("cka_rbf", {"kernel": "rbf"}, "similarity", "[0, 1]", _OIT, True,
                "minibatch U-statistic with a fixed bandwidth", _GRAM,
                "CKA with RBF grams, median-heuristic bandwidth", "Kornblith et al. 2019",
                "closed form (permutation_test)", aliases=("rbf_cka",)),
    ],
)
